"""``python -m template --config config.yaml [--set key=value ...]``: train once, print the result."""

from .train import main

main()
