"""``automl run`` end to end on tiny data: stages, journal, resume, MLflow, verdict, exit codes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from helpers import TINY_IMAGE_BACKBONE, logged_epochs, tiny_run_config

from automl import metrics as m
from automl import pipeline, space, tracking
from automl.cli import cli
from automl.config import RunConfig
from automl.errors import StoreUnavailable
from automl.trial_record import Tier


def run_config(images, output, tracking_uri, **changes) -> RunConfig:
    return tiny_run_config(images, output, tracking_uri=tracking_uri, **changes)


def run_command(images, output, study: str, *extra: str) -> list[str]:
    """``automl run`` in a subprocess: 4 trials of the tiny model, 3 epochs each."""
    import sys

    options = (
        f"--task image_classification --target accuracy>=0 --trials 4 --backbone {TINY_IMAGE_BACKBONE} "
        "--no-pretrained --epochs 3 --batch-size 4 --image-size 32 --accelerator cpu --pruner none"
    ).split()
    return [
        sys.executable,
        "-m",
        "automl",
        "run",
        *options,
        "--data",
        str(images),
        "--output",
        str(output),
        "--study",
        study,
        *extra,
    ]


def trial_states(run_dir, output) -> list[str]:
    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{output / 'optuna.db'}")
    return [t.state.name for t in study.get_trials()]


def test_a_run_tunes_judges_tracks_and_writes_its_folder(tmp_path, images, tracking_uri):
    lines = []
    result = pipeline.run(run_config(images, tmp_path, tracking_uri), progress=False, report=lines.append)
    run_dir = result.run_dir
    assert result.met and result.exit_code == 0
    assert trial_states(run_dir, tmp_path) == ["COMPLETE"] * 3

    journal = json.loads((run_dir / "journal.json").read_text())
    assert list(journal["stages"]) == ["inspect", "baseline", "tune", "verdict", "ensemble", "finalise"]
    assert journal["stages"]["baseline"]["result"]["number"] == 0
    assert journal["stages"]["baseline"]["result"]["params"]["learning_rate"] == 2e-3  # the Flash-tier default

    predictions = pd.read_csv(run_dir / "predictions_val.csv")
    assert len(predictions) == 6 and set(predictions["true"]) == {"blue things", "green things", "red things"}
    accuracy = (predictions["true"] == predictions["predicted"]).mean()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics[m.VAL_ACCURACY] == pytest.approx(accuracy)  # the selection score, on these predictions
    study = pd.read_csv(run_dir / "study.csv")
    assert metrics["selection_score"] == pytest.approx(study["value"].max(), abs=1e-6)  # the best trial was chosen
    # the verdict is given on the test split: 3 examples (1 of each class of 8) that no trial saw
    tested = pd.read_csv(run_dir / "predictions_test.csv")
    splits = pd.read_csv(run_dir / "splits.csv")
    assert sorted(tested["id"]) == sorted(splits.loc[splits["split"] == "test", "id"]) and len(tested) == 3
    assert not set(tested["id"]) & set(splits.loc[splits["split"] != "test", "id"])
    test_accuracy = (tested["true"] == tested["predicted"]).mean()
    assert metrics["judged_on"] == "test" and metrics["examples"] == 3
    assert metrics["score"] == metrics["test_accuracy"] == pytest.approx(test_accuracy)
    assert metrics["ci_low"] <= test_accuracy <= metrics["ci_high"] and metrics["interval"] == "Clopper-Pearson"
    assert metrics["refit"].startswith("fine-tuned again on train+val (21 examples")
    assert (run_dir / "best" / "model.ckpt").exists() and (run_dir / "inspection.json").exists()
    kept = [p.parent.name for p in (run_dir / "trials").glob("*/checkpoints") if any(p.iterdir())]
    assert kept == [str(metrics["best_trial"])]  # the other trials' checkpoints are deleted
    assert any(line.startswith("[3/7] tuning: trial 2/3 (#1), best") for line in lines)
    # a met target does not escalate
    assert "escalate" not in journal["stages"] and not (run_dir / "study.lightning.csv").exists()
    assert metrics["tier"] == "flash" and metrics["outcome"].startswith("met by the flash tier on 3 test examples")

    tracker = tracking.Tracker(tracking_uri, tmp_path / "artifacts")
    parent = tracker.client.get_run(journal["mlflow_run_id"])
    assert parent.data.tags["verdict"] == "met" and parent.info.status == "FINISHED"
    assert parent.data.metrics["test_accuracy"] == pytest.approx(test_accuracy)
    children = tracker.runs(parent.info.run_id)
    assert sorted(c.data.tags["trial"] for c in children) == ["0", "1", "2"]
    for child in children:
        assert m.VAL_ACCURACY in child.data.metrics and "learning_rate" in child.data.params
        history = tracker.client.get_metric_history(child.info.run_id, m.VAL_ACCURACY)
        assert len(history) == logged_epochs(child.data.params)  # per epoch, from MLFlowLogger
    artifacts = {a.path for a in tracker.client.list_artifacts(parent.info.run_id)}
    assert {"journal.json", "config.yaml", "study.csv"} <= artifacts
    # best/ goes to MLflow inside the run's pyfunc model (tests/test_mlflow_model.py loads it)
    models = tracker.client.search_logged_models([parent.info.experiment_id])
    assert [lm.name for lm in models if lm.source_run_id == parent.info.run_id] == ["model"]
    assert metrics["model_uri"] == f"runs:/{parent.info.run_id}/model" and "registered_model" not in metrics


def test_an_interrupted_run_resumes_without_repeating_the_baseline(tmp_path, images, tracking_uri):
    config = run_config(images, tmp_path, tracking_uri, study="resume-me")

    def interrupt_when_tuning_starts(line: str) -> None:
        if line.startswith("[3/7]"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config, progress=False, report=interrupt_when_tuning_starts)
    run_dir = tmp_path / "resume-me"
    assert trial_states(run_dir, tmp_path) == ["COMPLETE"]  # the baseline only
    first_parent = json.loads((run_dir / "journal.json").read_text())["mlflow_run_id"]

    lines = []
    result = pipeline.run(config, progress=False, report=lines.append)
    assert trial_states(run_dir, tmp_path) == ["COMPLETE"] * 3
    assert "[2/7] baseline: done in an earlier run, skipped" in lines
    assert not any(line.startswith("[2/7] baseline: trial") for line in lines)
    study = optuna.load_study(study_name="resume-me", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.user_attrs.get("role") for t in study.trials] == ["baseline", None, None]
    assert json.loads((result.run_dir / "journal.json").read_text())["mlflow_run_id"] == first_parent


def test_unreachable_stores_are_named_and_nothing_is_written(tmp_path, images, tracking_uri):
    bad_storage = "postgresql://nobody@127.0.0.1:1/none"
    with pytest.raises(StoreUnavailable, match="postgresql://nobody@127.0.0.1:1/none"):
        pipeline.run(run_config(images, tmp_path, tracking_uri, storage=bad_storage), progress=False)
    bad_tracking = "http://127.0.0.1:9"
    with pytest.raises(StoreUnavailable, match="MLflow tracking store 'http://127.0.0.1:9'"):
        pipeline.run(run_config(images, tmp_path, bad_tracking), progress=False)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # no run folder


def cli_run(images, output) -> list[str]:
    """`automl run` on the image folder, for CliRunner: the options every CLI test gives."""
    return ["run", "--task", "image_classification", "--data", str(images), "--output", str(output)]


def test_cli_run_prints_the_summary_and_exits_by_verdict(tmp_path, images, tracking_uri):
    args = [
        *cli_run(images, tmp_path),
        "--backbone",
        TINY_IMAGE_BACKBONE,
        "--no-pretrained",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--trials",
        "1",
        "--accelerator",
        "cpu",
        "--tracking-uri",
        tracking_uri,
        "-q",
    ]
    missed = CliRunner().invoke(cli, [*args, "--target", "val_loss<=0.0"])
    assert missed.exit_code == pipeline.EXIT_MISSED, missed.output
    assert "target loss<=0: MISSED" in missed.output
    met = CliRunner().invoke(cli, [*args, "--target", "accuracy>=0"])
    assert met.exit_code == 0, met.output
    assert "target accuracy>=0: MET" in met.output
    # 3 test examples (one of each class of 8) cannot decide 0.5 whatever the model does: 0 of 3 right
    # is 0.000-0.708, 3 of 3 is 0.292-1.000 (Clopper-Pearson)
    undecided = CliRunner().invoke(cli, [*args, "--target", "accuracy>=0.5", "--no-escalate"])
    assert undecided.exit_code == pipeline.EXIT_UNDECIDED == 4, undecided.output
    assert "target accuracy>=0.5: UNDECIDED" in undecided.output and "more data decides" in undecided.output


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--target", "acc>=0.9", "Unknown metric 'acc'"),
        ("--target", "accuracy>=2", "out of range"),
        ("--time-budget", "soon", "Cannot read the time budget 'soon'"),
    ],
)
def test_cli_run_rejects_bad_options(tmp_path, images, option, value, message):
    args = [*cli_run(images, tmp_path), "--target", "accuracy>=0.9", option, value]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and message in result.output
    assert not any(tmp_path.iterdir())


def test_cli_run_takes_a_yaml_config_and_rejects_unknown_keys(tmp_path, images):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({"task": "image_classification", "data": str(images), "target": "accuracy>=0.9", "trails": 5})
    )
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert "Unknown configuration key(s): trails" in result.output and "trials" in result.output


def test_a_run_leaves_the_mlflow_environment_as_it_found_it(tmp_path, images, monkeypatch):
    """Lightning's MLflow logger sets MLFLOW_TRACKING_URI; a second run in the same process (a
    notebook) must still log into its own store, under its own output folder."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = pipeline.run(tiny_run_config(images, tmp_path / "a", trials=1), progress=False)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    second = pipeline.run(tiny_run_config(images, tmp_path / "b", trials=1), progress=False)
    assert first.met and second.met
    for output in ("a", "b"):
        client = tracking.Tracker(f"sqlite:///{tmp_path / output / 'mlflow.db'}", tmp_path / output).client
        assert len(client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])) == 2


