"""`automl evaluate RUN --data PATH`: a finished run's final model scored on new labelled data, the
figures it reports recomputed from its own per-example predictions, and its exit status following
the verdict."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from helpers import TINY_IMAGE_BACKBONE, make_image_folder, make_texts, write_colour_image
from PIL import Image

from automl.cli import cli
from automl.data.labelled import WrongKind, read_labelled
from automl.errors import DataError
from automl.evaluate import EXIT_MET, EXIT_MISSED, EXIT_UNDECIDED, judge_inputs, probabilities
from automl.predict import Predictor
from automl.run_folder import BEST_DIR, CONFIG_FILE, JOURNAL_FILE, METRICS_FILE
from automl.target import MET, MISSED, UNDECIDED

IMAGE, TEXT = "image_classification", "text_classification"
EXIT = {MET: EXIT_MET, MISSED: EXIT_MISSED, UNDECIDED: EXIT_UNDECIDED}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The tiny image model of one `automl fit` (its folder: best/, config.yaml, metrics.json)."""
    from automl.config import FitConfig
    from automl.fit_job import fit_baseline

    images = make_image_folder(tmp_path_factory.mktemp("data") / "imgs", per_class=8)
    config = FitConfig(
        task=IMAGE,
        data=str(images),
        output=str(tmp_path_factory.mktemp("fit")),
        backbone=TINY_IMAGE_BACKBONE,
        pretrained=False,
        epochs=1,
        batch_size=4,
        image_size=32,
        accelerator="cpu",
        strategy="no_freeze",
    )
    return fit_baseline(config, progress=False).run_dir


def finished_run(trained: Path, folder: Path, target: str) -> Path:
    """``trained`` as a finished run whose target is ``target``: what `automl evaluate` reads of a run
    folder (config.yaml, journal.json, metrics.json with the target, best/)."""
    folder.mkdir(parents=True)
    shutil.copytree(trained / BEST_DIR, folder / BEST_DIR)
    shutil.copy(trained / CONFIG_FILE, folder / CONFIG_FILE)
    (folder / JOURNAL_FILE).write_text(json.dumps({"stages": {}}))
    scores = json.loads((trained / METRICS_FILE).read_text())
    summary = {"target": target, "verdict": MET, "outcome": "", "tier": "flash", "score": scores["val_accuracy"]}
    (folder / METRICS_FILE).write_text(json.dumps({**scores, **summary, "labels": scores["labels"]}))
    return folder


@pytest.fixture(scope="module")
def run_dir(trained, tmp_path_factory) -> Path:
    return finished_run(trained, tmp_path_factory.mktemp("runs") / "run", "accuracy>=0.0")


