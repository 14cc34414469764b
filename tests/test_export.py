"""`automl export`: ONNX and TorchScript files that agree with PyTorch, and run without automl."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from automl.cli import cli
from automl.predict import Predictor


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exports_match_pytorch(image_run, text_run, fmt):
    for run_dir in (image_run, text_run):
        result = CliRunner().invoke(cli, ["export", str(run_dir), "--format", fmt])
        assert result.exit_code == 0, result.output
        info = json.loads((run_dir / "best" / "export.json").read_text())
        assert info["format"] == fmt and info["max_abs_diff"] <= 1e-4 and info["checked_examples"] > 0
        assert (run_dir / "best" / info["file"]).stat().st_size > 1000
        assert info["labels"] == json.loads((run_dir / "best" / "labels.json").read_text())


def test_the_onnx_file_runs_without_automl(image_run):
    import onnxruntime

    CliRunner().invoke(cli, ["export", str(image_run), "--format", "onnx"])
    predictor = Predictor.load(image_run)
    frame = pd.read_csv(image_run / "predictions_test.csv")  # the final (refitted) model's predictions
    batch = np.stack([predictor.image_tensor(path).numpy() for path in frame["id"]])
    session = onnxruntime.InferenceSession(str(image_run / "best" / "model.onnx"))
    probabilities = session.run(None, {"images": batch})[0]
    assert np.allclose(probabilities.max(axis=1), frame["confidence"], atol=1e-4)
