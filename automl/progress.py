"""Progress a person can read in a log file: plain lines instead of a live bar when stderr is not a
terminal, and ``run.log`` in the run folder.

Two loggers carry the lines: ``automl.run.progress`` (one line per epoch, one per trial) and
``automl.run.stages`` (the stage lines the CLI also prints). Both end in ``run.log`` when a run has
attached it (:func:`attach_run_log`); the progress lines also go to stderr when the CLI asks for
them (:func:`progress_to_stderr`: stderr is not a terminal, and no ``-q``). On a terminal Lightning's
live bar shows the epochs instead, as before.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl

from automl import metrics as m

RUN_LOG = "run.log"
#: parent of the two below; ``run.log`` hangs here, and nothing propagates to the root logger
LOG = logging.getLogger("automl.run")
PROGRESS = logging.getLogger("automl.run.progress")
STAGES = logging.getLogger("automl.run.stages")
LOG.setLevel(logging.INFO)
LOG.propagate = False
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_run_log: tuple[str, str] | None = None  # the attached run log: its path, and who writes it


def plain() -> bool:
    """Whether progress should be plain lines: stderr is a file, a pipe (CI, ``nohup``, a scheduler)."""
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by something without a file, or closed
        return True


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is written (a test runner swaps it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def progress_to_stderr(enabled: bool) -> None:
    """Epoch and trial lines also go to stderr (the CLI: stderr is not a terminal, no ``-q``), or not."""
    for handler in [h for h in PROGRESS.handlers if isinstance(h, _Stderr)]:
        PROGRESS.removeHandler(handler)
    if enabled:
        PROGRESS.addHandler(_Stderr())


def attach_run_log(run_dir: Path, who: str = "") -> Path:
    """``run_dir/run.log`` gets every line from now on (appended: a resumed run continues it); ``who``
    names the process in each line, for workers sharing a run folder. One run log per process: a
    previous one is detached."""
    global _run_log
    detach_run_log()
    path = Path(run_dir) / RUN_LOG
    _add_file_handler(str(path), who)
    _run_log = (str(path), who)
    return path


def detach_run_log() -> None:
    global _run_log
    _run_log = None
    for handler in [h for h in LOG.handlers if isinstance(h, logging.FileHandler)]:
        LOG.removeHandler(handler)
        handler.close()


def _add_file_handler(path: str, who: str) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    prefix = f"{who} " if who else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(message)s", TIME_FORMAT))
    LOG.addHandler(handler)


#: where a job's lines go besides run.log (the CLI prints them on stderr)
Report = Callable[[str], None]


def stage_line(line: str) -> None:
    """A stage line, for ``run.log`` (the CLI prints it on stderr itself)."""
    STAGES.info(line)


def log_error(error: BaseException) -> None:
    """What ended a run, as the last line of its ``run.log`` (the CLI prints it on stderr)."""
    from automl.errors import AutoMLError

    if isinstance(error, KeyboardInterrupt):
        stage_line("stopped: interrupted")
    elif not isinstance(error, SystemExit):
        stage_line(f"error: {error}" if isinstance(error, AutoMLError) else f"error: {type(error).__name__}: {error}")


def _where_lines_go() -> tuple[tuple[str, str] | None, bool]:
    """This process's run log and whether progress goes to stderr: handed to the processes Lightning
    spawns for a distributed trial, which start without them."""
    return _run_log, any(isinstance(h, _Stderr) for h in PROGRESS.handlers)


def _send_lines_to(run_log: tuple[str, str] | None, stderr: bool) -> None:
    if run_log and not any(isinstance(h, logging.FileHandler) for h in LOG.handlers):
        _add_file_handler(*run_log)
    if stderr and not any(isinstance(h, _Stderr) for h in PROGRESS.handlers):
        PROGRESS.addHandler(_Stderr())


def short(value) -> str:
    """A parameter as a person reads it in a line: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


#: parameter names as a trial line abbreviates them
SHORT_NAMES = {
    "learning_rate": "lr",
    "batch_size": "batch",
    "weight_decay": "wd",
    "label_smoothing": "smoothing",
    "image_size": "size",
    "max_length": "length",
    "backbone_lr_ratio": "backbone_lr",
    "warmup_epochs": "warmup",
    "weight_averaging": "averaging",
}


def short_params(params: dict) -> str:
    """``backbone=x strategy=y lr=0.002 batch=32 ...``: the backbone and strategy first."""
    first = [k for k in ("backbone", "strategy") if k in params]
    keys = first + [k for k in params if k not in first]
    return " ".join(f"{SHORT_NAMES.get(k, k)}={short(params[k])}" for k in keys)


def _metric_order(name: str) -> tuple[int, str]:
    known = [m.TRAIN_LOSS, m.TRAIN_ACCURACY, *m.VALIDATION_METRICS]
    return (known.index(name), "") if name in known else (len(known), name)


class EpochLines(pl.Callback):
    """One line per epoch with that epoch's metrics, into ``automl.run.progress``:
    ``trial #3 epoch 2/5: train_loss=0.412 val_loss=0.388 val_accuracy=0.912 ... (4.1s)``.

    ``first`` epochs of the trial were trained before this fit (a head on cached features), and the
    lines count on from them. Only rank zero of a distributed fit writes; the processes Lightning
    spawns for one get this process's run log and stderr setting."""

    def __init__(self, label: str = "", first: int = 0):
        self.label, self.first = label, first
        self._owner = os.getpid()
        self._where = _where_lines_go()
        self._validated = False
        self._since: float | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if os.getpid() != self._owner:  # a process Lightning spawned for this fit
            _send_lines_to(*self._where)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._since is None:
            self._since = time.monotonic()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        done = trainer.current_epoch + 1  # Lightning's epochs finished, this one included
        if trainer.is_global_zero:
            PROGRESS.info(self.line(trainer, done))
        self._validated, self._since = False, None

    def line(self, trainer, done: int) -> str:
        values = self._metrics(trainer)
        epoch = self.first + done
        epochs = trainer.max_epochs
        total = "" if epochs is None or epochs < 0 else f"/{self.first + epochs}"
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items(), key=lambda kv: _metric_order(kv[0])))
        prefix = f"{self.label} " if self.label else ""
        return f"{prefix}epoch {epoch}{total}: {metrics or 'no metrics'}{self._seconds()}"

    def _seconds(self) -> str:
        return f" ({time.monotonic() - self._since:.1f}s)" if self._since is not None else ""

    def _metrics(self, trainer) -> dict[str, float]:
        values = {}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_step") or (key.startswith("val_") and not self._validated):
                continue  # a step's value, or a validation from an earlier epoch
            try:
                values[key.removesuffix("_epoch")] = float(value)
            except (TypeError, ValueError):
                continue
        return values


class SolveLine(EpochLines):
    """The one line of a head fitted on cached features in one L-BFGS solve, not an epoch of many:
    ``trial #3 head: one L-BFGS fit, 37 iterations: train_loss=0.21 val_accuracy=0.95 (0.4s)``."""

    def line(self, trainer, done: int) -> str:
        module = trainer.lightning_module
        iterations = module.solver_iterations() if hasattr(module, "solver_iterations") else None
        values = self._metrics(trainer)
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items(), key=lambda kv: _metric_order(kv[0])))
        solve = "one L-BFGS fit" + (f", {iterations} iterations" if iterations is not None else "")
        return f"{self.label} head: {solve}: {metrics or 'no metrics'}{self._seconds()}"
