"""The three roles of the labelled data: *train* fits, *val* selects, *test* only judges.

``hold_out(datamodule, ...)`` gives a datamodule its test split, from, in order: a ``test/`` folder
(already read by ``from_folders``), ``test_data`` (any input ``read_labelled`` reads), or a seeded,
stratified share carved from the training examples. Every split automl carves keeps exact duplicates
on one side: a carved test split takes whole groups of identical inputs, and a validation split
automl carved itself gives back to training the examples that have a copy there. Where the user's
own splits leak, ``HoldOut.leaked`` names the test examples that have a copy in the training data.

>>> held = hold_out(datamodule, test_split=0.15, val_split=0.2, seed=42)
>>> held.source, held.size, held.kept_in_training
('carved', 30, [])
"""

from __future__ import annotations

import functools
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from automl.errors import DataError

FOLDER, TEST_DATA, CARVED, NONE = "test folder", "test data", "carved", "none"
#: a class keeps at least this many training examples when a test split is carved from it
MIN_TRAIN_PER_CLASS = 2


@dataclass
class HoldOut:
    """Where the test split came from and what a reader of the verdict should know about it."""

    source: str  # FOLDER, TEST_DATA, CARVED or NONE (judged on the validation split)
    size: int = 0
    kept_in_training: list[str] = field(default_factory=list)  # classes too small to give a test example
    leaked: list[str] = field(default_factory=list)  # test examples with an exact copy in train or val
    returned_to_training: int = 0  # carved-validation copies of training examples, moved to training
    skipped: list[list[str]] = field(default_factory=list)  # [where, why]: test inputs the reader left out

    def line(self) -> str:
        if self.source == NONE:
            text = "no test split: the verdict is given on the validation split that chose the model"
        else:
            text = f"test split: {self.size} examples ({self.source})"
        if self.returned_to_training:
            n = self.returned_to_training
            text += f"; {n} validation example{' had' if n == 1 else 's had'} an exact copy in training: moved there"
        if self.kept_in_training:
            text += f"; {', '.join(self.kept_in_training)} too small to give one, kept for training"
        if self.leaked:
            text += f"; {len(self.leaked)} have an exact copy in the training data"
        if self.skipped:
            text += f"; {len(self.skipped)} unreadable, left out"
        return text

    def to_json(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def content_key(item) -> str:
    """What makes two inputs the same example: an image file's bytes, a text's characters."""
    if isinstance(item, Path):
        return file_digest(item)
    return "text:" + str(item).strip()


def file_digest(path: Path) -> str:
    """The digest of a file's bytes, read once per process while the file is unchanged (the data
    doctor's duplicate groups and the test split both need it)."""
    stat = Path(path).stat()
    return _digest(Path(path), stat.st_mtime_ns, stat.st_size)


@functools.cache
def _digest(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hold_out(
    datamodule,
    test_split: float,
    val_split: float,
    seed: int,
    test_data: str | Path | None = None,
    val_carved: bool = True,
    read_test=None,
) -> HoldOut:
    """Give ``datamodule`` its test split (in place) and say where it came from.

    ``val_carved``: the validation split was carved from the same data by automl (not a user's
    ``val/`` folder), so the test share of the training examples is ``test_split / (1 - val_split)``
    and the validation split may be given duplicates back. ``read_test(path)`` reads ``test_data``
    as ``(samples, skipped)`` in the datamodule's label indices."""
    keys = {}

    def key(item):
        if item not in keys:
            keys[item] = content_key(item)
        return keys[item]

    returned = _return_copies(datamodule, key) if val_carved else 0
    skipped: list = []
    if datamodule.test_samples:
        source = FOLDER
    elif test_data is not None:
        source = TEST_DATA
        datamodule.test_samples, skipped = read_test(test_data)
        if not datamodule.test_samples:
            raise DataError(f"The test data '{test_data}' holds no readable labelled example.")
    elif test_split > 0:
        share = test_split / (1.0 - val_split) if val_carved else test_split
        train, test, small = carve(datamodule.train_samples, share, seed, key, datamodule.labels)
        datamodule.train_samples, datamodule.test_samples = train, test
        held = HoldOut(CARVED, len(test), small, [], returned)
        _check_training(datamodule)
        return held
    else:
        return HoldOut(NONE, 0, [], [], returned)
    seen = {key(item) for item, _ in datamodule.train_samples + datamodule.val_samples}
    leaked = [str(item) for item, _ in datamodule.test_samples if key(item) in seen]
    return HoldOut(source, len(datamodule.test_samples), [], leaked, returned, [list(s) for s in skipped])


def carve(samples: list, share: float, seed: int, key, labels) -> tuple[list, list, list[str]]:
    """(train, test, classes kept whole): a seeded, stratified ``share`` of ``samples`` for the test
    split, taken as whole groups of identical inputs; every class keeps at least
    ``MIN_TRAIN_PER_CLASS`` training examples, and a class too small for that gives none."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, dict[str, list[int]]] = defaultdict(dict)
    for index, (item, target) in enumerate(samples):
        by_class[target].setdefault(key(item), []).append(index)
    test: set[int] = set()
    small = []
    for target in sorted(by_class):
        groups = list(by_class[target].values())
        count = sum(len(g) for g in groups)
        wanted = max(1, int(round(count * share)))
        wanted = min(wanted, count - MIN_TRAIN_PER_CLASS)
        if wanted < 1 or len(groups) < 2:
            small.append(labels[target])
            continue
        taken = 0
        for position in rng.permutation(len(groups)):
            group = groups[position]
            if taken >= wanted or count - taken - len(group) < MIN_TRAIN_PER_CLASS:
                continue
            test.update(group)
            taken += len(group)
    # a group whose copies carry other labels too goes wholly to the side its first copy went to
    test_keys = {key(samples[i][0]) for i in test}
    train = [s for i, s in enumerate(samples) if i not in test and key(s[0]) not in test_keys]
    held = [s for i, s in enumerate(samples) if i in test or key(s[0]) in test_keys]
    return train, held, small


def read_test_data(task: str, path, labels: list[str], **fields) -> tuple[list, list[tuple[str, str]]]:
    """(samples in ``labels``' indices, skipped inputs) of labelled test data; labels the training data
    lacks are an error naming them."""
    from automl.data.labelled import read_labelled

    found = read_labelled(task, path, **fields)
    unknown = sorted(set(found.names) - set(labels))
    if unknown:
        raise DataError(
            f"The test data '{path}' has labels the training data lacks: {', '.join(unknown)} (the model knows "
            f"{', '.join(labels)}). Remove those examples or add them to the training data."
        )
    index = {label: i for i, label in enumerate(labels)}
    samples = [(item, index[name]) for item, name in zip(found.inputs, found.names, strict=True)]
    return samples, list(found.skipped)


def _return_copies(datamodule, key) -> int:
    """Validation examples automl carved that have an exact copy in training go to training: a
    selection split that holds copies of what was trained on selects nothing."""
    trained = {key(item) for item, _ in datamodule.train_samples}
    moved = [s for s in datamodule.val_samples if key(s[0]) in trained]
    if moved:
        datamodule.val_samples = [s for s in datamodule.val_samples if key(s[0]) not in trained]
        datamodule.train_samples = datamodule.train_samples + moved
    return len(moved)


def _check_training(datamodule) -> None:
    counts = np.bincount([t for _, t in datamodule.train_samples], minlength=len(datamodule.labels))
    empty = [label for label, n in zip(datamodule.labels, counts, strict=True) if n == 0]
    if empty:
        raise DataError(
            f"The test split would leave no training example of {', '.join(empty)} (training counts: "
            + ", ".join(f"{label} {n}" for label, n in zip(datamodule.labels, counts, strict=True))
            + "). Lower --test-split or add examples."
        )


def write_splits(path: Path, datamodule) -> None:
    """``splits.csv``: which example went where (id: the image file or the text; its label; split)."""
    import pandas as pd

    rows = [
        (str(item), datamodule.labels[target], split)
        for split, samples in (
            ("train", datamodule.train_samples),
            ("val", datamodule.val_samples),
            ("test", datamodule.test_samples),
        )
        for item, target in samples
    ]
    frame = pd.DataFrame(rows, columns=["id", "label", "split"])
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
