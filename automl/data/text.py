"""Texts on disk -> a ``TextClassificationData`` LightningDataModule.

>>> data = TextClassificationData.from_csv("reviews.csv")              # columns auto-detected
>>> data = TextClassificationData.from_jsonl("reviews.jsonl", "body", "stars")
>>> data = TextClassificationData.from_folders("reviews/")             # reviews/<class>/<file>.txt
>>> data = TextClassificationData.from_path("reviews.parquet")         # any of the above, or a datasets folder

Texts are tokenised per batch with the backbone's tokenizer and padded to the longest text of the
batch (dynamic padding), truncated at ``max_length`` tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset

from automl.data import common
from automl.data.files import Finding
from automl.errors import DataError

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "review", "content")
TARGET_COLUMNS = ("label", "target", "class", "category")
DEFAULT_MAX_LENGTH = 128

Sample = tuple[str, int]


class Texts(Dataset):
    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


class TextClassificationData(common.ClassificationDataModule):
    """Train/validation(/test/predict) text splits, tokenised per batch.

    The tokenizer comes from ``backbone`` (a curated name, a hub id or a local folder); leave it out
    and the classifier's own tokenizer is used when fitting starts.
    """

    def __init__(
        self,
        labels: Sequence[str],
        train_samples: Sequence[Sample] = (),
        val_samples: Sequence[Sample] = (),
        test_samples: Sequence[Sample] = (),
        predict_samples: Sequence[Sample] = (),
        backbone: str | None = None,
        weights: str | Path | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
    ):
        super().__init__(labels, train_samples, val_samples, test_samples, predict_samples, batch_size, num_workers)
        self.encoding = None  # the file's encoding, when read from one
        # None: not chosen; the model's when fitting starts (``configure``), else DEFAULT_MAX_LENGTH
        self.max_length = int(max_length) if max_length is not None else None
        self.tokenizer = None
        if backbone is not None:
            from automl.backbones import load_tokenizer

            self.tokenizer = load_tokenizer(backbone, weights)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        source: str,
        input_field: str | int | None = None,
        target_field: str | int | None = None,
        val_split: float = 0.2,
        seed: int = 42,
        first_row: int = 2,
        **kwargs,
    ) -> TextClassificationData:
        """Rows of a table; ``first_row`` is the file row number of ``frame``'s first row (errors cite it)."""
        input_field = common.pick_column(frame, input_field, TEXT_COLUMNS, source, "text")
        target_field = common.pick_column(frame, target_field, TARGET_COLUMNS, source, "label")
        texts, names, skipped = [], [], []
        for row, (text, label) in enumerate(zip(frame[input_field], frame[target_field], strict=True), start=first_row):
            label = _cell(label).strip()
            text = _cell(text)
            if label == "" or text.strip() == "":
                what = f"the label in column '{target_field}'" if label == "" else f"the text in column '{input_field}'"
                skipped.append(Finding(f"{source}, row {row}", f"{what} is empty", "skipped"))
                continue
            texts.append(text)
            names.append(label)
        for finding in skipped:
            log.warning("Skipping %s: %s.", finding.where, finding.problem)
        labels = sorted(set(names))
        common.check_labels(labels, source)
        samples = list(zip(texts, common.encode(names, labels), strict=True))
        train_idx, val_idx = common.stratified_split([t for _, t in samples], val_split, seed)
        data = cls(labels, [samples[i] for i in train_idx], [samples[i] for i in val_idx], **kwargs)
        data.skipped, data.encoding = skipped, frame.attrs.get("encoding")
        return data

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        input_field: str | int | None = None,
        target_field: str | int | None = None,
        header: bool = True,
        **kwargs,
    ) -> TextClassificationData:
        """A CSV (or ``.tsv``); the text and label columns are found by name when not given.

        Columns are given by name or 0-based position; ``header=False`` for a file without a header row.
        """
        return cls.from_path(path, input_field, target_field, header, kind="csv", **kwargs)

    @classmethod
    def from_parquet(
        cls, path: str | Path, input_field: str | None = None, target_field: str | None = None, **kwargs
    ) -> TextClassificationData:
        """A Parquet file; the text and label columns are found by name when not given."""
        return cls.from_path(path, input_field, target_field, kind="parquet", **kwargs)

    @classmethod
    def from_jsonl(
        cls, path: str | Path, input_field: str | None = None, target_field: str | None = None, **kwargs
    ) -> TextClassificationData:
        """One JSON object per line."""
        return cls.from_path(path, input_field, target_field, kind="jsonl", **kwargs)

    @classmethod
    def from_folders(
        cls, train_folder: str | Path, val_split: float = 0.2, seed: int = 42, **kwargs
    ) -> TextClassificationData:
        """``.txt`` files, one folder per class."""
        root = common.existing_path(train_folder)
        texts, names = [], []
        folders = common.class_folders(root)
        for folder in folders:
            files = common.files_in(folder, (".txt",))
            if not files:
                raise DataError(f"The class folder '{folder}' holds no .txt file. Add texts or remove the folder.")
            for file in files:
                texts.append(file.read_text(encoding="utf-8", errors="replace"))
                names.append(folder.name)
        labels = sorted(set(names))
        common.check_labels(labels, f"the folder '{root}'")
        frame = pd.DataFrame({"text": texts, "label": names})
        return cls.from_frame(frame, f"the folder '{root}'", "text", "label", val_split, seed, **kwargs)

    @classmethod
    def from_texts(cls, texts: Sequence[str], labels: Sequence[str], **kwargs) -> TextClassificationData:
        """Texts to predict, with the label names of the trained model."""
        return cls(labels, predict_samples=[(str(t), -1) for t in texts], **kwargs)

    def options(self) -> dict:
        # the tokenizer is not an option: a rebuilt datamodule takes its model's, or its own backbone's
        return {**super().options(), "max_length": self.max_length}

    # ----------------------------------------------------------------- tokenisation
    def configure(self, tokenizer: str | None = None, max_length: int | None = None) -> None:
        """Tokenize with ``tokenizer`` (a folder or hub name) to ``max_length`` (a model's
        ``input_options()``) unless this datamodule was given its own."""
        if self.tokenizer is None and tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if self.max_length is None and max_length:
            self.max_length = int(max_length)

    @property
    def length(self) -> int:
        """The most tokens a text keeps."""
        return self.max_length or DEFAULT_MAX_LENGTH

    def collate(self, batch: Sequence[Sample]):
        if self.tokenizer is None:
            from automl.backbones import DEFAULT_TEXT_BACKBONE, load_tokenizer

            self.tokenizer = load_tokenizer(DEFAULT_TEXT_BACKBONE)
        texts, targets = zip(*batch, strict=True)
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.length, return_tensors="pt"
        )
        return dict(encoded), torch.tensor(targets, dtype=torch.long)

    def preprocessing(self) -> dict:
        return {"kind": "text", "max_length": self.length, "padding": "longest", "truncation": True}

    def make_dataset(self, samples: list, train: bool) -> Dataset:
        return Texts(samples)


def _cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
