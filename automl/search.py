"""The search: what every process of a study shares (the data, the Flash tier's Optuna study, the
MLflow parent run, the feature cache, the budget's plan) and its trainers (``automl.trainers``).

``automl run`` builds one ``Search`` and runs its stages on it (``automl.pipeline``); an ``automl tune``
worker builds one and only runs trials. ``Search.enqueue_start`` enqueues the candidates tried first
(the baseline, the other backbones' heads, stronger penalties, the fine-tuning defaults), which
``automl.space`` derives from the search space.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from automl import space
from automl.budget import Budget
from automl.config import RunConfig
from automl.data.holdout import write_splits
from automl.flash.features import FeatureCache
from automl.run_folder import SPLITS_FILE
from automl.trainers import Trainers
from automl.trial_record import Tier
from automl.trials import TrialLife

#: the study's user attribute naming its MLflow parent run in each tracking store: {tracking URI: run id}
PARENT_RUNS_ATTR = "mlflow_parent_runs"
#: seconds the end of a run takes besides its passes over the data (the MLflow model, the report),
#: planned inside the budget: 6-8 s measured here
FINISH_SECONDS = 10.0


class Search:
    """The data, the stores and the folder of one study, as one process (a run or a worker) holds them.

    The data is read first (a bad file fails before any store or folder is made) and the search is
    fitted to it; the stores come next (an unreachable one fails before the run folder exists)."""

    def __init__(
        self,
        config: RunConfig,
        progress: bool,
        say: Callable[[str], None],
        pruner=None,
        started: float | None = None,
        who: str = "",
        resume_parent: Callable[[Path], str | None] = lambda run_dir: None,
    ):
        from automl import tracking
        from automl.callbacks import StopRequest
        from automl.data.common import existing_path
        from automl.flash import fit
        from automl.progress import attach_run_log
        from automl.target import parse_target

        fit.quiet_library_logs()
        existing_path(config.data)
        self.datamodule = fit.load_data(config)
        self.holdout = hold_out_test(config, self.datamodule)
        config = space.fit_to_data(config, self.datamodule)
        self.config, self.progress, self.say = config, progress, say
        self.pruner = pruner if pruner is not None else config.pruner
        started = time.time() if started is None else started
        seconds = config.budget_seconds
        self.deadline = None if seconds is None else started + seconds
        self.budget = None if seconds is None else Budget(started, seconds, config.escalate)
        self.target = parse_target(config.target)

        self.output = Path(config.output)
        self.output.mkdir(parents=True, exist_ok=True)
        self.name = study_name(config)
        self.storage = config.storage or f"sqlite:///{(self.output / 'optuna.db').resolve()}"
        self.stop = StopRequest()
        self.flash_tuner = self.tuner(self.name, space.search_space(config, Tier.FLASH))
        self.flash_tuner.cheaper = lambda: space.cheaper(self.flash_tuner)
        uri = config.tracking_uri or tracking.default_tracking_uri(self.output)
        self.tracker = tracking.Tracker(uri, self.output / "mlartifacts")

        self.run_dir = self.output / self.name
        self.run_dir.mkdir(exist_ok=True)
        write_splits(self.run_dir / SPLITS_FILE, self.datamodule)
        attach_run_log(self.run_dir, who)
        if self.flash_tuner.recovered:
            say(
                f"trials {self.flash_tuner.recovered} were left running by a process that died: "
                "recorded as failed and run again"
            )
        self.features = FeatureCache(self.run_dir / "features")
        tags = {"task": config.task, "target": str(self.target), "study": self.name}
        self.parent = self._parent_run(tags, resume_parent(self.run_dir))
        self.tracker.log_params(self.parent, {k: v for k, v in config.to_dict().items() if v is not None})
        self.life = TrialLife(
            self.tracker, self.parent, self.run_dir, self.target.metric, self.target.maximize, say, config.batch_size
        )
        self.trainers = self._trainers()
        self.flash_train = self.life.tracked(Tier.FLASH, self.trainers.flash)

    def _trainers(self) -> Trainers:
        """The tiers' trial functions, given what they use of this search."""
        return Trainers(
            self.config,
            self.datamodule,
            self.features,
            self.flash_tuner,
            self.target,
            self.run_dir,
            budget=self.budget,
            tuning_deadline=self.tuning_deadline,
            finish_reserve=self.finish_reserve,
            say=self.say,
            progress=self.progress,
        )

    def finish_reserve(self) -> float:
        """Seconds a run needs after its last trial, kept out of the trials' time: judging the chosen
        trial on validation (up to three passes, with test-time augmentation), the final model on the
        test split (an ensemble's members too), and :data:`FINISH_SECONDS` for the MLflow model and the
        report."""
        forward = self.features.forward_seconds(self.config.fit_config()) or 0.0
        test = len(self.datamodule.test_samples)
        examples = 3 * len(self.datamodule.val_samples) + test
        if self.config.ensemble:
            # a kept ensemble: its best single member judged alone too, the other backbones over the test
            # split, and 2 x 34 examples timed (its heads and a TF-IDF model fit in seconds)
            examples += test * len(self.flash_tuner.space.backbones) + 68
        return forward * examples + FINISH_SECONDS

    def tuning_deadline(self) -> float | None:
        """When the Flash tier's trials must end: its share of the budget (it leaves the Lightning tier
        the rest), and early enough for the run's end (``finish_reserve``) when it has the whole budget
        (``--no-escalate``)."""
        if self.budget is None:
            return None
        return min(self.budget.tune_deadline, self.budget.deadline - self.finish_reserve())

    def tuner(self, name: str, search_space):
        from automl import tuning

        tuner = tuning.Tuner(
            search_space,
            self.storage,
            name,
            self.target.direction,
            self.target.metric,
            seed=self.config.seed,
            pruner=self.pruner,
            heartbeat=self.config.heartbeat,
            examples=len(self.datamodule.val_samples),
        )
        tuner.stop = self.stop  # one Ctrl-C stops whichever study is running
        tuner.sized_trials = self.budget is not None
        return tuner

    def _parent_run(self, tags: dict[str, str], resume: str | None) -> str:
        """The study's MLflow parent run: this run folder's (a resumed run), else the one the study's
        workers share in this tracking store (its id kept in the study), else a new one. On a shared
        database one process at a time picks it, so workers started together make one, not one each."""
        from automl.storage import PARENT_RUN_LOCK_KEY, advisory_lock

        study = self.flash_tuner.study
        uri = self.tracker.tracking_uri
        with advisory_lock(self.storage, PARENT_RUN_LOCK_KEY):
            known = dict(study.user_attrs.get(PARENT_RUNS_ATTR, {}))
            parent = self.tracker.start_parent(self.name, tags, resume_run_id=resume or known.get(uri))
            if known.get(uri) != parent:
                study.set_user_attr(PARENT_RUNS_ATTR, {**known, uri: parent})
        return parent

    def enqueue_start(self) -> dict:
        """Trial 0 of a new study is the Flash-tier defaults (with a budget: their head on cached
        features), then the candidates tried first; returns trial 0's parameters."""
        config = self.config
        flash_space = self.flash_tuner.space
        params = space.baseline_params(
            flash_space, config.learning_rate, config.weight_decay, config.dropout, config.label_smoothing
        )
        defaults = params
        if self.budget is not None and config.strategy == space.DEFAULT_STRATEGY:
            # with a budget the baseline is the default backbone's head on cached features: seconds,
            # and its one pass over the data measures what that backbone costs here
            params = space.as_head(params, config)
        self.flash_tuner.enqueue_baseline(params)
        # then the same cheap head on every other backbone: the best one's linear probe within minutes;
        # and the defaults as they are (fine-tuning), sized to the budget, before the search goes on
        probes = space.probe_params(config, flash_space, params, penalties=self.budget is not None)
        if defaults is not params:
            probes.append(defaults)
        self.flash_tuner.enqueue_probes(probes[: max(config.trials - 1, 0)])
        return params


# --------------------------------------------------------------------------- a study's name and its data
def study_name(config: RunConfig) -> str:
    """The task and a fingerprint of the data and of how its test split is chosen: a run with another
    test split is another study (its trials must never have trained on the new test examples)."""
    if config.study:
        return config.study
    fingerprint = data_fingerprint(config.data)
    if config.test_data is not None:
        fingerprint = _hash(fingerprint, "test data", data_fingerprint(config.test_data))
    elif config.test_split != 0.15:
        fingerprint = _hash(fingerprint, "test split", config.test_split)
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
