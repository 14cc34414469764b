"""The facts of a finished run, read from its folder (and its study and MLflow stores): what
``report.json`` holds and ``report.html`` shows."""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from automl.run_folder import (
    EXPLANATIONS_DIR,
    EXPLANATIONS_FILE,
    PREDICTIONS_FILE,
    SEARCH_SPACE_FILE,
    TEST_PREDICTIONS_FILE,
    Journal,
    RunFolder,
    Summary,
    read_json,
    study_file,
)
from automl.trial_record import Tier

MISTAKES = 12
KEY_PARAMS = (
    "backbone",
    "learning_rate",
    "batch_size",
    "epochs",
    "strategy",
    "image_size",
    "max_length",
    "augment",
    "mix",
    "weight_averaging",
    "backbone_lr_ratio",
    "dropout",
    "label_smoothing",
)


def collect(run_dir: str | Path) -> dict:
    """Everything the report says, as plain data. Sections that cannot be read say why."""
    folder = RunFolder(run_dir)
    run_dir = folder.path
    journal, summary = folder.require_finished()
    config = folder.config()
    finalise = journal.stage("finalise")
    facts: dict[str, Any] = {
        "run": {
            "name": run_dir.name,
            "folder": str(run_dir.resolve()),
            "task": config["task"],
            "data": config["data"],
            # while the run writes its report, its finalise stage is not yet in the journal
            "finished_at": (finalise and finalise.finished_at) or time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(journal.total_seconds(), 1),
            "command": reproduce_command(config),
        },
        "verdict": verdict_facts(summary),
        "metrics": summary.scores,
        "test_metrics": summary.test_scores,
        "ensemble": summary.ensemble or {},
        "calibration": summary.calibration or {},  # the temperature, the ECE before and after it
        "model": summary.model(),
        "data": folder.inspection(),
        "tiers": tiers(journal),
        "study": study_facts(folder, config, journal),
    }
    # the judged model's predictions: on the test split when the run has one, else on validation
    predictions = folder / TEST_PREDICTIONS_FILE
    if not predictions.exists():
        predictions = folder / PREDICTIONS_FILE
    facts["predictions_split"] = "test" if predictions.name == TEST_PREDICTIONS_FILE else "validation"
    if predictions.exists():
        frame = pd.read_csv(predictions, keep_default_na=False)
        frame["true"] = frame["true"].astype(str)
        frame["predicted"] = frame["predicted"].astype(str)
        labels = [str(label) for label in summary.labels or sorted(set(frame["true"]))]
        facts["confusion"] = confusion(frame, labels)
        facts["per_class"] = per_class(facts["confusion"]["matrix"], labels)
        facts["mistakes"] = mistakes(frame)
    facts["explanations"] = read_json(folder / EXPLANATIONS_DIR / EXPLANATIONS_FILE, {})
    facts["learning_curves"] = learning_curves(folder, config, journal, summary)
    facts["environment"] = environment()
    return facts


def verdict_facts(summary: Summary) -> dict:
    """The verdict as the report shows it (metrics.json's)."""
    return {
        "target": summary.target,
        "verdict": summary.verdict,
        "outcome": summary.outcome,
        "tier": summary.tier,
        "score": summary.score,
        "ci_low": summary.ci_low,
        "ci_high": summary.ci_high,
        "gap": summary.gap,
        "best_trial": summary.best_trial,
        "metric": _target_metric(summary.target),
        "judged_on": summary.judged_on,
        "examples": summary.examples,
        "interval": summary.interval,
        "selection_score": summary.selection_score,
        "notes": summary.notes or [],
        "refit": summary.refit,
    }


def _target_metric(target: str) -> str:
    from automl.target import parse_target

    return parse_target(target).metric


def reproduce_command(config: dict) -> str:
    """The ``automl run`` command line that reproduces this run (options that differ from defaults)."""
    from automl.config import TASKS, RunConfig
    from automl.presets import DEFAULT_PRESET, preset_values

    preset = config.get("preset") or DEFAULT_PRESET
    defaults = {f: getattr(RunConfig, f, None) for f in RunConfig.keys()}
    defaults.update(
        {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in preset_values(preset, TASKS.get(config.get("task", ""))).items()
        }
    )
    parts = ["automl", "run"]
    flags = {
        "pretrained": "--no-pretrained",
        "header": "--no-header",
        "escalate": "--no-escalate",
        "refit": "--no-refit",
        "ensemble": "--no-ensemble",
        "calibrate": "--no-calibrate",
    }
    for key, value in config.items():
        if value is None or value == defaults.get(key) or (isinstance(value, list) and not value):
            continue
        if key == "search_space":  # YAML only: the run folder's config.yaml holds it
            parts += ["--config", "config.yaml"]
            continue
        if key in flags:
            if value is False:
                parts.append(flags[key])
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value))
        text = str(value)
        parts += [f"--{key.replace('_', '-')}", f'"{text}"' if any(c in text for c in " <>=") else text]
    return " ".join(parts)


