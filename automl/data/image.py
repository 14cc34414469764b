"""Images on disk -> an ``ImageClassificationData`` LightningDataModule.

>>> data = ImageClassificationData.from_folders("imgs/")            # imgs/<class>/<file>.png
>>> data = ImageClassificationData.from_csv("labels.csv", "file", "label", root="imgs/")
>>> data = ImageClassificationData.from_path("labels.parquet")      # a folder, CSV, Parquet or datasets folder
>>> data = ImageClassificationData.from_files(["a.jpg", "b.jpg"], labels=["cat", "dog"])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import v2

from automl.backbones import IMAGENET_MEAN, IMAGENET_STD
from automl.data import common
from automl.data.files import IMAGE_SUFFIXES, Finding, check_image
from automl.errors import DataError

log = logging.getLogger(__name__)

#: Evaluation resizes to ``image_size / CROP_PCT`` and centre-crops ``image_size`` (timm's default).
CROP_PCT = 0.875
IMAGE_COLUMNS = ("image", "file", "filename", "path", "filepath", "image_path", "img")
TARGET_COLUMNS = ("label", "target", "class", "category")

Sample = tuple[Path, int]


def eval_resize(image_size: int) -> int:
    """The side the evaluation transform resizes an image's shorter side to, for ``image_size``."""
    return int(round(int(image_size) / CROP_PCT))


def eval_pixels(image_size: int):
    """The evaluation transform up to the pixels: resize, centre crop, uint8 tensor (C, H, W). The
    feature cache keeps these, so a backbone's pass from them gives what ``eval_transform`` gives
    from the file, to the bit."""
    return v2.Compose(
        [v2.Resize(eval_resize(image_size), antialias=True), v2.CenterCrop(int(image_size)), v2.PILToTensor()]
    )