def test_a_loss_that_becomes_nan_fails_the_trial_with_the_step_and_the_study_goes_on(tmp_path, images, tracking_uri):
    # a learning rate of 1e12 makes the tiny model's loss NaN within a few steps: a real divergence
    config = run_config(images, tmp_path, tracking_uri, trials=2, study="nan", learning_rate=1e12)
    result = pipeline.run(config, progress=False)
    diverged, normal = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert diverged.state.name == "FAIL" and diverged.params["learning_rate"] == 1e12
    assert re.fullmatch(
        r"FloatingPointError: The training loss became nan at step \d+\.", diverged.user_attrs["fail_reason"]
    )
    assert normal.state.name == "COMPLETE" and result.met and result.best_params == normal.params


def test_out_of_gpu_memory_retries_once_at_half_the_batch(tmp_path, images, tracking_uri, monkeypatch):
    import torch

    from automl.flash.tasks import ClassificationTask

    original = ClassificationTask.training_step
    seen = []

    def fails_above_two(self, batch, batch_idx):
        if batch[0].dim() == 2:  # a head on cached features: it trains on the CPU
            return original(self, batch, batch_idx)
        seen.append(len(batch[1]))
        if len(batch[1]) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ClassificationTask, "training_step", fails_above_two)
    lines = []
    result = pipeline.run(run_config(images, tmp_path, tracking_uri, trials=1), progress=False, report=lines.append)
    assert result.met and trial_states(result.run_dir, tmp_path) == ["COMPLETE"]
    # batch size 4 failed, then every batch of the trial at 2; the refit on train+val did the same
    refit = seen.index(4, 1)
    assert seen[0] == 4 and set(seen[1:refit]) == {2} and set(seen[refit + 1 :]) == {2}
    assert "trial 0: out of GPU memory at batch size 4; trying once more with 2" in lines
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["refit"].endswith("out of GPU memory at batch size 4, retrained with 2")


