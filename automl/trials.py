"""One trial's life, whichever tier trains it: an MLflow child run around the fit, one retry at half
the batch size when the GPU runs out of memory, a clear message when the disk is full, and only the
best trial's checkpoint kept on disk. Also the lines a person reads about each trial.

``TrialLife(...).tracked(tier, fit_trial)`` turns ``fit_trial(number, params, callbacks, logger) ->
TrialOutcome`` into what ``Tuner.run`` calls: ``train(number, params, callbacks) -> TrialOutcome``.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from automl import trial_record, tuning
from automl.callbacks import raise_if_pruned
from automl.progress import PROGRESS, short_params
from automl.trial_record import Tier

FitTrial = Callable[..., tuning.TrialOutcome]  # (number, params, callbacks, logger) -> outcome
Say = Callable[[str], None]


class TrialLife:
    """The parts of a trial that are the same for every tier: tracking, retries, clean-up."""

    def __init__(
        self, tracker, parent: str, run_dir: Path, metric: str, maximize: bool, say: Say, batch_size: int = 32
    ):
        self.tracker, self.parent, self.run_dir = tracker, parent, Path(run_dir)
        self.metric, self.maximize, self.say = metric, maximize, say
        self.batch_size = batch_size  # a trial's when its parameters do not say

    def tracked(self, tier: str, fit_trial: FitTrial):
        """A trial as the study sees it: an MLflow child run around ``fit_trial``; a pruned or failed
        trial's checkpoints removed, and only the best finished trial's kept."""
        folder = self.run_dir / ("trials" if tier == Tier.FLASH else "escalation")

        def train(number: int, params: dict, callbacks: list) -> tuning.TrialOutcome:
            child = self.tracker.start_child(
                self.parent, f"{tier} trial {number}", params, {"trial": str(number), "tier": tier}
            )
            status = "FAILED"
            try:
                try:
                    outcome = self._fit_with_oom_retry(fit_trial, number, params, callbacks, child)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    raise RuntimeError(
                        f"the disk is full (writing {error.filename or folder}); its partial checkpoint is "
                        f"removed. Free space under {self.run_dir} or give --output another disk, then run "
                        "the same command again"
                    ) from error
                raise_if_pruned(callbacks)  # decided in a process of a distributed trial
                if outcome.checkpoint is None:
                    raise RuntimeError("stopped before its first validation (time budget)")
                status = "FINISHED"
                self.tracker.log_metrics(child, {f"best_{self.metric}": outcome.score})
                keep_only_best(folder, number, outcome.score, self.maximize)
                return outcome
            except BaseException as error:
                status = "KILLED" if tuning.is_pruned(error) else "FAILED"
                shutil.rmtree(folder / str(number) / "checkpoints", ignore_errors=True)
                self.tracker.set_tags(child, {"outcome": tuning.describe_error(error)[:500]})
                raise
            finally:
                self.tracker.end(child, status)

        return train

    def _fit_with_oom_retry(self, fit_trial: FitTrial, number: int, params: dict, callbacks: list, child: str):
        """Out of GPU memory: one more try at half the batch size, then the trial fails with both sizes."""
        import torch

        try:
            return fit_trial(number, params, callbacks, self.tracker.lightning_logger(child))
        except Exception as error:
            if not tuning.is_out_of_memory(error):
                raise
            size = int(params.get("batch_size", self.batch_size))
            half = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.say(f"trial {number}: out of GPU memory at batch size {size}; trying once more with {half}")
            self.tracker.set_tags(child, {"oom_retry_batch_size": half})
            try:
                return fit_trial(
                    number, {**params, "batch_size": half}, callbacks, self.tracker.lightning_logger(child)
                )
            except Exception as again:
                if not tuning.is_out_of_memory(again):
                    raise
                raise RuntimeError(
                    f"out of GPU memory at batch size {size} and again at {half} ({tuning.describe_error(again)})"
                ) from error


def keep_only_best(trials_dir: Path, number: int, score: float, maximize: bool) -> None:
    """Checkpoints of trials that are not the best so far are deleted (they can be large)."""
    marker = trials_dir / "best.json"
    best = json.loads(marker.read_text()) if marker.exists() else None
    better = best is None or (score > best["score"] if maximize else score < best["score"])
    loser = best["number"] if better and best is not None else (None if better else number)
    if better:
        marker.write_text(json.dumps({"number": number, "score": score}))
    if loser is not None:
        shutil.rmtree(trials_dir / str(loser) / "checkpoints", ignore_errors=True)


class TrialLines:
    """What a person reads about the trials of one stage: ``[3/7] tuning: trial 7/20 (#6), best 0.913,
    6m left`` as each starts, a line with its result when it ends (``run.log``; stderr when it is no
    terminal), and who is running the trials it waits for."""

    def __init__(self, say: Say, number: int, total: int, role: str, metric: str):
        self.say, self.prefix, self.role, self.metric = say, f"[{number}/{total}] {role}", role, metric

    def started(self, p) -> None:
        left = "" if p.seconds_left is None else f", {minutes(p.seconds_left)} left"
        best = "" if p.best is None else f", best {p.best:.3f}"
        # the count (a trial closed unused, e.g. one that did not fit the time left, is not one), and
        # the trial's number as the epoch lines, study.csv and MLflow name it
        self.say(f"{self.prefix}: trial {p.finished + 1}/{p.total} (#{p.number}){best}{left}")

    def ended(self, trial) -> None:
        state = trial.state.name.lower()
        seconds = trial.user_attrs.get(trial_record.SECONDS)
        took = "" if seconds is None else f" in {minutes(seconds)}"
        if state == "complete":
            result = f"{state}{took}: {self.metric}={trial.value:.4f}"
        else:  # failed or pruned, with the reason
            why = trial_record.reason(trial) or ""
            result = f"{state}{took}" + (f" ({why.splitlines()[0][:200]})" if why.strip() else "")
        PROGRESS.info(f"{self.prefix}: trial #{trial.number} {result}; {short_params(trial.params)}")

    def waiting(self, running: list) -> None:
        workers = sorted({str(t.user_attrs.get(trial_record.WORKER, "a starting worker")) for t in running})
        self.say(f"{self.prefix}: waiting for {len(running)} trial(s) running in other workers ({', '.join(workers)})")

    def narrowed(self, reason: str) -> None:
        self.say(f"{self.prefix}: from now on only heads on cached features: {reason}")

    def hooks(self) -> dict:
        """The keyword arguments of ``Tuner.run`` that show these lines."""
        return {
            "on_trial": self.started,
            "on_trial_end": self.ended,
            "on_wait": self.waiting,
            "on_narrow": self.narrowed,
        }


def minutes(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds / 60:.0f}m" if seconds >= 90 else f"{seconds:.0f}s"
