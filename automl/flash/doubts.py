"""Label doubts: labelled examples whose given label the model's out-of-sample probabilities disagree
with most, found by cleanlab (confident learning: per-class thresholds on out-of-fold probabilities,
ranked by how little probability the given label gets). The probabilities come from the same
logistic-regression head the search fits on a backbone's cached features, cross-validated over
train + validation, so no example is judged by a model that saw its label.

They are listed for a person to look at (the report, inspection.json), never removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: at most this many doubts are listed, the strongest first
MAX_DOUBTS = 50


@dataclass(frozen=True)
class Doubt:
    index: int  # in train + val, in the datamodule's order
    given: int  # the label the data gives
    suggested: int  # the class the out-of-fold probabilities favour
    p_given: float
    p_suggested: float


def label_doubts(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, seed: int = 0, limit: int = MAX_DOUBTS
) -> list[Doubt]:
    """The examples of ``(x, y)`` (features and given labels) whose label looks wrong, strongest first."""
    from automl.flash import heads

    folds = heads.cross_validate(x, y, num_classes, weight_decay, "val_accuracy", seed=seed)
    return doubts_from(folds.out_of_fold, y.numpy(), limit)


def doubts_from(out_of_fold: np.ndarray, targets: np.ndarray, limit: int = MAX_DOUBTS) -> list[Doubt]:
    """The doubts of labels ``targets`` given a head's out-of-fold probabilities of them."""
    from cleanlab.filter import find_label_issues

    from automl.flash import heads

    targets = np.asarray(targets).astype(np.int64)
    num_classes = out_of_fold.shape[1]
    counts = np.bincount(targets, minlength=num_classes)
    if len(targets) < 2 * heads.CV_FOLDS or (counts < 2).any():
        return []  # too few examples of some class for out-of-fold probabilities
    probabilities = out_of_fold.astype(np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    ranked = find_label_issues(targets, probabilities, return_indices_ranked_by="self_confidence")
    doubts = []
    for index in ranked[:limit]:
        row = probabilities[index]
        other = np.where(np.arange(num_classes) == targets[index], -1.0, row)
        suggested = int(other.argmax())
        doubts.append(
            Doubt(int(index), int(targets[index]), suggested, float(row[targets[index]]), float(row[suggested]))
        )
    return doubts
