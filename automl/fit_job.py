"""``automl fit``: train the Flash-tier baseline once, into a new run folder."""

from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from automl.config import FitConfig, dump_yaml
from automl.run_folder import BEST_DIR, CONFIG_FILE, METRICS_FILE, write_json

#: Lightning's "ddp" starts each other rank by running the same command: they find the run folder here
RUN_DIR_ENV = "AUTOML_RUN_DIR"


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


def new_run_dir(output: str | Path, task: str) -> Path:
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{task.split('_')[0]}-{secrets.token_hex(2)}"
    run_dir = Path(output) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def fit_baseline(config: FitConfig, progress: bool = True, run_dir: Path | None = None) -> FitResult:
    """Train the Flash-tier baseline once and save the best epoch's model under ``<run>/best/``."""
    from lightning.pytorch.loggers import CSVLogger

    from automl.flash import fit

    started = time.monotonic()
    datamodule = fit.load_data(config)
    # Lightning's "ddp" starts each other rank by running this same command again: they find the run
    # folder the first one made in the environment it hands down.
    inherited = os.environ.get(RUN_DIR_ENV)
    run_dir = run_dir or (Path(inherited) if inherited else new_run_dir(config.output, config.task))
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        dump_yaml(config.to_dict(), run_dir / CONFIG_FILE)
        trained = fit.train(
            config, datamodule, run_dir, logger=CSVLogger(run_dir, name="", version="logs"), progress=progress
        )
        scores = fit.validate(trained)
    finally:  # handed to the other ranks only: the next fit in this process makes its own folder
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)
    if not trained.trainer.is_global_zero:
        sys.exit(0)  # a helper rank of a distributed fit: rank zero writes the results
    assert trained.checkpoint is not None, "fit.validate refuses a training without a validated epoch"
    fit.save_best(run_dir / BEST_DIR, trained.checkpoint, datamodule, config)
    seconds = time.monotonic() - started
    details = {
        "task": config.task,
        "backbone": fit.default_backbone(config),
        "weights": str(trained.model.weights_source),
        "strategy": config.strategy,
        "train_size": len(datamodule.train_samples),
        "val_size": len(datamodule.val_samples),
        "labels": datamodule.labels,
    }
    write_json(
        run_dir / METRICS_FILE, {**scores, "best_epoch": trained.best_epoch, "seconds": round(seconds, 1), **details}
    )
    return FitResult(run_dir, scores, datamodule.labels, trained.best_epoch, seconds, details)
