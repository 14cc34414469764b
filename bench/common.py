"""Shared pieces: results, timing, the data the benchmarks use."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@dataclass
class Result:
    """One benchmark's figure. A quality benchmark's ``value`` is automl's accuracy on its held-out test
    split minus the best floor's on the same split; ``reference`` holds every floor's; ``details``
    automl's (``automl_accuracy``, ``automl_ci95``: Clopper-Pearson), ``test_size``,
    ``selection_accuracy`` (the validation score that chose automl's model) and how the run went."""

    name: str
    value: float | None  # the ratio or difference
    kind: str  # "ratio" or "difference" or "seconds"
    reference: dict  # what it was compared against, measured in this run
    target: str
    met: bool | None
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def median_of(repeats: int, measure) -> tuple[float, list[float]]:
    values = [measure() for _ in range(repeats)]
    return statistics.median(values), values


class Clock:
    """Seconds between step ``skip`` and the last step (the first steps warm caches up)."""

    def __init__(self, skip: int):
        self.skip = skip
        self.start = None
        self.end = None
        self.steps = 0

    def step_started(self, index: int) -> None:
        if index == self.skip:
            self.start = time.perf_counter()

    def step_ended(self, index: int) -> None:
        if index >= self.skip:
            self.steps = index - self.skip + 1
            self.end = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.steps / (self.end - self.start)


def digits_folder(size: int = 64, limit: int | None = None) -> Path:
    """scikit-learn's digits as a folder-per-class PNG dataset (cached per size for this process)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from make_digits import write_digits

    folder = Path(tempfile.gettempdir()) / f"automl-bench-digits-{size}-{limit}"
    if not folder.exists():
        write_digits(folder, size=size, limit=limit)
    return folder


def ag_news(limit: int | None = None, seed: int = 0):
    """AG News test split as a DataFrame (text = title + description, label = topic), or None."""
    import pandas as pd

    path = SHARED / "ag_news_test.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path, header=None, names=["label", "title", "description"], dtype=str)
    frame["text"] = frame["title"] + ". " + frame["description"].str.replace("\\", " ", regex=False)
    frame = frame[["text", "label"]]
    if limit is not None and limit < len(frame):
        frame = frame.groupby("label").sample(limit // frame["label"].nunique(), random_state=seed)
    return frame.reset_index(drop=True)


def clothing_folder(train_per_class: int | None = None, val_per_class: int | None = None) -> Path | None:
    """``../shared/datasets/clothing10`` (``train/`` and ``val/`` class folders), or None when absent.

    With ``*_per_class`` a temporary copy (symbolic links) holding the first files of each class: a
    smoke test of the benchmark, not a figure to report."""
    root = SHARED / "clothing10"
    if not (root / "train").is_dir():
        return None
    if train_per_class is None and val_per_class is None:
        return root
    subset = Path(tempfile.mkdtemp(prefix="automl-bench-clothing-"))
    for split, limit in (("train", train_per_class), ("val", val_per_class)):
        for folder in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            (subset / split / folder.name).mkdir(parents=True)
            for file in sorted(folder.iterdir())[:limit]:
                (subset / split / folder.name / file.name).symlink_to(file)
    return subset


def sentiment_frame(limit: int | None = None, seed: int = 0):
    """``../shared/datasets/uci_sentiment_sentences.csv`` (``text,label``) as a DataFrame of text, or None
    when absent; with ``limit`` a stratified sample of that many rows (a smoke test)."""
    import pandas as pd

    path = SHARED / "uci_sentiment_sentences.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)[["text", "label"]]
    if limit is not None and limit < len(frame):
        frame = frame.groupby("label").sample(limit // frame["label"].nunique(), random_state=seed)
    return frame.reset_index(drop=True)
