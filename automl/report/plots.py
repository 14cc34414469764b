"""Figures for the report, drawn with matplotlib and embedded as PNG data URIs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # no display: render to memory
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLOUR = "#3b5bdb"
SECOND = "#e8590c"


def data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def class_counts(counts: dict[str, int]) -> str:
    labels = list(counts)
    figure, axes = plt.subplots(figsize=(max(4.0, 0.45 * len(labels) + 2), 2.8))
    axes.bar(range(len(labels)), [counts[k] for k in labels], color=COLOUR)
    axes.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 8 else 0, ha="right")
    axes.set_ylabel("examples")
    axes.spines[["top", "right"]].set_visible(False)
    return data_uri(figure)


def history(trials: dict[str, list[dict]], metric: str, maximize: bool, target: float | None) -> str:
    """Each trial's score in order, the best so far, and the target line; one colour per tier."""
    figure, axes = plt.subplots(figsize=(6.5, 3.2))
    offset = 0
    for (tier, rows), colour in zip(trials.items(), (COLOUR, SECOND), strict=False):
        numbers = [offset + r["number"] for r in rows]
        values = [r["value"] if r["state"] == "COMPLETE" and r["value"] not in ("", None) else np.nan for r in rows]
        axes.scatter(numbers, values, color=colour, label=f"{tier} trials", zorder=3)
        best = (np.fmax if maximize else np.fmin).accumulate(np.nan_to_num(values, nan=-np.inf if maximize else np.inf))
        best = np.where(np.isfinite(best), best, np.nan)
        axes.step(numbers, best, where="post", color=colour, alpha=0.6, label=f"{tier} best so far")
        offset += len(rows)
    if target is not None:
        axes.axhline(target, color="#2f9e44", linestyle="--", label="target")
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_xlabel("trial (Flash tier first, then Lightning tier)")
    axes.set_ylabel(metric)
    axes.legend(fontsize=8, loc="best")
    axes.spines[["top", "right"]].set_visible(False)
    return data_uri(figure)


def reliability(calibration: dict) -> str:
    """Reliability diagram: accuracy against confidence per bin, before and after the temperature;
    the diagonal is a calibrated model, and a marker's area is its bin's share of the examples."""
    figure, axes = plt.subplots(figsize=(4.6, 4.2))
    axes.plot([0, 1], [0, 1], color="#868e96", linestyle="--", linewidth=1, label="calibrated")
    for key, colour, name in (("reliability_before", SECOND, "raw"), ("reliability_after", COLOUR, "calibrated")):
        rows = calibration.get(key) or []
        total = sum(row["count"] for row in rows) or 1
        ece = calibration["ece_before" if key.endswith("before") else "ece_after"]
        axes.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], color=colour, alpha=0.7)
        axes.scatter(
            [r["confidence"] for r in rows],
            [r["accuracy"] for r in rows],
            s=[20 + 300 * r["count"] / total for r in rows],
            color=colour,
            label=f"{name} (ECE {ece:.3f})"
            if name == "raw"
            else f"T = {calibration['temperature']:.2f} (ECE {ece:.3f})",
            zorder=3,
        )
    axes.set_xlim(0, 1.02)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("confidence (the top class's probability)")
    axes.set_ylabel("accuracy")
    axes.legend(fontsize=8, loc="upper left")
    axes.spines[["top", "right"]].set_visible(False)
    return data_uri(figure)


def importances(values: dict[str, float]) -> str:
    names = sorted(values, key=lambda name: values[name])
    figure, axes = plt.subplots(figsize=(6.0, 0.35 * len(names) + 1))
    axes.barh(names, [values[n] for n in names], color=COLOUR)
    axes.set_xlabel("importance (fANOVA)")
    axes.spines[["top", "right"]].set_visible(False)
    return data_uri(figure)


def learning_curves(curves: dict[str, list], metric: str) -> str:
    figure, (loss_axes, metric_axes) = plt.subplots(1, 2, figsize=(9.0, 3.0))
    for key, colour in (("train_loss_epoch", COLOUR), ("val_loss", SECOND)):
        if curves.get(key):
            steps, values = zip(*curves[key], strict=True)
            loss_axes.plot(steps, values, marker="o", color=colour, label=key)
    loss_axes.set_xlabel("training step")
    loss_axes.set_ylabel("loss")
    loss_axes.legend(fontsize=8)
    if curves.get(metric):
        steps, values = zip(*curves[metric], strict=True)
        metric_axes.plot(steps, values, marker="o", color=SECOND)
    metric_axes.set_xlabel("training step")
    metric_axes.set_ylabel(metric)
    for axes in (loss_axes, metric_axes):
        axes.spines[["top", "right"]].set_visible(False)
    return data_uri(figure)


def confusion(labels: list[str], counts: list[list[int]]) -> str:
    matrix = np.asarray(counts)
    size = max(3.5, 0.45 * len(labels) + 1.5)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(
            j, i, str(count), ha="center", va="center", fontsize=8, color="white" if count > threshold else "black"
        )
    return data_uri(figure)


def thumbnail(path: str, size: int = 96) -> str | None:
    from PIL import Image, ImageOps

    try:
        with Image.open(Path(path)) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
