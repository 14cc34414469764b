"""Escalation to the Lightning tier, `automl eject`, `--template` and the webhook."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import TINY_IMAGE_BACKBONE, tiny_run_config

from automl import pipeline, tracking
from automl.cli import cli
from automl.config import RunConfig
from automl.errors import DataError
from automl.space import SearchSpace, warm_start_params
from escalation.callbacks import WebhookNotifier
from escalation.train import load_template

UNREACHABLE = "val_loss<=0.0"  # a loss is never exactly 0: the target is always missed


def config(images, output, tracking_uri, **changes) -> RunConfig:
    defaults = {"tracking_uri": tracking_uri, "target": UNREACHABLE, "trials": 2, "escalation_trials": 2}
    return tiny_run_config(images, output, **{**defaults, **changes})


@pytest.fixture(scope="module")
def escalated(tmp_path_factory, images, tracking_uri):
    """One run whose target is unreachable: it escalates. Shared by the tests that read it."""
    output = tmp_path_factory.mktemp("escalated")
    lines = []
    # no test split: an ejected project reads and splits the data itself, without the run's test split
    # (it trains on those examples too), so only then does it train on exactly what the run's trial did
    run = config(images, output, tracking_uri, test_split=0.0)
    result = pipeline.run(run, progress=False, report=lines.append)
    return result, output, lines


def test_a_missed_target_escalates_from_the_best_flash_parameters(escalated, tracking_uri):
    result, output, lines = escalated
    # missed by whichever tier was better (the warm-started Lightning tier may beat the Flash tier)
    assert result.exit_code == pipeline.EXIT_MISSED and result.verdict["outcome"].startswith("missed")
    assert any("missed after escalation" in line for line in lines)
    storage = f"sqlite:///{output / 'optuna.db'}"
    flash = optuna.load_study(study_name=result.run_dir.name, storage=storage)
    lightning = optuna.load_study(study_name=f"{result.run_dir.name}-lightning", storage=storage)
    assert len(flash.trials) == 2 and len(lightning.trials) == 2

    first = lightning.trials[0]
    space = SearchSpace("image", (TINY_IMAGE_BACKBONE,), 2)
    warm = warm_start_params(space, flash.best_trial.params)
    assert warm and {k: first.params[k] for k in warm} == warm  # it started from the best Flash trial
    assert first.user_attrs["role"] == "warm start"
    assert "backbone_lr_ratio" in first.params and "augment" in first.params  # the template's own knobs

    journal = json.loads((result.run_dir / "journal.json").read_text())
    assert journal["stages"]["tune"]["result"]["best_trial"] == flash.best_trial.number
    escalation = journal["stages"]["escalate"]["result"]
    assert escalation["tier"]["best_trial"] == lightning.best_trial.number
    assert escalation["tier"]["score"] == pytest.approx(lightning.best_value)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    better = lightning.best_value < flash.best_value  # the loss: lower is better
    kept = better and not escalation["unresolved"]  # and by more than the validation split resolves
    assert metrics["tier"] == ("lightning" if kept else "flash") == result.tier
    if better and not kept:
        assert any("is not kept" in line and "they resolve" in line for line in lines), lines
    assert metrics["model_uri"] == f"runs:/{journal['mlflow_run_id']}/model"  # whichever tier won
    assert any(re.match(r"\[5/\d\] escalate", line) for line in lines)

    tracker = tracking.Tracker(tracking_uri, output / "artifacts")
    children = tracker.runs(journal["mlflow_run_id"])
    assert sorted(c.data.tags["tier"] for c in children) == ["flash", "flash", "lightning", "lightning"]

    # the warm-start trial alone started from the best Flash model, its backbone too (not pretrained here)
    started = escalation["warm_start"]
    assert started["trials"] == [first.number]
    assert started["init_head"] == str(result.run_dir / "escalation" / "warm_start" / "head.pt")
    assert Path(started["init_head"]).is_file() and Path(started["init_backbone"]).is_file()
    said = [line.partition(": ")[2] for line in lines if "warm-start trial" in line]
    assert said == ["the warm-start trial starts from the Flash tier's best model (head and backbone)"]
    logged = {c.data.tags["trial"]: c.data.params for c in children if c.data.tags["tier"] == "lightning"}
    assert logged[str(first.number)]["init_head"] == started["init_head"]
    assert all("init_head" not in params for trial, params in logged.items() if trial != str(first.number))


@pytest.mark.slow
def test_eject_writes_a_project_whose_train_py_reproduces_the_score(escalated, tmp_path):
    result, _, _ = escalated
    project = tmp_path / "project"
    ejected = CliRunner().invoke(cli, ["eject", str(result.run_dir), "--to", str(project)])
    assert ejected.exit_code == 0, ejected.output
    journal = json.loads((result.run_dir / "journal.json").read_text())
    escalation = journal["stages"]["escalate"]["result"]
    # the best trial was the warm start: the project starts from the same Flash weights, in warm_start/
    warm = escalation["tier"]["best_trial"] in escalation["warm_start"]["trials"]
    assert sorted(p.name for p in project.iterdir()) == ["README.md", "config.yaml", "template"] + (
        ["warm_start"] if warm else []
    )
    settings = yaml.safe_load((project / "config.yaml").read_text())
    if warm:
        assert (settings["init_head"], settings["init_backbone"]) == ("warm_start/head.pt", "warm_start/backbone.pt")
        copied = (project / "warm_start" / "head.pt").read_bytes()
        assert copied == Path(escalation["warm_start"]["init_head"]).read_bytes()
    else:
        assert settings["init_head"] is None and settings["init_backbone"] is None
    assert sorted(p.name for p in (project / "template").iterdir()) == [
        "__init__.py",
        "__main__.py",
        "config.py",
        "datamodule.py",
        "module.py",
        "train.py",
    ]
    expected = escalation["tier"]["score"]
    assert (
        f"{expected:.4f}" in ejected.output
        and "python -m template --config config.yaml" in (project / "README.md").read_text()
    )

    typo = subprocess.run(  # a misspelt --set key stops before training, naming the valid keys
        [sys.executable, "-m", "template", "--config", "config.yaml", "-q", "--set", "learnin_rate=0.1"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert typo.returncode != 0 and "Unknown configuration key 'learnin_rate'" in typo.stderr
    assert "learning_rate" in typo.stderr and not (project / "outputs").exists()

    trained = subprocess.run(
        [sys.executable, "-m", "template", "--config", "config.yaml", "-q"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    outcome = json.loads(trained.stdout[trained.stdout.index("{") :])
    # Same data, split, seed and machine: the same training. Tolerance 1e-4 for float noise.
    assert outcome["best_score"] == pytest.approx(expected, abs=1e-4)
    assert (project / "outputs" / "checkpoints").is_dir()

    again = CliRunner().invoke(cli, ["eject", str(result.run_dir), "--to", str(project)])
    assert again.exit_code == 2 and "is not empty" in again.output


def test_an_edited_template_is_used_for_the_escalation(escalated, tmp_path, images, tracking_uri):
    result, _, _ = escalated
    project = tmp_path / "mine"
    assert CliRunner().invoke(cli, ["eject", str(result.run_dir), "--to", str(project)]).exit_code == 0
    module = project / "template" / "module.py"
    source = module.read_text()
    original = "    return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))"
    assert original in source
    module.write_text(
        source.replace(
            original,
            (
                "    return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, 16), nn.ReLU(), "
                "nn.Linear(16, num_classes))"
            ),
        )
    )
    lines = []
    run = pipeline.run(
        config(images, tmp_path / "out", tracking_uri, template=str(project), trials=1, escalation_trials=1),
        progress=False,
        report=lines.append,
    )
    # the Flash tier's one-layer head does not fit it: the warm-start trial starts from a random head
    (said,) = [line.partition(": ")[2] for line in lines if "warm-start trial" in line]
    assert said.startswith(
        "the warm-start trial starts from a random head: the template's model does not take the "
        "Flash tier's best one (init_head "
    )
    assert "does not fit this model: 3.weight is missing; 3.bias is missing; 1.weight is (3, " in said
    journal = json.loads((run.run_dir / "journal.json").read_text())
    assert journal["stages"]["escalate"]["result"]["warm_start"] == {}
    lightning = optuna.load_study(
        study_name=f"{run.run_dir.name}-lightning", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    )
    state = torch.load(lightning.best_trial.user_attrs["checkpoint"], map_location="cpu", weights_only=False)
    assert "head.3.weight" in state["state_dict"]  # the edited, two-layer head
    assert json.loads((run.run_dir / "journal.json").read_text())["template"] == str(project.resolve())
    # the built-in template is untouched, and loads again afterwards
    assert "head.3" not in str(load_template().package.module.make_head(8, 2, 0.0))


class Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers["Content-Length"])
        Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", Hook.received
    server.shutdown()
    server.server_close()


def test_the_webhook_hears_run_start_each_stage_and_run_end(webhook, tmp_path, images, tracking_uri):
    url, received = webhook
    result = pipeline.run(
        config(images, tmp_path, tracking_uri, target="accuracy>=0", trials=1, notify_url=url), progress=False
    )
    assert result.met
    events = [(body["event"], body.get("stage")) for body in received]
    assert events == [
        ("run_start", None),
        ("stage_end", "inspect"),
        ("stage_end", "baseline"),
        ("stage_end", "tune"),
        ("stage_end", "verdict"),
        ("stage_end", "ensemble"),
        ("stage_end", "finalise"),
        ("run_end", None),
    ]
    assert all(body["text"].startswith("automl run") for body in received)  # Slack's field
    assert received[-1]["verdict"] == "met"


def test_a_dead_webhook_does_not_fail_the_run(tmp_path, images, tracking_uri, caplog):
    notifier = WebhookNotifier("http://127.0.0.1:9/hook", timeout=1, retries=0)
    assert notifier.run_started() is False and notifier.failures == 1
    result = pipeline.run(
        config(images, tmp_path, tracking_uri, target="accuracy>=0", trials=1, notify_url="http://127.0.0.1:9/hook"),
        progress=False,
    )
    assert result.met and result.exit_code == 0
    assert "did not take the run_end event" in caplog.text


def test_a_broken_template_keeps_the_flash_tier(escalated, tmp_path, images, tracking_uri):
    """An edited template that raises fails its trials, not the run: the Flash tier's model stays."""
    result, _, _ = escalated
    project = tmp_path / "broken"
    assert CliRunner().invoke(cli, ["eject", str(result.run_dir), "--to", str(project)]).exit_code == 0
    train = project / "template" / "train.py"
    train.write_text(
        train.read_text().replace(
            '    """Train once; returns the best score',
            '    raise RuntimeError("my edit broke it")\n    """Train once; returns',
        )
    )
    run = pipeline.run(
        config(images, tmp_path / "out", tracking_uri, template=str(project), trials=1, escalation_trials=2),
        progress=False,
    )
    assert run.exit_code == pipeline.EXIT_MISSED and run.tier == "flash"
    assert "no Lightning-tier trial finished" in run.verdict["outcome"]
    study = pd.read_csv(run.run_dir / "study.lightning.csv")
    assert list(study["state"]) == ["FAIL", "FAIL"]
    assert set(study["reason"]) == {"RuntimeError: my edit broke it"}
    assert (run.run_dir / "best" / "model.ckpt").exists() and (run.run_dir / "report.html").exists()


def test_the_template_trains_on_the_samples_it_is_given_without_reading_the_data_again(images, tmp_path):
    """Each escalation trial gets the run's data, read and split once: the template's fit does not
    open ``data`` (here a path that does not exist) when it is given the samples."""
    from automl.flash import fit
    from escalation.train import template_config

    run = tiny_run_config(images, tmp_path, epochs=1)
    config = template_config(run.to_dict(), {"epochs": 1, "batch_size": 4}, tmp_path / "out", "val_accuracy")
    config["data"] = str(tmp_path / "nothing-here")
    template = load_template()
    result = template.fit(config, logger=False, progress=False, samples=fit.load_data(run))
    assert result.best_score is not None and Path(result.checkpoint).exists()
    with pytest.raises(DataError, match="nothing-here"):  # without them, it reads the (missing) data
        template.datamodule(config)
