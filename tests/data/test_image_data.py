from __future__ import annotations

import random
from collections import Counter

import pandas as pd
import pytest
import torch
from helpers import COLOURS, make_image_folder, write_colour_image

from automl.data import ImageClassificationData
from automl.errors import DataError


def test_from_folders_splits_each_class_and_keeps_label_names(image_folder):
    data = ImageClassificationData.from_folders(image_folder, val_split=0.25, seed=3)
    assert data.labels == sorted(COLOURS)  # original names, hidden folders ignored
    assert len(data.train_samples) + len(data.val_samples) == 60  # .DS_Store / checkpoints skipped
    assert Counter(t for _, t in data.val_samples) == {0: 5, 1: 5, 2: 5}  # stratified
    assert not {p for p, _ in data.train_samples} & {p for p, _ in data.val_samples}
    again = ImageClassificationData.from_folders(image_folder, val_split=0.25, seed=3)
    other = ImageClassificationData.from_folders(image_folder, val_split=0.25, seed=4)
    assert again.val_samples == data.val_samples  # seeded
    assert other.val_samples != data.val_samples


def test_split_folders_inside_are_detected(tmp_path):
    make_image_folder(tmp_path / "train", per_class=4)
    make_image_folder(tmp_path / "val", per_class=2, seed=1)
    make_image_folder(tmp_path / "test", per_class=3, seed=2)
    data = ImageClassificationData.from_folders(tmp_path)
    assert data.labels == sorted(COLOURS)
    assert (len(data.train_samples), len(data.val_samples), len(data.test_samples)) == (12, 6, 9)
    assert all("val" in p.parts for p, _ in data.val_samples)


def test_loaders_give_normalised_batches_of_the_configured_size(image_folder):
    data = ImageClassificationData.from_folders(
        image_folder, image_size=24, batch_size=5, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    images, targets = next(iter(data.train_dataloader()))
    assert images.shape == (5, 3, 24, 24) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.min() < -0.5  # (x - 0.5) / 0.5
    val_images, _ = next(iter(data.val_dataloader()))
    assert val_images.shape == (5, 3, 24, 24)
    assert targets.dtype == torch.long


def test_normalisation_follows_the_backbone():
    data = ImageClassificationData(["a", "b"], backbone="tf_efficientnet_lite0")  # TensorFlow weights: [-1, 1]
    assert data.mean == (0.5, 0.5, 0.5) and data.std == (0.5, 0.5, 0.5)
    assert data.preprocessing()["mean"] == [0.5, 0.5, 0.5]
    timm_lite0 = ImageClassificationData(["a", "b"], backbone="efficientnet_lite0")  # timm's weights: ImageNet's
    assert timm_lite0.mean == (0.485, 0.456, 0.406) and timm_lite0.std == (0.229, 0.224, 0.225)


def test_from_csv_reads_paths_relative_to_the_csv(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=5)
    rows = [(str(p.relative_to(tmp_path)), p.parent.name) for p in sorted(root.rglob("*.png"))]
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["filename", "class"]).to_csv(csv, index=False)
    data = ImageClassificationData.from_csv(csv)
    assert data.labels == sorted(COLOURS)
    assert len(data.train_samples) + len(data.val_samples) == 15


def test_from_csv_without_known_columns_lists_the_columns(tmp_path):
    csv = tmp_path / "odd.csv"
    pd.DataFrame({"picture": ["a.png"], "kind": ["x"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"Its columns are: picture, kind"):
        ImageClassificationData.from_csv(csv)


def test_from_csv_names_the_row_of_a_missing_image(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=2)
    rows = [(str(p.relative_to(tmp_path)), p.parent.name) for p in sorted(root.rglob("*.png"))]
    rows.insert(2, ("imgs/nowhere.png", "red things"))
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["image", "label"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"row 4: the image .*nowhere.png' does not exist"):
        ImageClassificationData.from_csv(csv)


def test_missing_path_is_named(tmp_path):
    with pytest.raises(DataError, match=r"'.*no-such-folder' does not exist"):
        ImageClassificationData.from_folders(tmp_path / "no-such-folder")


def test_one_class_is_an_error(tmp_path):
    make_image_folder(tmp_path, per_class=3, classes={"only": 0})
    with pytest.raises(DataError, match=r"only one class \('only'\) in the folder"):
        ImageClassificationData.from_folders(tmp_path)


def test_class_folder_without_readable_image_is_named(tmp_path):
    make_image_folder(tmp_path, per_class=3, classes={"good": 0, "other": 1})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "not-really.png").write_bytes(b"this is text, not a PNG")
    (broken / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"class folder '.*broken' holds no readable image"):
        ImageClassificationData.from_folders(tmp_path)


def test_unreadable_files_are_skipped_with_a_warning(tmp_path, caplog):
    make_image_folder(tmp_path, per_class=3, classes={"a": 0, "b": 1})
    (tmp_path / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    data = ImageClassificationData.from_folders(tmp_path)
    assert len(data.train_samples) + len(data.val_samples) == 6
    assert "corrupt.jpg" in caplog.text


def test_from_files_predicts_a_folder(tmp_path):
    for index in range(3):
        write_colour_image(tmp_path / f"{index}.png", 0, random.Random(index))
    data = ImageClassificationData.from_files(tmp_path, labels=["a", "b"], image_size=16)
    images, targets = next(iter(data.predict_dataloader()))
    assert images.shape == (3, 3, 16, 16)
    assert targets.tolist() == [-1, -1, -1]
