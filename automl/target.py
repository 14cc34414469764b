"""The user's target ("accuracy>=0.9"), the verdict, and a 95% interval that means what it says.

The verdict has three outcomes: *met* (the whole interval clears the target), *missed* (the whole
interval falls short) and *undecided* (the interval straddles the target: more data decides). For
accuracy, a proportion, the interval is Clopper-Pearson's exact one; for the other metrics a
percentile bootstrap, which says when it is degenerate (every resample scored the same) and is then
widened to the exact interval of the share of examples classified right.

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
UNDECIDED = "undecided"
VERDICTS = (MET, MISSED, UNDECIDED)
CLOPPER_PEARSON = "Clopper-Pearson"
BOOTSTRAP = "bootstrap"
DEGENERATE = "bootstrap degenerate, widened to Clopper-Pearson on the share right"


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


def parse_target(text: str | None) -> Target:
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
    """Percentile bootstrap interval of ``metric`` over the examples."""
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities)
    rng = np.random.default_rng(seed)
    n = len(targets)
    values = [score(metric, targets[idx], probabilities[idx]) for idx in rng.integers(0, n, size=(resamples, n))]
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def clopper_pearson(right: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a proportion ``right / n``: it never collapses to a
    point, and 49 of 49 gives 0.927-1.000.

    >>> [round(v, 3) for v in clopper_pearson(150, 153)]
    [0.944, 0.996]
    """
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    alpha = 1.0 - level
    low = 0.0 if right <= 0 else float(beta.ppf(alpha / 2, right, n - right + 1))
    high = 1.0 if right >= n else float(beta.ppf(1 - alpha / 2, right + 1, n - right))
    return low, high


def interval(metric: str, targets, probabilities, resamples: int = 1000, seed: int = 0) -> tuple[float, float, str]:
    """(low, high, method): the 95% interval of ``metric`` on these examples."""
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities)
    right = int((probabilities.argmax(axis=1) == targets).sum())
    if metric == m.VAL_ACCURACY:
        return (*clopper_pearson(right, len(targets)), CLOPPER_PEARSON)
    low, high = bootstrap_ci(metric, targets, probabilities, resamples=resamples, seed=seed)
    if high - low > 1e-9 or metric not in _BOUNDED:
        return low, high, BOOTSTRAP
    # every resample scored the same (e.g. no mistake at all): the bootstrap claims a certainty that
    # n examples cannot give; the exact interval of the share right bounds a score in [0, 1] instead
    exact_low, exact_high = clopper_pearson(right, len(targets))
    return min(low, exact_low), max(high, exact_high if right < len(targets) else 1.0), DEGENERATE


@dataclass(frozen=True)
class Verdict:
    target: str
    metric: str
    score: float
    ci_low: float
    ci_high: float
    verdict: str  # MET, MISSED or UNDECIDED
    gap: float
    interval: str = CLOPPER_PEARSON  # how ci_low-ci_high was computed
    examples: int = 0  # how many examples it was judged on

    @property
    def met(self) -> bool:
        return self.verdict == MET


def decide(target: Target, low: float, high: float) -> str:
    """MET when the whole interval clears the target, MISSED when the whole interval falls short,
    else UNDECIDED."""
    worst, best = (low, high) if target.maximize else (high, low)
    if target.met(worst):
        return MET
    if not target.met(best):
        return MISSED
    return UNDECIDED


def judge(target: Target, targets, probabilities, resamples: int = 1000, seed: int = 0) -> Verdict:
    """The verdict on a model's predictions of some examples, with its 95% interval."""
    targets, probabilities = np.asarray(targets), np.asarray(probabilities)
    value = score(target.metric, targets, probabilities)
    low, high, method = interval(target.metric, targets, probabilities, resamples=resamples, seed=seed)
    return Verdict(
        str(target), target.metric, value, low, high, decide(target, low, high), target.gap(value), method, len(targets)
    )


def describe(verdict: Verdict, metric: str | None = None) -> str:
    """``accuracy 0.9800 (95% CI 0.944-0.996) may be below 0.99: more data decides``."""
    target = parse_target(verdict.target)
    name = (metric or verdict.metric).removeprefix("val_")
    figure = f"{name} {verdict.score:.4f} (95% CI {verdict.ci_low:.3f}-{verdict.ci_high:.3f})"
    if verdict.verdict == MET:
        return f"{figure} clears {target.value:g}"
    if verdict.verdict == MISSED:
        return f"{figure} falls short of {target.value:g}"
    side = "below" if target.maximize else "above"
    return f"{figure} may be {side} {target.value:g}: more data decides"
