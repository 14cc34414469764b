"""The final model as an MLflow pyfunc model: loaded in a fresh process, from the registry, served by
`mlflow models serve`, its alias moved by `automl promote` (issue 14)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import IMAGE_MODEL, TEXT_MODEL, answering, free_port, make_image_folder, make_texts, post

from automl.cli import cli

MLFLOW = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")

#: run in a fresh interpreter: load each model URI, predict the inputs, print the outputs as JSON
LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd
inputs = json.loads(sys.stdin.read())
answers = {}
for uri, columns in inputs.items():
    frame = pd.DataFrame(columns)
    if "image_bytes" in frame:
        frame["image_bytes"] = [bytes.fromhex(h) if h else None for h in frame["image_bytes"]]
    answers[uri] = mlflow.pyfunc.load_model(uri).predict(frame).to_dict(orient="list")
print(json.dumps(answers))
"""


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def tracking_env(run_dir: Path) -> dict:
    """The run's tracking store, and the environment's commands first on PATH (as after
    `. .venv/bin/activate`: `mlflow models serve` starts `uvicorn` by name)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "MLFLOW_TRACKING_URI": metrics_of(run_dir)["tracking_uri"], "PATH": path}


def fresh_process_predictions(run_dir: Path, inputs: dict) -> dict:
    answer = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT],
        input=json.dumps(inputs),
        capture_output=True,
        text=True,
        env=tracking_env(run_dir),
        timeout=300,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    return json.loads(answer.stdout.strip().splitlines()[-1])


def automl_predict(run_dir: Path, data: Path, tmp_path: Path) -> pd.DataFrame:
    out = tmp_path / f"{run_dir.name}.csv"
    result = CliRunner().invoke(cli, ["predict", str(run_dir), "--data", str(data), "--output", str(out)])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out, keep_default_na=False)


def test_the_run_records_its_mlflow_model_and_registered_version(image_run, text_run):
    for run_dir, name in ((image_run, IMAGE_MODEL), (text_run, TEXT_MODEL)):
        metrics = metrics_of(run_dir)
        parent = json.loads((run_dir / "journal.json").read_text())["mlflow_run_id"]
        assert metrics["model_uri"] == f"runs:/{parent}/model"
        assert (metrics["registered_model"], metrics["model_alias"]) == (name, "challenger")
        report = (run_dir / "report.html").read_text()
        assert metrics["model_uri"] in report and f"models:/{name}@challenger" in report


@pytest.mark.slow
def test_the_logged_model_predicts_in_a_fresh_process_what_automl_predict_predicts(image_run, text_run, tmp_path):
    """`mlflow.pyfunc.load_model` of the run's model and of the registered alias, in a new interpreter,
    against `automl predict` on the same inputs: the same labels and probabilities, and an unreadable
    image gets an error row in both."""
    folder = make_image_folder(tmp_path / "new-images", per_class=2, seed=11)
    (folder / "broken.png").write_bytes(b"not an image at all")
    files = sorted(str(p) for p in folder.rglob("*.png"))
    texts = [text for text, _ in make_texts(per_class=3, seed=5)]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    image_uri, text_uri = metrics_of(image_run)["model_uri"], metrics_of(text_run)["model_uri"]
    # the image model by path for all but the first, which goes as encoded bytes
    image_bytes = [Path(files[0]).read_bytes().hex()] + [""] * (len(files) - 1)
    image_input = {"image": [""] + files[1:], "image_bytes": image_bytes}

    images = fresh_process_predictions(
        image_run, {image_uri: image_input, f"models:/{IMAGE_MODEL}@challenger": image_input}
    )
    texts_out = fresh_process_predictions(
        text_run, {text_uri: {"text": texts}, f"models:/{TEXT_MODEL}@challenger": {"text": texts}}
    )

    expected_images = automl_predict(image_run, folder, tmp_path).set_index("id").loc[files]
    expected_texts = automl_predict(text_run, tmp_path / "texts.txt", tmp_path)
    for answers, expected in ((images, expected_images), (texts_out, expected_texts)):
        for uri, got in answers.items():
            good = list(expected["error"] == "")
            assert [bool(e) for e in got["error"]] == [not ok for ok in good], uri
            assert got["label"] == list(expected["label"]), uri
            probabilities = [p for p, ok in zip(got["probability"], good, strict=True) if ok]
            assert probabilities == pytest.approx(list(expected["probability"][good].astype(float)), abs=1e-5), uri
    broken = files.index(str(folder / "broken.png"))
    assert images[image_uri]["error"][broken].startswith("not a readable image")
    labels = json.loads((image_run / "best" / "labels.json").read_text())
    per_class = [images[image_uri][f"probability_{label}"][0] for label in labels]
    assert sum(per_class) == pytest.approx(1.0, abs=1e-5)  # every class's probability, summing to one


def test_promote_moves_an_alias_to_the_runs_version(image_run):
    import mlflow

    metrics = metrics_of(image_run)
    result = CliRunner().invoke(cli, ["promote", str(image_run), "--alias", "champion"])
    assert result.exit_code == 0, result.output
    assert f"models:/{IMAGE_MODEL}@champion -> version {metrics['model_version']}" in result.output
    client = mlflow.MlflowClient(metrics["tracking_uri"])
    assert str(client.get_model_version_by_alias(IMAGE_MODEL, "champion").version) == metrics["model_version"]


def test_promote_names_the_fix_for_a_run_that_registered_nothing(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"target": "accuracy>=0.5"}))
    result = CliRunner().invoke(cli, ["promote", str(tmp_path)])
    assert result.exit_code == 2 and "--register NAME" in result.output and "metrics.json" in result.output


@contextlib.contextmanager
def mlflow_models_serve(model_uri: str, env: dict):
    """`mlflow models serve -m URI --env-manager local` on a free loopback port, until it answers /ping."""
    port = free_port()
    command = [MLFLOW, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    with answering(command, f"{url}/ping", seconds=180, env=env):
        yield url


@pytest.mark.slow
@pytest.mark.skipif(MLFLOW is None, reason="the mlflow command-line tool is not installed")
def test_mlflow_models_serve_answers_invocations_for_a_text_and_an_image(image_run, text_run, tmp_path):
    """The README's path: `mlflow models serve -m models:/NAME@challenger --env-manager local`, then
    POST /invocations; an image goes base64-encoded in the binary column `image_bytes`."""
    picture = sorted(make_image_folder(tmp_path / "one", per_class=1, seed=3).rglob("*.png"))[0]
    cases = [
        (text_run, TEXT_MODEL, {"text": "the striker scored a goal in the match"}),
        (image_run, IMAGE_MODEL, {"image_bytes": base64.b64encode(picture.read_bytes()).decode()}),
    ]
    for run_dir, name, record in cases:
        with mlflow_models_serve(f"models:/{name}@challenger", tracking_env(run_dir)) as url:
            body = json.dumps({"dataframe_records": [record]}).encode()
            status, answer = post(f"{url}/invocations", body, "application/json")
        assert status == 200, answer
        (row,) = answer["predictions"]
        labels = json.loads((run_dir / "best" / "labels.json").read_text())
        assert row["label"] in labels and row["error"] == "" and 0 < row["probability"] <= 1
        assert {f"probability_{label}" for label in labels} <= set(row)
