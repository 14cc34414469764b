"""The search: what every process of a study shares (the data, the Flash tier's Optuna study, the
MLflow parent run, the feature cache) and how one trial of each tier trains within the budget.

``automl run`` builds one ``Search`` and runs its stages on it (``automl.pipeline``); an ``automl tune``
worker builds one and only runs trials. ``Trainers`` are the tiers' trial functions: a Flash-tier
trial is a head on cached features (seconds) or a fine-tune sized to the time left; a Lightning-tier
trial is the template's ``fit``. ``Search.enqueue_start`` enqueues the candidates tried first (the
baseline, the other backbones' heads, stronger penalties, the fine-tuning defaults), which
``automl.space`` derives from the search space.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from automl import space, trial_record
from automl.budget import TRAIN_COST, Budget
from automl.callbacks import Deadline
from automl.config import FitConfig, RunConfig
from automl.data.holdout import write_splits
from automl.flash.features import FeatureCache
from automl.run_folder import SPLITS_FILE
from automl.trial_record import Tier
from automl.trials import TrialLife, minutes

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
        self.trainers = Trainers(self)
        self.flash_train = self.life.tracked(Tier.FLASH, self.trainers.flash)

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


class TrainingSteps:
    """One example's training step (forward, backward, optimiser) by backbone and input size, timed on
    a few real batches the first time a trial fine-tunes them (``fit.measure_training_step``)."""

    def __init__(self, datamodule) -> None:
        self.datamodule = datamodule
        self.costs: dict[tuple[str, int], float | None] = {}

    def affordable(self, config, forward: float, allowance: float) -> bool:
        """Whether timing ``config``'s steps is cheap enough to do: already done, or its three batches
        (estimated) cost at most a quarter of the trial's allowance."""
        if self._key(config) in self.costs:
            return True
        return 3 * config.batch_size * forward * TRAIN_COST <= allowance / 4

    def seconds(self, config) -> float | None:
        key = self._key(config)
        if key not in self.costs:
            from automl.flash import fit

            self.costs[key] = fit.measure_training_step(config, self.datamodule)
        return self.costs[key]

    @staticmethod
    def _key(config) -> tuple[str, int]:
        from automl.backbones import default_backbone
        from automl.config import IMAGE_CLASSIFICATION

        return default_backbone(config), config.image_size if config.task == IMAGE_CLASSIFICATION else config.max_length


