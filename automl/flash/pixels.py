"""Images decoded once per run, shared by every backbone's pass over the data.

A backbone's pass over the data (``features.extract``) opened, decoded and resized every image file
again. Here a file is decoded once, and the evaluation transform's resize and centre crop
(``data.image.eval_pixels``) are made for every input size the search will look at (``plan``: the
baseline's and each backbone's native size); the uint8 crops are kept in memory, so another
backbone's pass only normalises them. They are what ``eval_transform`` makes of the file, to the bit,
so a head trained on features from them serves on files (``Predictor.image_transform``) unchanged.

Memory: ``3 * size**2`` bytes an image and size, whatever the photos' own size (0.50 MiB an image
for 224, 240 and 260 px: 1.25 GiB for 2,500 images). Past :func:`default_limit` the rest are read
from their files for each pass, as before, and that is said once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence

import torch

log = logging.getLogger(__name__)

#: the most memory the decoded images may take, whatever the machine
MAX_BYTES = 2 << 30


def default_limit() -> int:
    """:data:`MAX_BYTES`, or a quarter of the machine's memory when that is less."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not Linux or macOS
        return MAX_BYTES
    return min(MAX_BYTES, total // 4)


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.0f} MiB"


class PixelCache:
    """uint8 crops ``(3, size, size)`` of image files by (input size, path), up to ``limit`` bytes."""

    def __init__(self, limit: int | None = None, say: Callable[[str], None] | None = None):
        self.limit = default_limit() if limit is None else int(limit)
        self.say = say
        self.sizes: set[int] = set()  # made for each file decoded, besides the size asked for
        self.bytes = 0
        self.decoded = 0  # files opened and decoded
        self._crops: dict[int, dict[str, torch.Tensor]] = {}
        self._full = False

    def plan(self, sizes: Iterable[int]) -> None:
        """The input sizes the search will look at: a file decoded for one of them is cropped for all."""
        self.sizes.update(int(size) for size in sizes if size)

    def inputs(self, served, samples: Sequence) -> torch.Tensor:
        """The network's inputs for ``samples`` as ``served`` (an ``ImageClassificationData``, no
        augmentation) makes them from their files: a batch ``(n, 3, size, size)``."""
        size = int(served.image_size)
        kept = self._crops.setdefault(size, {})
        pixels = []
        for path, _ in samples:
            crop = kept.get(str(path))
            pixels.append(crop if crop is not None else self._decode(path, size))
        return served.normalise(torch.stack(pixels))

    def _decode(self, path, size: int) -> torch.Tensor:
        from automl.data.image import eval_pixels, load_rgb

        image = load_rgb(path)
        self.decoded += 1
        asked: torch.Tensor | None = None
        for each in sorted(self.sizes | {size}):
            kept = self._crops.setdefault(each, {})
            crop = kept.get(str(path))
            if crop is None:
                crop = eval_pixels(each)(image)
                self._keep(kept, str(path), crop)
            if each == size:
                asked = crop
        assert asked is not None, "the size asked for is among those decoded"
        return asked

    def _keep(self, kept: dict, key: str, crop: torch.Tensor) -> None:
        if self.bytes + crop.numel() > self.limit:
            if not self._full:
                self._full = True
                sizes = sorted(self._crops)
                each = sum(3 * size * size for size in sizes)
                line = (
                    f"decoded images: {_gib(self.limit)} of memory holds about {self.limit // each} of them at "
                    f"{', '.join(map(str, sizes))} px; the others are read from their files again for each pass"
                )
                (self.say or log.warning)(line)
            return
        kept[key] = crop
        self.bytes += crop.numel()
