"""What one file is: a readable image (and how it is converted), or a finding that says why not.
Used by the data modules as they scan, and by the data doctor (``automl.data.inspect``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Finding:
    where: str  # a file, or "file, row N"
    problem: str
    action: str  # "skipped", "converted", "flagged"


def check_image(path: Path) -> tuple[bool, list[Finding]]:
    """Decode ``path`` fully: (usable, findings). Findings say what is skipped or converted, and why."""
    from PIL import Image, UnidentifiedImageError

    where = str(path)
    if path.stat().st_size == 0:
        return False, [Finding(where, "zero-byte file", "skipped")]
    try:
        with Image.open(path) as image:
            mode, exif = image.mode, image.getexif()
            image.load()  # a full decode: a truncated file fails here, not in the middle of training
            transparency = "transparency" in image.info
    except UnidentifiedImageError:
        what = "not an image file" if path.suffix.lower() not in IMAGE_SUFFIXES else "not a readable image"
        return False, [Finding(where, what, "skipped")]
    except (OSError, SyntaxError, ValueError) as exc:
        return False, [Finding(where, f"corrupt or truncated image ({exc})", "skipped")]
    notes = []
    conversions = {
        "L": "grayscale, repeated to 3 channels",
        "LA": "grayscale with alpha, composited on white",
        "RGBA": "RGBA, alpha composited on white",
        "P": "palette" + (" with transparency, composited on white" if transparency else ", expanded to RGB"),
        "CMYK": "CMYK, converted to RGB",
        "I;16": "16-bit, scaled to 8 bits",
        "I;16B": "16-bit, scaled to 8 bits",
        "I;16L": "16-bit, scaled to 8 bits",
        "I": "32-bit integer, scaled to 8 bits",
        "1": "1-bit, converted to RGB",
    }
    if mode in conversions:
        notes.append(Finding(where, conversions[mode], "converted"))
    orientation = exif.get(0x0112, 1) if exif else 1
    if orientation not in (1, None):
        notes.append(Finding(where, f"EXIF orientation {orientation}, rotated upright", "converted"))
    return True, notes
