"""How a run spends --time-budget: trial sizes from measured costs, and pruning that respects what
the validation set can resolve."""

from __future__ import annotations

import optuna
import pytest

from automl import budget, tuning


def test_a_trial_that_fits_keeps_its_epochs():
    size = budget.size_trial(epochs=4, allowance=1000, forward_seconds=0.01, train_examples=100, val_examples=50)
    assert (size.epochs, size.train_fraction) == (4, 1.0)
    assert size.seconds == pytest.approx(4 * (50 * 0.01 + 100 * 0.01 * budget.TRAIN_COST))


def test_a_trial_too_long_for_its_share_loses_epochs_then_batches():
    # one epoch: 0.5 s validating + 3 s training
    fewer = budget.size_trial(4, allowance=8, forward_seconds=0.01, train_examples=100, val_examples=50)
    assert (fewer.epochs, fewer.train_fraction) == (2, 1.0)
    part = budget.size_trial(4, allowance=2, forward_seconds=0.01, train_examples=100, val_examples=50)
    assert part.epochs == 1 and part.train_fraction == pytest.approx(0.5)
    assert part.seconds == pytest.approx(2.0)
    assert budget.size_trial(4, allowance=0.6, forward_seconds=0.01, train_examples=100, val_examples=50) is None


def test_the_correction_from_finished_trials_scales_the_estimate():
    slow = budget.size_trial(4, allowance=8, forward_seconds=0.01, train_examples=100, val_examples=50, correction=2)
    assert slow.epochs == 1


def test_the_flash_tier_leaves_the_escalation_its_share():
    plan = budget.Budget(started=1000.0, seconds=600, escalate=True)
    assert plan.tune_deadline == pytest.approx(1000 + 600 * budget.TUNE_SHARE)
    assert plan.trial_allowance(now=1000.0) == pytest.approx(600 * budget.TUNE_SHARE / 2)
    assert plan.trial_allowance(plan.deadline, now=1300.0) == pytest.approx(150)
    assert budget.Budget(1000.0, 600, escalate=False).tune_deadline == plan.deadline


def test_resolution_is_at_least_one_validation_example():
    assert tuning.resolution(1.0, 50) == pytest.approx(1 / 50)
    assert tuning.resolution(0.5, 100) == pytest.approx(0.05)  # the standard error, larger than 1/100


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def _study_with(values: list[float], examples: int):
    study = optuna.create_study(direction="maximize", pruner=tuning.ResolvedPruner(AlwaysPrune(), examples))
    for value in values:
        trial = study.ask()
        trial.report(value, step=1)
        study.tell(trial, value)
    return study


@pytest.mark.parametrize(("value", "pruned"), [(0.89, False), (0.80, True)])
def test_a_trial_behind_by_less_than_the_resolution_is_not_pruned(value, pruned):
    # 100 validation examples at 0.9: the standard error is 0.03
    study = _study_with([0.9, 0.9, 0.9], examples=100)
    trial = study.ask()
    trial.report(value, step=1)
    assert trial.should_prune() is pruned


def test_a_loss_takes_the_inner_decision():
    study = optuna.create_study(direction="minimize", pruner=tuning.ResolvedPruner(AlwaysPrune(), 100, False))
    first = study.ask()
    first.report(2.5, step=1)
    study.tell(first, 2.5)
    trial = study.ask()
    # behind by 0.005, less than the 0.01 that 100 examples resolve for a score in [0, 1]: only the
    # "a loss takes the inner decision" branch prunes it
    trial.report(2.505, step=1)
    assert trial.should_prune()


def test_a_measured_training_step_prices_the_epochs_instead_of_three_forward_passes():
    # estimated: 100 x 0.01 x 3 = 3 s of training an epoch; measured: 100 x 0.05 = 5 s
    guessed = budget.size_trial(4, allowance=8, forward_seconds=0.01, train_examples=100, val_examples=50)
    measured = budget.size_trial(
        4, allowance=8, forward_seconds=0.01, train_examples=100, val_examples=50, train_seconds=0.05
    )
    assert guessed.epochs == 2 and measured.epochs == 1
    assert measured.seconds == pytest.approx(50 * 0.01 + 100 * 0.05)