@pytest.fixture(scope="module")
def new_images(tmp_path_factory) -> Path:
    """New labelled images (another seed), with what a real folder holds besides: a corrupt image, a
    note, a hidden file, and an image the model refuses under a small pixel cap."""
    root = make_image_folder(tmp_path_factory.mktemp("new") / "new images", per_class=4, seed=7)
    (root / "red things" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    (root / "green things" / "notes.md").write_text("taken on a Tuesday")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    write_colour_image(root / "blue things" / "huge.png", 2, random.Random(3), size=100)
    return root


def evaluate(*args: str):
    return CliRunner().invoke(cli, ["evaluate", *map(str, args)])


# --------------------------------------------------------------------------- reading labelled data
def test_a_folder_of_class_folders_is_read_whole_and_what_is_left_out_says_why(new_images):
    found = read_labelled(IMAGE, new_images)
    assert len(found.inputs) == len(found.names) == len(found.ids) == 13  # 12 + the huge one: readable
    assert found.ids == [str(p) for p in found.inputs] and all(isinstance(p, Path) for p in found.inputs)
    assert sorted(set(found.names)) == ["blue things", "green things", "red things"]
    why = dict(found.skipped)
    assert why[str(new_images / "red things" / "corrupt.png")] == "not a readable image"
    assert why[str(new_images / "green things" / "notes.md")].startswith("no image extension")
    assert why[str(new_images / ".DS_Store")] == "hidden file"


def test_tables_of_image_paths_and_of_texts(tmp_path, new_images):
    table = tmp_path / "labels.csv"
    rows = [("blue things/000.png", "blue things"), ("nowhere.png", "red things"), ("red things/001.png", "")]
    pd.DataFrame(rows, columns=["file", "label"]).to_csv(table, index=False)
    shutil.copytree(new_images / "blue things", tmp_path / "blue things")
    found = read_labelled(IMAGE, table)
    assert found.inputs == [tmp_path / "blue things" / "000.png"] and found.names == ["blue things"]
    assert [why for _, why in found.skipped] == ["row 3: no such file", "row 4: the label in column 'label' is empty"]

    texts = tmp_path / "texts.csv"
    pd.DataFrame([("goal match", "sport"), ("  ", "finance"), ("bank", "finance")], columns=["text", "label"]).to_csv(
        texts, index=False
    )
    found = read_labelled(TEXT, texts)
    assert found.inputs == ["goal match", "bank"] and found.ids == ["row 2", "row 4"]
    assert found.skipped == [("row 3", "the text in column 'text' is empty")]


def test_data_of_the_other_kind_is_refused_in_one_line(tmp_path, new_images, run_dir):
    texts = tmp_path / "texts.csv"
    pd.DataFrame(make_texts(per_class=3), columns=["text", "label"]).to_csv(texts, index=False)
    with pytest.raises(WrongKind, match="holds texts"):
        read_labelled(IMAGE, texts)
    with pytest.raises(WrongKind, match="holds images"):
        read_labelled(TEXT, new_images)
    for i, (text, label) in enumerate(make_texts(per_class=2)):
        (tmp_path / "texts" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "texts" / label / f"{i}.txt").write_text(text)
    with pytest.raises(WrongKind, match="holds text files"):
        read_labelled(IMAGE, tmp_path / "texts")

    result = evaluate(run_dir, "--data", texts)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]) and result.stdout == ""
    assert "holds texts" in errors[0] and f"'{run_dir}' is an image_classification run" in errors[0]


# --------------------------------------------------------------------------- automl evaluate
def test_evaluate_reports_figures_its_own_predictions_give(run_dir, new_images, tmp_path):
    out = tmp_path / "evaluation"
    result = evaluate(run_dir, "--data", new_images, "--json", "--output", out, "--max-megapixels", "0.005")
    facts = json.loads(result.stdout)  # one JSON object, nothing else on stdout
    assert result.exit_code == EXIT[facts["verdict"]["verdict"]] == facts["exit_code"], result.output
    assert facts == json.loads((out / "evaluation.json").read_text())

    huge = str(new_images / "blue things" / "huge.png")
    assert [u["id"] for u in facts["unreadable"]] == [huge] and "megapixels" in facts["unreadable"][0]["error"]
    assert facts["counts"] == {"examples": 13, "scored": 12, "unreadable": 1, "skipped": 3}

    frame = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    labels = facts["labels"]
    probs = frame[[f"p_{label}" for label in labels]].to_numpy()
    assert len(frame) == 12 and huge not in set(frame["id"])
    assert (frame["predicted"] == [labels[i] for i in probs.argmax(axis=1)]).all()
    assert facts["metrics"]["accuracy"] == pytest.approx((frame["true"] == frame["predicted"]).mean(), abs=1e-6)
    truth = np.array([labels.index(t) for t in frame["true"]])
    loss = -np.log(probs[np.arange(len(truth)), truth]).mean()
    assert facts["metrics"]["loss"] == pytest.approx(loss, abs=1e-5)
    assert facts["verdict"]["score"] == pytest.approx(facts["metrics"]["accuracy"])

    matrix = np.array(facts["confusion"]["matrix"])
    assert matrix.sum() == 12 and matrix.trace() == (frame["true"] == frame["predicted"]).sum()
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        frame["true"], frame["predicted"], labels=labels, zero_division=0
    )
    per_class = facts["per_class"]
    assert [r["support"] for r in per_class] == support.tolist() == matrix.sum(axis=1).tolist()
    assert np.allclose([r["precision"] for r in per_class], precision)
    assert np.allclose([r["recall"] for r in per_class], recall)
    assert np.allclose([r["f1"] for r in per_class], f1)

    wrong = frame[frame["true"] != frame["predicted"]]
    assert len(facts["mistakes"]) == min(12, len(wrong))
    confidences = [m["confidence"] for m in facts["mistakes"]]
    assert confidences == sorted(confidences, reverse=True)

    html = (out / "evaluation.html").read_text()
    assert f"Target {facts['verdict']['verdict'].upper()}" in html and "huge.png" in html and "corrupt.png" in html


