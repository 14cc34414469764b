from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers import TINY_IMAGE_BACKBONE, make_image_folder

from automl import metrics as m
from automl.cli import cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def fit_args(data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--task",
        "image_classification",
        "--data",
        str(data),
        "--output",
        str(output),
        "--backbone",
        TINY_IMAGE_BACKBONE,
        "--no-pretrained",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--accelerator",
        "cpu",
        "-q",
        *extra,
    ]


def test_fit_writes_the_best_model_and_its_metrics(tmp_path, runner):
    data = make_image_folder(tmp_path / "imgs", per_class=10)
    result = runner.invoke(cli, fit_args(data, tmp_path / "runs", "--strategy", "no_freeze"))
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    best = run_dir / "best"
    assert json.loads((best / "labels.json").read_text()) == ["blue things", "green things", "red things"]
    preprocessing = json.loads((best / "preprocessing.json").read_text())
    assert preprocessing["image_size"] == 32 and preprocessing["backbone"] == TINY_IMAGE_BACKBONE
    assert (best / "model.ckpt").stat().st_size > 10_000
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name in m.VALIDATION_METRICS:
        assert isinstance(metrics[name], float)
    assert 0.0 <= metrics[m.VAL_ACCURACY] <= 1.0
    assert metrics["train_size"] == 24 and metrics["val_size"] == 6 and metrics["best_epoch"] in (0, 1)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["epochs"] == 2
    assert f"{metrics[m.VAL_ACCURACY]:.4f}" in result.stdout  # the printed table shows the saved score

    # the saved checkpoint reloads into a working classifier with the saved labels
    from automl.flash import ImageClassifier

    model = ImageClassifier.load_from_checkpoint(best / "model.ckpt", pretrained=False)
    assert model.labels == ["blue things", "green things", "red things"]


def test_a_fit_that_ended_before_its_first_validation_says_so_and_writes_no_model(tmp_path, runner, monkeypatch):
    """A training stopped before any validation has no best epoch: ``fit.validate`` says so, and
    nothing is saved as the model."""
    import dataclasses

    from automl.flash import fit

    real_train = fit.train
    monkeypatch.setattr(fit, "train", lambda *a, **k: dataclasses.replace(real_train(*a, **k), checkpoint=None))
    data = make_image_folder(tmp_path / "imgs", per_class=4)
    result = runner.invoke(cli, fit_args(data, tmp_path / "runs", "--epochs", "1"))
    assert result.exit_code == 2, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "Training finished without a validation score" in result.output
    assert not (run_dir / "best" / "model.ckpt").exists()


def test_fit_reads_a_yaml_config_and_rejects_unknown_keys(tmp_path, runner):
    data = make_image_folder(tmp_path / "imgs", per_class=4)
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1, "learning_rate": 0.01, "colour": "blue"}))
    result = runner.invoke(cli, fit_args(data, tmp_path / "runs", "--config", str(config)))
    assert result.exit_code == 2
    assert "Unknown configuration key(s): colour" in result.output and "Valid keys: task, data" in result.output


def test_missing_data_path_is_named(tmp_path, runner):
    result = runner.invoke(cli, fit_args(tmp_path / "nowhere", tmp_path / "runs"))
    assert result.exit_code == 2
    assert "nowhere' does not exist" in result.output
    assert not (tmp_path / "runs").exists()  # nothing half-made


def test_unknown_task_suggests_the_known_ones(runner):
    result = runner.invoke(cli, ["fit", "--task", "image_clasification", "--data", "."])
    assert result.exit_code == 2
    assert "Unknown task 'image_clasification'. Did you mean: image_classification" in result.output


def test_unknown_backbone_suggests_close_names(tmp_path, runner):
    data = make_image_folder(tmp_path / "imgs", per_class=4)
    args = fit_args(data, tmp_path / "runs")
    args[args.index(TINY_IMAGE_BACKBONE)] = "resnet_18"
    result = runner.invoke(cli, args)
    assert result.exit_code == 2
    assert "Unknown image backbone 'resnet_18'. Did you mean: resnet18" in result.output


def test_weights_and_no_pretrained_contradict(tmp_path, runner):
    data = make_image_folder(tmp_path / "imgs", per_class=4)
    result = runner.invoke(cli, fit_args(data, tmp_path / "runs", "--weights", str(tmp_path / "w.pth")))
    assert result.exit_code == 2 and "contradict" in result.output


def test_backbones_lists_offline_defaults(runner):
    result = runner.invoke(cli, ["backbones", "--task", "text_classification"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "all-MiniLM-L6-v2" in line)
    assert "packaged" in line and "yes" in line
    result = runner.invoke(cli, ["backbones", "--task", "image_classification"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "efficientnet_lite" in line]
    assert [row.split()[1] for row in rows[:3]] == [f"tf_efficientnet_lite{n}" for n in range(3)]
    assert all("packaged" in row and "yes" in row for row in rows[:3])
    assert result.output.count("(default)") == 1 and "(default)" in result.output.split("tf_efficientnet_lite1")[0]


@pytest.mark.slow
def test_help_does_not_import_torch():
    code = "import sys; from automl.cli import cli; print('torch' in sys.modules, 'lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False False"


def test_fit_trains_a_text_classifier_from_a_csv(tmp_path, runner, text_csv, tiny_bert_dir):
    args = [
        "fit",
        "--task",
        "text_classification",
        "--data",
        str(text_csv),
        "--backbone",
        str(tiny_bert_dir),
        "--epochs",
        "1",
        "--max-length",
        "24",
        "--strategy",
        "no_freeze",
        "--output",
        str(tmp_path / "runs"),
        "--accelerator",
        "cpu",
        "-q",
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "best" / "labels.json").read_text()) == ["finance", "sport"]
    assert json.loads((run_dir / "best" / "preprocessing.json").read_text())["max_length"] == 24
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_size"] == 16 and metrics["weights"].startswith("local")


@pytest.mark.slow
def test_a_two_process_cpu_ddp_fit_finishes_and_writes_once(tmp_path):
    data = make_image_folder(tmp_path / "imgs", per_class=8)
    args = [
        sys.executable,
        "-m",
        "automl",
        *fit_args(data, tmp_path / "runs", "--devices", "2", "--trainer-strategy", "ddp", "--strategy", "no_freeze"),
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()  # one run folder for both processes
    assert result.stdout.count("Validation metrics of the best epoch") == 1  # printed by rank zero only
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics[m.VAL_ACCURACY] <= 1.0 and (run_dir / "best" / "model.ckpt").exists()
    rows = (run_dir / "logs" / "metrics.csv").read_text().splitlines()
    epochs = [row for row in rows[1:] if row.split(",")[rows[0].split(",").index(m.VAL_ACCURACY)]]
    # two epochs and the final validation of the best checkpoint, each once: not once per process
    assert len(epochs) == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--trainer-strategy", "fsdp"], "not fsdp (that one is for `automl fit`)"),
        (["--num-nodes", "2"], "start `automl tune` workers on each"),
    ],
)
def test_run_refuses_what_a_trial_cannot_do(tmp_path, options, message):
    data = make_image_folder(tmp_path / "imgs", per_class=4)
    run = ["run", "--task", "image_classification", "--data", str(data), "--target", "accuracy>=0.5", *options]
    result = CliRunner().invoke(cli, run)
    assert result.exit_code == 2 and message in result.output
