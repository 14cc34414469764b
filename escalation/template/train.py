"""Train the Lightning tier: ``python -m template --config config.yaml [--set key=value ...]``.

A ``Trainer`` with a checkpoint of the best epoch on the target metric, early stopping, an MLflow
logger and the device flags. ``fit(config)`` is what ``automl run`` calls for each escalation trial.
Edit freely: this file is yours once ejected.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    RichProgressBar,
    StochasticWeightAveraging,
)

from automl.errors import ConfigError
from automl.metrics import VALIDATION_METRICS, best_checkpoint_score
from automl.progress import EpochLines, plain, progress_to_stderr

from .config import TemplateConfig
from .datamodule import ClassificationData, make_datamodule
from .module import model_class


def class_weights(datamodule: ClassificationData) -> list[float] | None:
    """Inverse-frequency weights when the classes are imbalanced (largest / smallest > 1.5)."""
    counts = Counter(target for _, target in datamodule.samples.train_samples)
    sizes = [counts.get(i, 0) for i in range(len(datamodule.labels))]
    if min(sizes) == 0 or max(sizes) / min(sizes) <= 1.5:
        return None
    total = sum(sizes)
    return [total / (len(sizes) * size) for size in sizes]


def callbacks_for(config: TemplateConfig) -> list[pl.Callback]:
    monitor = config.monitor
    mode = "max" if VALIDATION_METRICS[monitor] else "min"
    callbacks = [
        ModelCheckpoint(
            dirpath=Path(config.output_dir) / "checkpoints",
            filename="best-epoch{epoch}",
            auto_insert_metric_name=False,
            monitor=monitor,
            mode=mode,
            save_top_k=1,
        ),
        EarlyStopping(monitor=monitor, mode=mode, patience=config.patience),
    ]
    if config.weight_averaging == "ema":
        callbacks.append(EMAWeightAveraging(decay=config.ema_decay))
    elif config.weight_averaging == "swa":
        lr = config.learning_rate * config.backbone_lr_ratio
        callbacks.append(StochasticWeightAveraging(swa_lrs=lr, swa_epoch_start=0.75, annealing_epochs=1))
    return callbacks


def mlflow_logger(config: TemplateConfig):
    from lightning.pytorch.loggers import MLFlowLogger

    uri = config.tracking_uri or f"sqlite:///{Path(config.output_dir).resolve()}/mlflow.db"
    return MLFlowLogger(experiment_name=config.experiment, tracking_uri=uri)


@dataclass
class FitResult:
    """What one training run gives back (``python -m template`` prints it as JSON)."""

    monitor: str  # the validation metric the best epoch was chosen on
    best_score: float | None  # None: training ended before its first validation
    checkpoint: str | None  # the best epoch's weights
    best_epoch: int | None
    epochs_run: int


def fit(
    config: TemplateConfig | dict, extra_callbacks=(), logger=None, progress: bool = True, samples=None
) -> FitResult:
    """Train once; returns the best score of ``config.monitor``, its epoch and checkpoint.
    ``samples``: the data already read and split (see ``ClassificationData``), else read here."""
    config = TemplateConfig.of(config)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = make_datamodule(config, samples)
    model = model_class(config)(config, datamodule.labels, class_weights(datamodule) if config.class_weighted else None)
    callbacks = callbacks_for(config)
    bar = progress and not plain()  # a live bar on a terminal; in a log file, a line per epoch
    if bar:  # on stderr: stdout is for results
        callbacks.append(RichProgressBar(leave=True, console_kwargs={"stderr": True}))
    elif progress and not any(isinstance(c, EpochLines) for c in extra_callbacks):
        callbacks.append(EpochLines())
    accelerator = config.accelerator
    precision: Any = config.precision  # one of the Trainer's, checked by TemplateConfig
    if precision == "auto":  # mixed precision where a GPU makes it pay
        import torch

        precision = "16-mixed" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "32-true"
    trainer = pl.Trainer(
        max_epochs=config.epochs,
        limit_train_batches=config.limit_train_batches,
        accelerator=accelerator,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=precision,
        gradient_clip_val=config.gradient_clip or None,
        callbacks=[*callbacks, *extra_callbacks],
        logger=logger if logger is not None else mlflow_logger(config),
        enable_progress_bar=bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        default_root_dir=config.output_dir,
    )
    trainer.fit(model, datamodule=datamodule)
    checkpoint = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
    best = checkpoint.best_model_path or None
    return FitResult(
        monitor=str(checkpoint.monitor),
        best_score=best_checkpoint_score(checkpoint),
        checkpoint=best,
        best_epoch=_epoch_of(best) if best else None,
        epochs_run=trainer.current_epoch,
    )


def _epoch_of(checkpoint: str) -> int | None:
    """The epoch a checkpoint's file name says (``best-epoch3.ckpt``)."""
    found = re.search(r"epoch(\d+)", Path(checkpoint).name)
    return int(found.group(1)) if found else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml", help="the YAML configuration (see README.md)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        config = TemplateConfig.load(args.config, args.set)
    except ConfigError as error:  # a typo in --set or config.yaml: said before anything trains
        sys.exit(str(error))
    progress_to_stderr(not args.quiet and plain())
    result = fit(config, progress=not args.quiet)
    print(json.dumps(dataclasses.asdict(result), indent=2))
    if result.best_score is None:
        sys.exit("training ended without a validation score")