def plan(seconds: float, escalate: bool, ensemble: bool, forward: float | None = 0.01) -> budget.Plan:
    """A run's plan of ``seconds`` started now: 100 validation and 50 test examples, 3 backbones, one
    example's forward pass at ``forward`` seconds (None: no backbone has run over the data yet)."""
    import time
    from types import SimpleNamespace

    config = SimpleNamespace(fit_config=lambda: None, ensemble=ensemble)
    datamodule = SimpleNamespace(val_samples=[None] * 100, test_samples=[None] * 50)
    data = SimpleNamespace(config=config, datamodule=datamodule)
    features = SimpleNamespace(forward_seconds=lambda config: forward)
    given = None if seconds is None else budget.Budget(time.time(), seconds, escalate)
    return budget.Plan(given, data, features, backbones=3)


def test_the_plan_keeps_the_runs_end_out_of_the_trials_time():
    # judging: 3 x 100 validation + 50 test examples at 10 ms, and FINISH_SECONDS for the model and report
    alone = plan(600, escalate=False, ensemble=False)
    extra = budget.FINISH_SECONDS + budget.explain_seconds(600)  # the MLflow model, the report, its explanations
    assert alone.finish_reserve() == pytest.approx(0.01 * 350 + extra)
    assert alone.tuning_deadline() == pytest.approx(alone.deadline - alone.finish_reserve())
    assert alone.escalation_deadline() == pytest.approx(alone.tuning_deadline())
    # a kept ensemble runs every backbone over the test split, and times 68 examples
    ensembled = plan(600, escalate=False, ensemble=True)
    assert ensembled.finish_reserve() == pytest.approx(0.01 * (350 + 3 * 50 + 68) + extra)
    # with escalation, tuning stops at its share; the escalation runs to the end less the reserve
    shared = plan(600, escalate=True, ensemble=False)
    assert shared.tuning_deadline() == pytest.approx(shared.budget.started + budget.TUNE_SHARE * 600)
    assert shared.escalation_deadline() == pytest.approx(shared.deadline - shared.finish_reserve())
    # nothing measured yet: only the fixed part is kept back
    assert plan(600, escalate=False, ensemble=True, forward=None).finish_reserve() == extra
    assert budget.explain_seconds(60) == 3.0 and budget.explain_seconds(None) == budget.EXPLAIN_SECONDS


def test_without_a_budget_nothing_has_a_deadline():
    free = plan(None, escalate=True, ensemble=True)
    assert (free.deadline, free.tuning_deadline(), free.escalation_deadline()) == (None, None, None)


def test_a_lightning_trial_is_sized_to_the_time_the_escalation_may_use_not_the_budgets_end():
    """Seconds before the escalation's deadline, with the run's end still to come: no trial fits, even
    though half the time to the budget's end would hold several epochs."""
    import time
    from types import SimpleNamespace

    from automl.trainers import Trainers

    given = budget.Budget(time.time() - 540, 600)  # 60 s of 10m left, 55 s of it kept for the run's end
    plan = SimpleNamespace(budget=given, deadline=given.deadline, escalation_deadline=lambda: given.deadline - 55)
    # an epoch: 100 training examples at 3 x 50 ms and 50 validation examples at 50 ms, 17.5 s; a tenth
    # of its training and all of its validation, 4 s, is more than half the 5 s left to the escalation
    trial = SimpleNamespace(  # a batch too big to time a step on
        epochs=3, batch_size=10_000, backbone="tf_efficientnet_lite0", task="image_classification", image_size=224
    )
    config = SimpleNamespace(fit_config=lambda **params: trial)
    datamodule = SimpleNamespace(train_samples=[None] * 100, val_samples=[None] * 50)
    features = SimpleNamespace(forward_seconds=lambda config: 0.05)
    trainers = Trainers(
        SimpleNamespace(config=config, datamodule=datamodule), features, None, plan, say=print, progress=False
    )
    never = SimpleNamespace(fit=lambda *args, **kwargs: pytest.fail("a trial that does not fit must not train"))
    with pytest.raises(tuning.NoTimeForTrial, match="fine-tuning tf_efficientnet_lite0 needs more than the 2s"):
        trainers.lightning(never)(1, {"learning_rate": 1e-3}, [], None)
