"""The facts of a finished run, read from its folder (and its study and MLflow stores): what
``report.json`` holds and ``report.html`` shows."""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

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


def _read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def collect(run_dir: str | Path) -> dict:
    """Everything the report says, as plain data. Sections that cannot be read say why."""
    run_dir = Path(run_dir)
    journal = _read_json(run_dir / "journal.json")
    metrics = _read_json(run_dir / "metrics.json")
    if journal is None or metrics is None:
        from automl.errors import DataError

        raise DataError(f"'{run_dir}' is not a finished automl run (journal.json or metrics.json is missing).")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    stages = journal["stages"]
    facts = {
        "run": {
            "name": run_dir.name,
            "folder": str(run_dir.resolve()),
            "task": config["task"],
            "data": config["data"],
            # while the run writes its report, its finalise stage is not yet in the journal
            "finished_at": stages.get("finalise", {}).get("finished_at") or time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(sum(s.get("seconds", 0.0) for s in stages.values()), 1),
            "command": reproduce_command(config),
        },
        "verdict": {
            key: metrics.get(key)
            for key in ("target", "verdict", "outcome", "tier", "score", "ci_low", "ci_high", "gap", "best_trial")
        },
        "metrics": {k: v for k, v in metrics.items() if k.startswith("val_")},
        "model": {k: metrics.get(k) for k in ("model_uri", "registered_model", "model_version", "model_alias")},
        "data": _read_json(run_dir / "inspection.json", {}),
        "tiers": tiers(stages, config),
        "study": study_facts(run_dir, config, journal),
    }
    facts["verdict"]["metric"] = _target_metric(metrics["target"])
    predictions = run_dir / "predictions_val.csv"
    if predictions.exists():
        frame = pd.read_csv(predictions, keep_default_na=False)
        frame["true"] = frame["true"].astype(str)
        frame["predicted"] = frame["predicted"].astype(str)
        labels = [str(label) for label in metrics.get("labels") or sorted(set(frame["true"]))]
        facts["confusion"] = confusion(frame, labels)
        facts["per_class"] = per_class(facts["confusion"]["matrix"], labels)
        facts["mistakes"] = mistakes(frame)
    facts["learning_curves"] = learning_curves(run_dir, config, journal, metrics)
    facts["environment"] = environment()
    return facts


def _target_metric(target: str) -> str:
    from automl.target import parse_target

    return parse_target(target).metric


def reproduce_command(config: dict) -> str:
    """The ``automl run`` command line that reproduces this run (options that differ from defaults)."""
    from automl.config import RunConfig

    defaults = {f: getattr(RunConfig, f, None) for f in RunConfig.keys()}
    parts = ["automl", "run"]
    flags = {"pretrained": "--no-pretrained", "header": "--no-header", "escalate": "--no-escalate"}
    for key, value in config.items():
        if value is None or value == defaults.get(key) or (isinstance(value, list) and not value):
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


def tiers(stages: dict, config: dict) -> list[dict]:
    """Baseline, tuned Flash tier, escalated Lightning tier: score, time, key parameters."""
    rows = []
    baseline = stages.get("baseline", {}).get("result")
    if baseline and baseline.get("value") is not None:
        rows.append(
            {
                "tier": "baseline (Flash defaults)",
                "score": baseline["value"],
                "trials": 1,
                "seconds": baseline.get("seconds"),
                "params": _key_params(baseline["params"]),
            }
        )
    tune = stages.get("tune", {})
    if tune.get("result", {}).get("score") is not None:
        result = tune["result"]
        rows.append(
            {
                "tier": "tuned Flash tier",
                "score": result["score"],
                "trials": result["trials"],
                "seconds": tune.get("seconds"),
                "best_trial": result["best_trial"],
                "params": _key_params(result["params"]),
            }
        )
    escalate = stages.get("escalate", {})
    if escalate.get("result") and escalate["result"]["tier"].get("score") is None:
        rows.append(
            {
                "tier": "escalated Lightning tier (no trial finished)",
                "score": None,
                "trials": escalate["result"]["tier"]["trials"],
                "seconds": escalate.get("seconds"),
                "params": {},
            }
        )
    elif escalate.get("result"):
        result = escalate["result"]["tier"]
        rows.append(
            {
                "tier": "escalated Lightning tier",
                "score": result["score"],
                "trials": result["trials"],
                "seconds": escalate.get("seconds"),
                "best_trial": result["best_trial"],
                "params": _key_params(result["params"]),
            }
        )
    return rows


def _key_params(params: dict) -> dict:
    return {k: params[k] for k in KEY_PARAMS if k in params}


def study_facts(run_dir: Path, config: dict, journal: dict) -> dict:
    studies = {}
    for tier, file in (("flash", "study.csv"), ("lightning", "study.lightning.csv")):
        path = run_dir / file
        if path.exists():
            frame = pd.read_csv(path, keep_default_na=False)  # parameter values such as "None" stay text
            for column in ("value", "seconds"):  # empty for a failed trial, which made the column text
                frame[column] = pd.to_numeric(frame[column], errors="coerce")
            studies[tier] = json.loads(frame.to_json(orient="records"))
    importances = {}
    try:
        from automl.tuning import param_importances

        storage = config.get("storage") or f"sqlite:///{(run_dir.parent / 'optuna.db').resolve()}"
        importances = param_importances(storage, journal["study"])
    except Exception as exc:  # the study store may be gone or remote: the report still renders
        importances = {"_unavailable": f"{type(exc).__name__}: {exc}"}
    return {"trials": studies, "importances": importances}


def confusion(frame: pd.DataFrame, labels: list[str]) -> dict:
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for true, predicted in zip(frame["true"], frame["predicted"], strict=True):
        matrix[index[true], index[predicted]] += 1
    return {"labels": labels, "matrix": matrix.tolist()}


def per_class(matrix: list[list[int]], labels: list[str]) -> list[dict]:
    matrix = np.asarray(matrix)
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


def learning_curves(run_dir: Path, config: dict, journal: dict, metrics: dict) -> dict:
    """Per-step metrics of the final model's training run, from MLflow."""
    try:
        from automl.tracking import default_tracking_uri, trial_history

        uri = config.get("tracking_uri") or default_tracking_uri(run_dir.parent)
        keys = ["train_loss_epoch", "train_loss", "val_loss", _target_metric(metrics["target"])]
        history = trial_history(
            uri, journal["mlflow_run_id"], metrics.get("tier", "flash"), metrics["best_trial"], sorted(set(keys))
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
