from __future__ import annotations

import time

import lightning.pytorch as pl
import optuna
import pytest
from helpers import TINY_IMAGE_BACKBONE, make_image_folder, tiny_run_config

from automl import metrics as m
from automl import shared_study, tuning
from automl.callbacks import Deadline
from automl.errors import StoreUnavailable
from automl.flash import fit
from automl.space import SearchSpace, baseline_params
from automl.trial_record import Role

SPACE = SearchSpace("image", (TINY_IMAGE_BACKBONE,), epochs=2, image_size=32, batch_size=8)
BASELINE = baseline_params(SPACE, learning_rate=2e-3, weight_decay=0.0, dropout=0.0, label_smoothing=0.0)


def make_tuner(tmp_path, name="study", pruner="none") -> tuning.Tuner:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    return tuning.Tuner(SPACE, storage, name, "maximize", m.VAL_ACCURACY, seed=0, pruner=pruner)


def fake_train(scores: dict[int, float] | None = None, fail: set[int] = frozenset(), clock=None, seconds=0.0):
    calls = []

    def train(number, params, callbacks):
        calls.append((number, params))
        if clock is not None:
            clock.advance(seconds)
        if number in fail:
            raise FloatingPointError("The training loss became nan at step 3.")
        return tuning.TrialOutcome(score=(scores or {}).get(number, 0.5), checkpoint=f"ckpt-{number}", best_epoch=0)

    train.calls = calls
    return train


def test_the_baseline_is_trial_zero_and_every_trial_counts(tmp_path):
    tuner = make_tuner(tmp_path)
    tuner.enqueue_baseline(BASELINE)
    train = fake_train({0: 0.7, 1: 0.6, 2: 0.8})
    assert tuner.run(train, total_trials=3) == "trials"
    trials = tuner.study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[0].params == BASELINE and trials[0].user_attrs["role"] == Role.BASELINE
    assert tuner.best_trial().number == 2 and tuner.best_trial().user_attrs["checkpoint"] == "ckpt-2"

    # the same study again: nothing left to do, and the baseline is not enqueued twice
    again = make_tuner(tmp_path)
    again.enqueue_baseline(BASELINE)
    assert again.run(train, total_trials=3) == "trials" and len(train.calls) == 3
    assert again.run(train, total_trials=4) == "trials" and len(again.study.trials) == 4
    assert [t.user_attrs.get("role") for t in again.study.trials].count(Role.BASELINE) == 1


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path):
    tuner = make_tuner(tmp_path)
    tuner.enqueue_baseline(BASELINE)
    tuner.run(fake_train(fail={1}), total_trials=3)
    trials = tuner.study.get_trials()
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.COMPLETE,
    ]
    assert trials[1].user_attrs["fail_reason"] == "FloatingPointError: The training loss became nan at step 3."
    assert tuner.summary()[1].reason.startswith("FloatingPointError")


