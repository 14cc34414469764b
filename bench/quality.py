"""Quality at a budget, judged on data nobody chose anything on.

Each benchmark first fixes a **test split** that is given to nobody for fitting or choosing: clothing10's
given ``val/`` folder (341 photos; everything gets only ``train/``), otherwise a seeded (seed 42),
stratified 20% of the examples carved here, exact duplicate inputs (identical texts, byte-identical
files) grouped first so that no input is on both sides (``held_out_split``). The rest is the
**development** data.

``automl run`` gets the development data only (``--data``) with a fixed ``--time-budget`` and an
unreachable target (so it spends the budget, escalation included), and ``--test-data`` pointing at the
test split, which it scores its final model on once and never fits or selects on. Its held-out figure
is ``test_accuracy`` of the run's ``metrics.json``; ``val_accuracy`` there, the score of the split
inside the development data that picked its best trial (optimistic by construction), is reported beside
it as ``selection_accuracy``, never in its place.

The floors a careful data scientist tries first, each fitted on the development data (all of it: automl
splits the same data into its own training and validation parts) and scored once on the same test
split: the majority class; a logistic regression (C chosen by stratified k-fold cross-validation on the
development data, then refitted on all of it) on frozen features of every packaged backbone, or on
TF-IDF; and a hand-written fine-tune loop (plain PyTorch, no Lightning) time-boxed to the run's
budget, stopped by the clock or its epoch count rather than early on a score, so it keeps no validation
share of its own.

A result is automl's held-out accuracy minus the best floor's (target > 0: more test examples right),
with a 95% Clopper-Pearson interval for automl's held-out accuracy, the test split's size and the
selection accuracy. ``<benchmark>(quick, automl=False)`` builds the split and scores the floors only.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import SHARED, Result, ag_news, clothing_folder, digits_folder, sentiment_frame

SEED = 42
#: the share of a benchmark's data held out as its test split (clothing10 has its own)
TEST_SHARE = 0.2
#: the logistic regressions' C grid, searched by stratified cross-validation on the development data
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))
FOLDS = 5
#: ``automl run`` must end within the budget plus this share, not counting its final report
BUDGET_SLACK = 0.05
TARGET = "> 0 (automl beats the best floor on the test split)"


# --------------------------------------------------------------------------- the test split
def held_out_split(
    keys: Sequence[Hashable], targets: Sequence[int], share: float = TEST_SHARE, seed: int = SEED
) -> tuple[list[int], list[int]]:
    """Indices (development, test) of examples: a seeded, stratified ``share`` for test.

    Examples with equal ``keys`` (the same text, the same file bytes) are one group and stay on one
    side; groups are split per class (a group's class: its most common target, the first seen on a tie)
    by automl's own seeded per-class split of indices."""
    from automl.data.common import stratified_split

    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    members = list(groups.values())  # in order of first appearance
    group_targets = [Counter(targets[i] for i in group).most_common(1)[0][0] for group in members]
    development, test = stratified_split(group_targets, share, seed)
    return sorted(i for g in development for i in members[g]), sorted(i for g in test for i in members[g])


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class HeldOut:
    """A benchmark's data, split once: ``development`` (what automl and every floor fit and choose on)
    and ``test`` (what each is scored on, once). Samples are (input, target): an image's path or a text,
    and the index of its label in ``labels`` (sorted, as automl encodes them)."""

    labels: list[str]
    development: list[tuple]
    test: list[tuple]
    development_data: Path  # what ``automl run --data`` gets
    test_data: Path  # what ``--test-data`` gets
    folder: Path  # this benchmark's temporary folder: the written parts, the run's output
    facts: dict = field(default_factory=dict)

    @property
    def development_targets(self) -> list[int]:
        return [t for _, t in self.development]

    @property
    def test_targets(self) -> list[int]:
        return [t for _, t in self.test]

    def describe(self) -> dict:
        return {
            "development_size": len(self.development),
            "test_size": len(self.test),
            "development_data": str(self.development_data),
            "test_data": str(self.test_data),
            **self.facts,
        }

    def remove(self) -> None:
        """Delete this benchmark's temporary folder (the written parts and any run in it)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _carve(labels: list[str], samples: list[tuple], keys: list, column: str, prefix: str) -> HeldOut:
    """``held_out_split`` of ``samples``, both parts written as ``development.csv`` and ``test.csv``
    (``column``, ``label``: the label's name) in a new temporary folder."""
    import pandas as pd

    development, test = held_out_split(keys, [t for _, t in samples])
    folder = Path(tempfile.mkdtemp(prefix=f"automl-bench-{prefix}-"))
    paths = []
    for name, indices in (("development", development), ("test", test)):
        rows = [(str(samples[i][0]), labels[samples[i][1]]) for i in indices]
        path = folder / f"{name}.csv"
        pd.DataFrame(rows, columns=[column, "label"]).to_csv(path, index=False)
        paths.append(path)
    repeated = sum(n for n in Counter(keys).values() if n > 1)
    return HeldOut(
        labels,
        [samples[i] for i in development],
        [samples[i] for i in test],
        *paths,
        folder,
        {
            "split": f"seeded (seed {SEED}), stratified {TEST_SHARE:.0%} held out by the bench; "
            "exact duplicate inputs grouped on one side",
            "examples_with_an_exact_duplicate": repeated,
        },
    )


def image_folder_split(folder: Path, prefix: str = "images") -> HeldOut:
    """A folder of class folders: ``held_out_split`` over byte-identical files, both parts written as
    CSVs of absolute image paths and labels (automl joins its ``root`` with an absolute path as is)."""
    from automl.data import ImageClassificationData

    data = ImageClassificationData.from_folders(folder, val_split=TEST_SHARE, seed=SEED)  # readable files
    samples = sorted((Path(p).resolve(), t) for p, t in [*data.train_samples, *data.val_samples])
    return _carve(data.labels, samples, [file_digest(p) for p, _ in samples], "image", prefix)


def text_frame_split(frame, prefix: str = "text") -> HeldOut:
    """A DataFrame of ``text``, ``label``: ``held_out_split`` over identical texts, both parts as CSVs."""
    texts, names = [str(t) for t in frame["text"]], [str(n) for n in frame["label"]]
    labels = sorted(set(names))
    index = {label: i for i, label in enumerate(labels)}
    samples = [(text, index[name]) for text, name in zip(texts, names, strict=True)]
    return _carve(labels, samples, texts, "text", prefix)


def given_split(root: Path) -> HeldOut:
    """``root/train`` (development) and ``root/val`` (test) as given; nothing is written. How many test
    files are byte-identical to a development file is counted, not changed."""
    from automl.data import ImageClassificationData

    data = ImageClassificationData.from_folders(root / "train", root / "val")
    development = [(Path(p), t) for p, t in data.train_samples]
    test = [(Path(p), t) for p, t in data.val_samples]
    seen = {file_digest(p) for p, _ in development}
    return HeldOut(
        data.labels,
        development,
        test,
        root / "train",
        root / "val",
        Path(tempfile.mkdtemp(prefix="automl-bench-given-")),
        {
            "split": "the dataset's own: train/ for development, val/ for test",
            "test_files_identical_to_a_development_file": sum(file_digest(p) in seen for p, _ in test),
        },
    )


# --------------------------------------------------------------------------- floors
def _majority(development_targets, test_targets) -> dict:
    majority = Counter(development_targets).most_common(1)[0][0]
    return {"accuracy": float(np.mean(np.asarray(test_targets) == majority)), "seconds": 0.0}


def _cv_logistic(dev_x, dev_y, test_x, test_y, prepare) -> dict:
    """A logistic regression after ``prepare`` (a StandardScaler, a TfidfVectorizer, fitted on the
    development data), its C picked by stratified k-fold cross-validation on the development data
    (warm-started along the C grid), refitted on all of it and scored once on the test split."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    started = time.perf_counter()
    folds = min(FOLDS, min(Counter(dev_y).values()))
    dev_x = prepare.fit_transform(dev_x)
    logistic = LogisticRegressionCV(
        Cs=list(C_GRID),
        l1_ratios=(0.0,),
        cv=StratifiedKFold(folds, shuffle=True, random_state=SEED),
        scoring="accuracy",
        max_iter=2000,
        n_jobs=1,
        use_legacy_attributes=False,
    ).fit(dev_x, list(dev_y))
    chosen = list(C_GRID).index(logistic.C_)
    return {
        "accuracy": float(logistic.score(prepare.transform(test_x), list(test_y))),
        "C": logistic.C_,
        "cv_accuracy": round(float(np.asarray(logistic.scores_).reshape(folds, -1)[:, chosen].mean()), 4),
        "folds": folds,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _standardised_logistic(dev_x, dev_y, test_x, test_y) -> dict:
    from sklearn.preprocessing import StandardScaler

    return _cv_logistic(dev_x, dev_y, test_x, test_y, StandardScaler())


def _tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)


def packaged_image_backbones() -> list[tuple[str, int]]:
    """(name, input size) of every image backbone whose weights ship in an installed package, at its
    native input size (``native_image_size``), else 224."""
    from automl import backbones as bb

    found = []
    for spec in bb.REGISTRY.values():
        if spec.task == bb.IMAGE and spec.packaged is not None and spec.packaged() is not None:
            found.append((spec.name, int(bb.native_image_size(spec.name) or 224)))
    return found


def _image_features(name: str, image_size: int, labels, *splits, batch_size: int = 32) -> list[np.ndarray]:
    """Frozen, pooled features of backbone ``name`` for each list of (path, target) samples, with
    automl's evaluation transform (resize, centre crop, the weights' normalisation)."""
    import torch

    from automl.backbones import create_image_backbone
    from automl.data import ImageClassificationData

    backbone = create_image_backbone(name).model.eval()
    data = ImageClassificationData(
        labels, image_size=image_size, batch_size=batch_size, backbone=name, augment=False, num_workers=0
    )
    features = []
    with torch.inference_mode():
        for samples in splits:
            loader = data.with_options(predict_samples=samples).predict_dataloader()
            features.append(torch.cat([backbone(images) for images, _ in loader]).numpy())
    return features


def _frozen_floor(extract: Callable[[], list], dev_y, test_y, **facts) -> dict:
    """A CV'd logistic regression on standardised frozen features; ``extract()`` returns the development
    data's and the test split's features. Its time includes the extraction's."""
    started = time.perf_counter()
    dev_x, test_x = extract()
    extraction = time.perf_counter() - started
    floor = _standardised_logistic(dev_x, dev_y, test_x, test_y)
    return {
        **floor,
        **facts,
        "features_seconds": round(extraction, 1),
        "seconds": round(extraction + floor["seconds"], 1),
    }


def _image_feature_floors(labels, dev_samples, test_samples, image_size: int | None = None) -> dict:
    """A CV'd logistic regression on the frozen features of every packaged image backbone, at its
    native size or at ``image_size`` (the size the benchmarked run is given)."""
    dev_y = [t for _, t in dev_samples]
    test_y = [t for _, t in test_samples]
    return {
        f"logistic_regression_on_{name}_features": _frozen_floor(
            lambda name=name, size=size: _image_features(name, size, labels, dev_samples, test_samples),
            dev_y,
            test_y,
            image_size=size,
        )
        for name, native in packaged_image_backbones()
        for size in [image_size or native]
    }


def _mean_pool(hidden, attention_mask):
    """Mean over real tokens only: how sentence-transformers models were trained (and automl pools)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def _text_features(name: str, max_length: int, *splits: list[str], batch_size: int = 128) -> list[np.ndarray]:
    """Frozen, mean-pooled sentence embeddings of each list of texts, in batches of similar lengths."""
    import torch

    from automl.backbones import create_text_backbone, load_tokenizer

    tokenizer = load_tokenizer(name)
    built = create_text_backbone(name)
    model = built.model.eval()
    features = []
    with torch.inference_mode():
        for texts in splits:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding
            split = np.empty((len(texts), built.hidden_size), dtype=np.float32)
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                encoded = tokenizer(
                    [texts[i] for i in index], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
                )
                split[index] = _mean_pool(model(**encoded).last_hidden_state, encoded["attention_mask"]).numpy()
            features.append(split)
    return features


def _finetune(model, param_groups: list[dict], batches: Callable[[], Iterable], loss_of, epochs: int, seconds: float):
    """The loop a person writes: AdamW, a short linear warm-up, cosine decay over whichever ends first,
    ``epochs`` passes over ``batches()`` or ``seconds`` of training (checked before every step)."""
    import torch

    optimizer = torch.optim.AdamW(param_groups, weight_decay=0.01)
    base = [group["lr"] for group in optimizer.param_groups]
    per_epoch = len(batches())
    planned = epochs * per_epoch
    warmup = max(1, planned // 20)
    model.train()
    started, step = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in batches():
            done = max(step / planned, (time.perf_counter() - started) / seconds)
            if done >= 1.0:
                break
            factor = min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * done))
            for group, lr in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = lr * factor
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        else:
            continue
        break
    return {
        "steps": step,
        "epochs": round(step / per_epoch, 2),
        "train_seconds": round(time.perf_counter() - started, 1),
    }


def _accuracy(predict, batches: Iterable) -> float:
    """Share of right answers; ``predict(batch)`` returns (logits, targets)."""
    import torch

    right = total = 0
    with torch.inference_mode():
        for batch in batches:
            logits, targets = predict(batch)
            right += int((logits.argmax(dim=1) == targets).sum())
            total += len(targets)
    return right / total


def _image_finetune(labels, dev_samples, test_samples, seconds: float, epochs: int = 10) -> dict:
    """The default packaged backbone + a linear head, fine-tuned end to end with random resized crops
    and flips (automl's training transform), at most ``epochs`` or ``seconds``, on all the development
    data (it stops by the clock and the epoch count, not early on a score, so it keeps no validation
    share of its own); scored once at the end on the test split."""
    import torch
    from torch import nn

    from automl.backbones import DEFAULT_IMAGE_BACKBONE, create_image_backbone
    from automl.data import ImageClassificationData

    packaged = dict(packaged_image_backbones())
    name = DEFAULT_IMAGE_BACKBONE if DEFAULT_IMAGE_BACKBONE in packaged else next(iter(packaged))
    started = time.perf_counter()
    torch.manual_seed(SEED)
    built = create_image_backbone(name)
    model = nn.Sequential(built.model, nn.Linear(built.num_features, len(labels)))
    data = ImageClassificationData(
        labels,
        dev_samples,
        test_samples=test_samples,
        image_size=packaged[name],
        batch_size=32,
        backbone=name,
        augment=True,
    )
    loss = nn.CrossEntropyLoss()

    def loss_of(batch):
        images, targets = batch
        return loss(model(images), targets)

    groups = [{"params": model[0].parameters(), "lr": 3e-4}, {"params": model[1].parameters(), "lr": 3e-3}]
    trained = _finetune(model, groups, data.train_dataloader, loss_of, epochs, seconds)
    model.eval()
    accuracy = _accuracy(lambda batch: (model(batch[0]), batch[1]), data.test_dataloader())
    return {
        "accuracy": accuracy,
        "backbone": name,
        "image_size": packaged[name],
        **trained,
        "time_box_seconds": round(seconds),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _text_finetune(dev_samples, test_samples, n_classes: int, seconds: float, max_length: int, epochs: int = 2):
    """MiniLM + mean pooling + a linear head, fine-tuned end to end with transformers and plain
    PyTorch, at most ``epochs`` or ``seconds``, on all the development data (no early stopping, so no
    validation share of its own); scored once at the end on the test split."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from automl.backbones import DEFAULT_TEXT_BACKBONE, create_text_backbone, load_tokenizer

    started = time.perf_counter()
    torch.manual_seed(SEED)
    tokenizer = load_tokenizer(DEFAULT_TEXT_BACKBONE)
    encoder = create_text_backbone(DEFAULT_TEXT_BACKBONE).model
    head = nn.Linear(encoder.config.hidden_size, n_classes)

    def collate(samples):
        texts, targets = zip(*samples, strict=True)
        encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return encoded, torch.tensor(targets)

    def forward(batch):
        encoded, targets = batch
        return head(_mean_pool(encoder(**encoded).last_hidden_state, encoded["attention_mask"])), targets

    generator = torch.Generator().manual_seed(SEED)
    train = DataLoader(dev_samples, batch_size=32, shuffle=True, collate_fn=collate, generator=generator)
    loss = nn.CrossEntropyLoss()
    model = nn.ModuleList([encoder, head])
    groups = [{"params": encoder.parameters(), "lr": 5e-5}, {"params": head.parameters(), "lr": 1e-3}]
    trained = _finetune(model, groups, lambda: train, lambda batch: loss(*forward(batch)), epochs, seconds)
    model.eval()
    accuracy = _accuracy(forward, DataLoader(test_samples, batch_size=128, collate_fn=collate))
    return {
        "accuracy": accuracy,
        "backbone": DEFAULT_TEXT_BACKBONE,
        **trained,
        "time_box_seconds": round(seconds),
        "seconds": round(time.perf_counter() - started, 1),
    }


def image_floors(split: HeldOut, image_size: int | None = None, finetune_seconds: float | None = None) -> dict:
    """Every image floor, fitted on ``split.development`` and scored on ``split.test``: the majority
    class, a CV'd logistic regression on each packaged backbone's frozen features (at ``image_size``,
    else its native size), and with ``finetune_seconds`` the hand-written fine-tune."""
    floors = {
        "majority_class": _majority(split.development_targets, split.test_targets),
        **_image_feature_floors(split.labels, split.development, split.test, image_size),
    }
    if finetune_seconds is not None:
        floors["hand_written_finetune"] = _image_finetune(split.labels, split.development, split.test, finetune_seconds)
    return floors


def text_floors(split: HeldOut, max_length: int | None = None, finetune_seconds: float | None = None) -> dict:
    """Every text floor, fitted on ``split.development`` and scored on ``split.test``: the majority
    class, TF-IDF (1-2 grams) + a CV'd logistic regression, with ``max_length`` a CV'd logistic
    regression on the default backbone's frozen mean-pooled embeddings, and with ``finetune_seconds``
    (and ``max_length``) the hand-written fine-tune."""
    from automl.backbones import DEFAULT_TEXT_BACKBONE

    dev_texts, dev_y = (list(c) for c in zip(*split.development, strict=True))
    test_texts, test_y = (list(c) for c in zip(*split.test, strict=True))
    floors = {
        "majority_class": _majority(dev_y, test_y),
        "tfidf_logistic_regression": _cv_logistic(dev_texts, dev_y, test_texts, test_y, _tfidf()),
    }
    if max_length is not None:
        floors[f"logistic_regression_on_{DEFAULT_TEXT_BACKBONE}_embeddings"] = _frozen_floor(
            lambda: _text_features(DEFAULT_TEXT_BACKBONE, max_length, dev_texts, test_texts), dev_y, test_y
        )
        if finetune_seconds is not None:
            floors["hand_written_finetune"] = _text_finetune(
                split.development, split.test, len(split.labels), finetune_seconds, max_length
            )
    return floors


# --------------------------------------------------------------------------- automl run
def _automl_run(task: str, split: HeldOut, budget: str, extra: list[str]) -> dict:
    """``automl run`` on ``split``'s development data, judged on its test split (``--test-data``); its
    folder is ``split.folder/run/``. Fails when the run does not report ``test_accuracy``: its
    ``val_accuracy`` chose the best trial and is no held-out figure."""
    output = split.folder / "run"
    automl = Path(sys.executable).parent / "automl"
    # an unreachable target: the run spends its whole budget, escalation included
    command = [
        str(automl),
        "run",
        "--task",
        task,
        "--data",
        str(split.development_data),
        "--test-data",
        str(split.test_data),
        "--target",
        "accuracy>=0.999",
        "--time-budget",
        budget,
        "--trials",
        "100",
        "--output",
        str(output),
        "-q",
        *extra,
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode == 2 and "No such option: --test-data" in done.stderr:
        raise RuntimeError(
            "this automl has no --test-data option, so it cannot be scored on a held-out split "
            f"(the quality benchmarks need it): {done.stderr[-500:]}"
        )
    if done.returncode not in (0, 3, 4):  # met, missed, undecided: each a verdict, not a failure
        raise RuntimeError(f"automl run failed ({done.returncode}): {done.stderr[-2000:]}")
    (metrics_path,) = output.glob("*/metrics.json")
    metrics = json.loads(metrics_path.read_text())
    if metrics.get("test_accuracy") is None:
        raise RuntimeError(
            f"{metrics_path} has no test_accuracy: this automl did not score its final model on "
            "--test-data. Its val_accuracy selected the best trial, so it is not used in its place."
        )
    holdout = metrics.get("holdout") or {}
    if holdout.get("source") not in (None, "test data"):
        raise RuntimeError(f"automl judged on its {holdout['source']} test split, not the bench's --test-data")
    if holdout.get("size") not in (None, len(split.test)):
        raise RuntimeError(
            f"automl judged on {holdout['size']} test examples, the bench gave it {len(split.test)} "
            f"({holdout}): the figures would not be on the same split."
        )
    journal = json.loads((metrics_path.parent / "journal.json").read_text())
    seconds = sum(stage.get("seconds", 0.0) for stage in journal["stages"].values())
    facts = {
        "test_accuracy": float(metrics["test_accuracy"]),
        "selection_accuracy": metrics.get("val_accuracy"),
        "verdict": metrics.get("verdict"),
        "reported_ci95": [metrics.get("ci_low"), metrics.get("ci_high")],
        "reported_test_scores": {k: v for k, v in metrics.items() if k.startswith("test_")},
        "reported_holdout": holdout,
        "tier": metrics.get("tier"),
        # the ensemble stage: kept or not and why; when kept, its best single member on the same test split
        "ensemble": _ensemble_facts(metrics.get("ensemble") or {}),
        "seconds": round(seconds, 1),
        **run_facts(metrics_path.parent, budget, wall),
        "command": " ".join(command[1:]),
        "run_dir": str(metrics_path.parent),
    }
    _slim(output)
    return facts


def _ensemble_facts(ensemble: dict) -> dict:
    if not ensemble:
        return {}
    return {
        "kept": ensemble.get("kept"),
        "why": ensemble.get("why"),
        "weights": {m["name"]: m["weight"] for m in ensemble.get("members", []) if m.get("weight")},
        "candidates_selection_accuracy": {m["name"]: m.get("score") for m in ensemble.get("members", [])},
        "best_single_member_test_accuracy": ensemble.get("single_test_score"),
        "seconds_per_example": {
            "ensemble": ensemble.get("ensemble_seconds_per_example"),
            "best_single": ensemble.get("single_seconds_per_example"),
        },
        "selection_evidence": ensemble.get("scores"),
    }


def _slim(output: Path) -> None:
    """Keep what explains a figure (logs, study CSVs, journal, report), not the weights (checkpoints,
    the logged model's, cached features): a text run's are a gigabyte, and every ``make bench`` leaves one."""
    for path in [*output.glob("**/*.ckpt"), *output.glob("*/features/*.pt")]:
        path.unlink()


def run_facts(run_dir: Path, budget: str, wall_seconds: float) -> dict:
    """What a finished ``automl run`` folder says about its search: finished Flash-tier trials (study.csv
    rows COMPLETE or PRUNED), whether it escalated (entered the Lightning-tier study; how many of its
    trials finished is beside it), and its wall time against the budget (within: at most budget + 5%,
    the final report's stage not counted)."""
    import pandas as pd

    from automl.config import parse_duration

    states = pd.read_csv(run_dir / "study.csv")["state"].value_counts().to_dict()
    journal = json.loads((run_dir / "journal.json").read_text())["stages"]
    lightning = run_dir / "study.lightning.csv"
    budget_seconds = parse_duration(budget)
    report = journal.get("finalise", {}).get("seconds", 0.0)
    ratio = (wall_seconds - report) / budget_seconds
    return {
        "flash_trials_finished": int(states.get("COMPLETE", 0) + states.get("PRUNED", 0)),
        "flash_trial_states": {k: int(v) for k, v in states.items()},
        "escalated": "escalate" in journal,
        "lightning_trials_finished": int(pd.read_csv(lightning)["state"].isin(["COMPLETE", "PRUNED"]).sum())
        if lightning.exists()
        else 0,
        "budget_seconds": budget_seconds,
        "wall_seconds": round(wall_seconds, 1),
        "final_report_seconds": round(report, 1),
        # start-up (imports, stores) and the gaps between stages: the user waits for them too
        "outside_stages_seconds": round(wall_seconds - sum(stage.get("seconds", 0.0) for stage in journal.values()), 1),
        "budget_ratio": round(ratio, 3),
        "within_budget": bool(ratio <= 1.0 + BUDGET_SLACK),
    }


# --------------------------------------------------------------------------- the result
def clopper_pearson(right: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval for an accuracy of ``right`` out of ``total``."""
    from scipy.stats import binomtest

    interval = binomtest(right, total).proportion_ci(confidence, method="exact")
    return float(interval.low), float(interval.high)


def _right(accuracy: float, total: int, who: str) -> int:
    """How many of ``total`` test examples an accuracy stands for; an accuracy that is no count out of
    ``total`` was scored on other examples."""
    right = round(accuracy * total)
    if abs(accuracy * total - right) > max(1e-3, 5e-5 * total):  # float32, or rounded to 4 decimals
        raise RuntimeError(f"{who} {accuracy} is not a count out of the {total} test examples: scored on other data?")
    return right


def _floor_details(split: HeldOut, floors: dict[str, dict]) -> dict:
    total = len(split.test)
    accuracies = {k: floor["accuracy"] for k, floor in floors.items()}
    best = max(accuracies, key=accuracies.get)
    best_right = _right(accuracies[best], total, f"the floor {best}'s accuracy")
    return {
        "best_floor": best,
        "best_floor_accuracy": round(accuracies[best], 4),
        "best_floor_right": best_right,
        "best_floor_ci95": [round(x, 4) for x in clopper_pearson(best_right, total)],
        "floors": {k: {**floor, "accuracy": round(floor["accuracy"], 4)} for k, floor in floors.items()},
    }


def _result(name: str, split: HeldOut, run: dict, floors: dict[str, dict], details: dict) -> Result:
    """automl's held-out accuracy minus the best floor's, on the same test split; a win is more test
    examples right (automl reports a float32 accuracy, so a tie differs by ~1e-8 and is no win)."""
    total = len(split.test)
    accuracies = {k: floor["accuracy"] for k, floor in floors.items()}
    held_out = run["test_accuracy"]
    right = _right(held_out, total, "automl's test_accuracy")
    best = _floor_details(split, floors)
    selection = run["selection_accuracy"]
    return Result(
        name,
        round(held_out - accuracies[best["best_floor"]], 4),
        "difference",
        {f"{k}_accuracy": round(v, 4) for k, v in accuracies.items()},
        TARGET,
        right > best["best_floor_right"],
        {
            "automl_accuracy": round(held_out, 4),
            "automl_right": right,
            "automl_ci95": [round(x, 4) for x in clopper_pearson(right, total)],
            "test_size": total,
            "selection_accuracy": None if selection is None else round(selection, 4),
            "selection_minus_held_out": None if selection is None else round(selection - held_out, 4),
            **best,
            **split.describe(),
            "automl_run": run,
            **details,
        },
    )


def _floors_only(name: str, split: HeldOut, floors: dict[str, dict], details: dict) -> Result:
    """The split and the floors without ``automl run`` (``automl=False``); the split's files are deleted."""
    split.remove()
    return Result(
        name + " (floors only)",
        None,
        "difference",
        {f"{k}_accuracy": round(floor["accuracy"], 4) for k, floor in floors.items()},
        TARGET,
        None,
        {"automl": "not run (automl=False)", **_floor_details(split, floors), **split.describe(), **details},
    )


def _skipped(name: str, why: str) -> Result:
    return Result(name, None, "difference", {}, TARGET, None, {"skipped": why})


# --------------------------------------------------------------------------- the benchmarks
def digits_split() -> HeldOut:
    """scikit-learn's digits (64-pixel PNGs), 20% held out by the bench."""
    return image_folder_split(digits_folder(size=64), "digits")


def digits_quality(quick: bool, automl: bool = True) -> Result:
    """automl on digits (``--image-size 96 --epochs 4``, 75 s with ``--quick``, else 4 minutes) against
    the majority class and a CV'd logistic regression on every packaged backbone's frozen features."""
    budget = "75s" if quick else "4m"
    name = f"quality at {budget}: digits"
    split = digits_split()
    floors = image_floors(split, image_size=96)
    details = {"image_size": 96}
    if not automl:
        return _floors_only(name, split, floors, details)
    run = _automl_run("image_classification", split, budget, ["--image-size", "96", "--epochs", "4"])
    return _result(name, split, run, floors, details)


def ag_news_quality(quick: bool, automl: bool = True, rows: int = 2000) -> Result:
    """automl on a stratified ``rows``-row sample of AG News (``--max-length 64 --epochs 3``, 6 minutes)
    against the majority class and TF-IDF + a CV'd logistic regression. ``--quick`` skips it."""
    name = f"quality at 6m: AG News ({rows:,} rows)"
    frame = ag_news(limit=rows, seed=SEED)
    if frame is None or quick:
        return _skipped(
            name, f"{SHARED / 'ag_news_test.csv'} is absent" if frame is None else "skipped in --quick mode"
        )
    split = text_frame_split(frame, "agnews")
    floors = text_floors(split)
    details = {"backbone": "all-MiniLM-L6-v2", "rows": len(frame), "note": f"a stratified {rows:,}-row sample"}
    if not automl:
        return _floors_only(name, split, floors, details)
    run = _automl_run("text_classification", split, "6m", ["--max-length", "64", "--epochs", "3"])
    return _result(name, split, run, floors, details)


def clothing_quality(
    quick: bool,
    budget: str = "10m",
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    automl: bool = True,
) -> Result:
    """automl on real garment photos, developed on ``train/`` (800) and judged on the given ``val/``
    (341) as its test split, against the majority class, a CV'd logistic regression on the frozen
    features of every packaged image backbone, and a hand-written fine-tune of the default backbone
    time-boxed to the same budget.

    ``--quick`` skips it (its budget is 10 minutes). A smoke test of the code on a subset:
    ``clothing_quality(False, budget="40s", train_per_class=3, val_per_class=2)``."""
    from automl.config import parse_duration

    name = f"quality at {budget}: clothing photos"
    folder = clothing_folder(train_per_class, val_per_class)
    if folder is None or quick:
        why = f"{SHARED / 'clothing10'} is absent" if folder is None else "skipped in --quick mode (a 10-minute run)"
        return _skipped(name, why)
    subset = train_per_class is not None or val_per_class is not None
    name += " (subset: a smoke test)" if subset else ""
    try:
        split = given_split(folder)
        floors = image_floors(split, finetune_seconds=parse_duration(budget))
        details = {"data": str(folder)}
        if not automl:
            return _floors_only(name, split, floors, details)
        run = _automl_run("image_classification", split, budget, [])
        return _result(name, split, run, floors, details)
    finally:
        if subset:  # a temporary folder of links (``clothing_folder``)
            shutil.rmtree(folder, ignore_errors=True)


def sentiment_quality(quick: bool, budget: str = "5m", rows: int | None = None, automl: bool = True) -> Result:
    """automl on short review sentences (20% held out by the bench) against the majority class,
    TF-IDF + a CV'd logistic regression, a CV'd logistic regression on frozen mean-pooled MiniLM
    embeddings, and a hand-written MiniLM fine-tune time-boxed to the same budget.

    ``--quick`` skips it (its budget is 5 minutes). A smoke test on a sample:
    ``sentiment_quality(False, budget="40s", rows=200)``."""
    from automl.config import parse_duration
    from automl.data.text import DEFAULT_MAX_LENGTH

    name = f"quality at {budget}: review sentiment"
    frame = sentiment_frame(rows, seed=SEED)
    if frame is None or quick:
        why = f"{SHARED / 'uci_sentiment_sentences.csv'} is absent" if frame is None else "skipped in --quick mode"
        return _skipped(name, why)
    name += f" (a {rows}-row sample: a smoke test)" if rows else ""
    split = text_frame_split(frame, "sentiment")
    floors = text_floors(split, max_length=DEFAULT_MAX_LENGTH, finetune_seconds=parse_duration(budget))
    details = {"rows": len(frame)}
    if not automl:
        return _floors_only(name, split, floors, details)
    run = _automl_run("text_classification", split, budget, [])
    return _result(name, split, run, floors, details)