class Trainers:
    """How one trial of each tier trains, within the budget: ``flash`` and ``lightning(template)``
    are the ``fit_trial`` functions ``TrialLife.tracked`` wraps."""

    def __init__(self, search: Search):
        self.search = search
        self.config, self.datamodule, self.features = search.config, search.datamodule, search.features
        self.budget, self.deadline = search.budget, search.deadline
        self.target, self.run_dir, self.say, self.progress = search.target, search.run_dir, search.say, search.progress
        self.flash_tuner = search.flash_tuner
        self.correction = 1.0  # real / estimated time of the last fine-tuning trial
        self.steps = TrainingSteps(self.datamodule)
        self.skipped: dict[str, str] = {}  # backbones whose first pass did not fit the time left, and why

    def flash(self, number: int, params: dict, callbacks: list, logger):
        from automl import tuning
        from automl.flash import fit
        from automl.progress import EpochLines

        config = self.config.fit_config(**params)
        served = fit.data_for(config, self.datamodule)
        out = self.run_dir / "trials" / str(number)
        if self.flash_tuner.space.head_only(params):
            callbacks = [*callbacks, EpochLines(f"trial #{number}")]
            self._check_time_for_features(config, served)
            features = self.features.get(config, served)
            if self.deadline is not None:
                # the head trains in seconds once the features exist: it may run into the escalation's
                # share rather than stop half-trained, but not past the budget
                callbacks = [c for c in callbacks if not isinstance(c, Deadline)] + [Deadline(self.deadline)]
            trained = fit.train_head(config, served, out, features, self.target.metric, callbacks, logger)
            extra = self._cross_validate(config, features) if trained.checkpoint else {}
            return tuning.TrialOutcome(trained.best_score, trained.checkpoint, trained.best_epoch, extra=extra)
        epochs = config.epochs
        config, head = self._warm_head(config, served, out)
        # after a head trained on cached features for the first epochs, the lines count on from them
        callbacks = [*callbacks, EpochLines(f"trial #{number}", first=epochs - config.epochs)]
        size, callbacks = self.sized(config, callbacks, self.search.tuning_deadline(), number)
        limit = 1.0
        if size is not None:
            config = dataclasses.replace(config, epochs=size.epochs)
            limit = size.train_fraction
        started = time.time()
        metric = self.target.metric
        trained = fit.train(config, served, out, metric, callbacks, logger, self.progress, limit, head=head)
        if size is not None and size.seconds:
            self.correction = max(0.2, min(5.0, self.correction * (time.time() - started) / size.seconds))
        return tuning.TrialOutcome(trained.best_score, trained.checkpoint, trained.best_epoch)

    def rebuild_head(self, number: int, params: dict) -> str | None:
        """Head trial ``number``'s checkpoint again: the same fit on the same cached features (seconds).
        The study may choose a head by its cross-validated score that was not the best on validation,
        whose checkpoint ``keep_only_best`` removed."""
        from automl.flash import fit

        config = self.config.fit_config(**params)
        served = fit.data_for(config, self.datamodule)
        features = self.features.get(config, served)
        out = self.run_dir / "trials" / str(number)
        return fit.train_head(config, served, out, features, self.target.metric).checkpoint

    def _cross_validate(self, config, features) -> dict:
        """A head's score over k folds of train+val (``automl.flash.heads``): what ranks the heads,
        where one validation split cannot (its ``value`` stays the validation score, the yardstick
        a fine-tuning trial is compared on). Seconds; recorded as the trial's ``cv_*`` attributes."""
        from automl.flash import heads

        x, y = features.labelled()
        folds = heads.cross_validate(
            x,
            y,
            len(self.datamodule.labels),
            config.weight_decay,
            self.target.metric,
            config.label_smoothing,
            seed=self.config.seed,
        )
        if not folds.scores:
            return {}
        return {
            trial_record.CV_MEAN: folds.mean,
            trial_record.CV_STD: folds.std,
            trial_record.CV_FOLDS: len(folds.scores),
        }

    def _warm_head(self, config, served, out: Path):
        """``freeze_unfreeze:K``: the K frozen epochs train only the head, on the same inputs each
        time; when the backbone's features are cached (or a budget is not in the way), the head trains
        on them in seconds and the trial fine-tunes the rest of its epochs from that head, the backbone
        unfrozen from the first of them. Returns the configuration left to run, and the head."""
        import torch

        from automl.flash import fit
        from automl.flash.finetuning import parse_strategy

        strategy = parse_strategy(config.strategy)
        unfreeze = strategy.unfreeze_epoch
        if strategy.name != "freeze_unfreeze" or unfreeze is None or not 0 < unfreeze < config.epochs:
            return config, None
        if self.budget is not None and not self.features.has(config, served):
            return config, None  # computing the features would take the trial's own time
        features = self.features.get(config, served)
        frozen = dataclasses.replace(config, epochs=unfreeze, weight_decay=self._head_penalty(config))
        head = fit.train_head(frozen, served, out / "head", features, self.target.metric, checkpoint=False)
        if head.best_score is None:  # stopped before its first validation
            return config, None
        rest = dataclasses.replace(config, strategy="freeze_unfreeze:0", epochs=config.epochs - unfreeze)
        trained_head = head.model.head
        assert isinstance(trained_head, torch.nn.Module), "a Flash-tier classifier has a head module"
        return rest, {k: v.detach().clone() for k, v in trained_head.state_dict().items()}

    def _head_penalty(self, config) -> float:
        """The L2 penalty of the best head on cached features of this backbone and input size so far
        (else ``--weight-decay`` or the probes' first guess): a fine-tune starts from the head a
        linear probe would keep, not from an unpenalised one that fits every training example and
        leaves the backbone a near-zero loss to learn from."""
        size = "image_size" if self.config.modality == "image" else "max_length"
        heads = [
            t
            for t in self.flash_tuner.study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE"
            and self.flash_tuner.space.head_only(t.params)
            and t.params.get("backbone") == config.backbone
            and t.params.get(size) == getattr(config, size)
        ]
        if not heads:
            return space.probe_weight_decay(self.config)
        maximize = self.flash_tuner.study.direction.name == "MAXIMIZE"
        return float((max if maximize else min)(heads, key=lambda t: t.value).params["weight_decay"])

    def _check_time_for_features(self, config, served) -> None:
        """With a budget, a backbone (or input size) that has not run over the data yet is a trial like
        a fine-tune, with one exception. A backbone's first look (no trial of it finished yet: the
        probes enqueued right after the baseline) may take all the tuning time left, so that every
        backbone of the search is looked at before the penalties and fine-tunes use the time; one that
        does not fit even so is skipped, and said. Another input size of a backbone already seen may
        take half the tuning time left, so that the heads on features already cached, a second each,
        keep the other half rather than wait behind one new pass.

        First, the feature cache hears the input sizes the search's backbones run at: each image file
        is decoded once and cropped for all of them, so a later backbone's pass does not read it again."""
        from automl import tuning

        if self.config.modality == "image":
            self.features.plan_images({self.config.image_size, *self.flash_tuner.space.image_sizes}, self.say)
        if self.budget is None or self.features.has(config, served) or self.flash_tuner.best_trial() is None:
            return  # the first model trains whatever the budget says: without it there is nothing to judge
        if config.backbone in self.skipped:  # its penalty probes, or the search proposing it again
            raise tuning.SkipTrial(self.skipped[config.backbone])
        examples = len(served.train_samples) + len(served.val_samples)
        needed = self.features.measure(config, served) * examples
        size = f" at {config.image_size} px" if self.config.modality == "image" else ""
        seen = any(
            t.state.name == "COMPLETE" and t.params.get("backbone") == config.backbone
            for t in self.flash_tuner.study.get_trials(deepcopy=False)
        )
        deadline = self.search.tuning_deadline()
        if not seen and deadline is not None:
            left = max(0.0, deadline - time.time())
            if needed > left:
                skipped = (
                    f"{config.backbone} skipped: its pass over the data{size} would take about "
                    f"{minutes(needed)}, {minutes(left)} is left"
                )
                self.say(skipped)
                self.skipped[config.backbone] = skipped
                raise tuning.SkipTrial(skipped)  # the other backbones' passes and the cheap heads go on
            return
        allowance = self.budget.trial_allowance(self.search.tuning_deadline())
        if needed > allowance:
            raise tuning.NoTimeForTrial(
                f"{config.backbone}{size} would need about {minutes(needed)} to run over the data, "
                f"more than the {minutes(allowance)} a trial may take now"
            )

    def sized(self, config, callbacks: list, deadline: float | None, number: int):
        """With a budget: the epochs (and share of the training set) of a fine-tuning trial that fit
        half the time left until ``deadline``, and the callbacks with a deadline of the trial's own
        (the estimate may be off: a quarter past its share stops it in any case). Raises
        ``NoTimeForTrial`` when not even a tenth of an epoch fits. ``(None, callbacks)`` without a budget."""
        from automl import budget, tuning

        if self.budget is None:
            return None, callbacks
        forward = self.features.forward_seconds(config)
        if forward is None:  # no backbone has run over the data yet: measure this one on a few examples
            forward = self.features.measure(config, self.datamodule)
        examples = (len(self.datamodule.train_samples), len(self.datamodule.val_samples))
        allowance = self.budget.trial_allowance(deadline)
        # a training step is never cheaper than its forward pass: when the guess does not fit, nothing does
        size = budget.size_trial(config.epochs, allowance, forward, *examples, self.correction)
        step = None
        if size is not None and self.steps.affordable(config, forward, allowance):
            step = self.steps.seconds(config)
            allowance = self.budget.trial_allowance(deadline)  # what is left once the step was timed
            size = budget.size_trial(config.epochs, allowance, forward, *examples, self.correction, train_seconds=step)
        if size is None:
            raise tuning.NoTimeForTrial(
                f"fine-tuning {config.backbone} needs more than the {minutes(allowance)} a trial may take now"
            )
        priced = (
            f"a training step measured at {step * 1000:.0f} ms an example, where {budget.TRAIN_COST:g} forward "
            f"passes estimate {forward * budget.TRAIN_COST * 1000:.0f} ms"
            if step is not None
            else f"a training step estimated at {budget.TRAIN_COST:g} forward passes"
        )
        self.say(
            f"trial {number}: fine-tunes {size.epochs} epoch(s)"
            + (f" on {size.train_fraction:.0%} of the training batches" if size.cut else "")
            + f", about {minutes(size.seconds or 0.0)} of the {minutes(allowance)} it may take ({priced})"
        )
        return size, [*callbacks, Deadline(time.time() + 1.25 * allowance)]

    def lightning(self, template):
        from automl import tuning
        from automl.flash import fit
        from automl.progress import EpochLines

        def train(number: int, params: dict, callbacks: list, logger):
            config = self.template_config(params, number, template)
            shared = {k: v for k, v in params.items() if k in FitConfig.keys()}
            size, callbacks = self.sized(self.config.fit_config(**shared), callbacks, self.deadline, number)
            if size is not None:
                config["epochs"], config["limit_train_batches"] = size.epochs, size.train_fraction
            extra = [*callbacks, fit.QuietLibraries(), EpochLines(f"{Tier.LIGHTNING} trial #{number}")]
            # the data read once for the run, not again by every trial
            result = template.fit(
                config, extra_callbacks=extra, logger=logger, progress=self.progress, samples=self.datamodule
            )
            return tuning.TrialOutcome(result.best_score, result.checkpoint, result.best_epoch)

        return train

    def template_config(self, params: dict, number: int, template=None) -> dict:
        from escalation.train import template_config

        out = self.run_dir / "escalation" / str(number)
        config = template_config(self.config.to_dict(), params, out, self.target.metric, template)
        config["strategy"] = self.config.trial_strategy  # Lightning's, as for the Flash tier's trials
        if self.config.precision:
            config["precision"] = self.config.precision
        return config

    def escalation_deadline(self) -> float | None:
        """The budget's end, less what the run's end takes after the study (``Search.finish_reserve``)."""
        if self.deadline is None:
            return None
        return self.deadline - self.search.finish_reserve()


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
