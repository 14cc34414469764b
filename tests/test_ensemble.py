"""Ensembles (issue 24, item 3): Caruana's greedy selection kept only when the selection split resolves
its gain, and a kept ensemble that is one model everywhere: predict, serve, the MLflow model, export."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_IMAGE_BACKBONE, make_image_folder, multipart, post, serving, tiny_run_config

from automl import ensemble as ens
from automl.flash.heads import cross_validate, fit_linear


def confident(targets: np.ndarray, right: np.ndarray, sure: float = 0.9, unsure: float = 0.6) -> np.ndarray:
    """Two-class probabilities: ``sure`` on the true class where ``right``, ``unsure`` on the wrong one elsewhere."""
    probabilities = np.zeros((len(targets), 2))
    for i, target in enumerate(targets):
        picked = target if right[i] else 1 - target
        confidence = sure if right[i] else unsure
        probabilities[i, picked], probabilities[i, 1 - picked] = confidence, 1 - confidence
    return probabilities


def test_two_members_right_on_different_halves_make_a_kept_ensemble_that_beats_both():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, 200)
    first_half = np.arange(200) < 100
    a = confident(targets, first_half)  # right on the first half only, wrong but unsure on the second
    b = confident(targets, ~first_half)

    decision = ens.decide({"a": a, "b": b}, targets, "val_accuracy", maximize=True, seed=0)

    assert decision.kept, decision.why
    assert set(decision.weights) == {"a", "b"}
    assert decision.ensemble_score > max(decision.single_scores.values()) + 0.4
    assert decision.gain > decision.resolution > 0


def test_a_member_that_dominates_leaves_the_ensemble_not_kept():
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, 200)
    strong_right = rng.random(200) < 0.9
    weak_right = strong_right & (rng.random(200) < 0.7)  # right only where the strong one is too
    strong, weak = confident(targets, strong_right, 0.9, 0.9), confident(targets, weak_right, 0.9, 0.9)

    decision = ens.decide({"strong": strong, "weak": weak}, targets, "val_accuracy", maximize=True, seed=0)

    assert not decision.kept
    assert "strong" in decision.why or "does not beat" in decision.why, decision.why


def test_three_independent_members_are_kept_with_equal_weights_where_greedy_stops_at_one():
    # each right on an independent 65% of the examples: any two of them averaged are no better than
    # the best alone (greedy selection stops there), all three with equal weights are
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 3, 300)

    def member():
        right = rng.random(300) < 0.65
        predicted = np.where(right, targets, (targets + rng.integers(1, 3, 300)) % 3)
        probabilities = rng.dirichlet([1, 1, 1], 300) * 0.5
        probabilities[np.arange(300), predicted] += 0.5
        return probabilities

    probabilities = {name: member() for name in "abc"}

    greedy = ens.decide(probabilities, targets, "val_accuracy", maximize=True, seed=0)
    equal = ens.decide(probabilities, targets, "val_accuracy", maximize=True, seed=0, equal=["a", "b", "c"])

    assert not greedy.kept and len(greedy.weights) == 1, greedy.why
    assert equal.kept and equal.method == ens.EQUAL, equal.why
    assert equal.weights == pytest.approx(dict.fromkeys("abc", 1 / 3))
    assert equal.crossfit_ensemble > equal.crossfit_single + 0.03


def test_equal_weights_with_a_weak_member_are_not_kept():
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, 200)
    strong_right = rng.random(200) < 0.9
    weak_right = strong_right & (rng.random(200) < 0.7)
    strong, weak = confident(targets, strong_right, 0.9, 0.9), confident(targets, weak_right, 0.9, 0.9)

    decision = ens.decide({"strong": strong, "weak": weak}, targets, "val_accuracy", True, 0, ["strong", "weak"])

    assert not decision.kept and decision.gain <= 0, decision.why


def test_too_few_selection_examples_cannot_keep_an_ensemble():
    targets = np.array([0, 1] * 10)
    a, b = confident(targets, np.arange(20) < 10), confident(targets, np.arange(20) >= 10)
    decision = ens.decide({"a": a, "b": b}, targets, "val_accuracy", maximize=True)
    assert not decision.kept and "cannot resolve" in decision.why


def test_a_cross_validated_head_scores_every_fold_and_fits_what_it_is_given():
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    x = torch.randn(90, 8, generator=generator) + 3 * torch.nn.functional.one_hot(y, 8).float()
    folds = cross_validate(x, y, 3, weight_decay=1e-3, metric="val_accuracy")
    assert len(folds.scores) == 5 and folds.mean > 0.9 and folds.out_of_fold.shape == (90, 3)
    noise = cross_validate(torch.randn(90, 8, generator=generator), y, 3, weight_decay=1e-3, metric="val_accuracy")
    assert noise.mean < 0.6  # labels unrelated to the features: chance, not a memorised split
    head = fit_linear(x, y, 3, 1e-3)
    assert (head.probabilities(x).argmax(axis=1) == y.numpy()).mean() > 0.95


def test_the_tfidf_member_round_trips_through_json_and_arrays_without_a_pickle(tmp_path):
    texts = ["a good film", "great acting", "a bad film", "awful acting"] * 10
    member = ens.TfidfMember.fit(texts, [1, 1, 0, 0] * 10, ["neg", "pos"])
    member.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ens.TFIDF_ARRAYS, ens.TFIDF_JSON])
    again = ens.TfidfMember.load(tmp_path)
    new = ["good acting", "an awful film", "unseen words only"]
    np.testing.assert_allclose(again.probabilities(new), member.probabilities(new), atol=1e-12)
    assert again.probabilities(new)[:2].argmax(axis=1).tolist() == [1, 0]


# --------------------------------------------------------------------------- a kept ensemble, everywhere
@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """A finished run whose final model is an ensemble of its chosen head and another backbone's head
    (the keep decision forced: on tiny, easy data every head is perfect and no ensemble is kept)."""
    from automl import pipeline

    root = tmp_path_factory.mktemp("ensemble-run")
    images = make_image_folder(root / "imgs", per_class=12)
    config = tiny_run_config(
        images,
        root / "runs",
        backbones=[TINY_IMAGE_BACKBONE, "test_efficientnet"],
        epochs=5,
        batch_size=8,
        time_budget="5m",
        escalate=False,
    )
    real = ens.decide

    def forced(probabilities, *args, **kwargs):
        decision = real(probabilities, *args, **kwargs)
        decision.weights = {name: 1 / len(probabilities) for name in probabilities}
        decision.kept, decision.why = True, "forced by the test"
        return decision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ens, "decide", forced)
        result = pipeline.run(config, progress=False)
    return result.run_dir


def test_a_kept_ensemble_is_the_final_model_and_its_members_are_recorded(ensemble_run):
    from automl.predict import EnsemblePredictor, Predictor

    spec = json.loads((ensemble_run / "best" / "ensemble.json").read_text())
    assert [m["weight"] for m in spec["members"]] == [0.5, 0.5]
    assert spec["members"][0]["folder"] == "." and (ensemble_run / "best" / spec["members"][1]["folder"]).is_dir()
    assert spec["members"][0]["shares"] and spec["members"][0]["shares"] != spec["members"][1]["shares"]
    metrics = json.loads((ensemble_run / "metrics.json").read_text())
    assert metrics["ensemble"]["kept"] is True and metrics["ensemble"]["single_test_score"] is not None
    assert metrics["ensemble"]["ensemble_seconds_per_example"] > 0
    assert "(an ensemble of 2 models around its chosen one)" in metrics["outcome"]
    predictor = Predictor.load(ensemble_run)
    assert isinstance(predictor, EnsemblePredictor) and len(predictor.members) == 2
    report = (ensemble_run / "report.html").read_text()
    assert "Ensemble" in report and "head #" in report


def test_the_ensemble_predicts_the_weighted_mean_of_its_members(ensemble_run):
    from automl.calibration import scaled
    from automl.predict import Predictor

    images = sorted(Path(json.loads((ensemble_run / "report.json").read_text())["run"]["data"]).rglob("*.png"))[:6]
    predictor = Predictor.load(ensemble_run)
    together = predictor.batch_probabilities([predictor.prepare(path) for path in images])
    parts = [
        member.weight * member.predictor.probabilities(torch.stack([member.predictor.image_tensor(p) for p in images]))
        for member in predictor.members
    ]
    # its members' probabilities are raw; the ensemble's mean is calibrated by its own temperature
    assert all(member.predictor.temperature == 1.0 for member in predictor.members)
    torch.testing.assert_close(together, scaled(sum(parts), predictor.temperature), atol=1e-5, rtol=0)
    alone = Predictor.load_folder(ensemble_run / "best", members=False)
    assert not hasattr(alone, "members")


@pytest.mark.slow
def test_predict_serve_the_mlflow_model_and_export_give_the_ensembles_probabilities(ensemble_run, tmp_path):
    import mlflow
    import onnxruntime
    import pandas as pd

    from automl.export import export
    from automl.predict import Predictor
    from automl.tracking import own_tracking_uri

    images = sorted(Path(json.loads((ensemble_run / "report.json").read_text())["run"]["data"]).rglob("*.png"))[:4]
    predictor = Predictor.load(ensemble_run)
    expected = predictor.batch_probabilities([predictor.prepare(path) for path in images]).numpy()
    labels = predictor.labels
    # every path below returns the ensemble's calibrated probabilities, its temperature applied
    calibration = json.loads((ensemble_run / "best" / "calibration.json").read_text())
    assert predictor.temperature == calibration["temperature"] and calibration["examples"] > 0

    rows = predictor.predict_images(images, top_k=len(labels))
    from_predict = np.array([[dict(row["top_k"])[label] for label in labels] for row in rows])
    np.testing.assert_allclose(from_predict, expected, atol=1e-4)

    metrics = json.loads((ensemble_run / "metrics.json").read_text())
    frame = pd.DataFrame({"image_bytes": [path.read_bytes() for path in images]})
    with own_tracking_uri():
        mlflow.set_tracking_uri(metrics["tracking_uri"])
        answer = mlflow.pyfunc.load_model(metrics["model_uri"]).predict(frame)
    np.testing.assert_allclose(answer[[f"probability_{label}" for label in labels]].to_numpy(), expected, atol=1e-4)

    with serving(ensemble_run) as (url, _):
        served = []
        for path in images:
            status, body = post(f"{url}/predict", *multipart("file", path.name, path.read_bytes()))
            assert status == 200, body
            top = {entry["label"]: entry["probability"] for entry in body["predictions"][0]["top_k"]}
            served.append([top[label] for label in labels])
    np.testing.assert_allclose(np.array(served), expected, atol=1e-4)

    exported = export(ensemble_run, "onnx")
    assert exported.warning is None and exported.max_abs_diff <= 1e-4
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    # the graph takes resized, cropped, unnormalised images (each member normalises as it was trained)
    preprocessing = json.loads((ensemble_run / "best" / "export.json").read_text())["preprocessing"]
    assert preprocessing["mean"] == [0.0, 0.0, 0.0] and preprocessing["std"] == [1.0, 1.0, 1.0]
    raw = dataclasses.replace(predictor.members[0].predictor, preprocessing=preprocessing)
    tensors = torch.stack([raw.image_tensor(path) for path in images]).numpy()
    np.testing.assert_allclose(session.run(None, {"images": tensors})[0], expected, atol=1e-4)
    assert json.loads((ensemble_run / "best" / "export.json").read_text())["ensemble"][1]["weight"] == 0.5


def test_the_tfidf_members_out_of_fold_predictions_come_from_models_that_never_saw_them():
    texts = [f"{word} film number {i}" for i, word in enumerate(["good", "bad"] * 20)]
    targets = np.array([1, 0] * 20)
    found = ens.TfidfMember.out_of_fold(texts, targets, ["neg", "pos"], seed=0)
    assert found.shape == (40, 2) and np.allclose(found.sum(axis=1), 1.0)
    assert (found.argmax(axis=1) == targets).mean() > 0.9
    # a text whose only informative word is unique to it is left at what the other folds say
    lone = texts + ["unheardof"]
    again = ens.TfidfMember.out_of_fold(lone, np.append(targets, 1), ["neg", "pos"], seed=0)
    assert abs(again[-1, 1] - 0.5) < 0.2


def test_the_equal_weight_members_are_the_chosen_model_one_head_per_other_backbone_and_tfidf():
    from automl.stages import CHOSEN, one_per_backbone

    def head(backbone, cv_mean):
        return {"kind": "head", "params": {"backbone": backbone}, "cv_mean": cv_mean}

    members = {
        CHOSEN: {"kind": "flash", "params": {"backbone": "lite0"}},
        "head #1": head("lite0", 0.95),  # the chosen model's backbone: it speaks for it
        "head #2": head("lite1", 0.80),
        "head #3": head("lite1", 0.85),  # lite1's best
        "head #4": head("lite2", None),
        "tfidf": {"kind": "tfidf", "params": {}},
    }

    assert one_per_backbone(members) == [CHOSEN, "head #3", "head #4", "tfidf"]
    assert one_per_backbone(members, maximize=False)[1] == "head #2"  # a loss: lower is better
