"""``from automl import AutoML``: the example script's run, and what it gives against the CLI's own
commands on the same run folder; bad input raising what the CLI turns into exit 2."""

from __future__ import annotations

import json
import sys
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from helpers import TINY_IMAGE_BACKBONE, TINY_RUN_OPTIONS, make_image_folder

from automl import AutoML
from automl.cli import cli
from automl.errors import ConfigError, DataError, UnknownTask

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: the tiny model on 32 px images: a run in seconds
TINY = dict(TINY_RUN_OPTIONS, escalation_trials=1, ensemble=False)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """examples/automl_api.py's demo on colour images, a seventh of them set aside unseen."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import automl_api
    finally:
        sys.path.remove(str(EXAMPLES))
    root = tmp_path_factory.mktemp("api")
    folder = make_image_folder(root / "train", per_class=21)
    unseen = automl_api.set_aside(folder, root / "unseen")
    run = automl_api.demo(folder, unseen[:5], root / "unseen", output=str(root / "runs"), **TINY)
    return run, root / "unseen", unseen


def test_the_example_fits_and_its_leaderboard_is_the_study_files(example_run):
    run, _, _ = example_run
    assert (run.run_dir / "best" / "model.ckpt").exists() and run.report_path.exists()
    verdict = run.verdict
    assert verdict.split == "test" and verdict.examples > 0 and verdict.verdict in ("met", "missed", "undecided")
    assert verdict.ci_low <= verdict.score <= verdict.ci_high
    board = run.leaderboard()
    flash = pd.read_csv(run.run_dir / "study.csv")
    ours = board[board["tier"] == "flash"].reset_index(drop=True)
    assert list(ours["number"]) == list(flash["number"]) and list(ours["state"]) == list(flash["state"])
    assert ours["score"].tolist() == pytest.approx(flash["value"].tolist(), nan_ok=True)
    if (run.run_dir / "study.lightning.csv").exists():  # escalated: the Lightning tier's trials follow
        lightning = pd.read_csv(run.run_dir / "study.lightning.csv")
        assert len(board) == len(flash) + len(lightning)
    assert {"param_learning_rate", "seconds"} <= set(board.columns)


def test_evaluate_gives_the_clis_figures(example_run):
    run, unseen, _ = example_run
    ours = run.evaluate(unseen)
    cli_run = CliRunner().invoke(cli, ["evaluate", str(run.run_dir), "--data", str(unseen), "--json"])
    theirs = json.loads(cli_run.stdout)
    assert ours["verdict"] == theirs["verdict"] and ours["counts"] == theirs["counts"]
    assert ours["verdict"]["examples"] == len(list(unseen.rglob("*.png")))


def test_a_loaded_run_predicts_as_automl_predict_does(example_run):
    run, unseen, files = example_run
    loaded = AutoML.load(run.run_dir)
    ours = loaded.predict([str(f) for f in files])
    cli_run = CliRunner().invoke(cli, ["predict", str(run.run_dir), "--data", str(unseen)])
    theirs = pd.read_csv(StringIO(cli_run.stdout)).set_index("id").loc[[str(f) for f in files]]
    assert list(ours["label"]) == list(theirs["label"])
    assert ours["probability"].tolist() == pytest.approx(theirs["probability"].tolist(), abs=1e-4)
    proba = loaded.predict_proba([str(f) for f in files])
    labels = json.loads((run.run_dir / "best" / "labels.json").read_text())
    assert list(proba.columns) == ["id", "label", *labels, "error"]
    assert proba[labels].sum(axis=1).tolist() == pytest.approx([1.0] * len(files), abs=1e-3)
    assert list(proba[labels].idxmax(axis=1)) == list(ours["label"])


def test_a_dataframe_of_image_paths_is_data_too(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", per_class=12)
    frame = pd.DataFrame([{"path": str(p), "class": p.parent.name} for p in sorted(folder.rglob("*.png"))])
    run = AutoML("image_classification", "accuracy>=0.0", output=str(tmp_path / "runs"), **TINY).fit(frame)
    assert run.verdict.met
    config = (run.run_dir / "config.yaml").read_text()
    assert "inputs/data-" in config and "target_field: class" in config
    assert set(run.predict(frame)["label"]) <= {"red things", "green things", "blue things"}


def test_bad_input_raises_what_the_cli_turns_into_exit_2_and_writes_nothing(tmp_path):
    with pytest.raises(UnknownTask, match="Unknown task 'images'"):
        AutoML(task="images", target="accuracy>=0.9")
    with pytest.raises(ConfigError, match="Unknown configuration key.*trialz"):
        AutoML("image_classification", "accuracy>=0.9", trialz=3)
    unlabelled = pd.DataFrame({"path": ["a.png", "b.png"], "kind": ["x", "y"]})
    automl = AutoML("image_classification", "accuracy>=0.9", output=str(tmp_path / "runs"))
    with pytest.raises(DataError, match="Cannot find the label column in the DataFrame.*path, kind"):
        automl.fit(unlabelled)
    with pytest.raises(DataError, match="a path .* or a pandas DataFrame, got int"):
        automl.fit(3)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(DataError, match="has not run yet"):
        automl.leaderboard()


def test_a_search_space_that_fixes_the_backbone_is_the_only_one_any_trial_uses(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", per_class=12)
    shape = {"backbone": "test_efficientnet", "learning_rate": [1e-3, 5e-3]}
    options = {**TINY, "backbones": [TINY_IMAGE_BACKBONE, "test_efficientnet"], "trials": 4}
    run = AutoML("image_classification", "loss<=0.0001", search_space=shape, **options)
    run.fit(folder)
    board = run.leaderboard()
    assert len(board) >= 4 and set(board["param_backbone"]) == {"test_efficientnet"}
    assert board["param_learning_rate"].between(1e-3, 5e-3).all()
    assert "lightning" in set(board["tier"])  # a target no model meets: escalated, shaped the same
    searched = yaml.safe_load((run.run_dir / "search_space.yaml").read_text())
    assert searched["flash"]["backbone"] == "test_efficientnet" and searched["lightning"]["learning_rate"] == [
        1e-3,
        5e-3,
    ]
