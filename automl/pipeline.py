"""The jobs the CLI runs. Each returns a plain result; none prints (``cli.py`` does).

``fit_baseline`` is the Flash-tier fit behind ``automl fit`` (and the baseline stage of ``automl run``).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from automl import metrics as m
from automl.config import IMAGE_CLASSIFICATION, FitConfig, dump_yaml
from automl.errors import DataError

BEST_DIR = "best"
CHECKPOINT_FILE = "model.ckpt"
LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict[str, float]
    labels: list[str]
    best_epoch: int | None
    seconds: float
    details: dict = field(default_factory=dict)

    @property
    def best_dir(self) -> Path:
        return self.run_dir / BEST_DIR


def quiet_library_warnings() -> None:
    """Warnings users cannot act on (we chose num_workers on purpose; library deprecations)."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    import logging

    from transformers.utils import logging as hf_logging

    for handler in logging.getLogger("lightning.pytorch").handlers:
        handler.addFilter(lambda record: "litlogger" not in record.getMessage())

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_data(config: FitConfig):
    """The datamodule for ``config.data``: a folder or CSV of images; a CSV, JSONL or folder of texts."""
    from automl.data import ImageClassificationData, TextClassificationData
    from automl.data.common import existing_path

    path = existing_path(config.data)
    common = {
        "val_split": config.val_split,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "num_workers": config.num_workers,
    }
    fields = {"input_field": config.input_field, "target_field": config.target_field}
    if config.task == IMAGE_CLASSIFICATION:
        kwargs = {**common, "image_size": config.image_size}
        if path.is_dir():
            return ImageClassificationData.from_folders(path, **kwargs)
        if path.suffix.lower() in (".csv", ".tsv"):
            return ImageClassificationData.from_csv(path, header=config.header, **fields, **kwargs)
        raise DataError(f"'{path}' is neither a folder of class folders nor a CSV of image paths and labels.")
    kwargs = {**common, "max_length": config.max_length}
    if path.is_dir():
        return TextClassificationData.from_folders(path, **kwargs)
    if path.suffix.lower() in (".csv", ".tsv"):
        return TextClassificationData.from_csv(path, header=config.header, **fields, **kwargs)
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return TextClassificationData.from_jsonl(path, **fields, **kwargs)
    raise DataError(f"'{path}' is not a CSV, a JSONL file or a folder of class folders of .txt files.")


def build_model(config: FitConfig, labels: list[str]):
    from automl.flash import backbones as bb
    from automl.flash.tasks import ImageClassifier, TextClassifier

    common = {
        "labels": labels,
        "pretrained": config.pretrained,
        "weights": config.weights,
        "learning_rate": config.learning_rate,
    }
    if config.task == IMAGE_CLASSIFICATION:
        return ImageClassifier(backbone=config.backbone or bb.DEFAULT_IMAGE_BACKBONE, **common)
    return TextClassifier(backbone=config.backbone or bb.DEFAULT_TEXT_BACKBONE, max_length=config.max_length, **common)


def new_run_dir(output: str | Path, task: str) -> Path:
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{task.split('_')[0]}-{secrets.token_hex(2)}"
    run_dir = Path(output) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def write_json(path: Path, values) -> None:
    """Atomic write: a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    tmp.replace(path)


def fit_baseline(config: FitConfig, progress: bool = True, run_dir: Path | None = None) -> FitResult:
    """Train the Flash-tier baseline once and save the best epoch's model under ``<run>/best/``."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from automl.flash.finetuning import finetune, parse_strategy

    quiet_library_warnings()
    started = time.monotonic()
    strategy = parse_strategy(config.strategy)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = load_data(config)
    model = build_model(config, datamodule.labels)
    run_dir = run_dir or new_run_dir(config.output, config.task)
    dump_yaml(config.to_dict(), run_dir / CONFIG_FILE)

    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-epoch{epoch}",
        monitor=m.VAL_ACCURACY,
        mode="max",
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
        callbacks=[checkpoint],
        enable_checkpointing=True,
        enable_progress_bar=progress,
        logger=CSVLogger(run_dir, name="", version="logs"),
        default_root_dir=run_dir,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
    )
    if not checkpoint.best_model_path:
        raise DataError("Training finished without a validation score; is the validation split empty?")
    validated = trainer.validate(model, datamodule=datamodule, ckpt_path=checkpoint.best_model_path, verbose=False)
    scores = {k: float(v) for k, v in validated[0].items() if k in m.VALIDATION_METRICS}
    missing = [k for k in m.VALIDATION_METRICS if k not in scores]
    if missing:
        raise RuntimeError(f"The validation run did not log {', '.join(missing)}.")

    best = run_dir / BEST_DIR
    best.mkdir(exist_ok=True)
    shutil.copy2(checkpoint.best_model_path, best / CHECKPOINT_FILE)
    write_json(best / LABELS_FILE, datamodule.labels)
    preprocessing = {**datamodule.preprocessing(), "task": config.task, "backbone": model.hparams.backbone}
    write_json(best / PREPROCESSING_FILE, preprocessing)
    best_epoch = _epoch_of(checkpoint.best_model_path)
    seconds = time.monotonic() - started
    details = {
        "task": config.task,
        "backbone": model.hparams.backbone,
        "weights": str(model.weights_source),
        "strategy": str(strategy),
        "train_size": len(datamodule.train_samples),
        "val_size": len(datamodule.val_samples),
        "labels": datamodule.labels,
    }
    write_json(run_dir / METRICS_FILE, {**scores, "best_epoch": best_epoch, "seconds": round(seconds, 1), **details})
    return FitResult(run_dir, scores, datamodule.labels, best_epoch, seconds, details)


def _devices(value: str):
    return int(value) if str(value).isdigit() else value


def _epoch_of(checkpoint_path: str) -> int | None:
    found = re.search(r"best-epoch(\d+)", Path(checkpoint_path).name)
    return int(found.group(1)) if found else None
