"""How ``automl run`` spends ``--time-budget``: measured costs in, a size for each trial out.

The plan, in the order a run meets it:

1. The baseline and the first trials train heads on cached features of each available backbone
   (:mod:`automl.flash.features`): seconds each once the backbone has run over the data, and that one
   pass measures what a forward pass of that backbone costs on this machine.
2. Tuning (the Flash tier) may use :data:`TUNE_SHARE` of the budget when the run may escalate, all
   of it otherwise; the Lightning tier gets the rest.
3. A trial that fine-tunes the backbone gets at most half of the tuning time left, so at least two
   of them fit; its epochs are cut to what fits, and when not even one full pass fits, it trains on a
   share of the training batches (``limit_train_batches``). The cost of a pass comes from a few real
   training steps timed before the first fine-tune of each backbone and input size
   (``fit.measure_training_step``), else from the measured forward time (a training step costing about
   :data:`TRAIN_COST` forward passes), and is corrected by what the finished fine-tuning trials really took.
4. A head on a backbone or input size whose features are not cached yet pays for that pass over the
   data, and gets the same half of the tuning time left. A pass that does not fit is not made: from
   then on, as when a fine-tune no longer fits, every trial is a head on the features of the best
   trial's backbone and size, which cost a second each.

5. The run's end (judging on validation and test, the MLflow model, the report) is kept out of the
   last stage's time (``Plan.finish_reserve``): the run ends within its budget.

Without a budget nothing here applies: every trial trains the epochs it was given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from automl.flash.features import FeatureCache
    from automl.run_data import RunData

#: the share of the budget the Flash tier may use when a missed target escalates to the Lightning tier
TUNE_SHARE = 0.6
#: a training step (forward, backward, update) in forward passes of the same batch
TRAIN_COST = 3.0
#: a share of the training set below this is not worth a trial
MIN_TRAIN_FRACTION = 0.1
#: seconds the end of a run takes besides its passes over the data (the MLflow model, the report),
#: planned inside the budget: 6-8 s measured here
FINISH_SECONDS = 10.0
#: the report's explanations (automl.explain) may take this share of the budget, at most EXPLAIN_SECONDS
EXPLAIN_SHARE, EXPLAIN_SECONDS = 0.05, 30.0


def explain_seconds(budget_seconds: float | None) -> float:
    """Seconds the report's explanations may take: :data:`EXPLAIN_SECONDS`, less in a small budget."""
    return EXPLAIN_SECONDS if budget_seconds is None else min(EXPLAIN_SECONDS, EXPLAIN_SHARE * budget_seconds)


@dataclass(frozen=True)
class TrialSize:
    """What a fine-tuning trial may run: ``epochs`` passes over ``train_fraction`` of the training set."""

    epochs: int
    train_fraction: float = 1.0
    seconds: float | None = None  # the estimate

    @property
    def cut(self) -> bool:
        return self.train_fraction < 1.0


@dataclass
class Budget:
    """The run's clock: when tuning must end, and how long the next trial may take."""

    started: float  # time.time() when the run started
    seconds: float
    escalate: bool = True

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    @property
    def tune_deadline(self) -> float:
        return self.started + self.seconds * (TUNE_SHARE if self.escalate else 1.0)

    def trial_allowance(self, deadline: float | None = None, now: float | None = None) -> float:
        """Seconds the next fine-tuning trial may take: half the time left until ``deadline`` (the
        Flash tier's by default; the escalation's is the budget's end)."""
        now = time.time() if now is None else now
        return max(0.0, (self.tune_deadline if deadline is None else deadline) - now) / 2


def size_trial(
    epochs: int,
    allowance: float,
    forward_seconds: float,
    train_examples: int,
    val_examples: int,
    correction: float = 1.0,
    train_seconds: float | None = None,
) -> TrialSize | None:
    """The largest trial of at most ``epochs`` epochs whose estimated time fits ``allowance``.

    ``forward_seconds`` is one example's forward pass; ``train_seconds`` one example's training step
    as measured (None: :data:`TRAIN_COST` forward passes); ``correction`` the ratio of real to
    estimated time seen in finished trials. None when not even :data:`MIN_TRAIN_FRACTION` of one epoch fits.
    """
    validate = val_examples * forward_seconds * correction
    step = train_seconds if train_seconds is not None else forward_seconds * TRAIN_COST
    train = train_examples * step * correction
    epoch = validate + train
    if epochs * epoch <= allowance:
        return TrialSize(epochs, 1.0, epochs * epoch)
    fitting = int(allowance // epoch)
    if fitting >= 1:
        return TrialSize(fitting, 1.0, fitting * epoch)
    fraction = (allowance - validate) / train if train > 0 else 0.0
    if fraction < MIN_TRAIN_FRACTION:
        return None
    return TrialSize(1, round(fraction, 3), validate + fraction * train)


@dataclass(frozen=True)
class Plan:
    """The budget's plan: when the Flash tier's trials must end, when the Lightning tier's must, and
    what the run's end needs after its last trial (``finish_reserve``), all inside ``budget``."""

    budget: Budget | None
    data: RunData
    features: FeatureCache
    backbones: int  # how many backbones the Flash tier searches: a kept ensemble runs each over the test split

    @property
    def deadline(self) -> float | None:
        return None if self.budget is None else self.budget.deadline

    def finish_reserve(self) -> float:
        """Seconds a run needs after its last trial, kept out of the trials' time: judging the chosen
        trial on validation (up to three passes, with test-time augmentation), the final model on the
        test split (an ensemble's members too), and :data:`FINISH_SECONDS` for the MLflow model and the
        report."""
        config, datamodule = self.data.config, self.data.datamodule
        forward = self.features.forward_seconds(config.fit_config()) or 0.0
        test = len(datamodule.test_samples)
        examples = 3 * len(datamodule.val_samples) + test
        if config.ensemble:
            # a kept ensemble: its best single member judged alone too, the other backbones over the test
            # split, and 2 x 34 examples timed (its heads and a TF-IDF model fit in seconds)
            examples += test * self.backbones + 68
        return forward * examples + FINISH_SECONDS + explain_seconds(self.budget.seconds if self.budget else None)

    def tuning_deadline(self) -> float | None:
        """When the Flash tier's trials must end: its share of the budget (it leaves the Lightning tier
        the rest), and early enough for the run's end (``finish_reserve``) when it has the whole budget
        (``--no-escalate``)."""
        if self.budget is None:
            return None
        return min(self.budget.tune_deadline, self.budget.deadline - self.finish_reserve())

    def escalation_deadline(self) -> float | None:
        """The budget's end, less what the run's end takes after the study (``finish_reserve``)."""
        if self.budget is None:
            return None
        return self.budget.deadline - self.finish_reserve()
