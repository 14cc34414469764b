"""Explanations: a Grad-CAM map finds the evidence where it is, texts get token scores, a run's report
and `automl predict --explain` carry them."""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from automl import explain
from automl.cli import cli
from automl.predict import Predictor


class ColourNet(nn.Module):
    """Its feature map is the image's own colour channels; each class's logit is one channel's mean."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False))
        with torch.no_grad():
            self.backbone[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))

    def forward(self, x):
        return self.backbone(x).mean(dim=(2, 3)) * 10


def test_grad_cam_finds_the_class_where_it_is_in_the_picture(tmp_path):
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, :16, 0] = 255  # red on the left
    pixels[:, 16:, 2] = 255  # blue on the right
    Image.fromarray(pixels).save(tmp_path / "half.png")
    model = ColourNet().eval()
    preprocessing = {"kind": "image", "resize": 32, "image_size": 32, "mean": [0.0] * 3, "std": [1.0] * 3}
    predictor = Predictor(model, model, ["red", "green", "blue"], preprocessing, "flash")
    red, blue = explain.explain_images(predictor, [tmp_path / "half.png"] * 2, [0, 2], time.time() + 60)
    assert red.heat.shape == (32, 32) and red.target == 0
    assert red.heat[:, :16].mean() > 5 * red.heat[:, 16:].mean()  # red's evidence: the left half
    assert blue.heat[:, 16:].mean() > 5 * blue.heat[:, :16].mean()  # blue's: the right half
    late = explain.explain_images(predictor, [tmp_path / "half.png"], [None], time.time() - 1)
    assert late == [None]  # past its time box, it explains nothing more
    rows = explain.explained_rows(predictor, [tmp_path / "half.png"], [0], tmp_path / "out", time.time() + 60)
    assert rows[0]["explained"] == "red" and Image.open(rows[0]["file"]).size == (32, 32)


def test_token_scores_come_from_the_text_and_are_scaled(text_run):
    predictor = Predictor.load(text_run)
    (found,) = explain.explain_texts(predictor, ["the striker scored a goal for the team"], [None], time.time() + 60)
    words = "".join(token.strip("#") for token, _ in found.tokens)
    assert "goal" in words and "team" in words
    assert max(abs(score) for _, score in found.tokens) == 1.0


def test_a_run_explains_its_report_and_predict_explains_new_images(image_run, tmp_path):
    explained = json.loads((image_run / "explanations" / "explanations.json").read_text())
    rows = explained["rows"]
    assert rows and explained["explained"] == sum(1 for row in rows if "file" in row)
    assert {row["kind"] for row in rows} <= {"mistake", "right"} and all(row["true"] for row in rows)
    assert "Grad-CAM" in (image_run / "report.html").read_text()

    images = sorted({row["input"] for row in rows})[:2]
    folder = tmp_path / "why"
    data = tmp_path / "new"
    data.mkdir()
    for index, image in enumerate(images):
        Image.open(image).save(data / f"{index}.png")
    result = CliRunner().invoke(cli, ["predict", str(image_run), "--data", str(data), "--explain", str(folder)])
    assert result.exit_code == 0, result.output
    listed = json.loads((folder / "explanations.json").read_text())["rows"]
    assert len(listed) == len(images) and all(Image.open(row["file"]).size for row in listed)
