"""Stage functions on their own: a study run by ``stages.run_study`` with a fake training function,
and what it writes and says."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import TINY_IMAGE_BACKBONE

from automl import metrics as m
from automl import stages, tuning
from automl.errors import DataError
from automl.space import SearchSpace, baseline_params
from automl.trial_record import Role, Tier
from automl.trials import TrialLines

SPACE = SearchSpace("image", (TINY_IMAGE_BACKBONE,), epochs=2, image_size=32, batch_size=8, strategy="no_freeze")


def study(tmp_path) -> tuning.Tuner:
    tuner = tuning.Tuner(SPACE, f"sqlite:///{tmp_path / 'optuna.db'}", "s", "maximize", m.VAL_ACCURACY, pruner="none")
    defaults = {"learning_rate": 2e-3, "weight_decay": 0.0, "dropout": 0.0, "label_smoothing": 0.0}
    tuner.enqueue_baseline(baseline_params(SPACE, **defaults))
    return tuner


def train_with(scores: dict[int, float | None]):
    def train(number, params, callbacks):
        if scores.get(number) is None:
            raise FloatingPointError("The training loss became nan at step 3.")
        return tuning.TrialOutcome(score=scores[number], checkpoint=f"ckpt-{number}", best_epoch=1)

    return train


def lines(said: list[str]) -> TrialLines:
    return TrialLines(said.append, 3, 7, "tuning", m.VAL_ACCURACY)


def test_a_study_run_gives_its_best_trial_every_record_and_a_line_that_counts_them(tmp_path):
    tuner, said = study(tmp_path), []
    run = stages.run_study(
        tuner, train_with({0: 0.6, 1: None, 2: 0.8}), 3, lines(said), "tune", None, reasons=tmp_path, budget=None
    )
    result = run.result
    assert (result.best_trial, result.score, result.checkpoint, result.trials) == (2, 0.8, "ckpt-2", 3)
    assert run.why == "trials" and run.new == 3
    assert run.note == "all trials done; 3 new; 2 complete, 1 fail"
    assert [(r.number, r.role, r.state) for r in run.summary] == [
        (0, Role.BASELINE, "COMPLETE"),
        (1, Role.TUNING, "FAIL"),
        (2, Role.TUNING, "COMPLETE"),
    ]
    assert run.summary[1].reason == "FloatingPointError: The training loss became nan at step 3."
    assert [line for line in said if "trial 3/3 (#2), best 0.600" in line]  # each start is announced

    stages.write_study(tmp_path / "study.csv", run.summary)
    rows = pd.read_csv(tmp_path / "study.csv")
    assert list(rows["role"]) == ["baseline", "tuning", "tuning"] and list(rows["state"])[1] == "FAIL"
    assert {"number", "value", "seconds", "reason", "cv_mean", "param_learning_rate", "param_backbone"} <= set(rows)
    assert rows.loc[0, "param_learning_rate"] == 2e-3


def test_a_stage_with_nothing_left_to_run_says_where_its_trials_came_from(tmp_path):
    tuner = study(tmp_path)
    stages.run_study(tuner, train_with({0: 0.6, 1: 0.7}), 2, lines([]), "tune", None, reasons=tmp_path, budget=None)
    again, said = study(tmp_path), []  # the same command run again: the study already holds them
    run = stages.run_study(again, train_with({}), 2, lines(said), "tune", None, reasons=tmp_path, budget=None)
    assert run.new == 0 and run.result.best_trial == 1
    assert run.note.startswith("no new trial: 2 of 2 trials finished in earlier runs or by other workers")
    assert said == ["[3/7] tuning: " + run.note.split(";")[0]]


def test_a_tuning_stage_where_no_trial_scored_is_an_error_that_points_at_the_reasons(tmp_path):
    reasons = tmp_path / "study.csv"
    with pytest.raises(DataError, match=f"No tuning trial finished with a score; see the reasons in {reasons}"):
        stages.run_study(study(tmp_path), train_with({}), 2, lines([]), "tune", None, reasons=reasons, budget=None)


def test_the_study_file_of_each_tier():
    from automl.run_folder import study_file

    assert (study_file(Tier.FLASH), study_file(Tier.LIGHTNING)) == ("study.csv", "study.lightning.csv")


def test_a_baseline_with_no_time_left_says_how_much_of_the_budget_went(tmp_path):
    import time
    from types import SimpleNamespace

    from automl.budget import Budget

    spent = Budget(time.time() - 500, 600, escalate=True)  # 8m of 10m gone: past tuning's 6m
    plan = SimpleNamespace(budget=spent, tuning_deadline=lambda: spent.tune_deadline)
    said = []
    result = stages.baseline(study(tmp_path), train_with({0: 0.9}), plan, True, lines([]), said.append)
    assert (result.number, result.state) == (None, "not started")
    assert said == ["not started: no time left (8m of the 10m budget spent)"]


def test_an_escalation_that_did_not_win_keeps_the_flash_verdict_and_says_why():
    from automl.run_folder import StudyResult, TierVerdict

    verdict = TierVerdict(
        "val_accuracy>=0.9", "val_accuracy", 0.8, 0.7, 0.9, "missed", 0.1, {}, 3, "flash", "missed by the flash tier"
    )
    flash = StudyResult("s", 3, 0.8, {}, "ckpt-3", "trials", 10)
    beaten = stages.flash_kept(flash, verdict, StudyResult("s-lightning", 0, 0.75, {}, "ckpt-0", "trials", 2))
    assert beaten.score == 0.8 and beaten.outcome == (
        "missed after escalation (the Lightning tier did not beat the Flash tier's 0.8000), short by 0.1000"
    )
    none = stages.flash_kept(flash, verdict, StudyResult("s-lightning", None, None, {}, None, "budget", 0))
    assert "no Lightning-tier trial finished (budget; see study.lightning.csv)" in none.outcome


def test_a_lightning_tier_one_example_better_on_validation_does_not_replace_the_flash_tier(tmp_path):
    """The escalation's model replaces the Flash tier's only when its paired gain on the same
    validation examples is more than they resolve: one example in 100 is noise, twenty are not."""
    from types import SimpleNamespace

    import numpy as np

    from automl.target import parse_target

    labels, rng = ["a", "b"], np.random.default_rng(0)
    targets = rng.integers(0, 2, 100)
    flash = np.eye(2)[targets] * 0.8 + 0.1  # right on every example...
    flash[:30] = np.eye(2)[1 - targets[:30]] * 0.8 + 0.1  # ...but the first 30
    stages.write_predictions(
        tmp_path / "predictions_val.flash.csv", [f"{i}.png" for i in range(100)], targets, flash, labels
    )
    data = SimpleNamespace(
        run_dir=tmp_path, labels=labels, target=parse_target("accuracy>=0.9"), config=SimpleNamespace(seed=0)
    )
    one_better = flash.copy()
    one_better[0] = np.eye(2)[targets[0]] * 0.8 + 0.1
    why = stages.unresolved_gain(data, targets, one_better)
    assert why.startswith("its gain of 0.0100 over the Flash tier on the 100 validation examples is within the")
    twenty_better = flash.copy()
    twenty_better[:20] = np.eye(2)[targets[:20]] * 0.8 + 0.1
    assert stages.unresolved_gain(data, targets, twenty_better) == ""
