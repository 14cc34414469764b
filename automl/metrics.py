"""Metric names shared by ``self.log``, checkpoints, pruning, targets, tracking and reports.

Never retype these strings elsewhere: import the constants.
"""

from __future__ import annotations

TRAIN_LOSS = "train_loss"
TRAIN_ACCURACY = "train_accuracy"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
VAL_F1_MACRO = "val_f1_macro"
VAL_PRECISION_MACRO = "val_precision_macro"
VAL_RECALL_MACRO = "val_recall_macro"
VAL_AUROC = "val_auroc"

#: Metrics computed on the validation split, and whether larger is better.
VALIDATION_METRICS: dict[str, bool] = {
    VAL_ACCURACY: True,
    VAL_F1_MACRO: True,
    VAL_PRECISION_MACRO: True,
    VAL_RECALL_MACRO: True,
    VAL_AUROC: True,
    VAL_LOSS: False,
}


def build_metric_collection(num_classes: int, prefix: str):
    """A torchmetrics ``MetricCollection`` whose keys become ``<prefix>accuracy`` etc."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassAUROC,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "precision_macro": MulticlassPrecision(num_classes, average="macro"),
            "recall_macro": MulticlassRecall(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes, average="macro"),
        },
        prefix=prefix,
    )


def best_checkpoint_score(checkpoint) -> float | None:
    """The monitored metric at a ``ModelCheckpoint``'s best epoch. A fit in spawned processes
    (``ddp_spawn``) brings back the best checkpoint's path but not its score: the file holds it."""
    if checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score)
    if not checkpoint.best_model_path:
        return None
    from automl.checkpoints import load

    saved = load(checkpoint.best_model_path)
    states = [state for key, state in saved.get("callbacks", {}).items() if key.startswith("ModelCheckpoint")]
    return next((float(s["best_model_score"]) for s in states if s.get("best_model_score") is not None), None)
