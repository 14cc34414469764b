"""TrialRecord: a trial of either tier as the stages see it, built from Optuna's own FrozenTrial."""

from __future__ import annotations

import json
import types

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from automl import trial_record as tr
from automl.run_folder import ModelTier
from automl.trial_record import Role, Tier, TrialRecord


def frozen(number: int, state=TrialState.COMPLETE, value=0.8, **attrs) -> optuna.trial.FrozenTrial:
    trial = create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"learning_rate": 1e-3},
        distributions={"learning_rate": FloatDistribution(1e-5, 1e-1, log=True)},
        user_attrs=attrs,
    )
    trial.number = number
    return trial


def test_a_record_carries_what_the_trial_stored_and_its_row_keeps_the_study_csv_keys():
    trial = frozen(3, value=0.75, **{tr.ROLE: "probe", tr.SECONDS: 12.5, tr.CV_MEAN: 0.7, tr.CV_STD: 0.02})
    record = TrialRecord.of(Tier.FLASH, trial)
    assert (record.tier, record.number, record.role, record.state) == (Tier.FLASH, 3, Role.PROBE, "COMPLETE")
    assert (record.score, record.seconds, record.params) == (0.75, 12.5, {"learning_rate": 1e-3})
    assert record.ranking_score == 0.7  # a head is ranked by its cross-validated mean, not its one split
    row = record.row()
    assert list(row) == ["number", "state", "value", "seconds", "role", "reason", "params", "cv_mean", "cv_std"]
    assert row["role"] == "probe" and type(row["role"]) is str  # plain strings in study.csv and the journal


def test_a_trial_without_a_role_is_a_tuning_trial_and_a_failed_one_says_why():
    failed = frozen(1, TrialState.FAIL, **{tr.FAIL_REASON: "FloatingPointError: nan"})
    record = TrialRecord.of("lightning", failed)
    assert record.role == Role.TUNING and record.tier == Tier.LIGHTNING
    assert record.score is None and record.reason == "FloatingPointError: nan" and record.ranking_score is None
    pruned = TrialRecord.of(Tier.FLASH, frozen(2, TrialState.PRUNED, **{tr.PRUNED_REASON: "pruned at epoch 0"}))
    assert pruned.reason == "pruned at epoch 0"
    with pytest.raises(ValueError, match="'nonsense'"):  # a role no version wrote is an error, not a guess
        Role.of("nonsense")


def test_a_study_lists_its_counted_trials_with_why_a_dead_one_was_run_again():
    dead = frozen(0, TrialState.FAIL, **{tr.ROLE: "baseline", tr.FAIL_REASON: "its process died"})
    unused = frozen(1, TrialState.PRUNED, **{tr.SURPLUS: True})
    retry = frozen(2, **{tr.ROLE: "baseline", tr.RETRY_OF: 0, tr.RETRY_REASON: "its worker stopped"})
    records = TrialRecord.of_study(Tier.FLASH, [dead, unused, retry])
    assert [r.number for r in records] == [0, 2]  # the one closed unused is not shown
    assert records[0].reason == "its process died" and records[1].role == Role.BASELINE
    no_reason = frozen(4, TrialState.FAIL, **{tr.RETRY_OF: 3})
    was = frozen(3, TrialState.FAIL, **{tr.RETRY_REASON: "ignored: the retry says why"})
    assert TrialRecord.of_study(Tier.FLASH, [was, no_reason])[0].reason is None


def test_tiers_and_roles_read_as_the_strings_they_replaced(tmp_path):
    assert (
        json.dumps({"tier": Tier.LIGHTNING, "role": Role.WARM_START}) == '{"tier": "lightning", "role": "warm start"}'
    )
    assert f"study.{Tier.LIGHTNING}.csv" == "study.lightning.csv" and str(Role.BASELINE) == "baseline"
    assert Tier("flash") is Tier.FLASH and Role("warm start") is Role.WARM_START
    ModelTier(Tier.LIGHTNING, None).write(tmp_path)  # best/tier.json, as 0.1 wrote it
    assert json.loads((tmp_path / "tier.json").read_text()) == {"tier": "lightning", "template": None}
    assert ModelTier.read(tmp_path).tier is Tier.LIGHTNING and ModelTier.read(tmp_path / "none").tier is Tier.FLASH


def test_seconds_fall_back_to_optunas_duration_for_a_trial_that_did_not_measure_them():
    assert tr.seconds(frozen(0, **{tr.SECONDS: 4.0})) == 4.0
    trial = frozen(1)
    assert tr.seconds(trial) == pytest.approx(trial.duration.total_seconds())
    assert tr.seconds(types.SimpleNamespace(user_attrs={}, duration=None)) is None
