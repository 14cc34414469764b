"""The study loop of either tier: :class:`Tuner` runs an Optuna study's trials until the requested
total, the time budget or Ctrl-C stops it, and :func:`chosen` is the trial the study picks.

Training is a function handed in (``train(number, params, callbacks) -> TrialOutcome``, see
``automl.trainers.Trainers``), so the loop can be tested with any function. Where a trial's parameters
come from is ``automl.space``; the callbacks a trial trains with, ``automl.callbacks``; what a study
shared by several workers needs (heartbeats, dead and surplus trials), ``automl.shared_study``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna

from automl import shared_study as shared
from automl.callbacks import Deadline, StopAtEpochEnd, StopRequest, pruning_callback
from automl.errors import StoreUnavailable
from automl.trial_record import (
    BEST_EPOCH,
    CHECKPOINT,
    CV_MEAN,
    FAIL_REASON,
    PROBE_INDEX,
    PRUNED_REASON,
    ROLE,
    SECONDS,
    STARTED_AT,
    STOPPED_AT_DEADLINE,
    SURPLUS,
    WORKER,
    Role,
    TrialRecord,
    closed_unused,
    role,
)

if TYPE_CHECKING:
    from automl.space import SearchSpace


def chosen(trials: list, maximize: bool):
    """The trial a study chooses: heads on cached features ranked by their cross-validated mean
    (:data:`CV_MEAN`; one validation split cannot rank candidates a few points apart), then the best
    head against the best other trial (a fine-tune, which has one split only) on the validation split
    they share. Trials without a cross-validated score (every one of the Lightning tier) by their value."""
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    if not complete:
        return None
    pick = max if maximize else min
    heads = [t for t in complete if t.user_attrs.get(CV_MEAN) is not None]
    others = [t for t in complete if t.user_attrs.get(CV_MEAN) is None]
    finalists = [pick(others, key=lambda t: (t.value, -t.number))] if others else []
    if heads:
        finalists.append(pick(heads, key=lambda t: (t.user_attrs[CV_MEAN], t.value, -t.number)))
    return pick(finalists, key=lambda t: (t.value, -t.number))


@dataclass
class TrialOutcome:
    """What one training run gives back to the study."""

    score: float | None  # the best value of the monitored metric over the trial's epochs (None: none)
    checkpoint: str | None = None
    best_epoch: int | None = None
    stopped_at_deadline: bool = False
    extra: dict = field(default_factory=dict)


TrainFn = Callable[[int, dict, list], TrialOutcome]


class NoTimeForTrial(Exception):
    """Raised by a training function when the trial cannot fit the time budget left: the trial is
    closed unused (not counted) and the study stops for the budget."""


class SkipTrial(NoTimeForTrial):
    """This trial's backbone cannot even run over the data once in the time left (its first look):
    closed unused like any trial that does not fit, and kept in ``Tuner.skipped`` for the stage's note."""


class SurplusTrial(Exception):
    """Raised for a trial another worker made unnecessary; it is closed unused and not counted."""


def describe_error(error: BaseException) -> str:
    """``Type: message`` of a trial's error; for one raised in a process of a distributed trial, the
    original error (the last line of its traceback) rather than the wrapper around it."""
    text = str(error)
    if type(error).__name__ == "ProcessRaisedException":
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else type(error).__name__
    return f"{type(error).__name__}: {text}"


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA out of memory, raised here or in a process of a distributed trial."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return type(error).__name__ == "ProcessRaisedException" and "OutOfMemoryError" in str(error)


def is_pruned(error: BaseException) -> bool:
    import optuna

    return isinstance(error, optuna.TrialPruned)


# --------------------------------------------------------------------------- the study
def make_pruner(pruner, examples: int | None = None, maximize: bool = True):
    """Optuna's pruner for ``pruner``; with ``examples`` (the validation set's size) it prunes only a
    trial that is behind by more than the validation set can resolve (:class:`ResolvedPruner`)."""
    import optuna

    if not isinstance(pruner, str):
        return pruner  # a ready optuna pruner (tests pass one whose decision is fixed)
    inner: optuna.pruners.BasePruner
    if pruner == "median":
        inner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    elif pruner == "hyperband":
        inner = optuna.pruners.HyperbandPruner(min_resource=1)
    else:
        return optuna.pruners.NopPruner()
    return inner if not examples else ResolvedPruner(inner, examples, maximize)


