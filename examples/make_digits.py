"""Write scikit-learn's bundled handwritten digits as a folder-per-class PNG dataset (offline).

    python examples/make_digits.py --out data/digits --size 64

The 1,797 8x8 greyscale images are upscaled (bicubic) to ``--size`` pixels so that an ImageNet
backbone sees strokes rather than a handful of pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(out: Path, size: int = 64, limit: int | None = None) -> int:
    """Write the digits under ``out/<digit>/<index>.png``; returns how many files were written."""
    digits = load_digits()
    images, targets = digits.images, digits.target
    if limit is not None:
        images, targets = images[:limit], targets[:limit]
    for index, (image, target) in enumerate(zip(images, targets, strict=True)):
        folder = out / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (255 - image * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # dark ink on white paper
        Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).save(folder / f"{index:04d}.png")
    return len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/digits"))
    parser.add_argument("--size", type=int, default=64, help="side of the written images in pixels")
    parser.add_argument("--limit", type=int, default=None, help="write only the first N digits")
    args = parser.parse_args()
    count = write_digits(args.out, args.size, args.limit)
    print(f"wrote {count} digit images to {args.out}/<digit>/")


if __name__ == "__main__":
    main()