def test_the_exit_status_follows_the_verdict(trained, new_images, tmp_path):
    met = evaluate(finished_run(trained, tmp_path / "met", "accuracy>=0.0"), "--data", new_images)
    assert met.exit_code == EXIT_MET, met.output
    assert "-> MET" in met.stdout and "scored 13 of 13 examples" in met.stdout
    assert (tmp_path / "met" / "evaluations" / "new images" / "evaluation.html").is_file()  # the default output

    missed = evaluate(finished_run(trained, tmp_path / "missed", "loss<=0.0"), "--data", new_images, "--json")
    assert missed.exit_code == EXIT_MISSED and json.loads(missed.stdout)["verdict"]["verdict"] == MISSED

    # a target inside the interval: neither met nor missed on 13 examples
    accuracy = json.loads(missed.stdout)["metrics"]["accuracy"]
    between = f"accuracy>={min(max(round(accuracy, 2), 0.01), 0.99)}"
    undecided = evaluate(finished_run(trained, tmp_path / "undecided", between), "--data", new_images, "--json")
    assert undecided.exit_code == EXIT_UNDECIDED, undecided.output
    assert json.loads(undecided.stdout)["verdict"]["verdict"] == UNDECIDED


def test_labels_the_model_does_not_know_are_named(run_dir, tmp_path):
    data = make_image_folder(tmp_path / "other", per_class=2, classes={"red things": 0, "purple things": 2})
    result = evaluate(run_dir, "--data", data)
    assert result.exit_code == 2 and result.stdout == ""
    assert "'purple things'" in result.stderr and "not the run's labels" in result.stderr
    assert "'red things'" not in result.stderr.split("are not")[0]


def test_a_folder_that_is_not_a_finished_run_is_bad_input(trained, new_images):
    result = evaluate(trained, "--data", new_images)  # an `automl fit` folder: no target
    assert result.exit_code == 2 and "not a finished automl run" in result.stderr


# --------------------------------------------------------------------------- the scoring itself
def test_judging_reproduces_the_validation_scores_whatever_the_order(trained):
    """The run's own validation examples give the scores its training logged; shuffled, the same
    verdict to the last digit (an interval by bootstrap included)."""
    import yaml

    from automl.config import FitConfig
    from automl.flash.fit import load_data

    config = FitConfig.from_dict(yaml.safe_load((trained / CONFIG_FILE).read_text()))
    samples = load_data(config).val_samples
    predictor = Predictor.load_folder(trained / BEST_DIR)
    inputs, targets = [p for p, _ in samples], [t for _, t in samples]
    scored = judge_inputs(predictor, inputs, targets, [str(p) for p in inputs], "f1_macro>=0.5", seed=42)
    logged = json.loads((trained / METRICS_FILE).read_text())
    for name in ("accuracy", "f1_macro", "precision_macro", "recall_macro"):
        assert scored.scores[name] == pytest.approx(logged[f"val_{name}"], abs=1e-6), name
    assert scored.verdict.score == scored.scores["f1_macro"] and scored.verdict.examples == len(samples)
    assert scored.ids == sorted(scored.ids) and scored.unreadable == []  # absolute paths: in their order

    order = list(reversed(range(len(inputs))))
    again = judge_inputs(
        predictor, [inputs[i] for i in order], [targets[i] for i in order], [str(inputs[i]) for i in order],
        "f1_macro>=0.5", seed=42,
    )  # fmt: skip
    assert dataclasses.asdict(again.verdict) == dataclasses.asdict(scored.verdict)
    assert again.scores == scored.scores and np.array_equal(again.probabilities, scored.probabilities)


class WordCounter:
    """A stand-in text model: "long" for a text of more than three words."""

    kind = "text"
    labels = ["short", "long"]

    def encode(self, texts):
        return torch.tensor([[float(len(t.split()))] for t in texts])

    def probabilities(self, batch):
        return torch.cat([3.0 - batch, batch - 3.0], dim=1).softmax(dim=-1)

    def prepare(self, text):  # as Predictor: one input readied, or DataError
        from automl.predict import _text

        return _text(text)

    def batch_probabilities(self, ready):
        return self.probabilities(self.encode(ready))