def resolution(score: float, examples: int) -> float:
    """The smallest difference in a score between 0 and 1 (accuracy, F1...) that ``examples``
    validation examples resolve: one example (1/N), or the score's standard error when larger."""
    p = min(max(score, 0.0), 1.0)
    return max(1.0 / examples, math.sqrt(p * (1.0 - p) / examples))


class ResolvedPruner(optuna.pruners.BasePruner):
    """Prunes when ``inner`` would and the trial is behind the median of the other trials at the
    same epoch by more than :func:`resolution`: a gap of one or two validation examples is noise, and
    a trial is not stopped for it. Scores outside [0, 1] (a loss) take ``inner``'s decision as it is."""

    def __init__(self, inner, examples: int, maximize: bool = True):
        self.inner, self.examples, self.maximize = inner, examples, maximize

    def prune(self, study, trial) -> bool:
        if not self.inner.prune(study, trial):
            return False
        step = trial.last_step
        value = trial.intermediate_values[step]
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and step in t.intermediate_values
        ]
        if not others or not all(0.0 <= v <= 1.0 for v in (*others, value)):
            return True
        median = statistics.median(others)
        behind = median - value if self.maximize else value - median
        return behind > resolution(median, self.examples)


@dataclass
class Progress:
    """Handed to the ``on_trial`` hook before each trial starts."""

    number: int  # the trial about to start
    finished: int
    total: int
    best: float | None
    seconds_left: float | None


