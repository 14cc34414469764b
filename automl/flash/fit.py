"""Training one Flash-tier configuration: data, model, Trainer, best checkpoint, predictions.

Used by ``automl fit`` (one fit) and by every trial of ``automl run``.
"""

from __future__ import annotations

import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np

from automl import backbones as bb
from automl import metrics as m
from automl.backbones import default_backbone
from automl.config import IMAGE_CLASSIFICATION, FitConfig
from automl.errors import DataError
from automl.flash.finetuning import finetune, parse_strategy, serve_for
from automl.run_folder import CHECKPOINT_FILE, LABELS_FILE, PREPROCESSING_FILE, write_json


def quiet_library_logs() -> None:
    """Per-fit chatter (device lines, "fit stopped") that a run of many trials repeats for nothing."""
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def quiet_library_warnings() -> None:
    """Warnings users cannot act on (we chose num_workers on purpose; library deprecations)."""
    import logging

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    for handler in logging.getLogger("lightning.pytorch").handlers:
        handler.addFilter(lambda record: "💡 Tip" not in record.getMessage())  # advertisements
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


class QuietLibraries(pl.Callback):
    """The processes Lightning spawns for a distributed fit start with Python's default warning
    filters: they get ours too."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        quiet_library_warnings()


def load_data(config: FitConfig):
    """The datamodule for ``config.data``: a folder, or a CSV/Parquet table of image paths; a CSV,
    Parquet or JSONL file, a saved ``datasets`` folder or a folder of ``.txt`` files of texts."""
    from automl.data import ImageClassificationData, TextClassificationData
    from automl.data.common import existing_path

    path = existing_path(config.data)
    common: dict[str, Any] = {
        "val_split": config.val_split,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "num_workers": config.num_workers,
    }
    fields: dict[str, Any] = {
        "input_field": config.input_field,
        "target_field": config.target_field,
        "header": config.header,
    }
    if config.task == IMAGE_CLASSIFICATION:
        return ImageClassificationData.from_path(
            path, **fields, **common, image_size=config.image_size, augment=config.augment
        )
    return TextClassificationData.from_path(path, **fields, **common, max_length=config.max_length)


def data_for(config: FitConfig, datamodule):
    """``datamodule``'s samples served the way ``config`` asks (batch size, image size, max length)."""
    if config.task == IMAGE_CLASSIFICATION:
        mean, std = bb.image_normalization(default_backbone(config))  # what the backbone's weights expect
        return datamodule.with_options(
            batch_size=config.batch_size, image_size=config.image_size, augment=config.augment, mean=mean, std=std
        )
    return datamodule.with_options(batch_size=config.batch_size, max_length=config.max_length)


def build_model(config: FitConfig, labels: list[str]):
    from automl.flash.tasks import ImageClassifier, TextClassifier

    common: dict[str, Any] = {
        "labels": labels,
        "backbone": default_backbone(config),
        "pretrained": config.pretrained,
        "weights": config.weights,
        "learning_rate": config.learning_rate,
        "dropout": config.dropout,
        "weight_decay": config.weight_decay,
        "label_smoothing": config.label_smoothing,
    }
    if config.task == IMAGE_CLASSIFICATION:
        return ImageClassifier(**common)
    return TextClassifier(max_length=config.max_length, **common)


@dataclass
class Trained:
    model: pl.LightningModule
    datamodule: pl.LightningDataModule
    trainer: pl.Trainer
    checkpoint: str | None  # the best epoch's checkpoint
    best_epoch: int | None
    best_score: float | None  # the monitored metric at the best epoch


