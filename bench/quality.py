"""Quality at a budget: ``automl run`` with a fixed --time-budget against the floors a careful data
scientist tries first, on the same split automl itself makes (seed 42, 20%): the majority class and a
logistic regression (C picked by cross-validation on the training split only) on frozen backbone
features or on TF-IDF."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import SHARED, Result, ag_news, digits_folder

SEED, VAL_SPLIT = 42, 0.2
#: the logistic regressions' C grid, searched by stratified cross-validation on the training split
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))
FOLDS = 5
#: ``automl run`` must end within the budget plus this share, not counting its final report
BUDGET_SLACK = 0.05


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


def _image_features(name: str, image_size: int, labels, *splits, batch_size: int = 32) -> list[np.ndarray]:
    """Frozen, pooled features of backbone ``name`` for each list of (path, target) samples, with
    automl's evaluation transform (resize, centre crop, the weights' normalisation)."""
    import torch

    from automl.data import ImageClassificationData
    from automl.flash.backbones import create_image_backbone

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
    return {
        "accuracy": metrics["val_accuracy"],
        "tier": metrics["tier"],
        "seconds": round(seconds, 1),
        **run_facts(metrics_path.parent, budget, wall),
        "command": " ".join(command[1:]),
        "run_dir": str(metrics_path.parent),
    }


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
    return Result(
        name,
        round(difference, 4),
        "difference",
        {f"{k}_accuracy": round(v, 4) for k, v in accuracies.items()},
        "> 0 (automl beats the best floor)",
        difference > 0,
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
        "logistic_regression_on_frozen_features": _frozen_floor(
            lambda: _image_features("efficientnet_lite0", 96, data.labels, data.train_samples, data.val_samples),
            train_targets,
            val_targets,
        ),
    }
    budget = "75s" if quick else "4m"
    run = _automl_run("image_classification", folder, budget, ["--image-size", "96", "--epochs", "4"])
    return _result(
        f"quality at {budget}: digits",
        run,
        floors,
        {"val_size": len(val_targets), "backbone": "efficientnet_lite0", "image_size": 96},
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
