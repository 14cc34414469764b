"""Heads on cached features outside Lightning: fitted in a fraction of a second, so they can be
cross-validated (a trial's score over k folds of all the labelled data the search may use, not one
split) and refitted as ensemble members.

The objective is :class:`automl.flash.features.HeadClassifier`'s: standardised features, mean
cross-entropy (with label smoothing) plus ``0.5 * weight_decay * |W|^2``, minimised by L-BFGS from
zero weights, so a head fitted here and a trial's head agree.

>>> folds = cross_validate(x, y, num_classes=3, weight_decay=1e-3, metric="val_accuracy")
>>> folds.mean, folds.std        # the candidate's score and its spread over the folds
>>> head = fit_linear(x, y, 3, 1e-3)
>>> head.probabilities(x_new)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from automl.flash.features import PROBE_ITERATIONS, lbfgs, unstandardised

#: folds of the cross-validation that scores a head on cached features
CV_FOLDS = 5


@dataclass
class LinearHead:
    """A fitted head on raw backbone outputs (the standardisation folded into ``weight``/``bias``)."""

    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor  # (classes,)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.weight.T + self.bias

    def probabilities(self, features: torch.Tensor) -> np.ndarray:
        return self.logits(features).softmax(dim=-1).numpy()

    def state_dict(self) -> dict:
        """As :func:`automl.flash.tasks.make_head`'s state dict (dropout, then the linear layer)."""
        return {"1.weight": self.weight.clone(), "1.bias": self.bias.clone()}


def fit_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    label_smoothing: float = 0.0,
    iterations: int = PROBE_ITERATIONS,
) -> LinearHead:
    """A logistic regression on ``x`` as a head on cached features is trained (see the module)."""
    x = x.float()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp(min=1e-6) if len(x) > 1 else torch.ones(x.shape[1])
    z = (x - mean) / std
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    optimiser = lbfgs(linear.parameters(), iterations)

    def closure():
        optimiser.zero_grad()
        loss = loss_fn(linear(z), y) + 0.5 * weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few thousand rows: threads only add waiting (as HeadClassifier)
    try:
        with torch.enable_grad():
            optimiser.step(closure)
    finally:
        torch.set_num_threads(threads)
    weight, bias = unstandardised(linear.weight.detach(), linear.bias.detach(), mean, std)
    return LinearHead(weight, bias)


@dataclass
class CrossValidation:
    """A candidate's scores over the folds, and its out-of-fold probabilities (one row per example)."""

    scores: list[float]
    out_of_fold: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else 0.0


def fold_indices(targets: np.ndarray, folds: int = CV_FOLDS, seed: int = 0) -> list[np.ndarray]:
    """Test indices of each fold: stratified when every class has ``folds`` examples, else as many
    folds as the smallest class allows (at least 2), else plain shuffled folds."""
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(targets)
    smallest = int(counts[counts > 0].min()) if len(counts) else 0
    folds = max(2, min(folds, len(targets)))
    if smallest >= 2:
        splitter = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
        return [test for _, test in splitter.split(np.zeros(len(targets)), targets)]
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(targets)))]


def cross_validate(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    metric: str,
    label_smoothing: float = 0.0,
    folds: int = CV_FOLDS,
    seed: int = 0,
) -> CrossValidation:
    """``metric`` of a head with this penalty, fitted on k-1 folds and scored on the k-th, for each fold."""
    from automl.target import score

    targets = y.numpy()
    out_of_fold = np.zeros((len(targets), num_classes), dtype=np.float32)
    scores = []
    for test in fold_indices(targets, folds, seed):
        train = np.setdiff1d(np.arange(len(targets)), test)
        head = fit_linear(x[train], y[train], num_classes, weight_decay, label_smoothing)
        out_of_fold[test] = head.probabilities(x[test])
        value = score(metric, targets[test], out_of_fold[test])
        if np.isfinite(value):
            scores.append(float(value))
    return CrossValidation(scores, out_of_fold)