def train(
    config: FitConfig,
    datamodule,
    out_dir: Path,
    monitor: str = m.VAL_ACCURACY,
    callbacks=(),
    logger=None,
    progress: bool = True,
    limit_train_batches: float = 1.0,
    head: dict | None = None,
) -> Trained:
    """Fit ``config`` on ``datamodule``; the best epoch (by ``monitor``) is checkpointed in ``out_dir``.
    ``limit_train_batches`` below 1 trains each epoch on that share of the (shuffled) batches;
    ``head`` is a trained head's state to start from (:func:`train_head`)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    quiet_library_warnings()
    strategy = parse_strategy(config.strategy)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    model = build_model(config, datamodule.labels)
    if head is not None:
        model.head.load_state_dict(head)
    mode = "max" if m.VALIDATION_METRICS[monitor] else "min"
    checkpoint = ModelCheckpoint(
        dirpath=Path(out_dir) / "checkpoints",
        filename="best-epoch{epoch}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    trainer = finetune(
        model,
        datamodule,
        strategy=strategy.as_flash(),
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=_devices(config.devices),
        trainer_strategy=config.trainer_strategy,
        num_nodes=config.num_nodes,
        precision=config.precision,
        callbacks=[checkpoint, QuietLibraries(), *callbacks],
        enable_checkpointing=True,
        enable_progress_bar=progress,
        logger=logger if logger is not None else False,
        default_root_dir=out_dir,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        limit_train_batches=limit_train_batches,
    )
    best = checkpoint.best_model_path or None
    return Trained(model, datamodule, trainer, best, _epoch_of(best), m.best_checkpoint_score(checkpoint))


class _BestHead(pl.Callback):
    """Keeps the head's weights of the best epoch in memory (a head-only trial writes no checkpoint
    per epoch: it has many, each milliseconds long)."""

    def __init__(self, monitor: str):
        self.monitor, self.maximize = monitor, m.VALIDATION_METRICS[monitor]
        self.score: float | None = None
        self.epoch: int | None = None
        self.state: dict | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        value = float(value)
        if self.score is None or (value > self.score if self.maximize else value < self.score):
            self.score, self.epoch = value, trainer.current_epoch
            self.state = {k: v.detach().clone() for k, v in pl_module.head.state_dict().items()}


def train_head(
    config: FitConfig,
    datamodule,
    out_dir: Path,
    features,
    monitor: str = m.VAL_ACCURACY,
    callbacks=(),
    logger=None,
    checkpoint: bool = True,
) -> Trained:
    """A ``freeze`` trial without augmentation: the head trains on ``features`` (the frozen backbone's
    cached outputs, :mod:`automl.flash.features`), then goes back on its backbone; the checkpoint in
    ``out_dir`` is the whole classifier's, as :func:`train` writes it (unless ``checkpoint`` is False:
    the head then only starts a fine-tuning)."""
    import torch

    from automl.flash.features import HeadClassifier

    quiet_library_warnings()
    pl.seed_everything(config.seed, workers=True, verbose=False)
    head = HeadClassifier(
        datamodule.labels,
        features,
        weight_decay=config.weight_decay,
        epochs=config.epochs,
        label_smoothing=config.label_smoothing,
    )
    best = _BestHead(monitor)
    threads = torch.get_num_threads()
    if features.train.numel() < 10_000_000:
        # a linear layer on a few thousand rows is too small to split: threads only add waiting (8x
        # slower measured on 2 busy cores)
        torch.set_num_threads(1)
    try:
        trainer = _fit_head(head, features, datamodule, config, best, callbacks, logger, out_dir)
    finally:
        torch.set_num_threads(threads)
    if best.state is None:
        return Trained(head, datamodule, trainer, None, None, None)
    torch.manual_seed(config.seed)  # --no-pretrained: the random backbone the features came from
    model = build_model(config, datamodule.labels)
    model.head.load_state_dict(head.classifier_head(best.state))
    if not checkpoint:
        return Trained(model, datamodule, trainer, None, best.epoch, best.score)
    assert best.epoch is not None, "a head with a best state has its epoch"
    path = Path(out_dir) / "checkpoints" / f"best-epoch{best.epoch}.ckpt"
    save_checkpoint(model, path, best.epoch)
    return Trained(model, datamodule, trainer, str(path), best.epoch, best.score)


def _fit_head(head, features, datamodule, config: FitConfig, best, callbacks, logger, out_dir: Path):
    from automl.flash.features import FeatureData

    return finetune(
        head,
        FeatureData(features, datamodule.labels),
        strategy="no_freeze",
        max_epochs=1,  # one L-BFGS solve (HeadClassifier): more epochs repeat a converged solution
        # a linear layer on features already in memory: no GPU memory to run out of, no copies
        accelerator="cpu",
        devices=1,
        callbacks=[best, QuietLibraries(), *callbacks],
        enable_progress_bar=False,
        logger=logger if logger is not None else False,
        default_root_dir=out_dir,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )


def measure_training_step(config: FitConfig, datamodule, steps: int = 2) -> float | None:
    """Seconds per training example of fine-tuning ``config`` on this machine: ``steps`` real steps
    (batches read and augmented, forward, backward, optimiser step) at its batch size and input size,
    after one untimed step; every parameter trains (the dearest phase of any strategy). None when
    the training split holds fewer than two batches."""
    import time

    import torch

    served = data_for(config, datamodule)
    few = served.with_options(train_samples=datamodule.train_samples[: config.batch_size * (steps + 1)])
    pl.seed_everything(config.seed, verbose=False)
    model = build_model(config, datamodule.labels)
    serve_for(model, few)
    cuda = config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)

    def step(batch) -> int:
        inputs, targets = batch
        inputs = {k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.to(device)
        loss = torch.nn.functional.cross_entropy(model(inputs), targets.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(targets)

    batches = iter(few.train_dataloader())
    first = next(batches, None)
    if first is None:
        return None
    step(first)  # untimed: lazy initialisation, caches
    if cuda:
        torch.cuda.synchronize()
    started, examples = time.perf_counter(), 0
    for batch in batches:
        examples += step(batch)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / examples if examples else None


def save_checkpoint(model: pl.LightningModule, path: Path, epoch: int) -> None:
    """A checkpoint ``load_from_checkpoint`` reads, for a model no ``Trainer`` fitted as a whole."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": pl.__version__,
        "epoch": epoch,
        "global_step": 0,
    }
    model.on_save_checkpoint(checkpoint)  # as a Trainer would: plain hyper-parameters, the normalisation
    tmp = path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)