def test_probabilities_are_batched_and_an_unreadable_input_is_left_out(tmp_path):
    texts = ["one", "", "four words in here", 7, "two words", "a b c d e f"]
    found, readable, unreadable = probabilities(WordCounter(), texts, batch_size=2)
    assert readable == [0, 2, 4, 5] and [i for i, _ in unreadable] == [1, 3]
    assert found.dtype == np.float64 and found.shape == (4, 2) and np.allclose(found.sum(axis=1), 1.0)
    assert found.argmax(axis=1).tolist() == [0, 1, 0, 1]

    root = tmp_path / "texts"
    short = ["hi", "ok there", "  ", "one two three four", "a", "b c"]
    long = ["a b c d e", "x y", "1 2 3 4 5", "p q r s"]
    for label, words in (("short", short), ("long", long)):
        for i, text in enumerate(words):
            (root / label).mkdir(parents=True, exist_ok=True)
            (root / label / f"{i}.txt").write_text(text)
    (root / "long" / "photo.png").write_bytes(b"")
    found = read_labelled(TEXT, root)
    assert dict(found.skipped) == {
        str(root / "short" / "2.txt"): "empty text",
        str(root / "long" / "photo.png"): "not a .txt file",
    }
    index = {label: i for i, label in enumerate(WordCounter.labels)}
    scored = judge_inputs(WordCounter(), found.inputs, [index[n] for n in found.names], found.ids, "accuracy>=0.5")
    assert scored.scores["accuracy"] == pytest.approx(7 / 9) and scored.verdict.verdict in (MET, UNDECIDED)
    assert len(scored.ids) == 9 and {scored.ids[i] for i in np.flatnonzero(scored.predicted != scored.targets)} == {
        str(root / "short" / "3.txt"),
        str(root / "long" / "1.txt"),
    }
    # the same examples in another order, with other ids (a table's "row N", as automl run passes the texts):
    # the same verdict, a bootstrap interval included
    words = WordCounter()
    rows = [f"row {i + 2}" for i in range(len(found.inputs))]
    targets = [index[n] for n in found.names]
    one = judge_inputs(words, found.inputs, targets, rows, "f1_macro>=0.5", seed=3)
    other = judge_inputs(words, found.inputs[::-1], targets[::-1], found.inputs[::-1], "f1_macro>=0.5", seed=3)
    assert one.verdict.interval == "bootstrap" and one.verdict.ci_low < one.verdict.ci_high
    assert dataclasses.asdict(one.verdict) == dataclasses.asdict(other.verdict)
    assert one.inputs == other.inputs and one.ids == [rows[found.inputs.index(t)] for t in one.inputs]
    with pytest.raises(DataError, match="None of the 1 inputs"):
        judge_inputs(WordCounter(), [""], [0], ["row 2"], "accuracy>=0.5")


def test_an_image_over_pils_own_limit_is_left_out_by_the_reader(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "imgs", per_class=1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32x32 is over 2x this: PIL refuses it
    found = read_labelled(IMAGE, root)
    assert found.inputs == [] and all(why.startswith("too many pixels") for _, why in found.skipped)


# --------------------------------------------------------------------------- a real run's own test split
@pytest.mark.parametrize("kind", ["image", "text"])
def test_evaluate_on_a_runs_own_test_split_reproduces_its_verdict_exactly(kind, image_run, text_run, tmp_path):
    run = image_run if kind == "image" else text_run
    metrics = json.loads((run / "metrics.json").read_text())
    splits = pd.read_csv(run / "splits.csv", keep_default_na=False)
    test = splits[splits["split"] == "test"]
    assert metrics["judged_on"] == "test" and metrics["examples"] == len(test) > 0
    column = "image" if kind == "image" else "text"
    data = tmp_path / "test.csv"
    test.rename(columns={"id": column})[[column, "label"]].to_csv(data, index=False)
    result = evaluate(str(run), "--data", str(data), "--json", "--output", str(tmp_path / "out"))
    verdict = json.loads(result.stdout)["verdict"]
    assert result.exit_code == {"met": 0, "missed": 3, "undecided": 4}[metrics["verdict"]]
    assert verdict["verdict"] == metrics["verdict"]
    assert (verdict["score"], verdict["ci_low"], verdict["ci_high"]) == (
        metrics["score"],
        metrics["ci_low"],
        metrics["ci_high"],
    )
