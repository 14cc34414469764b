"""Train the Lightning tier: ``python train.py --config config.yaml [--set key=value ...]``.

A ``Trainer`` with a checkpoint of the best epoch on the target metric, early stopping, an MLflow
logger and the device flags. ``fit(config)`` is what ``automl run`` calls for each escalation trial.
Edit freely: this file is yours once ejected.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import yaml
from datamodule import TemplateDataModule
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    RichProgressBar,
    StochasticWeightAveraging,
)
from module import TemplateModule

from automl.metrics import VALIDATION_METRICS, best_checkpoint_score
from automl.progress import EpochLines, plain, progress_to_stderr


def class_weights(datamodule: TemplateDataModule) -> list[float] | None:
    """Inverse-frequency weights when the classes are imbalanced (largest / smallest > 1.5)."""
    counts = Counter(target for _, target in datamodule.samples.train_samples)
    sizes = [counts.get(i, 0) for i in range(len(datamodule.labels))]
    if min(sizes) == 0 or max(sizes) / min(sizes) <= 1.5:
        return None
    total = sum(sizes)
    return [total / (len(sizes) * size) for size in sizes]


def callbacks_for(config: dict) -> list[pl.Callback]:
    monitor = config.get("monitor", "val_accuracy")
    mode = "max" if VALIDATION_METRICS[monitor] else "min"
    callbacks = [
        ModelCheckpoint(
            dirpath=Path(config.get("output_dir", "outputs")) / "checkpoints",
            filename="best-epoch{epoch}",
            auto_insert_metric_name=False,
            monitor=monitor,
            mode=mode,
            save_top_k=1,
        ),
        EarlyStopping(monitor=monitor, mode=mode, patience=config.get("patience", 3)),
    ]
    averaging = config.get("weight_averaging", "none")
    if averaging == "ema":
        callbacks.append(EMAWeightAveraging(decay=config.get("ema_decay", 0.99)))
    elif averaging == "swa":
        lr = config.get("learning_rate", 1e-3) * config.get("backbone_lr_ratio", 0.1)
        callbacks.append(StochasticWeightAveraging(swa_lrs=lr, swa_epoch_start=0.75, annealing_epochs=1))
    return callbacks


def mlflow_logger(config: dict):
    from lightning.pytorch.loggers import MLFlowLogger

    uri = config.get("tracking_uri") or f"sqlite:///{Path(config.get('output_dir', 'outputs')).resolve()}/mlflow.db"
    return MLFlowLogger(experiment_name=config.get("experiment", "automl-template"), tracking_uri=uri)


def fit(config: dict, extra_callbacks=(), logger=None, progress: bool = True, samples=None) -> dict:
    """Train once; returns the best score of ``config["monitor"]``, its epoch and checkpoint.
    ``samples``: the data already read and split (see ``TemplateDataModule``), else read here."""
    pl.seed_everything(config.get("seed", 42), workers=True, verbose=False)
    datamodule = TemplateDataModule(config, samples)
    model = TemplateModule(
        config, datamodule.labels, class_weights(datamodule) if config.get("class_weighted") else None
    )
    callbacks = callbacks_for(config)
    bar = progress and not plain()  # a live bar on a terminal; in a log file, a line per epoch
    if bar:  # on stderr: stdout is for results
        callbacks.append(RichProgressBar(leave=True, console_kwargs={"stderr": True}))
    elif progress and not any(isinstance(c, EpochLines) for c in extra_callbacks):
        callbacks.append(EpochLines())
    accelerator = config.get("accelerator", "auto")
    precision = config.get("precision", "auto")
    if precision == "auto":  # mixed precision where a GPU makes it pay
        import torch

        precision = "16-mixed" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "32-true"
    trainer = pl.Trainer(
        max_epochs=config.get("epochs", 10),
        limit_train_batches=config.get("limit_train_batches", 1.0),
        accelerator=accelerator,
        devices=config.get("devices", "auto"),
        strategy=config.get("strategy", "auto"),
        num_nodes=config.get("num_nodes", 1),
        precision=precision,
        gradient_clip_val=config.get("gradient_clip", 0.0) or None,
        callbacks=[*callbacks, *extra_callbacks],
        logger=logger if logger is not None else mlflow_logger(config),
        enable_progress_bar=bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        default_root_dir=config.get("output_dir", "outputs"),
    )
    trainer.fit(model, datamodule=datamodule)
    checkpoint = callbacks[0]
    best = checkpoint.best_model_path or None
    return {
        "monitor": checkpoint.monitor,
        "best_score": best_checkpoint_score(checkpoint),
        "checkpoint": best,
        "best_epoch": int(re.search(r"epoch(\d+)", Path(best).name).group(1)) if best else None,
        "epochs_run": trainer.current_epoch,
    }


#: keys a config.yaml may leave out (their defaults are in the code above)
OPTIONAL_KEYS = ("tracking_uri", "experiment", "precision", "strategy", "num_nodes", "limit_train_batches")


def load_config(path: str, overrides: list[str]) -> dict:
    """The YAML configuration with ``KEY=VALUE`` overrides; a key it does not know (a typo) is an
    error that lists the valid ones, not a setting silently ignored."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    valid = sorted(set(config) | set(OPTIONAL_KEYS))
    for item in overrides:
        key, equals, value = item.partition("=")
        if not equals:
            sys.exit(f"--set takes KEY=VALUE, got {item!r}.")
        if key not in valid:
            sys.exit(f"Unknown configuration key {key!r} in --set. Valid keys: {', '.join(valid)}.")
        config[key] = yaml.safe_load(value)
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml", help="the YAML configuration (see README.md)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    progress_to_stderr(not args.quiet and plain())
    result = fit(config, progress=not args.quiet)
    print(json.dumps(result, indent=2))
    if result["best_score"] is None:
        sys.exit("training ended without a validation score")


if __name__ == "__main__":
    main()
