"""Quality at a budget: ``automl run`` with a fixed --time-budget against the floors a careful data
scientist tries first, on the same seeded split (the split automl itself makes: seed 42, 20%)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from bench.common import SHARED, Result, ag_news, digits_folder

SEED, VAL_SPLIT = 42, 0.2


def _majority(train_targets, val_targets) -> float:
    majority = Counter(train_targets).most_common(1)[0][0]
    return float(np.mean(np.asarray(val_targets) == majority))


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
    done = subprocess.run(command, capture_output=True, text=True)
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
        "command": " ".join(command[1:]),
        "run_dir": str(metrics_path.parent),
    }


def _result(name: str, run: dict, floors: dict, details: dict) -> Result:
    best_floor = max(floors, key=floors.get)
    difference = run["accuracy"] - floors[best_floor]
    return Result(
        name,
        round(difference, 4),
        "difference",
        {f"{k}_accuracy": round(v, 4) for k, v in floors.items()},
        "> 0 (automl beats the best floor)",
        difference > 0,
        {"automl_accuracy": round(run["accuracy"], 4), "best_floor": best_floor, **run, **details},
    )


def digits_quality(quick: bool) -> Result:
    import torch
    from sklearn.linear_model import LogisticRegression

    from automl.data import ImageClassificationData
    from automl.flash.backbones import create_image_backbone

    folder = digits_folder(size=64)
    data = ImageClassificationData.from_folders(
        folder,
        val_split=VAL_SPLIT,
        seed=SEED,
        image_size=96,
        batch_size=64,
        backbone="tf_efficientnet_lite0",
        augment=False,
    )
    train_targets = [t for _, t in data.train_samples]
    val_targets = [t for _, t in data.val_samples]
    backbone = create_image_backbone("tf_efficientnet_lite0").model.eval()

    def features(loader):
        with torch.inference_mode():
            return torch.cat([backbone(images) for images, _ in loader]).numpy()

    # frozen features of the un-augmented training images (train loader without augmentation, in order)
    train_x = features(data.with_options(predict_samples=data.train_samples).predict_dataloader())
    val_x = features(data.val_dataloader())
    logistic = LogisticRegression(max_iter=3000).fit(train_x, train_targets)
    floors = {
        "majority_class": _majority(train_targets, val_targets),
        "logistic_regression_on_frozen_features": float(logistic.score(val_x, val_targets)),
    }
    budget = "75s" if quick else "4m"
    run = _automl_run("image_classification", folder, budget, ["--image-size", "96", "--epochs", "4"])
    return _result(
        f"quality at {budget}: digits",
        run,
        floors,
        {"val_size": len(val_targets), "backbone": "tf_efficientnet_lite0", "image_size": 96},
    )


def ag_news_quality(quick: bool) -> Result:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

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
    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    logistic = LogisticRegression(max_iter=3000, C=10.0).fit(tfidf.fit_transform(train_texts), train_targets)
    floors = {
        "majority_class": _majority(train_targets, val_targets),
        "tfidf_logistic_regression": float(logistic.score(tfidf.transform(val_texts), val_targets)),
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
