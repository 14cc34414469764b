"""Helpers shared by the image and text data modules: scanning folders, labels, seeded splits."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Dataset

from automl.errors import DataError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
VAL_ALIASES = ("val", "valid", "validation")


def is_hidden(path: Path) -> bool:
    """``.DS_Store``, ``.ipynb_checkpoints``, ``__MACOSX`` and friends are never data."""
    return path.name.startswith(".") or path.name.startswith("__")


def existing_path(path: str | Path, what: str = "data path") -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"The {what} '{path}' does not exist. Check the path (it is resolved from '{Path.cwd()}').")
    return path


def class_folders(root: Path) -> list[Path]:
    """Sub-folders of ``root`` that are classes, sorted by name; hidden ones skipped."""
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder. Pass a folder holding one sub-folder per class.")
    return sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p))


def detect_splits(root: Path) -> dict[str, Path]:
    """``{"train": ..., "val": ..., "test": ...}`` when ``root`` holds split folders, else ``{}``."""
    children = {p.name.lower(): p for p in class_folders(root)}
    if "train" not in children:
        return {}
    splits = {"train": children["train"]}
    for alias in VAL_ALIASES:
        if alias in children:
            splits["val"] = children[alias]
            break
    if "test" in children:
        splits["test"] = children["test"]
    return splits


def files_in(folder: Path, suffixes: Sequence[str] | None) -> list[Path]:
    """Files under ``folder`` (recursively) with one of ``suffixes`` (None: any), sorted; hidden paths skipped."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(is_hidden(Path(part)) for part in relative.parts):
            continue
        if path.is_file() and (suffixes is None or path.suffix.lower() in suffixes):
            found.append(path)
    return found


def check_labels(labels: Sequence[str], source: str) -> None:
    if len(labels) < 2:
        found = f"only one class ('{labels[0]}')" if labels else "no class"
        raise DataError(
            f"Found {found} in {source}; classification needs at least two. Add a folder (or label value) per class."
        )


def stratified_split(targets: Sequence[int], val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded per-class split of indices into (train, val).

    Every class with at least two examples keeps at least one in each part, so the validation
    metrics see every class that can be seen.
    """
    if not 0.0 < val_split < 1.0:
        raise DataError(f"val_split must be between 0 and 1 (exclusive), got {val_split}.")
    rng = np.random.default_rng(seed)
    classes = np.asarray(targets)
    train: list[int] = []
    val: list[int] = []
    for cls in np.unique(classes):
        idx = np.flatnonzero(classes == cls)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_split))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return sorted(train), sorted(val)


def encode(values: Sequence[str], labels: Sequence[str]) -> list[int]:
    index = {label: i for i, label in enumerate(labels)}
    return [index[v] for v in values]


def read_text(path: Path) -> tuple[str, str]:
    """(text, encoding): UTF-8 (a byte-order mark is dropped), else Latin-1 with a warning."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        log.warning("'%s' is not UTF-8; read as Latin-1. Check accented characters.", path)
        return data.decode("latin-1"), "latin-1"


def read_csv(path: Path, header: bool = True) -> pd.DataFrame:
    """Every cell as text. Without a header row the columns are named by position: "0", "1", ...
    The encoding it was read with is in ``frame.attrs["encoding"]``."""
    import io

    text, encoding = read_text(path)
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=sep, header=0 if header else None)
    frame.columns = [str(c) for c in frame.columns]
    frame.attrs["encoding"] = encoding
    return frame


#: the files that mark a Hugging Face ``datasets`` folder (``Dataset.save_to_disk``)
HF_DATASET_FILES = ("dataset_info.json", "dataset_dict.json")


def is_hf_dataset(path: Path) -> bool:
    """A folder written by ``datasets.Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``)."""
    return path.is_dir() and any((path / name).is_file() for name in HF_DATASET_FILES)


