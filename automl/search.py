"""The values one process of a study holds, each built on its own from the ones before it.

``open_search`` builds them in the order that makes a bad input fail before anything is written:
the data (``RunData``: read, its test split held out, the configuration fitted to it), the studies
(``Studies``, and the Flash tier's ``Tuner``), the MLflow store, the run folder and its log, the
feature cache, the MLflow parent run (``ParentRun``), the budget's plan (``Plan``) and the Flash
tier's trial function (``Trainers`` wrapped by ``TrialLife``). ``automl run`` (``automl.pipeline``)
and an ``automl tune`` worker (``automl.worker``) hand each stage the values it uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl import space
from automl.budget import Budget, Plan
from automl.callbacks import StopRequest
from automl.config import RunConfig
from automl.data.holdout import HoldOut, write_splits
from automl.flash.features import FeatureCache
from automl.run_data import RunData
from automl.run_folder import SPLITS_FILE
from automl.target import Target
from automl.trainers import Trainers
from automl.trial_record import Tier
from automl.trials import TrialLife

if TYPE_CHECKING:
    from automl.space import SearchSpace
    from automl.tracking import Tracker
    from automl.tuning import Tuner

#: the study's user attribute naming its MLflow parent run in each tracking store: {tracking URI: run id}
PARENT_RUNS_ATTR = "mlflow_parent_runs"


@dataclass(frozen=True)
class Studies:
    """Where the run's Optuna studies live and how one is opened: the Flash tier's is ``name``, the
    Lightning tier's ``name-lightning``, both in ``storage``, stopped by the same Ctrl-C (``stop``)."""

    storage: str
    name: str
    target: Target
    seed: int
    pruner: Any
    heartbeat: int | None
    examples: int  # validation examples: the pruner's resolution
    stop: StopRequest
    sized: bool  # a time budget sizes each trial to the time left

    def open(self, tier: Tier, search_space: SearchSpace) -> Tuner:
        from automl import tuning

        name = self.name if tier == Tier.FLASH else f"{self.name}-{tier}"
        target = self.target
        tuner = tuning.Tuner(
            search_space,
            self.storage,
            name,
            target.direction,
            target.metric,
            seed=self.seed,
            pruner=self.pruner,
            heartbeat=self.heartbeat,
            examples=self.examples,
        )
        tuner.stop = self.stop  # one Ctrl-C stops whichever study is running
        tuner.sized_trials = self.sized
        if tier == Tier.FLASH:
            tuner.cheaper = lambda: space.cheaper(tuner)
        return tuner


@dataclass(frozen=True)
class ParentRun:
    """The study's MLflow parent run (shared by its workers) in one tracking store."""

    tracker: Tracker
    run_id: str

    def set_tags(self, tags: dict) -> None:
        self.tracker.set_tags(self.run_id, tags)

    def end(self, status: str) -> None:
        self.tracker.end(self.run_id, status)


@dataclass(frozen=True)
class Search:
    """What ``open_search`` built, each value on its own; the pipeline and the worker hand each stage
    the ones it uses."""

    data: RunData
    studies: Studies
    flash: Tuner  # the Flash tier's study
    features: FeatureCache
    parent: ParentRun
    plan: Plan
    trainers: Trainers
    life: TrialLife  # an MLflow child run, retries and clean-up around each trial
    flash_train: Callable  # one Flash-tier trial, tracked: what ``Tuner.run`` calls


def open_search(
    config: RunConfig,
    progress: bool,
    say: Callable[[str], None],
    pruner=None,
    started: float | None = None,
    who: str = "",
    resume_parent: Callable[[Path], str | None] = lambda run_dir: None,
) -> Search:
    """The values of one process of the study (a run or a worker), in the order that fails early: the
    data first (a bad file fails before any store or folder is made), then the stores (an unreachable
    one fails before the run folder exists), then the folder. ``resume_parent``: the MLflow parent run
    a run folder names (a resumed run continues it)."""
    from automl import tracking
    from automl.progress import attach_run_log
    from automl.target import parse_target

    config, datamodule, holdout = read_data(config)
    target = parse_target(config.target)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    name = study_name(config)
    budget = None
    if config.budget_seconds is not None:
        budget = Budget(time.time() if started is None else started, config.budget_seconds, config.escalate)
    studies = Studies(
        storage=config.storage or f"sqlite:///{(output / 'optuna.db').resolve()}",
        name=name,
        target=target,
        seed=config.seed,
        pruner=pruner if pruner is not None else config.pruner,
        heartbeat=config.heartbeat,
        examples=len(datamodule.val_samples),
        stop=StopRequest(),
        sized=budget is not None,
    )
    flash = studies.open(Tier.FLASH, space.search_space(config, Tier.FLASH))
    tracker = tracking.Tracker(config.tracking_uri or tracking.default_tracking_uri(output), output / "mlartifacts")

    data = RunData(config, datamodule, holdout, target, output / name)
    data.run_dir.mkdir(exist_ok=True)
    write_splits(data.run_dir / SPLITS_FILE, datamodule)
    attach_run_log(data.run_dir, who)
    if flash.recovered:
        say(f"trials {flash.recovered} were left running by a process that died: recorded as failed and run again")
    features = FeatureCache(data.run_dir / "features")
    tags = {"task": config.task, "target": str(target), "study": name}
    parent = ParentRun(tracker, parent_run(tracker, flash, studies.storage, name, tags, resume_parent(data.run_dir)))
    tracker.log_params(parent.run_id, {k: v for k, v in config.to_dict().items() if v is not None})
    plan = Plan(budget, data, features, len(flash.space.backbones))
    life = TrialLife(tracker, parent.run_id, data.run_dir, target.metric, target.maximize, say, config.batch_size)
    trainers = Trainers(data, features, flash, plan, say=say, progress=progress)
    return Search(
        data, studies, flash, features, parent, plan, trainers, life, life.tracked(Tier.FLASH, trainers.flash)
    )


