"""The run folder's records, unit by unit: the journal (one written by automl 0.1 included) and the
rule that keeps only the best trial's checkpoints."""

from __future__ import annotations

import json

import pytest

from automl.run_folder import EscalationResult, Journal, StudyResult, TierVerdict, TrialResult
from automl.trials import keep_only_best

#: journal.json as automl 0.1 wrote it: stage results were plain dicts (the tune stage's carried
#: every trial's row under "summary"), and the journal's own values sat beside "stages"
JOURNAL_0_1 = {
    "stages": {
        "inspect": {
            "key": "k-inspect",
            "result": {
                "kind": "image",
                "labels": ["ants", "bees"],
                "class_counts": {"ants": 120, "bees": 125},
                "train_size": 196,
                "val_size": 49,
                "skipped": [],
                "imbalance_ratio": 1.04,
            },
            "seconds": 1.5,
            "finished_at": "2026-06-01T10:00:02",
        },
        "tune": {
            "key": "k-tune",
            "result": {
                "study": "image_classification-1a2b",
                "best_trial": 3,
                "score": 0.9592,
                "params": {"backbone": "tf_efficientnet_lite0", "learning_rate": 0.002},
                "checkpoint": "runs/x/trials/3/checkpoints/best.ckpt",
                "stopped": "trials",
                "trials": 10,
                "summary": [{"number": 0, "state": "COMPLETE", "value": 0.93, "role": "baseline"}],
            },
            "seconds": 380.25,
            "finished_at": "2026-06-01T10:06:25",
        },
        "verdict": {
            "key": "k-verdict",
            "result": {
                "target": "accuracy>=0.99",
                "metric": "val_accuracy",
                "score": 0.9592,
                "ci_low": 0.903,
                "ci_high": 1.0,
                "verdict": "missed",
                "gap": 0.0308,
                "scores": {"val_accuracy": 0.9592, "val_f1_macro": 0.959},
                "best_trial": 3,
                "tier": "flash",
                "outcome": "missed by the flash tier, short by 0.0308",
            },
            "seconds": 2.0,
            "finished_at": "2026-06-01T10:06:27",
        },
        "escalate": {
            "key": "k-escalate",
            "result": {
                "tier": {
                    "study": "image_classification-1a2b-lightning",
                    "best_trial": 0,
                    "score": 0.9796,
                    "params": {"learning_rate": 0.0003},
                    "checkpoint": "runs/x/escalation/0/checkpoints/best.ckpt",
                    "stopped": "budget",
                    "trials": 2,
                    "summary": [],
                },
                "template": "/site-packages/escalation/template",
                "better": True,
                "verdict": {
                    "target": "accuracy>=0.99",
                    "metric": "val_accuracy",
                    "score": 0.9796,
                    "ci_low": 0.891,
                    "ci_high": 0.999,
                    "verdict": "missed",
                    "gap": 0.0104,
                    "scores": {"val_accuracy": 0.9796},
                    "best_trial": 0,
                    "tier": "lightning",
                    "outcome": "missed after escalation, short by 0.0104",
                },
                "template_config": {"epochs": 3},
            },
            "seconds": 300.0,
            "finished_at": "2026-06-01T10:11:27",
        },
        "finalise": {
            "key": "k-finalise",
            "result": {"best_dir": "runs/x/best", "tier": "lightning", "model_uri": "runs:/abc/model"},
            "seconds": 12.0,
            "finished_at": "2026-06-01T10:11:39",
        },
    },
    "mlflow_run_id": "abc",
    "study": "image_classification-1a2b",
    "template": "/site-packages/escalation/template",
}


