"""The Lightning callbacks a trial of either tier trains with: the time budget's deadline, Ctrl-C
stopping after the epoch (:class:`StopRequest`, the run's SIGINT handler), and Optuna's pruning.
The per-epoch lines are ``automl.progress.EpochLines``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import lightning.pytorch as pl


class Deadline(pl.Callback):
    """Stops training at the time-budget deadline; the epochs already validated still count."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.triggered = False

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.deadline is None:
            return
        due = time.time() >= self.deadline
        if trainer.world_size > 1:  # every process of a distributed trial stops at the same batch
            due = trainer.strategy.reduce_boolean_decision(due, all=False)
        if due:
            self.triggered = True
            trainer.should_stop = True


class StopRequest:
    """Ctrl-C during a run: the first asks to stop after the current epoch (the running trial keeps
    its validated epochs, no new trial starts); the second stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self, say: Callable[[str], None] = print) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers live in the main thread only

        def handler(signum, frame):
            if self.requested:
                signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
                raise KeyboardInterrupt
            self.requested = True
            say("interrupted: stopping after the current epoch and writing the report (Ctrl-C again to stop now)")

        self._previous = signal.signal(signal.SIGINT, handler)

    def __getstate__(self) -> dict:  # sent to the processes of a distributed trial: the flag only
        return {"requested": self.requested, "_previous": None}

    def uninstall(self) -> None:
        import signal
        import threading

        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class StopAtEpochEnd(pl.Callback):
    """Ends a fit after the epoch that was running when a stop was requested (its validation done).

    Ctrl-C reaches every process of a distributed trial: each spawned one listens for it too, and
    they stop together when any of them heard it."""

    def __init__(self, stop: StopRequest):
        self.stop = stop
        self._owner = os.getpid()

    def setup(self, trainer, pl_module, stage: str) -> None:
        if os.getpid() != self._owner:  # a process Lightning spawned for this trial
            self.stop = StopRequest()
            self.stop.install(say=lambda message: None)  # the run's own process says it

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        requested = self.stop.requested
        if trainer.world_size > 1:
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            trainer.should_stop = True


def pruning_callback(trial, monitor: str):
    from optuna_integration import PyTorchLightningPruningCallback

    return PyTorchLightningPruningCallback(trial, monitor=monitor)


def raise_if_pruned(callbacks) -> None:
    """After a distributed fit: Optuna's callback decided in a spawned process and left the decision
    in the study; raise ``TrialPruned`` here as a one-process fit would have (a no-op otherwise)."""
    for callback in callbacks:
        if hasattr(callback, "check_pruned"):
            callback.check_pruned()