def read_data(config: RunConfig) -> tuple[RunConfig, Any, HoldOut]:
    """The run's data (a bad file fails here, before anything is written), its test split held out
    before anything else sees it, and the configuration fitted to the data."""
    from automl.data.common import existing_path
    from automl.flash import fit

    fit.quiet_library_logs()
    existing_path(config.data)
    datamodule = fit.load_data(config)
    holdout = hold_out_test(config, datamodule)
    return space.fit_to_data(config, datamodule), datamodule, holdout


def parent_run(
    tracker: Tracker, flash: Tuner, storage: str, name: str, tags: dict[str, str], resume: str | None
) -> str:
    """The study's MLflow parent run: this run folder's (a resumed run), else the one the study's
    workers share in this tracking store (its id kept in the study), else a new one. On a shared
    database one process at a time picks it, so workers started together make one, not one each."""
    from automl.storage import PARENT_RUN_LOCK_KEY, advisory_lock

    study = flash.study
    uri = tracker.tracking_uri
    with advisory_lock(storage, PARENT_RUN_LOCK_KEY):
        known = dict(study.user_attrs.get(PARENT_RUNS_ATTR, {}))
        parent = tracker.start_parent(name, tags, resume_run_id=resume or known.get(uri))
        if known.get(uri) != parent:
            study.set_user_attr(PARENT_RUNS_ATTR, {**known, uri: parent})
    return parent


def enqueue_start(flash: Tuner, config: RunConfig, budgeted: bool) -> dict:
    """Trial 0 of a new study is the Flash-tier defaults (with a budget: their head on cached
    features), then the candidates tried first; returns trial 0's parameters."""
    flash_space = flash.space
    params = space.baseline_params(
        flash_space, config.learning_rate, config.weight_decay, config.dropout, config.label_smoothing
    )
    defaults = params
    heads = flash_space.allows("strategy", "freeze")  # the user's shape may leave no head to try
    if budgeted and config.strategy == space.DEFAULT_STRATEGY and heads:
        # with a budget the baseline is the default backbone's head on cached features: seconds,
        # and its one pass over the data measures what that backbone costs here
        params = space.as_head(params, config)
    flash.enqueue_baseline(params)
    # then the same cheap head on every other backbone: the best one's linear probe within minutes;
    # and the defaults as they are (fine-tuning), sized to the budget, before the search goes on
    probes = space.probe_params(config, flash_space, params, penalties=budgeted) if heads else []
    if defaults is not params and flash_space.allows("strategy", defaults["strategy"]):
        probes.append(defaults)
    flash.enqueue_probes(probes[: max(config.trials - 1, 0)])
    return params


# --------------------------------------------------------------------------- a study's name and its data
def study_name(config: RunConfig) -> str:
    """The task and a fingerprint of the data, of how its test split is chosen and of the user's
    search space: a run with another test split is another study (its trials must never have trained
    on the new test examples), and so is a run with another shape of the space."""
    if config.study:
        return config.study
    fingerprint = data_fingerprint(config.data)
    if config.test_data is not None:
        fingerprint = _hash(fingerprint, "test data", data_fingerprint(config.test_data))
    elif config.test_split != 0.15:
        fingerprint = _hash(fingerprint, "test split", config.test_split)
    if config.search_space:  # trials outside the user's shape must not be chosen
        fingerprint = _hash(fingerprint, "search space", sorted(config.search_space.items(), key=str))
    return f"{config.task}-{fingerprint}"


def _hash(*parts) -> str:
    import hashlib

    return hashlib.sha256(repr(parts).encode()).hexdigest()[:10]


def hold_out_test(config: RunConfig, datamodule):
    """The run's test split (``automl.data.holdout``): a test/ folder, --test-data, else a carved share."""
    from automl.data.holdout import hold_out, read_test_data

    def read_test(path):
        fields = {"input_field": config.input_field, "target_field": config.target_field, "header": config.header}
        return read_test_data(config.task, path, datamodule.labels, **fields)

    return hold_out(
        datamodule,
        config.test_split,
        config.val_split,
        config.seed,
        config.test_data,
        val_carved=datamodule.val_carved,
        read_test=read_test,
    )


def data_fingerprint(path: str | Path) -> str:
    """Stable across copies: the relative paths and sizes of the files (a folder), or the bytes (a file)."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path)}\0{file.stat().st_size}\n".encode())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]
