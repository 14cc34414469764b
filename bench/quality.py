"""Quality at a budget: ``automl run`` with a fixed --time-budget against the floors a careful data
scientist tries first, on the same split automl itself makes (a given ``train/``+``val/`` split as is;
otherwise seeded, seed 42, 20%).

The floors: the majority class; a logistic regression (C picked by cross-validation on the training
split only) on frozen features of every packaged backbone, or on TF-IDF; and a hand-written
fine-tune loop (plain PyTorch, no Lightning) time-boxed to the run's budget."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from bench.common import SHARED, Result, ag_news, clothing_folder, digits_folder, sentiment_csv

SEED, VAL_SPLIT = 42, 0.2
#: the logistic regressions' C grid, searched by stratified cross-validation on the training split
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))
FOLDS = 5
#: ``automl run`` must end within the budget plus this share, not counting its final report
BUDGET_SLACK = 0.05
TIE = 1e-6  # accuracies closer than this are the same count of right examples


# --------------------------------------------------------------------------- floors
def _majority(train_targets, val_targets) -> dict:
    majority = Counter(train_targets).most_common(1)[0][0]
    return {"accuracy": float(np.mean(np.asarray(val_targets) == majority)), "seconds": 0.0}


def _cv_logistic(train_x, train_y, val_x, val_y, prepare) -> dict:
    """A logistic regression after ``prepare`` (a StandardScaler, a TfidfVectorizer, fitted on the
    training split), its C picked by stratified k-fold cross-validation on the training split only
    (warm-started along the C grid), refitted on the whole training split and scored on validation."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    started = time.perf_counter()
    folds = min(FOLDS, min(Counter(train_y).values()))
    train_x = prepare.fit_transform(train_x)
    logistic = LogisticRegressionCV(
        Cs=list(C_GRID),
        l1_ratios=(0.0,),
        cv=StratifiedKFold(folds, shuffle=True, random_state=SEED),
        scoring="accuracy",
        max_iter=2000,
        n_jobs=1,
        use_legacy_attributes=False,
    ).fit(train_x, list(train_y))
    chosen = list(C_GRID).index(logistic.C_)
    return {
        "accuracy": float(logistic.score(prepare.transform(val_x), list(val_y))),
        "C": logistic.C_,
        "cv_accuracy": round(float(np.asarray(logistic.scores_).reshape(folds, -1)[:, chosen].mean()), 4),
        "folds": folds,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _standardised_logistic(train_x, train_y, val_x, val_y) -> dict:
    from sklearn.preprocessing import StandardScaler

    return _cv_logistic(train_x, train_y, val_x, val_y, StandardScaler())


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


def _frozen_floor(extract: Callable[[], list], train_y, val_y, **facts) -> dict:
    """A CV'd logistic regression on standardised frozen features; ``extract()`` returns the training
    and validation splits' features. Its time includes the extraction's."""
    started = time.perf_counter()
    train_x, val_x = extract()
    extraction = time.perf_counter() - started
    floor = _standardised_logistic(train_x, train_y, val_x, val_y)
    return {
        **floor,
        **facts,
        "features_seconds": round(extraction, 1),
        "seconds": round(extraction + floor["seconds"], 1),
    }


def _image_feature_floors(labels, train_samples, val_samples, image_size: int | None = None) -> dict:
    """A CV'd logistic regression on the frozen features of every packaged image backbone, at its
    native size or at ``image_size`` (the size the benchmarked run is given)."""
    train_y = [t for _, t in train_samples]
    val_y = [t for _, t in val_samples]
    return {
        f"logistic_regression_on_{name}_features": _frozen_floor(
            lambda name=name, size=size: _image_features(name, size, labels, train_samples, val_samples),
            train_y,
            val_y,
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


def _image_finetune(labels, train_samples, val_samples, seconds: float, epochs: int = 10) -> dict:
    """The default packaged backbone + a linear head, fine-tuned end to end with random resized crops
    and flips (automl's training transform), at most ``epochs`` or ``seconds``; scored once at the end."""
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
        labels, train_samples, val_samples, image_size=packaged[name], batch_size=32, backbone=name, augment=True
    )
    loss = nn.CrossEntropyLoss()

    def loss_of(batch):
        images, targets = batch
        return loss(model(images), targets)

    groups = [{"params": model[0].parameters(), "lr": 3e-4}, {"params": model[1].parameters(), "lr": 3e-3}]
    trained = _finetune(model, groups, data.train_dataloader, loss_of, epochs, seconds)
    model.eval()
    accuracy = _accuracy(lambda batch: (model(batch[0]), batch[1]), data.val_dataloader())
    return {
        "accuracy": accuracy,
        "backbone": name,
        "image_size": packaged[name],
        **trained,
        "time_box_seconds": round(seconds),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _text_finetune(train_samples, val_samples, n_classes: int, seconds: float, max_length: int, epochs: int = 2):
    """MiniLM + mean pooling + a linear head, fine-tuned end to end with transformers and plain
    PyTorch, at most ``epochs`` or ``seconds``; scored once at the end."""
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
    train = DataLoader(train_samples, batch_size=32, shuffle=True, collate_fn=collate, generator=generator)
    loss = nn.CrossEntropyLoss()
    model = nn.ModuleList([encoder, head])
    groups = [{"params": encoder.parameters(), "lr": 5e-5}, {"params": head.parameters(), "lr": 1e-3}]
    trained = _finetune(model, groups, lambda: train, lambda batch: loss(*forward(batch)), epochs, seconds)
    model.eval()
    accuracy = _accuracy(forward, DataLoader(val_samples, batch_size=128, collate_fn=collate))
    return {
        "accuracy": accuracy,
        "backbone": DEFAULT_TEXT_BACKBONE,
        **trained,
        "time_box_seconds": round(seconds),
        "seconds": round(time.perf_counter() - started, 1),
    }


# --------------------------------------------------------------------------- automl run
def _automl_run(task: str, data: Path, budget: str, extra: list[str]) -> dict:
    output = Path(tempfile.mkdtemp(prefix="automl-bench-run-"))
    automl = Path(sys.executable).parent / "automl"
    # an unreachable target: the run spends its whole budget, escalation included
    command = [
        str(automl),
        "run",
        "--task",
        task,
        "--data",
        str(data),
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
    if done.returncode not in (0, 3):
        raise RuntimeError(f"automl run failed ({done.returncode}): {done.stderr[-2000:]}")
    (metrics_path,) = output.glob("*/metrics.json")
    metrics = json.loads(metrics_path.read_text())
    journal = json.loads((metrics_path.parent / "journal.json").read_text())
    seconds = sum(stage.get("seconds", 0.0) for stage in journal["stages"].values())
    facts = {
        "accuracy": metrics["val_accuracy"],
        "tier": metrics["tier"],
        "seconds": round(seconds, 1),
        **run_facts(metrics_path.parent, budget, wall),
        "command": " ".join(command[1:]),
        "run_dir": str(metrics_path.parent),
    }
    _slim(output)
    return facts


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


def _result(name: str, run: dict, floors: dict[str, dict], details: dict) -> Result:
    accuracies = {k: floor["accuracy"] for k, floor in floors.items()}
    best_floor = max(accuracies, key=accuracies.get)
    difference = run["accuracy"] - accuracies[best_floor]
    # automl's accuracy is a float32 metric, the floors' a float64 count: the same number of right
    # examples differs by ~1e-8, and a tie is no win
    won = difference > TIE
    return Result(
        name,
        round(difference, 4),
        "difference",
        {f"{k}_accuracy": round(v, 4) for k, v in accuracies.items()},
        "> 0 (automl beats the best floor)",
        won,
        {
            "automl_accuracy": round(run["accuracy"], 4),
            "best_floor": best_floor,
            **run,
            "floors": {k: {**floor, "accuracy": round(floor["accuracy"], 4)} for k, floor in floors.items()},
            **details,
        },
    )


# --------------------------------------------------------------------------- the benchmarks
def digits_quality(quick: bool) -> Result:
    from automl.data import ImageClassificationData

    folder = digits_folder(size=64)
    data = ImageClassificationData.from_folders(folder, val_split=VAL_SPLIT, seed=SEED)
    train_targets = [t for _, t in data.train_samples]
    val_targets = [t for _, t in data.val_samples]
    floors = {
        "majority_class": _majority(train_targets, val_targets),
        **_image_feature_floors(data.labels, data.train_samples, data.val_samples, image_size=96),
    }
    budget = "75s" if quick else "4m"
    run = _automl_run("image_classification", folder, budget, ["--image-size", "96", "--epochs", "4"])
    return _result(
        f"quality at {budget}: digits",
        run,
        floors,
        {"val_size": len(val_targets), "image_size": 96},
    )


def ag_news_quality(quick: bool) -> Result:
    from automl.data import TextClassificationData

    name = "quality at 6m: AG News (2,000 rows)"
    frame = ag_news(limit=2000, seed=SEED)
    if frame is None or quick:
        why = f"{SHARED / 'ag_news_test.csv'} is absent" if frame is None else "skipped in --quick mode"
        return Result(name, None, "difference", {}, "> 0", None, {"skipped": why})
    csv = Path(tempfile.mkdtemp(prefix="automl-bench-agnews-")) / "ag_news.csv"
    frame.to_csv(csv, index=False)
    data = TextClassificationData.from_csv(csv, val_split=VAL_SPLIT, seed=SEED)
    train_texts, train_targets = zip(*data.train_samples, strict=True)
    val_texts, val_targets = zip(*data.val_samples, strict=True)
    floors = {
        "majority_class": _majority(train_targets, val_targets),
        "tfidf_logistic_regression": _cv_logistic(train_texts, train_targets, val_texts, val_targets, _tfidf()),
    }
    run = _automl_run("text_classification", csv, "6m", ["--max-length", "64", "--epochs", "3"])
    return _result(
        name,
        run,
        floors,
        {
            "val_size": len(val_targets),
            "backbone": "all-MiniLM-L6-v2",
            "rows": len(frame),
            "note": "a stratified 2,000-row sample, for time",
        },
    )


def clothing_quality(
    quick: bool, budget: str = "10m", train_per_class: int | None = None, val_per_class: int | None = None
) -> Result:
    """automl on real garment photos (its given train/val split) against the majority class, a CV'd
    logistic regression on the frozen features of every packaged image backbone, and a hand-written
    fine-tune of the default backbone time-boxed to the same budget.

    ``--quick`` skips it (its budget is 10 minutes). A smoke test of the code on a subset:
    ``clothing_quality(False, budget="40s", train_per_class=3, val_per_class=2)``."""
    from automl.config import parse_duration
    from automl.data import ImageClassificationData

    name = f"quality at {budget}: clothing photos"
    folder = clothing_folder(train_per_class, val_per_class)
    if folder is None or quick:
        why = f"{SHARED / 'clothing10'} is absent" if folder is None else "skipped in --quick mode (a 10-minute run)"
        return Result(name, None, "difference", {}, "> 0", None, {"skipped": why})
    data = ImageClassificationData.from_folders(folder, val_split=VAL_SPLIT, seed=SEED)  # train/ + val/ as given
    train_targets = [t for _, t in data.train_samples]
    val_targets = [t for _, t in data.val_samples]
    floors = {
        "majority_class": _majority(train_targets, val_targets),
        **_image_feature_floors(data.labels, data.train_samples, data.val_samples),
        "hand_written_finetune": _image_finetune(
            data.labels, data.train_samples, data.val_samples, parse_duration(budget)
        ),
    }
    run = _automl_run("image_classification", folder, budget, [])
    subset = train_per_class is not None or val_per_class is not None
    return _result(
        name + (" (subset: a smoke test)" if subset else ""),
        run,
        floors,
        {"train_size": len(train_targets), "val_size": len(val_targets), "data": str(folder)},
    )


def sentiment_quality(quick: bool, budget: str = "5m", rows: int | None = None) -> Result:
    """automl on short review sentences (its seeded 80/20 split) against the majority class, TF-IDF +
    a CV'd logistic regression, a CV'd logistic regression on frozen mean-pooled MiniLM embeddings,
    and a hand-written MiniLM fine-tune time-boxed to the same budget.

    ``--quick`` skips it (its budget is 5 minutes). A smoke test on a sample:
    ``sentiment_quality(False, budget="40s", rows=200)``."""
    from automl.backbones import DEFAULT_TEXT_BACKBONE
    from automl.config import parse_duration
    from automl.data import TextClassificationData
    from automl.data.text import DEFAULT_MAX_LENGTH

    name = f"quality at {budget}: review sentiment"
    csv = sentiment_csv(rows, seed=SEED)
    if csv is None or quick:
        why = f"{SHARED / 'uci_sentiment_sentences.csv'} is absent" if csv is None else "skipped in --quick mode"
        return Result(name, None, "difference", {}, "> 0", None, {"skipped": why})
    data = TextClassificationData.from_csv(csv, val_split=VAL_SPLIT, seed=SEED)  # the split automl makes
    train_texts, train_targets = (list(c) for c in zip(*data.train_samples, strict=True))
    val_texts, val_targets = (list(c) for c in zip(*data.val_samples, strict=True))
    embeddings = _frozen_floor(
        lambda: _text_features(DEFAULT_TEXT_BACKBONE, DEFAULT_MAX_LENGTH, train_texts, val_texts),
        train_targets,
        val_targets,
    )
    floors = {
        "majority_class": _majority(train_targets, val_targets),
        "tfidf_logistic_regression": _cv_logistic(train_texts, train_targets, val_texts, val_targets, _tfidf()),
        f"logistic_regression_on_{DEFAULT_TEXT_BACKBONE}_embeddings": embeddings,
        "hand_written_finetune": _text_finetune(
            data.train_samples, data.val_samples, len(data.labels), parse_duration(budget), DEFAULT_MAX_LENGTH
        ),
    }
    run = _automl_run("text_classification", csv, budget, [])
    return _result(
        name + (f" (a {rows}-row sample: a smoke test)" if rows else ""),
        run,
        floors,
        {"train_size": len(train_targets), "val_size": len(val_targets), "data": str(csv)},
    )