def test_a_journal_written_by_0_1_reads_as_typed_results(tmp_path):
    path = tmp_path / "journal.json"
    path.write_text(json.dumps(JOURNAL_0_1))
    journal = Journal(path)
    tune = journal.result("tune")
    assert isinstance(tune, StudyResult) and (tune.best_trial, tune.score, tune.trials) == (3, 0.9592, 10)
    assert tune["params"]["backbone"] == "tf_efficientnet_lite0"  # read like the dict 0.1 returned
    verdict = journal.result("verdict")
    assert isinstance(verdict, TierVerdict) and not verdict.met and verdict.split == "val" and verdict.notes == []
    escalated = journal.result("escalate")
    assert isinstance(escalated, EscalationResult) and escalated.better and escalated.warm_start == {}
    assert escalated.tier.score == 0.9796 and escalated.verdict.outcome.startswith("missed after escalation")
    assert escalated.best_start() == {}  # 0.1 had no warm start from the Flash weights
    assert journal.result("finalise").model_uri == "runs:/abc/model" and journal.result("baseline") is None
    assert (journal.mlflow_run_id, journal.study) == ("abc", "image_classification-1a2b")
    assert journal.total_seconds() == pytest.approx(695.75)
    assert journal.stage("tune").finished_at == "2026-06-01T10:06:25"


def test_a_stage_is_skipped_only_for_the_same_inputs_and_a_new_record_keeps_0_1s_shape(tmp_path):
    path = tmp_path / "journal.json"
    path.write_text(json.dumps(JOURNAL_0_1))
    journal = Journal(path)
    assert journal.finished("tune", "k-tune").best_trial == 3
    assert journal.finished("tune", "other inputs") is None  # e.g. --trials changed: it runs again
    assert journal.finished("baseline", "k") is None
    journal.record("baseline", "k-base", TrialResult("complete", 0, 0.93, {"learning_rate": 0.002}, 41.3), 41.333)
    saved = json.loads(path.read_text())
    assert saved["stages"]["tune"] == JOURNAL_0_1["stages"]["tune"]  # untouched, "summary" and all
    entry = saved["stages"]["baseline"]
    assert set(entry) == {"key", "result", "seconds", "finished_at"} and entry["seconds"] == 41.33
    assert entry["result"] == {
        "state": "complete",
        "number": 0,
        "value": 0.93,
        "params": {"learning_rate": 0.002},
        "seconds": 41.3,
        "reason": None,
    }
    assert Journal(path).finished("baseline", "k-base") == TrialResult(
        "complete", 0, 0.93, {"learning_rate": 0.002}, 41.3
    )
    journal.template = None  # saved at once: a later crash keeps it
    assert json.loads(path.read_text())["template"] is None


def test_a_new_journal_starts_empty_and_is_written_on_the_first_record(tmp_path):
    journal = Journal(tmp_path / "journal.json")
    assert journal.result("tune") is None and journal.total_seconds() == 0 and journal.mlflow_run_id is None
    assert not (tmp_path / "journal.json").exists()
    journal.mlflow_run_id = "r1"
    assert json.loads((tmp_path / "journal.json").read_text()) == {"stages": {}, "mlflow_run_id": "r1"}


def checkpoints(trials, *numbers) -> None:
    for number in numbers:
        (trials / str(number) / "checkpoints").mkdir(parents=True)
        (trials / str(number) / "checkpoints" / "best.ckpt").write_bytes(b"weights")


def kept(trials) -> list[int]:
    return sorted(int(p.parent.name) for p in trials.glob("*/checkpoints"))


def test_only_the_best_trials_checkpoints_are_kept_whichever_way_the_metric_points(tmp_path):
    up, down = tmp_path / "up", tmp_path / "down"
    checkpoints(up, 0, 1, 2, 3)
    checkpoints(down, 0, 1, 2)
    keep_only_best(up, 0, 0.70, maximize=True)
    assert kept(up) == [0, 1, 2, 3]  # the first is the best so far
    keep_only_best(up, 1, 0.80, maximize=True)
    assert kept(up) == [1, 2, 3]  # a better one: the old best goes
    keep_only_best(up, 2, 0.75, maximize=True)
    assert kept(up) == [1, 3]  # a worse one goes itself
    keep_only_best(up, 3, 0.80, maximize=True)
    assert kept(up) == [1] and json.loads((up / "best.json").read_text()) == {
        "number": 1,
        "score": 0.8,
    }  # a tie: the first
    keep_only_best(down, 0, 0.40, maximize=False)
    keep_only_best(down, 1, 0.30, maximize=False)  # a loss: lower is better
    keep_only_best(down, 2, 0.35, maximize=False)
    assert kept(down) == [1]
