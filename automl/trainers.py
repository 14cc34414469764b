"""How one trial of each tier trains within the budget: ``Trainers.flash`` (a head on cached features,
in seconds, or a fine-tune sized to the time left from a measured training step) and
``Trainers.lightning(template)`` (the template's ``fit``), the functions ``TrialLife.tracked`` wraps
and the study loop (``automl.tuning``) calls.

Built from the values it uses: the run's data (``RunData``), the feature cache, the Flash tier's study
and the budget's plan (``automl.budget.Plan``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from automl import space, trial_record
from automl.budget import TRAIN_COST, Plan
from automl.callbacks import Deadline
from automl.config import FitConfig
from automl.trial_record import Tier
from automl.trials import minutes

if TYPE_CHECKING:
    from automl.flash.features import FeatureCache
    from automl.run_data import RunData
    from automl.tuning import Tuner


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

    def __init__(
        self,
        data: RunData,
        features: FeatureCache,
        flash_tuner: Tuner,
        plan: Plan,
        *,
        say: Callable[[str], None],
        progress: bool,
    ) -> None:
        self.data, self.features, self.flash_tuner, self.plan = data, features, flash_tuner, plan
        self.say, self.progress = say, progress
        self.correction = 1.0  # real / estimated time of the last fine-tuning trial
        self.steps = TrainingSteps(data.datamodule)
        self.skipped: dict[str, str] = {}  # backbones whose first pass did not fit the time left, and why

    def flash(self, number: int, params: dict, callbacks: list, logger):
        from automl import tuning
        from automl.flash import fit
        from automl.progress import EpochLines, SolveLine

        config = self.data.config.fit_config(**params)
        served = fit.data_for(config, self.data.datamodule)
        out = self.data.run_dir / "trials" / str(number)
        if self.flash_tuner.space.head_only(params):
            callbacks = [*callbacks, SolveLine(f"trial #{number}")]
            self._check_time_for_features(config, served)
            features = self.features.get(config, served)
            if self.plan.deadline is not None:
                # the head trains in seconds once the features exist: it may run into the escalation's
                # share rather than stop half-trained, but not past the budget
                callbacks = [c for c in callbacks if not isinstance(c, Deadline)] + [Deadline(self.plan.deadline)]
            trained = fit.train_head(config, served, out, features, self.data.target.metric, callbacks, logger)
            extra = self._cross_validate(config, features) if trained.checkpoint else {}
            return tuning.TrialOutcome(trained.best_score, trained.checkpoint, trained.best_epoch, extra=extra)
        epochs = config.epochs
        config, head = self._warm_head(config, served, out)
        # after a head trained on cached features for the first epochs, the lines count on from them
        callbacks = [*callbacks, EpochLines(f"trial #{number}", first=epochs - config.epochs)]
        size, callbacks = self.sized(config, callbacks, self.plan.tuning_deadline(), number)
        limit = 1.0
        if size is not None:
            config = dataclasses.replace(config, epochs=size.epochs)
            limit = size.train_fraction
        started = time.time()
        metric = self.data.target.metric
        trained = fit.train(config, served, out, metric, callbacks, logger, self.progress, limit, head=head)
        if size is not None and size.seconds:
            self.correction = max(0.2, min(5.0, self.correction * (time.time() - started) / size.seconds))
        return tuning.TrialOutcome(trained.best_score, trained.checkpoint, trained.best_epoch)

    def rebuild_head(self, number: int, params: dict) -> str | None:
        """Head trial ``number``'s checkpoint again: the same fit on the same cached features (seconds).
        The study may choose a head by its cross-validated score that was not the best on validation,
        whose checkpoint ``keep_only_best`` removed."""
        from automl.flash import fit

        config = self.data.config.fit_config(**params)
        served = fit.data_for(config, self.data.datamodule)
        features = self.features.get(config, served)
        out = self.data.run_dir / "trials" / str(number)
        return fit.train_head(config, served, out, features, self.data.target.metric).checkpoint

    def _cross_validate(self, config, features) -> dict:
        """A head's score over k folds of train+val (``automl.flash.heads``): what ranks the heads,
        where one validation split cannot (its ``value`` stays the validation score, the yardstick
        a fine-tuning trial is compared on). Seconds; recorded as the trial's ``cv_*`` attributes."""
        from automl.flash import heads

        x, y = features.labelled()
        folds = heads.cross_validate(
            x,
            y,
            len(self.data.datamodule.labels),
            config.weight_decay,
            self.data.target.metric,
            config.label_smoothing,
            seed=self.data.config.seed,
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
        if self.plan.budget is not None and not self.features.has(config, served):
            return config, None  # computing the features would take the trial's own time
        features = self.features.get(config, served)
        tuner = self.flash_tuner
        penalty = space.head_penalty(
            tuner.study.get_trials(deepcopy=False), tuner.space, config, self.data.config, self.data.target.maximize
        )
        frozen = dataclasses.replace(config, epochs=unfreeze, weight_decay=penalty)
        head = fit.train_head(frozen, served, out / "head", features, self.data.target.metric, checkpoint=False)
        if head.best_score is None:  # stopped before its first validation
            return config, None
        rest = dataclasses.replace(config, strategy="freeze_unfreeze:0", epochs=config.epochs - unfreeze)
        trained_head = head.model.head
        assert isinstance(trained_head, torch.nn.Module), "a Flash-tier classifier has a head module"
        return rest, {k: v.detach().clone() for k, v in trained_head.state_dict().items()}

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

        if self.data.config.modality == "image":
            self.features.plan_images({self.data.config.image_size, *self.flash_tuner.space.image_sizes}, self.say)
        if self.plan.budget is None or self.features.has(config, served) or self.flash_tuner.best_trial() is None:
            return  # the first model trains whatever the budget says: without it there is nothing to judge
        if config.backbone in self.skipped:  # its penalty probes, or the search proposing it again
            raise tuning.SkipTrial(self.skipped[config.backbone])
        examples = len(served.train_samples) + len(served.val_samples)
        needed = self.features.measure(config, served) * examples
        size = f" at {config.image_size} px" if self.data.config.modality == "image" else ""
        seen = any(
            t.state.name == "COMPLETE" and t.params.get("backbone") == config.backbone
            for t in self.flash_tuner.study.get_trials(deepcopy=False)
        )
        deadline = self.plan.tuning_deadline()
        assert deadline is not None, "a run with a budget has a tuning deadline"
        if not seen:
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
        allowance = self.plan.budget.trial_allowance(deadline)
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

        if self.plan.budget is None:
            return None, callbacks
        forward = self.features.forward_seconds(config)
        if forward is None:  # no backbone has run over the data yet: measure this one on a few examples
            forward = self.features.measure(config, self.data.datamodule)
        examples = (len(self.data.datamodule.train_samples), len(self.data.datamodule.val_samples))
        allowance = self.plan.budget.trial_allowance(deadline)
        # a training step is never cheaper than its forward pass: when the guess does not fit, nothing does
        size = budget.size_trial(config.epochs, allowance, forward, *examples, self.correction)
        step = None
        if size is not None and self.steps.affordable(config, forward, allowance):
            step = self.steps.seconds(config)
            allowance = self.plan.budget.trial_allowance(deadline)  # what is left once the step was timed
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
            shared = {k: v for k, v in params.items() if k in FitConfig.keys()}
            # sized to the time the study may use (the run's end kept back), as the study loop stops
            deadline = self.plan.escalation_deadline()
            size, callbacks = self.sized(self.data.config.fit_config(**shared), callbacks, deadline, number)
            config = self.template_config(params, number, template)
            if size is not None:
                config["epochs"], config["limit_train_batches"] = size.epochs, size.train_fraction
            extra = [*callbacks, fit.QuietLibraries(), EpochLines(f"{Tier.LIGHTNING} trial #{number}")]
            # the data read once for the run, not again by every trial
            result = template.fit(
                config, extra_callbacks=extra, logger=logger, progress=self.progress, samples=self.data.datamodule
            )
            return tuning.TrialOutcome(result.best_score, result.checkpoint, result.best_epoch)

        return train

    def template_config(self, params: dict, number: int, template=None) -> dict:
        from escalation.train import template_config

        out = self.data.run_dir / "escalation" / str(number)
        config = template_config(self.data.config.to_dict(), params, out, self.data.target.metric, template)
        config["strategy"] = self.data.config.trial_strategy  # Lightning's, as for the Flash tier's trials
        if self.data.config.precision:
            config["precision"] = self.data.config.precision
        return config
