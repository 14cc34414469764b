"""The three roles of the labelled data: a test split that only judges, carved without leaks."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from helpers import COLOURS, make_image_folder, tiny_run_config

from automl import pipeline
from automl.cli import cli
from automl.data import ImageClassificationData, TextClassificationData
from automl.data.holdout import CARVED, FOLDER, NONE, hold_out
from automl.errors import DataError


def texts(per_class: dict[str, int]) -> TextClassificationData:
    samples = [(f"{label} example {i}", t) for t, (label, n) in enumerate(per_class.items()) for i in range(n)]
    return TextClassificationData(list(per_class), train_samples=samples)


def test_a_carved_test_split_is_stratified_seeded_and_disjoint():
    data = texts({"a": 40, "b": 20})
    held = hold_out(data, test_split=0.15, val_split=0.2, seed=1)
    assert held.source == CARVED and held.size == len(data.test_samples)
    # 15% of the whole from the 80% left for training: about 0.1875 of each class (7.5 and 3.75)
    assert Counter(t for _, t in data.test_samples) == {0: 7, 1: 4}
    assert not {x for x, _ in data.test_samples} & {x for x, _ in data.train_samples}
    again = texts({"a": 40, "b": 20})
    hold_out(again, test_split=0.15, val_split=0.2, seed=1)
    assert again.test_samples == data.test_samples  # seeded: a resumed run carves the same split


def test_exact_duplicates_stay_on_one_side():
    samples = [(f"text {i % 10}", i % 2) for i in range(60)]  # ten texts, six copies each
    data = TextClassificationData(["even", "odd"], train_samples=samples)
    hold_out(data, test_split=0.3, val_split=0.2, seed=0, val_carved=False)
    test = {x for x, _ in data.test_samples}
    assert test and not test & {x for x, _ in data.train_samples}
    assert len(data.test_samples) % 6 == 0  # whole groups of copies


def test_a_class_too_small_keeps_its_examples_for_training_and_says_so():
    data = texts({"big": 40, "tiny": 2})
    held = hold_out(data, test_split=0.15, val_split=0.2, seed=0)
    assert held.kept_in_training == ["tiny"] and "tiny too small to give one, kept for training" in held.line()
    assert Counter(t for _, t in data.train_samples)[1] == 2 and all(t == 0 for _, t in data.test_samples)


def test_carved_validation_copies_of_training_examples_go_back_to_training():
    data = TextClassificationData(
        ["a", "b"],
        train_samples=[("same", 0), ("x", 0), ("y", 1), ("z", 1)],
        val_samples=[("same", 0), ("w", 1)],
    )
    held = hold_out(data, test_split=0.0, val_split=0.2, seed=0)
    assert held.source == NONE and held.returned_to_training == 1
    assert data.val_samples == [("w", 1)] and ("same", 0) in data.train_samples
    assert "given on the validation split that chose the model" in held.line()
    assert "1 validation example had an exact copy in training: moved there" in held.line()


def test_a_test_folder_is_the_test_split_and_its_copies_of_training_images_are_named(tmp_path):
    root = tmp_path / "imgs"
    for split, per_class in (("train", 6), ("val", 2), ("test", 3)):
        make_image_folder(root / split, per_class=per_class, seed={"train": 0, "val": 1, "test": 2}[split])
    leaked = root / "test" / "red things" / "copy.png"
    shutil.copy(root / "train" / "red things" / "000.png", leaked)
    data = ImageClassificationData.from_folders(root)
    held = hold_out(data, 0.15, 0.2, 42, val_carved=data.val_carved)
    assert held.source == FOLDER and held.size == 10 and held.leaked == [str(leaked)]
    assert len(data.train_samples) == 18  # nothing carved from a user's own split


def test_files_the_reader_leaves_out_are_listed_not_dropped_silently(tmp_path):
    from automl.data.inspect import inspect_images

    root = make_image_folder(tmp_path / "imgs", per_class=4)
    odd, hidden = root / "red things" / "photo.jfif", root / "red things" / ".DS_Store"
    shutil.copy(root / "red things" / "000.png", odd)
    hidden.write_bytes(b"\0\0")
    data = ImageClassificationData.from_folders(root)
    assert [(f.where, f.action) for f in data.skipped] == [(str(hidden), "flagged"), (str(odd), "skipped")]
    assert "no image extension" in data.skipped[1].problem and "hidden file" in data.skipped[0].problem
    found = inspect_images(root, datamodule=data)  # the data doctor (inspection.json) lists both
    assert [f.where for f in found.skipped] == [str(odd)] and [f.where for f in found.flagged] == [str(hidden)]


# --------------------------------------------------------------------------- in a run
def _test_csv(root: Path, path: Path, shuffle: bool) -> Path:
    """Every image under ``root`` with its label; ``shuffle``: the labels rotated among classes."""
    labels = sorted(COLOURS)
    rows = [(str(f), f.parent.name) for f in sorted(root.rglob("*.png"))]
    if shuffle:
        rows = [(f, labels[(labels.index(label) + 1) % len(labels)]) for f, label in rows]
    pd.DataFrame(rows, columns=["image", "label"]).to_csv(path, index=False)
    return path


def test_the_search_never_sees_the_test_split(tmp_path, images, tracking_uri):
    """The same seeded run judged on test data with true and with shuffled labels: the same best trial
    and the same validation figures; only the verdict changes. No cached feature and no trial
    prediction file holds a test example."""
    test_images = make_image_folder(tmp_path / "test_imgs", per_class=4, seed=7)
    runs = {}
    for shuffle in (False, True):
        output = tmp_path / f"run-{shuffle}"
        config = tiny_run_config(
            images,
            output,
            tracking_uri=tracking_uri,
            strategy="freeze",
            augment=False,
            trials=2,
            test_data=str(_test_csv(test_images, tmp_path / f"test-{shuffle}.csv", shuffle)),
        )
        runs[shuffle] = pipeline.run(config, progress=False)
    honest, shuffled = runs[False], runs[True]
    assert honest.verdict.best_trial == shuffled.verdict.best_trial
    assert honest.verdict.scores == shuffled.verdict.scores  # every validation figure
    val = [(run.run_dir / "predictions_val.csv").read_text() for run in (honest, shuffled)]
    assert val[0] == val[1]
    studies = [pd.read_csv(run.run_dir / "study.csv").drop(columns="seconds") for run in (honest, shuffled)]
    pd.testing.assert_frame_equal(*studies)  # the same trials, parameters and scores
    assert honest.verdict.split == "test" and honest.verdict.examples == 12
    assert honest.verdict.test_scores["test_accuracy"] != shuffled.verdict.test_scores["test_accuracy"]

    test_files = {str(f) for f in test_images.rglob("*.png")}
    splits = pd.read_csv(honest.run_dir / "splits.csv")
    assert set(splits.loc[splits["split"] == "test", "id"]) == test_files
    trained = splits.loc[splits["split"] != "test"]
    for path in honest.run_dir.glob("features/*.pt"):  # the head trials' cache
        cached = torch.load(path, weights_only=True)
        assert len(cached["train"]) + len(cached["val"]) == len(trained)
    for path in honest.run_dir.rglob("predictions_val*.csv"):
        assert not set(pd.read_csv(path)["id"]) & test_files


def test_test_data_with_labels_the_training_data_lacks_exits_2_naming_them(tmp_path, images):
    other = make_image_folder(tmp_path / "other", per_class=2, classes={"purple things": 0, "red things": 0})
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--task",
            "image_classification",
            "--data",
            str(images),
            "--target",
            "accuracy>=0.5",
            "--test-data",
            str(other),
            "--output",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "purple things" in result.output and "labels the training data lacks" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/journal.json"))


def test_a_test_split_that_leaves_no_room_is_refused():
    with pytest.raises(Exception, match="test_split"):
        tiny_run_config(Path("."), Path("."), test_split=0.85)
    with pytest.raises(DataError):
        data = texts({"a": 1, "b": 1})
        data.train_samples = []
        hold_out(data, 0.15, 0.2, 0)  # nothing to carve from: no training example left


def test_no_refit_keeps_the_trials_weights_and_test_split_0_judges_on_validation_saying_so(
    tmp_path, images, tracking_uri
):
    kept = pipeline.run(tiny_run_config(images, tmp_path / "a", tracking_uri=tracking_uri, trials=1, refit=False))
    metrics = pd.read_json(kept.run_dir / "metrics.json", typ="series")
    assert metrics["refit"].startswith("off (--no-refit)") and not (kept.run_dir / "refit").exists()
    assert metrics["judged_on"] == "test"
    on_val = pipeline.run(tiny_run_config(images, tmp_path / "b", tracking_uri=tracking_uri, trials=1, test_split=0))
    assert on_val.verdict.split == "val" and "validation split that chose the model" in on_val.verdict.outcome
    assert not (on_val.run_dir / "predictions_test.csv").exists()