class FakeClock:
    def __init__(self):
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_the_time_budget_stops_new_trials(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(tuning.time, "time", clock.time)
    tuner = make_tuner(tmp_path)
    tuner.enqueue_baseline(BASELINE)
    deadline = clock.now + 25.0
    # each trial takes 10 s: after two, 5 s are left, less than the median trial: no third starts
    assert tuner.run(fake_train(clock=clock, seconds=10.0), total_trials=10, deadline=deadline) == "budget"
    trials = tuner.study.get_trials()
    assert len(trials) == 2
    assert all(t.user_attrs["started_at"] < deadline for t in trials)
    assert [t.user_attrs["seconds"] for t in trials] == [10.0, 10.0]


def test_the_deadline_stops_a_running_fit_and_its_best_epoch_counts(tmp_path):
    class DeadlineAfterFirstEpoch(Deadline):
        def on_train_epoch_end(self, trainer, pl_module):
            self.deadline = time.time() - 1.0  # the budget runs out during epoch 1

    make_image_folder(tmp_path / "imgs", per_class=8)
    config = tiny_run_config(tmp_path / "imgs", tmp_path, epochs=5).fit_config()
    deadline = DeadlineAfterFirstEpoch(None)
    trained = fit.train(config, fit.load_data(config), tmp_path / "out", callbacks=[deadline], progress=False)
    assert deadline.triggered
    assert trained.trainer.current_epoch < 5
    assert trained.best_epoch == 0 and trained.checkpoint is not None and trained.best_score is not None


class PruneEveryTrialButTheBaseline(optuna.pruners.BasePruner):
    """A pruner whose decision is fixed: trial 0 runs to the end, every later trial is pruned."""

    def prune(self, study, trial) -> bool:
        return trial.number > 0


def test_a_pruned_trial_is_recorded_as_pruned(tmp_path):
    make_image_folder(tmp_path / "imgs", per_class=6)
    config = tiny_run_config(tmp_path / "imgs", tmp_path, epochs=2).fit_config()
    datamodule = fit.load_data(config)
    tuner = make_tuner(tmp_path, pruner=PruneEveryTrialButTheBaseline())
    tuner.enqueue_baseline(BASELINE)
    for strategy in ("no_freeze", "freeze_unfreeze:1", "freeze"):
        tuner.study.enqueue_trial({"strategy": strategy})

    def train(number, params, callbacks):
        pl.seed_everything(number, verbose=False)
        trained = fit.train(config, datamodule, tmp_path / str(number), callbacks=callbacks, progress=False)
        return tuning.TrialOutcome(trained.best_score, trained.checkpoint, trained.best_epoch)

    tuner.run(train, total_trials=4)
    states = [t.state for t in tuner.study.get_trials()]
    complete, pruned = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    # a head on cached features costs seconds: it is never pruned (its many short epochs are no
    # yardstick for a full trial's)
    assert states == [complete, pruned, pruned, complete]
    assert tuner.study.trials[1].user_attrs["pruned_reason"] == "Trial was pruned at epoch 0."


def test_an_unreachable_storage_is_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'optuna.db'}"
    with pytest.raises(StoreUnavailable, match=r"Cannot open the Optuna storage 'sqlite:///.*no/such/dir/optuna.db'"):
        tuning.Tuner(SPACE, url, "s", "maximize", m.VAL_ACCURACY)


def test_baseline_params_lie_inside_the_space():
    for modality in ("image", "text"):
        space = SearchSpace(modality, ("a", "b"), epochs=3, image_size=96, max_length=64, batch_size=24)
        params = baseline_params(space, 2e-3, 0.0, 0.0, 0.0)
        study = optuna.create_study()
        study.enqueue_trial(params)
        trial = study.ask()
        assert space.suggest(trial) == params


def test_a_trial_whose_process_died_as_it_started_is_recovered(tmp_path, monkeypatch):
    """A process killed between creating its trial and naming itself on it leaves a RUNNING trial with
    no worker: once it is older than any live start could be, it is failed and retried."""
    tuner = make_tuner(tmp_path)
    tuner.study.ask()  # RUNNING, never named
    assert make_tuner(tmp_path).recovered == []  # too young: its process may still be starting
    monkeypatch.setattr(shared_study, "UNNAMED_TRIAL_SECONDS", 0)
    assert make_tuner(tmp_path).recovered == [0]
    (dead, retry) = tuner.study.get_trials()
    assert dead.state.name == "FAIL" and dead.user_attrs["fail_reason"] == "its process died as the trial started"
    assert retry.state.name == "WAITING" and retry.user_attrs["retry_of"] == 0


