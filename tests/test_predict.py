"""`automl runs` and `automl predict` on a finished run: the leaderboard, predictions, error rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from click.testing import CliRunner
from helpers import make_image_folder

from automl.cli import cli
from automl.predict import Predictor


def test_runs_lists_the_finished_runs_whole_when_piped_and_as_json(image_run):
    # CliRunner's stdout is not a terminal: tab-separated lines, every value whole
    result = CliRunner().invoke(cli, ["runs", "--output", str(image_run.parent)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split("\t") == [
        "finished",
        "task",
        "data",
        "target",
        "val",
        "test",
        "verdict",
        "tier",
        "seconds",
        "path",
    ]
    mine = next(line for line in lines if line.endswith(str(image_run)))
    row = dict(zip(header.split("\t"), mine.split("\t"), strict=True))
    assert (row["task"], row["verdict"], row["path"]) == ("image_classification", "met", str(image_run))
    assert "…" not in result.stdout and float(row["test"]) > 0
    listed = json.loads(CliRunner().invoke(cli, ["runs", "--output", str(image_run.parent), "--json"]).stdout)
    (mine,) = [run for run in listed if run["path"] == str(image_run)]
    assert mine["verdict"] == "met" and mine["test"] == float(row["test"]) and mine["target"] == row["target"]


def test_predict_writes_a_row_for_each_input_and_an_error_row_for_a_corrupt_file(image_run, tmp_path):
    folder = make_image_folder(tmp_path / "new", per_class=2, seed=7)
    (folder / "red things" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(
        cli, ["predict", str(image_run), "--data", str(folder), "--output", str(out), "--top-k", "2"]
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out, keep_default_na=False)
    assert len(frame) == 7 and "1 inputs could not be read" in result.output
    bad = frame[frame["id"].str.endswith("corrupt.png")]
    assert len(bad) == 1 and bad["error"].iloc[0].startswith("not a readable image") and bad["label"].iloc[0] == ""
    good = frame[frame["error"] == ""]
    labels = json.loads((image_run / "best" / "labels.json").read_text())
    assert set(good["label"]) <= set(labels) and all(len(t.split(";")) == 2 for t in good["top_k"])


def test_predictions_reproduce_the_test_predictions_the_verdict_was_given_on(image_run, text_run):
    for run_dir in (image_run, text_run):
        frame = pd.read_csv(run_dir / "predictions_test.csv", keep_default_na=False)
        predictor = Predictor.load(run_dir)
        if predictor.kind == "image":
            rows = predictor.predict_images(list(frame["id"]), top_k=1)
        else:
            rows = predictor.predict_texts(list(frame["text"]), top_k=1)
        assert [r["label"] for r in rows] == [str(p) for p in frame["predicted"]]
        assert np.allclose([r["probability"] for r in rows], frame["confidence"], atol=1e-5)


def test_an_empty_or_non_text_input_gets_an_error_row_and_its_batch_goes_on(text_run):
    rows = Predictor.load(text_run).predict_texts(["  ", 5, "goal striker match"], ids=["a", "b", "c"], batch_size=3)
    assert [(r["id"], r["error"]) for r in rows[:2]] == [("a", "empty or not a text"), ("b", "empty or not a text")]
    assert rows[2]["error"] is None and rows[2]["label"] in json.loads((text_run / "best" / "labels.json").read_text())