def tiers(journal: Journal) -> list[dict]:
    """Baseline, tuned Flash tier, escalated Lightning tier: score, time, key parameters."""
    rows = []
    seconds = journal.stage_seconds()
    baseline = journal.result("baseline")
    if baseline and baseline.value is not None:
        rows.append(
            {
                "tier": "baseline (Flash defaults)",
                "score": baseline.value,
                "trials": 1,
                "seconds": baseline.seconds,
                "params": _key_params(baseline.params),
            }
        )
    tune = journal.result("tune")
    if tune and tune.score is not None:
        rows.append(
            {
                "tier": "tuned Flash tier",
                "score": tune.score,
                "trials": tune.trials,
                "seconds": seconds.get("tune"),
                "best_trial": tune.best_trial,
                "params": _key_params(tune.params),
            }
        )
    escalate = journal.result("escalate")
    if escalate and escalate.tier.score is None:
        rows.append(
            {
                "tier": "escalated Lightning tier (no trial finished)",
                "score": None,
                "trials": escalate.tier.trials,
                "seconds": seconds.get("escalate"),
                "params": {},
            }
        )
    elif escalate:
        rows.append(
            {
                "tier": "escalated Lightning tier",
                "score": escalate.tier.score,
                "trials": escalate.tier.trials,
                "seconds": seconds.get("escalate"),
                "best_trial": escalate.tier.best_trial,
                "params": _key_params(escalate.tier.params),
            }
        )
    return rows


def _key_params(params: dict) -> dict:
    return {k: params[k] for k in KEY_PARAMS if k in params}


def study_facts(folder: RunFolder, config: dict, journal: Journal) -> dict:
    studies = {}
    for tier in (Tier.FLASH, Tier.LIGHTNING):
        path = folder / study_file(tier)
        if path.exists():
            frame = pd.read_csv(path, keep_default_na=False)  # parameter values such as "None" stay text
            for column in ("value", "seconds", "cv_mean", "cv_std"):  # empty cells made the column text
                if column in frame:
                    frame[column] = pd.to_numeric(frame[column], errors="coerce")
            studies[tier] = json.loads(frame.to_json(orient="records"))
    importances: dict[str, object] = {}
    try:
        from automl.tuning import param_importances

        storage = config.get("storage") or f"sqlite:///{(folder.path.parent / 'optuna.db').resolve()}"
        importances = dict(param_importances(storage, journal.study))
    except Exception as exc:  # the study store may be gone or remote: the report still renders
        importances = {"_unavailable": f"{type(exc).__name__}: {exc}"}
    import yaml

    path = folder / SEARCH_SPACE_FILE
    searched = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}  # older runs have none
    return {"trials": studies, "importances": importances, "searched": searched}


def confusion(frame: pd.DataFrame, labels: list[str]) -> dict:
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for true, predicted in zip(frame["true"], frame["predicted"], strict=True):
        matrix[index[true], index[predicted]] += 1
    return {"labels": labels, "matrix": matrix.tolist()}


def per_class(counts: list[list[int]], labels: list[str]) -> list[dict]:
    matrix = np.asarray(counts)
    rows = []
    for i, label in enumerate(labels):
        tp = matrix[i, i]
        support = matrix[i].sum()
        predicted = matrix[:, i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "label": label,
                "precision": float(precision),
                "recall": float(recall),
                "f1": float(f1),
                "support": int(support),
            }
        )
    return rows


def mistakes(frame: pd.DataFrame) -> list[dict]:
    """The most confident wrong predictions."""
    wrong = frame[frame["true"] != frame["predicted"]].sort_values("confidence", ascending=False).head(MISTAKES)
    columns = ["id", "true", "predicted", "confidence"] + (["text"] if "text" in frame.columns else [])
    return json.loads(wrong[columns].to_json(orient="records"))


def learning_curves(folder: RunFolder, config: dict, journal: Journal, summary: Summary) -> dict:
    """Per-step metrics of the final model's training run, from MLflow; a head on cached features
    is one L-BFGS solve, which has no curve to show."""
    from automl.space import SearchSpace

    if summary.tier != Tier.LIGHTNING and SearchSpace.head_only(summary.best_params or {}):
        return {
            "_unavailable": "the final model is a head fitted on cached features in one L-BFGS solve, not over epochs"
        }
    try:
        from automl.tracking import default_tracking_uri, trial_history

        uri = config.get("tracking_uri") or default_tracking_uri(folder.path.parent)
        keys = ["train_loss_epoch", "train_loss", "val_loss", _target_metric(summary.target)]
        history = trial_history(
            uri, journal.mlflow_run_id, summary.tier or Tier.FLASH, summary.best_trial, sorted(set(keys))
        )
        return {k: v for k, v in history.items() if v}
    except Exception as exc:
        return {"_unavailable": f"{type(exc).__name__}: {exc}"}


def environment() -> dict:
    versions = {}
    for package in ("automl", "torch", "torchvision", "lightning", "timm", "transformers", "optuna", "mlflow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = f"cuda: {torch.cuda.get_device_name(0)}"
    except Exception:
        pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "device": device, "versions": versions}