class Tuner:
    """An Optuna study over ``space``, maximising or minimising ``monitor``; resumes when it exists."""

    poll_seconds = 1.0  # how often a worker waiting for others' last trials looks at the study

    def __init__(
        self,
        space: SearchSpace,
        storage: str,
        study_name: str,
        direction: str,
        monitor: str,
        seed: int = 42,
        pruner="median",
        heartbeat: int | None = shared.HEARTBEAT_SECONDS,
        examples: int | None = None,
    ):
        import optuna

        self.space = space
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.monitor = monitor
        self.storage_url = storage
        try:
            self.study = optuna.create_study(
                storage=shared.open_storage(storage, heartbeat),
                study_name=study_name,
                direction=optuna.study.StudyDirection[direction.upper()],
                sampler=optuna.samplers.TPESampler(seed=seed),
                pruner=make_pruner(pruner, examples, direction == "maximize"),
                load_if_exists=True,
            )
        except Exception as exc:  # sqlalchemy/driver errors for a bad or unreachable URL
            raise StoreUnavailable(
                f"Cannot open the Optuna storage '{storage}': {str(exc).splitlines()[0]}. "
                "Check the URL, or leave --storage out for a local SQLite file."
            ) from exc
        self.uses_pruning = not isinstance(self.study.pruner, optuna.pruners.NopPruner)
        self.stop = StopRequest()  # the run installs it as the SIGINT handler
        self.out_of_time: str | None = None  # why a trial could not fit the time budget left
        self.skipped: list[str] = []  # trials skipped alone (SkipTrial), and why
        self.sized_trials = False  # the training function fits each trial to the time left
        #: when a trial does not fit the time left: the fixed part of cheaper trials to run instead
        #: (e.g. a head on cached features), or None to stop
        self.cheaper: Callable[[], dict | None] | None = None
        #: since a trial did not fit, every new trial is of the cheaper kind: what did not fit then
        self.cheap_because: str | None = None
        self.recovered = self.recover_dead_trials()
        #: finished trials that count, when this process opened the study (earlier runs, other workers)
        self.finished_before = len(self.finished_trials())

    # ------------------------------------------------------------------ state
    def finished_trials(self, trials: list | None = None) -> list:
        """The study's finished trials that count towards the total (``counted_trials``); ``trials``
        is a snapshot already read, else the study's now."""
        return shared.counted_trials(self.study.get_trials(deepcopy=False) if trials is None else trials)

    def recover_dead_trials(self) -> list[int]:
        """``shared_study.recover_dead_trials`` of this study."""
        return shared.recover_dead_trials(self.study)

    def best_trial(self):
        """The study's choice (:func:`chosen`), None before any trial completed."""
        return chosen(self.study.get_trials(deepcopy=False), self.study.direction.name == "MAXIMIZE")

    def enqueue_baseline(self, params: dict, role: Role = Role.BASELINE) -> None:
        """Trial 0 runs ``params`` (once per study, however often the run resumes): the Flash-tier
        baseline, or the best Flash-tier parameters that warm-start the Lightning tier; moved inside
        the user's shape of the space (``SearchSpace.within``)."""
        params = self.space.within(params)
        if not self.study.get_trials(deepcopy=False):
            # skip_if_exists: a worker starting at the same moment may have just enqueued it
            self.study.enqueue_trial(params, user_attrs={ROLE: str(role)}, skip_if_exists=True)

    def enqueue_probes(self, probes: list[dict]) -> None:
        """Cheap trials that run right after the baseline, once per study (:attr:`Role.PROBE`), inside
        the user's shape of the space (two that it makes the same run once)."""
        trials = self.study.get_trials(deepcopy=False)
        if any(role(t) == Role.PROBE for t in trials) or len(trials) > 1:
            return
        seen = [t.params or t.system_attrs.get("fixed_params", {}) for t in trials]
        inside = []
        for params in map(self.space.within, probes):
            if params not in seen:
                seen.append(params)
                inside.append(params)
        for index, params in enumerate(inside):
            attrs = {ROLE: str(Role.PROBE), PROBE_INDEX: index}
            self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)

    def summary(self) -> list[TrialRecord]:
        """Every trial of the study that counts (not those closed unused), as records."""
        return TrialRecord.of_study(self.space.tier, self.study.get_trials(deepcopy=False))

    # ------------------------------------------------------------------ running
    def run(
        self,
        train: TrainFn,
        total_trials: int,
        deadline: float | None = None,
        on_trial: Callable[[Progress], None] | None = None,
        max_new: int | None = None,
        on_wait: Callable[[list], None] | None = None,
        on_trial_end: Callable[[optuna.trial.FrozenTrial], None] | None = None,
        on_narrow: Callable[[str], None] | None = None,
    ) -> str:
        """Run trials until the study holds ``total_trials`` finished ones (every trial counts, the
        baseline included), ``max_new`` were started here, or the time budget says stop.

        When the trials still missing are all running in other workers, this one waits for them
        (``on_wait`` hears which) rather than starting more; a trial whose worker dies meanwhile is
        failed and retried here. ``on_trial_end`` hears each trial this worker finished (complete,
        pruned or failed; not one closed unused). ``on_narrow`` hears why, when a trial did not fit the
        time left and the rest turn to the cheaper kind. No new trial starts when the time left is
        below the median duration of the finished trials. Returns why it stopped: "trials", "budget", "max_new" or
        "interrupted" (Ctrl-C).
        """
        started = 0
        waiting = False
        fell_back = False
        while True:
            trials = self.study.get_trials(deepcopy=False)
            finished = self.finished_trials(trials)
            left = None if deadline is None else deadline - time.time()
            why = self._why_stop(finished, total_trials, max_new is not None and started >= max_new, left)
            if why is not None:
                return why
            running = shared.running(trials)
            if len(finished) + len(running) >= total_trials:
                if not waiting and on_wait is not None:
                    on_wait(running)
                waiting = True
                shared.wait_for_others(self.study, self.poll_seconds)
                continue
            waiting = False
            if self.cheap_because is not None and not any(t.state.name == "WAITING" for t in trials):
                self._enqueue_cheaper()
            if on_trial is not None:
                best = self.best_trial()
                on_trial(Progress(self._next_number(), len(finished), total_trials, best.value if best else None, left))
            ended = None if on_trial_end is None else [_unless_unused(on_trial_end)]
            self.study.optimize(
                self._objective(train, deadline, total_trials), n_trials=1, catch=(Exception,), callbacks=ended
            )
            started += 1
            if self.out_of_time:
                if fell_back and any(t.state.name == "WAITING" for t in self.study.get_trials(deepcopy=False)):
                    self.out_of_time = None  # the trials queued already (another backbone, a penalty) may fit
                    continue
                if fell_back or not self._fall_back(on_narrow):
                    return "budget"
                fell_back = True

    def _why_stop(self, finished: list, total_trials: int, started_enough: bool, left: float | None) -> str | None:
        """Why no more trial starts here ("trials", "interrupted", "max_new", "budget"), or None."""
        if len(finished) >= total_trials:
            return "trials"
        if self.stop.requested:
            return "interrupted"
        if started_enough:
            return "max_new"
        if left is not None:
            durations = [t.user_attrs[SECONDS] for t in finished if SECONDS in t.user_attrs]
            # a training function that sizes its trials to the time left (raising NoTimeForTrial
            # when none fits) knows better than the median of trials of other kinds and sizes
            typical = None if self.sized_trials or not durations else statistics.median(durations)
            if left <= 0 or (typical is not None and left < typical):
                return "budget"
        return None

    def _fall_back(self, on_narrow: Callable[[str], None] | None) -> bool:
        """After a trial that did not fit the time left, the rest of the trials are the cheap kind
        (what no longer fits is not tried again); False when there is no cheaper kind."""
        if not self._enqueue_cheaper():
            return False
        because = self.cheap_because = self.out_of_time or "a trial did not fit the time left"
        self.out_of_time = None
        if on_narrow is not None:
            on_narrow(because)
        return True

    def _enqueue_cheaper(self) -> bool:
        """One trial of the cheaper kind queued next; False when there is no cheaper kind."""
        cheaper = None if self.cheaper is None else self.cheaper()
        if cheaper is None:
            return False
        self.study.enqueue_trial(self.space.within(cheaper), user_attrs={ROLE: str(Role.TUNING)})
        return True

    def _next_number(self) -> int:
        """The number the next trial gets: an enqueued (waiting) one runs first."""
        trials = self.study.get_trials(deepcopy=False)
        waiting = [t.number for t in trials if t.state.name == "WAITING"]
        return waiting[0] if waiting else len(trials)

    def _objective(self, train: TrainFn, deadline: float | None, total_trials: int | None = None):
        import optuna

        def objective(trial) -> float:
            trial.set_user_attr(WORKER, shared.WORKER)  # first: lets others tell a dead trial from a running one
            if shared.duplicate_start(self.study, trial):
                trial.set_user_attr(SURPLUS, True)
                raise SurplusTrial(f"trial {trial.number} repeats the study's first trial, enqueued by another worker")
            if total_trials is not None and shared.surplus(self.study, trial, total_trials):
                trial.set_user_attr(SURPLUS, True)
                raise SurplusTrial(f"trial {trial.number} is past the requested {total_trials} trials")
            params = self.space.suggest(trial)
            deadline_cb = Deadline(deadline)
            callbacks = [deadline_cb, StopAtEpochEnd(self.stop)]
            if self.uses_pruning and not self.space.head_only(params):
                # a head-only trial costs seconds; its many short epochs are no yardstick for full ones
                callbacks.append(pruning_callback(trial, self.monitor))
            started = time.time()
            trial.set_user_attr(STARTED_AT, started)
            try:
                outcome = train(trial.number, params, callbacks)
            except NoTimeForTrial as late:
                trial.set_user_attr(SURPLUS, True)  # closed unused: it never trained
                self.out_of_time = str(late)
                if isinstance(late, SkipTrial):
                    self.skipped.append(str(late))
                raise optuna.TrialPruned(str(late)) from late  # quietly: nothing failed
            except optuna.TrialPruned as pruned:
                trial.set_user_attr(PRUNED_REASON, str(pruned))
                raise
            except Exception as exc:
                trial.set_user_attr(FAIL_REASON, describe_error(exc)[:1000])
                raise
            finally:
                # measured on the same clock as the deadline; the budget logic uses it
                trial.set_user_attr(SECONDS, time.time() - started)
            for key, value in outcome.extra.items():
                trial.set_user_attr(key, value)
            if outcome.checkpoint:
                trial.set_user_attr(CHECKPOINT, outcome.checkpoint)
            if outcome.best_epoch is not None:
                trial.set_user_attr(BEST_EPOCH, outcome.best_epoch)
            trial.set_user_attr(STOPPED_AT_DEADLINE, deadline_cb.triggered)
            if outcome.score is None or not math.isfinite(outcome.score):
                raise ValueError(f"The trial ended without a finite {self.monitor}.")
            return outcome.score

        return objective


def _unless_unused(hook: Callable):
    """An Optuna callback that hands ``hook`` each finished trial but those closed unused."""

    def callback(study, trial) -> None:
        if not closed_unused(trial):
            hook(trial)

    return callback


def param_importances(storage: str, study_name: str) -> dict[str, float]:
    """How much each parameter mattered to the score (Optuna's fANOVA); needs 5+ complete trials."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 5:
        return {}
    return dict(optuna.importance.get_param_importances(study))