#: what ``read_table(kind=...)`` reads a file as, whatever its suffix; and what errors call it
TABLE_KINDS = {"csv": (".csv", ".tsv"), "parquet": (".parquet",), "jsonl": (".jsonl", ".ndjson", ".json")}
TABLE_NAMES = {"csv": "CSV file", "parquet": "Parquet file", "jsonl": "JSONL file", None: "data path"}
#: every file type ``read_table`` reads
TABLE_SUFFIXES = tuple(suffix for suffixes in TABLE_KINDS.values() for suffix in suffixes)


def read_table(path: Path, header: bool = True, kind: str | None = None) -> tuple[pd.DataFrame, str, int]:
    """(frame, source, first_row) for a CSV/TSV, Parquet, JSONL file or a Hugging Face ``datasets``
    folder: the rows of a table, how errors name it, and the row number its first row has there.
    ``kind`` ("csv", "parquet", "jsonl") reads the file as that, whatever its suffix."""
    path = existing_path(path, TABLE_NAMES[kind])
    suffix = TABLE_KINDS[kind][0] if kind else path.suffix.lower()
    if kind is None and is_hf_dataset(path):
        return _read_hf_dataset(path), f"the datasets folder '{path}'", 1
    if suffix in TABLE_KINDS["csv"]:
        return read_csv(path, header), f"the CSV '{path}'", 2 if header else 1
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises its own types for a file that is not Parquet
            raise DataError(f"Cannot read the Parquet file '{path}': {exc}.") from exc
        frame.columns = [str(c) for c in frame.columns]
        return frame, f"the Parquet file '{path}'", 1
    if suffix in TABLE_KINDS["jsonl"]:
        return read_jsonl(path), f"the JSONL file '{path}'", 1
    raise DataError(
        f"Cannot read '{path}': use a CSV/TSV, Parquet or JSONL file, a folder saved by "
        "datasets.Dataset.save_to_disk, or a folder of class folders."
    )


def read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line; the encoding it was read with is in ``frame.attrs["encoding"]``."""
    import json

    records = []
    text, encoding = read_text(path)
    for row, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {row}: not valid JSON ({exc.msg}).") from exc
    frame = pd.DataFrame.from_records(records)
    frame.columns = [str(c) for c in frame.columns]
    frame.attrs["encoding"] = encoding
    return frame


def _read_hf_dataset(path: Path) -> pd.DataFrame:
    """A saved ``Dataset`` (or the ``train`` split of a ``DatasetDict``) as a frame; ``ClassLabel``
    columns hold their names, not their integer codes."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"'{path}' is a folder saved by the Hugging Face datasets library; reading it needs that library: "
            "pip install 'automl[hf]' (or pip install datasets)."
        ) from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(
                f"The datasets folder '{path}' has the splits {', '.join(loaded)} but no 'train' split to learn from."
            )
        if len(loaded) > 1:
            log.warning(
                "Reading the 'train' split of '%s'; its other splits (%s) are not used.",
                path,
                ", ".join(k for k in loaded if k != "train"),
            )
        loaded = loaded["train"]
    frame = loaded.to_pandas()
    for name, feature in loaded.features.items():
        if isinstance(feature, datasets.ClassLabel):
            frame[name] = [feature.int2str(int(v)) if v is not None and v >= 0 else "" for v in frame[name]]
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _shown(columns: Sequence[str]) -> str:
    return ", ".join(c if len(c) <= 40 else c[:37] + "..." for c in columns) or "(none)"


def pick_column(frame: pd.DataFrame, given: str | int | None, candidates: Sequence[str], source: str, what: str) -> str:
    """The column holding ``what``: ``given`` (a name or a 0-based position), else the first candidate name."""
    columns = [str(c) for c in frame.columns]
    if given is not None:
        given = str(given)
        if given in columns:
            return given
        if given.isdigit() and int(given) < len(columns):
            return columns[int(given)]
        raise DataError(f"There is no column '{given}' in {source}. Its columns are: {_shown(columns)}.")
    lowered = {c.lower().strip(): c for c in columns}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    raise DataError(
        f"Cannot find the {what} column in {source}. Its columns are: {_shown(columns)}. "
        f"Looked for: {', '.join(candidates)}. Name it (input_field=/target_field=, --input-field/--target-field) "
        "by name or 0-based position; if the file has no header row, also pass header=False (--no-header)."
    )