def test_a_trial_that_does_not_fit_the_time_left_turns_the_rest_of_the_study_to_cheap_trials(tmp_path):
    space = SearchSpace("image", (TINY_IMAGE_BACKBONE, "test_efficientnet"), 2, image_size=32, batch_size=8)
    tuner = tuning.Tuner(space, f"sqlite:///{tmp_path / 'optuna.db'}", "s", "maximize", m.VAL_ACCURACY, seed=0)
    tuner.enqueue_baseline({**BASELINE, "strategy": "freeze", "augment": False})
    tuner.cheaper = lambda: {"strategy": "freeze", "backbone": tuner.best_trial().params["backbone"]}
    calls = []

    def train(number, params, callbacks):
        calls.append(params)
        if not space.head_only(params):
            raise tuning.NoTimeForTrial("fine-tuning needs more than the 10s a trial may take now")
        return tuning.TrialOutcome(score=0.5 + number / 100, checkpoint=f"ckpt-{number}", best_epoch=0)

    assert tuner.run(train, total_trials=6) == "trials"
    counted = tuner.finished_trials()
    assert len(counted) == 6  # the trial that did not fit is not one of them
    assert all(space.head_only(t.params) for t in counted)
    assert {t.params["backbone"] for t in counted} == {TINY_IMAGE_BACKBONE}
    refused = [t for t in tuner.study.get_trials() if t.user_attrs.get("surplus")]
    assert len(refused) <= 1 and len(calls) == 6 + len(refused)

    # a cheap trial that does not fit either ends the study for the budget
    again = tuning.Tuner(space, f"sqlite:///{tmp_path / 'again.db'}", "s", "maximize", m.VAL_ACCURACY, seed=0)
    again.enqueue_baseline({**BASELINE, "strategy": "freeze", "augment": False})
    again.cheaper = lambda: {"strategy": "no_freeze"}

    def baseline_only(number, params, callbacks):
        if number > 0:
            raise tuning.NoTimeForTrial("no time")
        return tuning.TrialOutcome(score=0.5, checkpoint="c", best_epoch=0)

    assert again.run(baseline_only, total_trials=6) == "budget"
    assert len(again.finished_trials()) == 1


def test_each_probe_runs_after_the_baseline_once_per_study(tmp_path):
    tuner = make_tuner(tmp_path)
    tuner.enqueue_baseline(BASELINE)
    probes = [{**BASELINE, "strategy": "freeze", "learning_rate": lr} for lr in (1e-3, 3e-3)]
    tuner.enqueue_probes(probes)
    tuner.enqueue_probes(probes)  # a resumed run, or a second worker: nothing more
    train = fake_train()
    assert tuner.run(train, total_trials=3) == "trials"
    trials = tuner.study.get_trials()
    assert [t.user_attrs["role"] for t in trials] == [Role.BASELINE, Role.PROBE, Role.PROBE]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3  # a sibling probe is no duplicate
    assert [p["learning_rate"] for _, p in train.calls] == [2e-3, 1e-3, 3e-3]


def test_the_study_chooses_heads_by_their_cross_validated_score_then_compares_on_validation():
    """One validation split cannot rank heads a few points apart: the head with the best mean over the
    folds is the candidate, however it happened to score on validation; it then meets the best
    fine-tune on the validation split they share (issue 24, item 1)."""
    import optuna

    from automl.trial_record import CV_MEAN, CV_STD
    from automl.tuning import chosen

    def trial(number: int, value: float, cv: float | None = None):
        attrs = {} if cv is None else {CV_MEAN: cv, CV_STD: 0.01}
        made = optuna.trial.create_trial(value=value, params={}, distributions={}, user_attrs=attrs)
        made.number = number
        return made

    lucky, steady = trial(0, 0.83, cv=0.85), trial(1, 0.82, cv=0.86)
    assert chosen([lucky, steady], maximize=True) is steady
    finetune = trial(2, 0.825)
    assert chosen([lucky, steady, finetune], maximize=True) is finetune  # 0.825 > the chosen head's 0.82
    assert chosen([lucky, steady, trial(3, 0.81)], maximize=True) is steady
    assert chosen([trial(4, 0.5), trial(5, 0.7)], maximize=True).number == 5  # no heads: by value
    assert chosen([trial(6, 0.4, cv=0.3), trial(7, 0.3, cv=0.2)], maximize=False).number == 7  # a loss
    assert chosen([], maximize=True) is None