def validate(trained: Trained) -> dict[str, float]:
    """Every validation metric of the best checkpoint."""
    if not trained.checkpoint:
        raise DataError("Training finished without a validation score; is the validation split empty?")
    results = trained.trainer.validate(
        trained.model, datamodule=trained.datamodule, ckpt_path=trained.checkpoint, verbose=False
    )
    scores = {k: float(v) for k, v in results[0].items() if k in m.VALIDATION_METRICS}
    missing = [k for k in m.VALIDATION_METRICS if k not in scores]
    if missing:
        raise RuntimeError(f"The validation run did not log {', '.join(missing)}.")
    return scores


def load_classifier(checkpoint: str | Path, trust: bool = False):
    """A trained ImageClassifier or TextClassifier from its checkpoint (no pretrained weights needed),
    loaded with ``weights_only=True`` unless ``trust`` (see ``automl.checkpoints``)."""
    from automl import checkpoints
    from automl.flash.tasks import ImageClassifier, TextClassifier

    hparams = checkpoints.load(checkpoint, trust).get("hyper_parameters", {})
    cls = TextClassifier if "max_length" in hparams else ImageClassifier
    return checkpoints.load_module(cls, checkpoint, trust, pretrained=False)


def predict_validation(model, datamodule, accelerator: str = "auto") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(true class indices, class probabilities, inputs: image paths or texts) for the validation split."""
    import torch

    predict = datamodule.with_options(predict_samples=datamodule.val_samples)
    serve_for(model, predict)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    batches = cast("list[torch.Tensor]", trainer.predict(model, datamodule=predict))  # one dataloader
    probabilities = torch.cat(batches).float().numpy()
    targets = np.array([target for _, target in datamodule.val_samples])
    return targets, probabilities, [item for item, _ in datamodule.val_samples]


def save_best(out: Path, checkpoint: str, datamodule, config: FitConfig) -> None:
    """``out/`` gets the checkpoint, the labels and the preprocessing a deployed model needs."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint, out / CHECKPOINT_FILE)
    write_json(out / LABELS_FILE, datamodule.labels)
    backbone = default_backbone(config)
    preprocessing = {**datamodule.preprocessing(), "task": config.task, "backbone": backbone}
    write_json(out / PREPROCESSING_FILE, preprocessing)


def _devices(value: str):
    return int(value) if str(value).isdigit() else value


def _epoch_of(checkpoint_path: str | None) -> int | None:
    found = re.search(r"best-epoch(\d+)", Path(checkpoint_path).name) if checkpoint_path else None
    return int(found.group(1)) if found else None