class ClassificationDataModule(pl.LightningDataModule):
    """Labelled train/val/test splits and unlabelled prediction inputs, served in batches.

    Subclasses say how a split's samples become a ``Dataset`` (``make_dataset``) and, if needed, how
    a batch is put together (``collate``).
    """

    collate: Callable | None = None

    def __init__(
        self,
        labels,
        train_samples=(),
        val_samples=(),
        test_samples=(),
        predict_samples=(),
        batch_size: int = 32,
        num_workers: int = 0,
    ):
        super().__init__()
        self.labels = [str(label) for label in labels]
        self.train_samples = list(train_samples)
        self.val_samples = list(val_samples)
        self.test_samples = list(test_samples)
        self.predict_samples = list(predict_samples)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        # the validation split was carved from the same data (not a user's val/ folder): a test split
        # is carved in proportion, and copies of training examples may be given back to training
        self.val_carved = True
        self.skipped: list = []  # inputs the reader left out (Findings), for the data doctor

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def options(self) -> dict:
        """The constructor arguments that rebuild this datamodule (subclasses add theirs)."""
        return {
            "labels": self.labels,
            "train_samples": self.train_samples,
            "val_samples": self.val_samples,
            "test_samples": self.test_samples,
            "predict_samples": self.predict_samples,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
        }

    def with_options(self, **changes):
        """The same samples served differently (a trial's batch size, image size, max length...)."""
        unknown = set(changes) - set(self.options())
        if unknown:
            raise TypeError(f"Unknown datamodule options: {', '.join(sorted(unknown))}")
        return type(self)(**{**self.options(), **changes})

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_path(
        cls,
        path: str | Path,
        input_field: str | int | None = None,
        target_field: str | int | None = None,
        header: bool = True,
        kind: str | None = None,
        **kwargs,
    ):
        """Whatever ``path`` holds: a folder of class folders (``from_folders``), or a table
        (``from_frame``): a CSV/TSV, Parquet or JSONL file (``kind`` forces which), or a folder saved by
        ``datasets.Dataset.save_to_disk``. Columns are given by name or 0-based position."""
        path = existing_path(path, TABLE_NAMES[kind])
        if kind is None and path.is_dir() and not is_hf_dataset(path):
            return cls.from_folders(path, **kwargs)
        frame, source, first_row = read_table(path, header, kind)
        return cls.from_frame(frame, source, input_field, target_field, first_row=first_row, **kwargs)

    @classmethod
    def from_folders(cls, train_folder: str | Path, *args, **kwargs) -> ClassificationDataModule:
        """A folder of class folders (each kind of data reads its own files)."""
        raise NotImplementedError

    @classmethod
    def from_frame(cls, frame, source: str, *args, **kwargs) -> ClassificationDataModule:
        """A table's rows (each kind of data reads its own column)."""
        raise NotImplementedError

    def make_dataset(self, samples: list, train: bool) -> Dataset:
        raise NotImplementedError

    def _loader(self, samples: list, split: str) -> DataLoader:
        if not samples:
            raise DataError(f"There is no {split} data in this datamodule.")
        train = split == "training"
        # each process of a distributed fit gets its share of the samples
        share = -(-len(samples) // (self.trainer.world_size if self.trainer is not None else 1))
        return DataLoader(
            self.make_dataset(samples, train),
            batch_size=self.batch_size,
            shuffle=train,
            # a last training batch of one sample breaks BatchNorm; dropping it costs < 1 batch an epoch
            drop_last=train and share > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_samples, "training")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_samples, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_samples, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_samples, "prediction")
