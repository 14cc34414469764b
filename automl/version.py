"""automl's version: one place, read by the package, the CLI and the MLflow model's requirements."""

__version__ = "0.1.0"