def test_out_of_gpu_memory_twice_fails_the_trial_with_both_sizes(tmp_path, images, tracking_uri, monkeypatch):
    import torch

    from automl.errors import DataError
    from automl.flash.tasks import ClassificationTask

    def always(self, batch, batch_idx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(ClassificationTask, "training_step", always)
    with pytest.raises(DataError, match="No tuning trial finished"):
        pipeline.run(run_config(images, tmp_path, tracking_uri, trials=1, study="oom"), progress=False)
    study = optuna.load_study(study_name="oom", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    (trial,) = study.trials
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["fail_reason"].startswith("RuntimeError: out of GPU memory at batch size 4 and again at 2")


def test_a_full_disk_while_checkpointing_fails_the_trial_not_the_study(tmp_path, images, tracking_uri, monkeypatch):
    import errno

    from lightning.fabric.plugins.io import torch_io

    original = torch_io._atomic_save

    def disk_full_in_trial_0(checkpoint, filepath):
        if f"{os.sep}trials{os.sep}0{os.sep}" in str(filepath):
            Path(filepath).write_bytes(b"half a checkpoint")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))
        original(checkpoint, filepath)

    monkeypatch.setattr(torch_io, "_atomic_save", disk_full_in_trial_0)
    lines = []
    result = pipeline.run(
        run_config(images, tmp_path, tracking_uri, trials=2, study="full"), progress=False, report=lines.append
    )
    study = optuna.load_study(study_name="full", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    first, second = study.trials
    assert first.state.name == "FAIL" and second.state.name == "COMPLETE"
    reason = first.user_attrs["fail_reason"]
    assert reason.startswith("RuntimeError: the disk is full (writing ") and "trials/0/checkpoints" in reason
    assert "give --output another disk" in reason
    assert not (result.run_dir / "trials" / "0").joinpath("checkpoints").exists()  # the partial file is gone
    assert result.met and (result.run_dir / "best" / "model.ckpt").exists()
    assert any(line.startswith("[7/7] finalise: report written to") for line in lines), lines  # with a failed trial


@pytest.mark.slow
def test_ctrl_c_stops_after_the_epoch_reports_and_exits_130_then_resumes(tmp_path, images):
    import signal
    import subprocess

    args = run_command(images, tmp_path, "ctrl-c")
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:  # wait for the second trial to start, then press Ctrl-C
        seen.append(line)
        if line.startswith("[3/7] tuning: trial 2/4"):
            process.send_signal(signal.SIGINT)
            break
    else:
        pytest.fail("the run never reached its second trial:\n" + "".join(seen[-30:]))
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == pipeline.EXIT_INTERRUPTED, stderr[-3000:]
    assert "interrupted: stopping after the current epoch" in stderr
    run_dir = tmp_path / "ctrl-c"
    assert (run_dir / "report.html").exists() and "finalise" in json.loads((run_dir / "journal.json").read_text())[
        "stages"
    ]
    assert trial_states(run_dir, tmp_path) == ["COMPLETE", "COMPLETE"]  # the running trial kept its epochs

    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert trial_states(run_dir, tmp_path) == ["COMPLETE"] * 4  # resumed to the requested number


@pytest.mark.slow
def test_a_run_killed_during_tuning_resumes_without_losing_or_repeating_trials(tmp_path, images):
    import subprocess

    args = run_command(images, tmp_path, "killed")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:  # kill it once a tuning trial has validated an epoch and has more to go
        seen.append(line)
        found = re.search(r"trial #(\d+) epoch (\d+)/(\d+)", line)
        if found and int(found.group(1)) > 0 and int(found.group(2)) < int(found.group(3)):
            killed = int(found.group(1))
            process.kill()
            process.wait()
            break
    else:
        pytest.fail("never saw a tuning trial between its epochs:\n" + "".join(seen[-30:]))
    assert trial_states(tmp_path / "killed", tmp_path)[killed] == "RUNNING"  # left behind by the dead process

    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name="killed", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4  # the requested number, none lost
    (dead,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert dead.number == killed and dead.user_attrs["fail_reason"].endswith("died")
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == killed]
    assert retry.params == dead.params and retry.state.name == "COMPLETE"
    assert [t.user_attrs.get("role") for t in study.trials].count("baseline") == 1  # not repeated


def run_two_backbones(images, output, tracking_uri, trials: int):
    """``automl run`` with a 10m budget over the tiny model and a second tiny backbone: the result
    and the progress lines."""
    lines = []
    config = run_config(
        images,
        output,
        tracking_uri,
        trials=trials,
        time_budget="10m",
        backbones=(TINY_IMAGE_BACKBONE, "test_efficientnet"),
    )
    return pipeline.run(config, progress=False, report=lines.append), lines


def test_with_a_budget_the_baseline_and_a_probe_per_backbone_train_heads_on_cached_features(
    tmp_path, images, tracking_uri
):
    result, lines = run_two_backbones(images, tmp_path, tracking_uri, trials=3)

    study = pd.read_csv(result.run_dir / "study.csv")
    first = study.sort_values("number").head(2)
    assert list(first["role"]) == ["baseline", "probe"]
    assert list(first["param_strategy"]) == ["freeze", "freeze"]
    assert list(first["param_backbone"]) == [TINY_IMAGE_BACKBONE, "test_efficientnet"]
    assert set(first["state"]) == {"COMPLETE"}
    # each head is also scored over 5 folds of train+val, which ranks them (issue 24, item 1)
    assert first["cv_mean"].between(0, 1).all() and first["cv_std"].notna().all()
    # and the ensemble stage looked at the other backbone's head beside the chosen model
    ensemble = json.loads((result.run_dir / "metrics.json").read_text())["ensemble"]
    assert {m["kind"] for m in ensemble["members"]} >= {"head"} and ensemble["why"]
    # one pass of each backbone over the data, shared by every head-only trial
    assert len(list((result.run_dir / "features").glob("*.pt"))) == 2
    fine_tunes = study[study["param_strategy"] != "freeze"]
    for number in fine_tunes["number"]:  # each fine-tuning trial is sized to its share of the budget
        assert any(line.startswith(f"trial {number}: fine-tunes ") for line in lines)


def test_with_a_budget_a_fine_tune_is_priced_from_training_steps_timed_before_it(tmp_path, images, tracking_uri):
    lines = []
    config = run_config(images, tmp_path, tracking_uri, trials=1, time_budget="10m", strategy="no_freeze")
    pipeline.run(config, progress=False, report=lines.append)
    (sized,) = [line for line in lines if line.startswith("trial 0: fine-tunes ")]
    found = re.search(
        r"a training step measured at (\d+) ms an example, where 3 forward passes estimate (\d+) ms", sized
    )
    assert found and int(found.group(1)) > 0, sized


def test_a_backbone_whose_pass_would_not_fit_the_tuning_time_left_is_skipped_and_said(
    tmp_path, images, tracking_uri, monkeypatch
):
    """The probe's backbone measures as if one pass over the data took longer than the tuning time:
    it is skipped, the run says so, and from then on every trial is a head on cached features. (A
    backbone's first pass may take all the tuning time left, not half: every backbone is looked at
    before the penalties and fine-tunes use the time; ``tests/flash/test_pixels.py``.)"""
    from automl import budget
    from automl.flash.features import FeatureCache

    real = FeatureCache.measure
    slow = budget.TUNE_SHARE * 600 * 1.2  # seconds of one pass over the data, of the 10m budget

    def measure(self, config, datamodule):
        cost = real(self, config, datamodule)
        if config.backbone != "test_efficientnet":
            return cost
        return slow / (len(datamodule.train_samples) + len(datamodule.val_samples))

    monkeypatch.setattr(FeatureCache, "measure", measure)
    result, lines = run_two_backbones(images, tmp_path, tracking_uri, trials=4)

    study = pd.read_csv(result.run_dir / "study.csv").sort_values("number")
    trained = study[study["state"] == "COMPLETE"]
    assert len(trained) == 4  # the probe's place went to a head on the baseline's features
    assert set(trained["param_backbone"]) == {TINY_IMAGE_BACKBONE}
    assert set(trained["param_strategy"]) == {"freeze"}
    assert len(list((result.run_dir / "features").glob("*.pt"))) == 1
    (tune,) = [stage for stage in result.stages if stage.stage == "tune"]
    skipped = "test_efficientnet skipped: its pass over the data at 32 px would take about 7m, "
    assert f"then only heads on cached features, as {skipped}" in tune.note
    assert any(re.fullmatch(rf"{skipped}\dm is left", line) for line in lines), lines  # said as it happens
    assert [line for line in lines if "tuning: trial" in line][-1].startswith("[3/7] tuning: trial 4/4 (#4)")
    # said as it happens too, in the progress lines (run.log)
    assert any(line.startswith("[3/7] tuning: from now on only heads on cached features: test_eff") for line in lines)


def test_two_backbones_skipped_for_time_leave_the_queued_heads_to_run(tmp_path, images, tracking_uri, monkeypatch):
    """Both other backbones' first passes would not fit: each is skipped and said, and the study goes
    on with the penalties queued after them (a second skip used to end the tuning stage)."""
    from automl import budget
    from automl.flash.features import FeatureCache

    real = FeatureCache.measure

    def measure(self, config, datamodule):
        cost = real(self, config, datamodule)
        if config.backbone == TINY_IMAGE_BACKBONE:
            return cost
        return budget.TUNE_SHARE * 600 * 1.2 / (len(datamodule.train_samples) + len(datamodule.val_samples))

    monkeypatch.setattr(FeatureCache, "measure", measure)
    lines = []
    config = run_config(
        images,
        tmp_path,
        tracking_uri,
        trials=6,  # the baseline, then five probes queued: two backbones and three penalties
        time_budget="10m",
        backbones=(TINY_IMAGE_BACKBONE, "test_efficientnet", "test_convnext"),
    )
    result = pipeline.run(config, progress=False, report=lines.append)

    study = pd.read_csv(result.run_dir / "study.csv")
    trained = study[study["state"] == "COMPLETE"]
    assert len(trained) == 6 and set(trained["param_backbone"]) == {TINY_IMAGE_BACKBONE}
    assert {1e-2, 1e-1, 1.0} <= set(trained["param_weight_decay"].round(6))  # the queued penalties ran
    (tune,) = [stage for stage in result.stages if stage.stage == "tune"]
    for name in ("test_efficientnet", "test_convnext"):
        assert any(line.startswith(f"{name} skipped: its pass over the data") for line in lines), lines
        assert f"{name} skipped" in tune.note, tune.note


def test_text_max_length_follows_the_data_unless_given(text_csv, tmp_path):
    from automl.flash import fit

    config = RunConfig(
        task="text_classification", data=str(text_csv), output=str(tmp_path), target="accuracy>=0.5", trials=1
    )
    data = fit.load_data(config)
    # 4 to 12 words of one token each, plus [CLS] and [SEP]: at most 14 tokens, rounded up to 16
    assert space.fit_to_data(config, data).max_length == 16
    given = RunConfig(**{**config.to_dict(), "max_length": 64})
    assert space.fit_to_data(given, data).max_length == 64


def test_the_default_search_offers_every_backbone_whose_weights_are_here(tmp_path):
    """No --backbone: the task's default first (the baseline's), then the other backbones with
    weights on this machine (the packaged EfficientNet-Lites), each at its native size."""
    from automl import backbones as bb

    config = RunConfig(task="image_classification", data=str(tmp_path), target="accuracy>=0.9", trials=3)
    offered = space.search_space(config, Tier.FLASH)
    assert offered.backbones[0] == bb.DEFAULT_IMAGE_BACKBONE
    assert {"tf_efficientnet_lite1", "tf_efficientnet_lite2"} <= set(offered.backbones)
    assert all(space.weights_here(bb, name, "image") for name in offered.backbones)
    assert space.native_sizes(config, offered.backbones)["tf_efficientnet_lite1"] == 240
