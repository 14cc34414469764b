"""The data doctor: scan a dataset before any training and say what is wrong with it.

``automl inspect --task ... --data PATH`` prints it; every ``automl run`` saves it as
``inspection.json``. Nothing on disk is modified: bad files are listed and skipped, images in modes
that need care are listed with how they are converted, and the run stops only when more than
``max_bad_share`` of the examples are unusable.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from automl.data import common
from automl.data.files import Finding, check_image
from automl.errors import DataError

__all__ = ["Finding", "Inspection", "check_image", "inspect_images", "inspect_texts"]

log = logging.getLogger(__name__)

MIN_PER_CLASS = 5
MAX_BAD_SHARE = 0.2
IMBALANCE_RATIO = 3.0


@dataclass
class Inspection:
    kind: str
    labels: list[str]
    class_counts: dict[str, int]
    train_size: int
    val_size: int
    skipped: list[Finding] = field(default_factory=list)
    converted: list[Finding] = field(default_factory=list)
    flagged: list[Finding] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)  # groups of identical files
    leaks: list[list[str]] = field(default_factory=list)  # duplicate groups with copies in train and val
    small_classes: list[str] = field(default_factory=list)
    imbalance_ratio: float = 1.0
    class_weights: dict[str, float] | None = None
    encoding: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{len(self.labels)} classes", f"{self.train_size} + {self.val_size} examples"]
        for name, items in (
            ("skipped", self.skipped),
            ("converted", self.converted),
            ("flagged", self.flagged),
            ("duplicate groups", self.duplicates),
            ("train/val leaks", self.leaks),
        ):
            if items:
                parts.append(f"{len(items)} {name}")
        if self.imbalance_ratio >= IMBALANCE_RATIO:
            parts.append(f"imbalance {self.imbalance_ratio:.1f}x")
        return ", ".join(parts)


# --------------------------------------------------------------------------- images
def _digest(path: Path) -> str:
    from automl.data.holdout import file_digest

    return file_digest(path)


def inspect_images(
    path: str | Path, val_split: float = 0.2, seed: int = 42, max_bad_share: float = MAX_BAD_SHARE, datamodule=None
) -> Inspection:
    """Scan a folder-per-class (or CSV) image dataset; ``datamodule`` is the split it will be trained on."""
    from automl.data.image import ImageClassificationData

    path = common.existing_path(path)
    skipped: list = []
    converted: list = []
    if path.is_dir() and not common.is_hf_dataset(path):
        for file in common.files_in(path, None):
            usable, findings = check_image(file)
            (converted if usable else skipped).extend(findings)
    if datamodule is None:
        datamodule = ImageClassificationData.from_path(path, val_split=val_split, seed=seed)
    known = {finding.where for finding in skipped}
    # what the reader left out: files without an image extension (skipped), hidden files (flagged)
    skipped.extend(f for f in datamodule.skipped if f.action == "skipped" and f.where not in known)
    hidden = [f for f in datamodule.skipped if f.action == "flagged"]
    samples = datamodule.train_samples + datamodule.val_samples
    if not path.is_dir() or common.is_hf_dataset(path):
        for file, _ in samples:
            converted.extend(check_image(file)[1])
    groups = defaultdict(list)
    for file, _ in samples:
        groups[_digest(file)].append(file)
    val = {file for file, _ in datamodule.val_samples}
    duplicates = [sorted(map(str, files)) for files in groups.values() if len(files) > 1]
    leaks = [group for group in duplicates if {f in val for f in map(Path, group)} == {True, False}]
    result = _summarise("image", datamodule, skipped, converted, hidden, duplicates, leaks)
    _check_share(result, len(samples), max_bad_share, path)
    return result


# --------------------------------------------------------------------------- texts
def inspect_texts(
    path: str | Path,
    val_split: float = 0.2,
    seed: int = 42,
    max_length: int = 128,
    max_bad_share: float = MAX_BAD_SHARE,
    datamodule=None,
    **fields,
) -> Inspection:
    """Scan a text dataset: its encoding, empty rows, missing labels, conflicting duplicates, long texts."""
    from automl.data.text import TextClassificationData

    path = common.existing_path(path)
    if datamodule is None:
        datamodule = TextClassificationData.from_path(path, val_split=val_split, seed=seed, **fields)
    flagged = []
    labels_of = defaultdict(set)
    samples = datamodule.train_samples + datamodule.val_samples
    for text, target in samples:
        labels_of[text.strip()].add(datamodule.labels[target])
    for text, labels in labels_of.items():
        if len(labels) > 1:
            flagged.append(
                Finding(repr(text[:80]), f"the same text has conflicting labels: {sorted(labels)}", "flagged")
            )
    long = sum(1 for text, _ in samples if len(text.split()) > max_length)
    if long:
        flagged.append(Finding(f"{long} texts", f"longer than max_length={max_length} tokens: truncated", "flagged"))
    counts = Counter(text.strip() for text, _ in samples)
    duplicates = [[text[:80]] * n for text, n in counts.items() if n > 1]
    result = _summarise("text", datamodule, list(datamodule.skipped), [], flagged, duplicates, [])
    result.encoding = datamodule.encoding
    if datamodule.encoding and datamodule.encoding != "utf-8":
        result.flagged.insert(0, Finding(str(path), f"read as {datamodule.encoding}", "flagged"))
    _check_share(result, len(samples), max_bad_share, path)
    return result


# --------------------------------------------------------------------------- shared
def _summarise(kind, datamodule, skipped, converted, flagged, duplicates, leaks) -> Inspection:
    samples = datamodule.train_samples + datamodule.val_samples
    counts = Counter(datamodule.labels[t] for _, t in samples)
    class_counts = {label: counts.get(label, 0) for label in datamodule.labels}
    smallest, largest = min(class_counts.values()), max(class_counts.values())
    ratio = largest / max(smallest, 1)
    weights = None
    if ratio >= IMBALANCE_RATIO:
        total = sum(class_counts.values())
        weights = {k: round(total / (len(class_counts) * max(v, 1)), 3) for k, v in class_counts.items()}
    for finding in skipped:
        log.warning("Skipping %s: %s.", finding.where, finding.problem)
    converted = _grouped(converted)
    return Inspection(
        kind,
        list(datamodule.labels),
        class_counts,
        len(datamodule.train_samples),
        len(datamodule.val_samples),
        skipped,
        converted,
        flagged,
        duplicates,
        leaks,
        [k for k, v in class_counts.items() if v < MIN_PER_CLASS],
        round(ratio, 2),
        weights,
    )


def _check_share(result: Inspection, usable: int, max_bad_share: float, path: Path) -> None:
    bad = len(result.skipped)
    if bad and bad / (bad + usable) > max_bad_share:
        raise DataError(
            f"{bad} of {bad + usable} examples in '{path}' are unusable (more than {max_bad_share:.0%}), e.g. "
            + "; ".join(f"{f.where}: {f.problem}" for f in result.skipped[:3])
            + ". Fix or remove them (`automl inspect` lists them all), or allow more with --max-bad-share."
        )


def _grouped(findings: list[Finding], keep: int = 3) -> list[Finding]:
    """Many files converted the same way (a greyscale dataset) read better as one line."""
    by_problem = defaultdict(list)
    for finding in findings:
        by_problem[finding.problem].append(finding)
    grouped = []
    for problem, items in by_problem.items():
        if len(items) <= keep:
            grouped.extend(items)
        else:
            grouped.append(Finding(f"{len(items)} files (e.g. {items[0].where})", problem, items[0].action))
    return grouped
