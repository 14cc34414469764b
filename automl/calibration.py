"""Calibrated probabilities: one temperature ``T`` fitted on the split that chose the model (temperature
scaling, Guo et al., 2017, "On Calibration of Modern Neural Networks"), applied to the final model's
class probabilities wherever they are returned: ``softmax(log(p) / T)``, which for a single network is
``softmax(logits / T)``. ``T`` > 1 softens an over-confident model, < 1 sharpens a timid one; the
predicted class never changes.

Measured by the expected calibration error (ECE: the gap between confidence and accuracy, averaged
over equal-width confidence bins, weighted by how many predictions fall in each) and shown as a
reliability diagram.

``best/calibration.json`` holds the temperature; ``automl.predict.Predictor`` applies it, so predict,
serve, evaluate, the MLflow model and the ONNX / TorchScript export all return the same probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: best/calibration.json: {"temperature": T, "fitted_on": ..., "examples": n}
CALIBRATION_FILE = "calibration.json"
#: the temperatures searched (a wider one means the probabilities say next to nothing)
BOUNDS = (0.05, 20.0)
BINS = 15
_TINY = 1e-12


def scaled(probabilities, temperature: float):
    """``softmax(log(p) / temperature)`` of a numpy array or a torch tensor, row by row."""
    if temperature == 1.0:
        return probabilities
    if isinstance(probabilities, np.ndarray):
        logits = np.log(np.clip(probabilities, _TINY, None)) / temperature
        logits -= logits.max(axis=-1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=-1, keepdims=True)
    return (probabilities.clamp_min(_TINY).log() / temperature).softmax(dim=-1)


def fit_temperature(probabilities: np.ndarray, targets: np.ndarray, at_least: float | None = None) -> float:
    """The temperature that minimises the negative log-likelihood of ``targets`` (class indices)
    under ``scaled(probabilities, T)``; 1.0 when there is nothing to fit on. ``at_least``: its floor
    (1.0 on the split that chose the model: that split flatters the chosen model, whose confidence
    then looks too low there, so a temperature fitted on it may sharpen what it must not)."""
    from scipy.optimize import minimize_scalar

    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) < 2 or probabilities.shape[1] < 2:
        return 1.0
    log_p = np.log(np.clip(probabilities, _TINY, None))

    def loss(log_t: float) -> float:
        logits = log_p / np.exp(log_t)
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        return float(np.mean(log_norm - logits[np.arange(len(targets)), targets]))

    found = minimize_scalar(loss, bounds=tuple(np.log(BOUNDS)), method="bounded", options={"xatol": 1e-4})
    fitted = float(np.exp(found.x))
    return fitted if at_least is None else max(fitted, at_least)


def reliability(probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS) -> list[dict]:
    """For each equal-width confidence bin that holds predictions: its mean confidence, its accuracy
    and how many predictions it holds."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == np.asarray(targets)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for index in range(bins):
        inside = which == index
        if inside.any():
            rows.append(
                {
                    "low": float(edges[index]),
                    "high": float(edges[index + 1]),
                    "confidence": float(confidence[inside].mean()),
                    "accuracy": float(right[inside].mean()),
                    "count": int(inside.sum()),
                }
            )
    return rows


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS) -> float:
    rows = reliability(probabilities, targets, bins)
    total = sum(row["count"] for row in rows)
    return sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in rows) / max(total, 1)


def read_temperature(folder: Path) -> float:
    """The temperature in ``folder/calibration.json``; 1.0 (raw probabilities) when there is none."""
    path = Path(folder) / CALIBRATION_FILE
    return float(json.loads(path.read_text())["temperature"]) if path.exists() else 1.0


def write_temperature(folder: Path, temperature: float, fitted_on: str, examples: int) -> None:
    facts = {"temperature": temperature, "fitted_on": fitted_on, "examples": examples}
    (Path(folder) / CALIBRATION_FILE).write_text(json.dumps(facts, indent=2) + "\n")


def measured(probabilities: np.ndarray, targets: np.ndarray, temperature: float, split: str) -> dict:
    """What the report shows of calibrated ``probabilities`` on ``split``: the ECE of the raw ones
    (recovered: ``scaled(p, 1 / T)``) and of these, and both reliability diagrams."""
    raw = scaled(np.asarray(probabilities, dtype=np.float64), 1.0 / temperature)
    return {
        "temperature": temperature,
        "split": split,
        "examples": len(targets),
        "ece_before": expected_calibration_error(raw, targets),
        "ece_after": expected_calibration_error(probabilities, targets),
        "reliability_before": reliability(raw, targets),
        "reliability_after": reliability(probabilities, targets),
    }
