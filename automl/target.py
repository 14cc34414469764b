"""The user's target ("accuracy>=0.9"), the verdict, and a bootstrap confidence interval.

>>> target = parse_target("f1_macro>=0.8")
>>> target.metric, target.op, target.value
('val_f1_macro', '>=', 0.8)
>>> target.met(0.83)
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from automl import metrics as m
from automl.errors import TargetSyntax

_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|>|<)\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$")
_BOUNDED = {m.VAL_ACCURACY, m.VAL_F1_MACRO, m.VAL_PRECISION_MACRO, m.VAL_RECALL_MACRO, m.VAL_AUROC}
MET = "met"
MISSED = "missed"


@dataclass(frozen=True)
class Target:
    metric: str  # a logged metric constant, e.g. "val_accuracy"
    op: str
    value: float

    @property
    def maximize(self) -> bool:
        return m.VALIDATION_METRICS[self.metric]

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    def met(self, score: float) -> bool:
        score = round(float(score), 6)  # metrics arrive as float32: 0.9 must meet ">=0.9"
        return {">=": score >= self.value, ">": score > self.value, "<=": score <= self.value, "<": score < self.value}[
            self.op
        ]

    def gap(self, score: float) -> float:
        """How far ``score`` is from the target (positive when it falls short)."""
        return self.value - score if self.maximize else score - self.value

    def __str__(self) -> str:
        return f"{self.metric.removeprefix('val_')}{self.op}{self.value:g}"


def metric_names() -> list[str]:
    """Names a target may use: ``accuracy`` or ``val_accuracy`` alike."""
    return [name.removeprefix("val_") for name in m.VALIDATION_METRICS]


def parse_target(text: str) -> Target:
    found = _PATTERN.match(text or "")
    valid = ", ".join(metric_names())
    if not found:
        raise TargetSyntax(
            f"Cannot read the target {text!r}: write METRIC>=VALUE or METRIC<=VALUE, e.g. 'accuracy>=0.9' or "
            f"'val_loss<=0.3'. Metrics: {valid}."
        )
    name, op, value = found.group(1), found.group(2), float(found.group(3))
    metric = name if name.startswith("val_") else f"val_{name}"
    if metric not in m.VALIDATION_METRICS:
        raise TargetSyntax(f"Unknown metric '{name}' in the target {text!r}. Metrics: {valid}.")
    target = Target(metric, op, value)
    if target.maximize != op.startswith(">"):
        better = ">=" if target.maximize else "<="
        raise TargetSyntax(
            f"'{name}' is {'higher' if target.maximize else 'lower'}-is-better; "
            f"a target reads {name.removeprefix('val_')}{better}{value:g}."
        )
    if metric in _BOUNDED and not 0.0 <= value <= 1.0:
        raise TargetSyntax(f"'{name}' lies between 0 and 1; the target value {value:g} is out of range.")
    if metric == m.VAL_LOSS and value < 0:
        raise TargetSyntax(f"A loss is never negative; the target value {value:g} is out of range.")
    return target


# --------------------------------------------------------------------------- scores on predictions
def score(metric: str, targets: np.ndarray, probabilities: np.ndarray) -> float:
    """``metric`` (a constant of :mod:`automl.metrics`) of class ``probabilities`` against ``targets``,
    computed as the training loop logs it (torchmetrics, macro averages)."""
    import torch
    from torchmetrics.functional import classification as f

    probs = torch.as_tensor(probabilities, dtype=torch.float32)
    truth = torch.as_tensor(targets, dtype=torch.long)
    num_classes = probs.shape[1]
    if metric == m.VAL_LOSS:
        return float(torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), truth))
    if metric == m.VAL_ACCURACY:
        return float(f.multiclass_accuracy(probs, truth, num_classes, average="micro"))
    if metric == m.VAL_F1_MACRO:
        return float(f.multiclass_f1_score(probs, truth, num_classes, average="macro"))
    if metric == m.VAL_PRECISION_MACRO:
        return float(f.multiclass_precision(probs, truth, num_classes, average="macro"))
    if metric == m.VAL_RECALL_MACRO:
        return float(f.multiclass_recall(probs, truth, num_classes, average="macro"))
    if metric == m.VAL_AUROC:
        return float(f.multiclass_auroc(probs, truth, num_classes, average="macro"))
    raise KeyError(metric)


def bootstrap_ci(
    metric: str, targets, probabilities, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` over the validation examples."""
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities)
    rng = np.random.default_rng(seed)
    n = len(targets)
    values = [score(metric, targets[idx], probabilities[idx]) for idx in rng.integers(0, n, size=(resamples, n))]
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Verdict:
    target: str
    metric: str
    score: float
    ci_low: float
    ci_high: float
    verdict: str  # MET or MISSED
    gap: float

    @property
    def met(self) -> bool:
        return self.verdict == MET


def judge(target: Target, targets, probabilities, resamples: int = 1000, seed: int = 0) -> Verdict:
    """The verdict on the final model's validation predictions, with a bootstrap 95% interval."""
    value = score(target.metric, np.asarray(targets), np.asarray(probabilities))
    low, high = bootstrap_ci(target.metric, targets, probabilities, resamples=resamples, seed=seed)
    return Verdict(
        str(target), target.metric, value, low, high, MET if target.met(value) else MISSED, target.gap(value)
    )
