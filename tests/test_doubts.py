"""Label doubts: examples whose given label looks wrong to out-of-fold probabilities."""

from __future__ import annotations

import json

import numpy as np
import torch

from automl.flash.doubts import label_doubts


def test_most_flipped_labels_are_among_the_doubts_and_few_others_are():
    rng = np.random.default_rng(0)
    classes, per_class = 3, 100
    centres = rng.normal(0.0, 4.0, size=(classes, 16))
    y = np.repeat(np.arange(classes), per_class)
    x = centres[y] + rng.normal(0.0, 1.0, size=(len(y), 16))
    flipped = rng.choice(len(y), size=len(y) // 10, replace=False)  # a known tenth of the labels are wrong
    given = y.copy()
    given[flipped] = (y[flipped] + rng.integers(1, classes, size=len(flipped))) % classes
    found = label_doubts(torch.tensor(x, dtype=torch.float32), torch.tensor(given), classes, 1e-3, limit=len(y))
    doubted = {doubt.index for doubt in found}
    assert len(doubted & set(flipped)) >= 0.8 * len(flipped)  # most flipped ones are found
    assert len(doubted - set(flipped)) <= 0.05 * len(y)  # and few right ones are doubted
    for doubt in found:
        if doubt.index in set(flipped):
            assert doubt.suggested == y[doubt.index] and doubt.p_suggested > doubt.p_given


def test_too_few_examples_of_a_class_give_no_doubts():
    x, y = torch.randn(12, 4), torch.tensor([0] * 11 + [1])
    assert label_doubts(x, y, 2, 1e-3) == []


def test_a_run_lists_its_label_doubts_in_inspection_json_and_the_report(image_run):
    doubts = json.loads((image_run / "inspection.json").read_text())["label_doubts"]
    assert "found" in doubts
    if doubts.get("skipped") is None:
        assert doubts["examples"] > 0 and doubts["backbone"]
        for doubt in doubts["found"]:
            assert doubt["given"] != doubt["suggested"] and doubt["split"] in ("train", "val")
    report = (image_run / "report.html").read_text()
    assert "Label doubts" in report
    inspection = json.loads((image_run / "inspection.json").read_text())
    assert inspection["val_source"].startswith("a seeded (42), stratified 20% of the data")
    assert "The validation split is a seeded (42), stratified 20% of the data" in report
