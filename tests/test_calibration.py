"""Calibrated probabilities: the temperature, the ECE, and a run's final model returning them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from automl import calibration


def overconfident(n: int = 2000, classes: int = 4, sharpen: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z), and the probabilities of a model that says softmax(sharpen * z)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, classes))
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(classes, p=row) for row in true])
    said = np.exp(sharpen * logits) / np.exp(sharpen * logits).sum(axis=1, keepdims=True)
    return said, targets


def test_the_temperature_of_an_overconfident_model_softens_it_and_lowers_its_ece():
    probabilities, targets = overconfident(sharpen=3.0)
    temperature = calibration.fit_temperature(probabilities, targets)
    assert temperature == pytest.approx(3.0, rel=0.15)
    fixed = calibration.scaled(probabilities, temperature)
    before = calibration.expected_calibration_error(probabilities, targets)
    after = calibration.expected_calibration_error(fixed, targets)
    assert before > 0.1 and after < before / 3
    assert (fixed.argmax(axis=1) == probabilities.argmax(axis=1)).all()  # the predicted class stays


def test_a_calibrated_model_keeps_a_temperature_near_one():
    probabilities, targets = overconfident(sharpen=1.0, seed=1)
    assert calibration.fit_temperature(probabilities, targets) == pytest.approx(1.0, abs=0.15)


def test_scaling_is_the_same_in_numpy_and_torch_and_undone_by_its_inverse():
    probabilities, _ = overconfident(n=50)
    as_numpy = calibration.scaled(probabilities, 2.5)
    as_torch = calibration.scaled(torch.tensor(probabilities), 2.5).numpy()
    assert np.allclose(as_numpy, as_torch, atol=1e-9) and np.allclose(as_numpy.sum(axis=1), 1.0)
    assert np.allclose(calibration.scaled(as_numpy, 1 / 2.5), probabilities, atol=1e-9)
    measured = calibration.measured(as_numpy, np.zeros(50, dtype=int), 2.5, "test")
    assert measured["ece_before"] == pytest.approx(
        calibration.expected_calibration_error(probabilities, np.zeros(50, dtype=int))
    )
    assert sum(row["count"] for row in measured["reliability_after"]) == 50


def test_a_runs_final_model_returns_the_probabilities_its_temperature_makes(image_run):
    from automl.predict import Predictor
    from automl.run_folder import BEST_DIR, METRICS_FILE

    best = image_run / BEST_DIR
    facts = json.loads((best / calibration.CALIBRATION_FILE).read_text())
    temperature = facts["temperature"]
    assert facts["fitted_on"] and facts["examples"] > 0 and temperature > 0
    summary = json.loads((image_run / METRICS_FILE).read_text())["calibration"]
    assert summary["temperature"] == temperature and summary["split"] == "test"
    assert {"ece_before", "ece_after", "reliability_before", "reliability_after"} <= set(summary)

    import pandas as pd

    calibrated, raw = Predictor.load(image_run), Predictor.load(image_run)
    raw.temperature = 1.0
    judged = pd.read_csv(image_run / "predictions_test.csv").head(6)  # written by the calibrated model
    ready = [calibrated.prepare(path) for path in judged["id"]]
    got = calibrated.batch_probabilities(ready).numpy()
    expected = calibration.scaled(raw.batch_probabilities(ready).double().numpy(), temperature)
    assert np.allclose(got, expected, atol=1e-5)
    assert np.allclose(got, judged[[f"p_{label}" for label in calibrated.labels]].to_numpy(), atol=1e-4)
    if abs(temperature - 1.0) > 1e-3:
        assert not np.allclose(got, raw.batch_probabilities(ready).numpy(), atol=1e-4)


def test_on_the_split_that_chose_the_model_a_temperature_only_softens():
    probabilities, targets = overconfident(sharpen=0.4, seed=2)  # a timid model: it would be sharpened
    assert calibration.fit_temperature(probabilities, targets) < 0.6
    assert calibration.fit_temperature(probabilities, targets, at_least=1.0) == 1.0
    sharp, targets = overconfident(sharpen=3.0, seed=3)
    assert calibration.fit_temperature(sharp, targets, at_least=1.0) == pytest.approx(3.0, rel=0.15)


def test_no_calibrate_keeps_the_raw_probabilities(images, tmp_path):
    from click.testing import CliRunner
    from helpers import TINY_IMAGE_BACKBONE

    from automl.cli import cli

    options = (
        f"run --task image_classification --target accuracy>=0 --trials 1 --backbone {TINY_IMAGE_BACKBONE} "
        "--no-pretrained --epochs 1 --batch-size 4 --image-size 32 --accelerator cpu --pruner none --no-calibrate"
    ).split()
    result = CliRunner().invoke(cli, [*options, "--data", str(images), "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in tmp_path.iterdir() if (p / "metrics.json").exists()]
    assert not (run_dir / "best" / calibration.CALIBRATION_FILE).exists()
    assert json.loads((run_dir / "metrics.json").read_text())["calibration"] == {}
    assert "Not calibrated" in (run_dir / "report.html").read_text()