def load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` as an upright RGB image (EXIF orientation applied)."""
    with Image.open(path) as image:
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as a person sees the image: upright, transparency on white, 16-bit scaled to 8 bits."""
    import numpy as np

    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16- or 32-bit greyscale: a plain convert() would clip it to white
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if "16" in image.mode or pixels.max() <= 65535 else float(pixels.max())
        image = Image.fromarray((pixels / top * 255.0).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


class ImageFiles(Dataset):
    """``(image tensor, class index)`` pairs; the index is -1 for unlabelled prediction inputs."""

    def __init__(self, samples: Sequence[Sample], transform):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        return self.transform(load_rgb(path)), target


class ImageClassificationData(common.ClassificationDataModule):
    """Train/validation(/test/predict) image splits with torchvision v2 transforms.

    The normalisation is the one the backbone's weights expect: pass ``backbone=`` (or ``mean`` and
    ``std``) here, or leave them out and the classifier sets them when fitting starts.
    """

    def __init__(
        self,
        labels: Sequence[str],
        train_samples: Sequence[Sample] = (),
        val_samples: Sequence[Sample] = (),
        test_samples: Sequence[Sample] = (),
        predict_samples: Sequence[Sample] = (),
        image_size: int = 224,
        batch_size: int = 16,
        num_workers: int = 0,
        backbone: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: bool = True,
    ):
        super().__init__(labels, train_samples, val_samples, test_samples, predict_samples, batch_size, num_workers)
        self.image_size = int(image_size)
        self.augment = augment
        if backbone is not None and mean is None:
            from automl.backbones import image_normalization

            mean, std = image_normalization(backbone)
        # None: not chosen; the model's when fitting starts (``configure``), else ImageNet's
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_folders(
        cls,
        train_folder: str | Path,
        val_folder: str | Path | None = None,
        test_folder: str | Path | None = None,
        val_split: float = 0.2,
        seed: int = 42,
        **kwargs,
    ) -> ImageClassificationData:
        """One sub-folder per class. A ``train/``, ``val/`` (``valid/``), ``test/`` split inside
        ``train_folder`` is detected and used as given; otherwise ``val_split`` of each class
        (seeded, stratified) is held out for validation."""
        root = common.existing_path(train_folder)
        splits = common.detect_splits(root) if val_folder is None and test_folder is None else {}
        if splits:
            root, val_folder, test_folder = splits["train"], splits.get("val"), splits.get("test")
        left_out: list[Finding] = []
        paths, names = _scan_class_folders(root, left_out)
        labels = sorted(set(names))
        common.check_labels(labels, f"the folder '{root}'")
        samples = list(zip(paths, common.encode(names, labels), strict=True))
        if val_folder is not None:
            val_samples = _labelled_samples(common.existing_path(val_folder), labels, left_out)
            train_samples = samples
        else:
            train_idx, val_idx = common.stratified_split([t for _, t in samples], val_split, seed)
            train_samples = [samples[i] for i in train_idx]
            val_samples = [samples[i] for i in val_idx]
        test_samples = _labelled_samples(common.existing_path(test_folder), labels, left_out) if test_folder else []
        data = cls(labels, train_samples, val_samples, test_samples, **kwargs)
        data.val_carved, data.skipped = val_folder is None, left_out
        return data

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        input_field: str | int | None = None,
        target_field: str | int | None = None,
        header: bool = True,
        kind: str | None = None,
        **kwargs,
    ) -> ImageClassificationData:
        """A folder of class folders, or a table of image paths and labels (a CSV/TSV or Parquet
        file, or a saved ``datasets`` folder) whose paths are relative to ``root``, default: the
        table's folder."""
        path = common.existing_path(path, common.TABLE_NAMES[kind])
        if kwargs.get("root") is None and (path.is_file() or common.is_hf_dataset(path)):
            kwargs["root"] = path if path.is_dir() else path.parent
        return super().from_path(path, input_field, target_field, header, kind, **kwargs)

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        input_field: str | int | None = None,
        target_field: str | int | None = None,
        root: str | Path | None = None,
        val_split: float = 0.2,
        seed: int = 42,
        header: bool = True,
        **kwargs,
    ) -> ImageClassificationData:
        """A CSV of image paths (relative to ``root``, default: the CSV's folder) and labels.

        Columns are given by name or 0-based position; ``header=False`` for a file without a header row.
        """
        options = {"root": root, "val_split": val_split, "seed": seed, **kwargs}
        return cls.from_path(path, input_field, target_field, header, kind="csv", **options)

    @classmethod
    def from_frame(
        cls,
        frame,
        source: str,
        input_field: str | int | None = None,
        target_field: str | int | None = None,
        root: str | Path | None = None,
        val_split: float = 0.2,
        seed: int = 42,
        first_row: int = 2,
        **kwargs,
    ) -> ImageClassificationData:
        """Rows of a table of image paths (relative to ``root``, default: the working folder) and
        labels; ``source`` names the table in errors ("the CSV '<path>'"), ``first_row`` is its first
        row's number there."""
        input_field = common.pick_column(frame, input_field, IMAGE_COLUMNS, source, "image path")
        target_field = common.pick_column(frame, target_field, TARGET_COLUMNS, source, "label")
        root = Path(root) if root is not None else Path.cwd()
        paths, names = [], []
        rows = zip(frame[input_field], frame[target_field], strict=True)
        for row, (file, label) in enumerate(rows, start=first_row):
            label = "" if label is None else str(label)
            image_path = root / str(file)
            if not image_path.is_file():
                raise DataError(
                    f"{source}, row {row}: the image '{image_path}' does not exist. "
                    f"Fix the path in column '{input_field}' or pass root= (the folder paths are relative to)."
                )
            if label.strip() == "":
                raise DataError(f"{source}, row {row}: the label in column '{target_field}' is empty.")
            paths.append(image_path)
            names.append(label)
        labels = sorted(set(names))
        common.check_labels(labels, source)
        samples = list(zip(paths, common.encode(names, labels), strict=True))
        train_idx, val_idx = common.stratified_split([t for _, t in samples], val_split, seed)
        return cls(labels, [samples[i] for i in train_idx], [samples[i] for i in val_idx], **kwargs)

    @classmethod
    def from_files(
        cls, files: Sequence[str | Path] | str | Path, labels: Sequence[str], **kwargs
    ) -> ImageClassificationData:
        """Files (or a folder of them) to predict, with the label names of the trained model."""
        if isinstance(files, (str, Path)) and Path(files).is_dir():
            files = common.files_in(Path(files), IMAGE_SUFFIXES)
        elif isinstance(files, (str, Path)):
            files = [files]
        paths = [common.existing_path(f, "image file") for f in files]
        if not paths:
            raise DataError("No image files to predict on.")
        return cls(labels, predict_samples=[(p, -1) for p in paths], **kwargs)

    def options(self) -> dict:
        return {
            **super().options(),
            "image_size": self.image_size,
            "augment": self.augment,
            "mean": self.mean,
            "std": self.std,
        }

    # ----------------------------------------------------------------- transforms
    def configure(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        """Normalise with ``mean``/``std`` (a model's ``input_options()``: what its backbone's weights
        expect) unless this datamodule was given its own."""
        if mean is None or std is None:
            return
        if self.mean is None:
            self.mean, self.std = tuple(mean), tuple(std)
        elif (tuple(mean), tuple(std)) != (self.mean, self.std):
            log.warning(
                "The data normalisation %s/%s differs from the one the backbone expects %s/%s.",
                self.mean,
                self.std,
                mean,
                std,
            )

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The mean and standard deviation the images are normalised with."""
        return (self.mean or IMAGENET_MEAN, self.std or IMAGENET_STD)

    @property
    def resize_size(self) -> int:
        return eval_resize(self.image_size)

    def _to_tensor(self) -> list:
        mean, std = self.normalization
        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (``eval_pixels``; one image or a batch) -> the network's input, as the
        transforms here make it."""
        return v2.Compose(self._to_tensor())(pixels).as_subclass(torch.Tensor)

    def train_transform(self):
        if not self.augment:
            return self.eval_transform()
        return v2.Compose(
            [
                v2.RandomResizedCrop(self.image_size, scale=(0.5, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                *self._to_tensor(),
            ]
        )

    def eval_transform(self):
        return v2.Compose(
            [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(self.image_size), *self._to_tensor()]
        )

    def preprocessing(self) -> dict:
        """What a deployed model must do to an image before calling the network."""
        return {
            "kind": "image",
            "image_size": self.image_size,
            "resize": self.resize_size,
            "crop": "center",
            "mean": list(self.normalization[0]),
            "std": list(self.normalization[1]),
            "color_mode": "RGB",
        }

    def make_dataset(self, samples: list, train: bool) -> Dataset:
        return ImageFiles(samples, self.train_transform() if train else self.eval_transform())


def _scan_class_folders(root: Path, left_out: list[Finding] | None = None) -> tuple[list[Path], list[str]]:
    """(image files, their class names) under ``root/<class>/``; files the reader leaves out (no image
    extension, undecodable) are logged and added to ``left_out``."""
    paths, names = [], []
    folders = common.class_folders(root)
    if not folders:
        raise DataError(
            f"The folder '{root}' has no class sub-folders. Lay the images out as '{root}/<class>/<image>'."
        )
    for folder in folders:
        readable: list = []
        unreadable: list = []
        for file in common.files_in(folder, IMAGE_SUFFIXES):
            usable, findings = check_image(file)  # a full decode: truncated files are caught here
            (readable if usable else unreadable).append((file, findings))
        readable = [file for file, _ in readable]
        for file, findings in unreadable:
            log.warning("Skipping '%s': %s.", file, findings[0].problem)
            if left_out is not None:
                left_out.append(findings[0])
        if left_out is not None:
            left_out.extend(_left_out(folder))
        if not readable:
            raise DataError(
                f"The class folder '{folder}' holds no readable image "
                f"(looked for {', '.join(IMAGE_SUFFIXES)}). Add images or remove the folder."
            )
        paths.extend(readable)
        names.extend([folder.name] * len(readable))
    return paths, names


def _left_out(folder: Path) -> list[Finding]:
    """What the reader does not read in a class folder, said rather than dropped: files without an
    image extension (skipped: an image there is a lost example) and hidden files (flagged)."""
    found = []
    for file in sorted(folder.rglob("*")):
        if not file.is_file():
            continue
        if any(common.is_hidden(Path(part)) for part in file.relative_to(folder).parts):
            found.append(Finding(str(file), "hidden file (its name starts with '.' or '__'): not read", "flagged"))
        elif file.suffix.lower() not in IMAGE_SUFFIXES:
            problem = f"no image extension ({', '.join(IMAGE_SUFFIXES)}): left out; rename it to use it"
            log.warning("Skipping '%s': %s.", file, problem)
            found.append(Finding(str(file), problem, "skipped"))
    return found


def _labelled_samples(root: Path, labels: Sequence[str], left_out: list[Finding] | None = None) -> list[Sample]:
    paths, names = _scan_class_folders(root, left_out)
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise DataError(f"The folder '{root}' has classes the training folder lacks: {', '.join(unknown)}.")
    return list(zip(paths, common.encode(names, labels), strict=True))
