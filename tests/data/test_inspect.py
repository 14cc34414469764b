"""The data doctor on a messy folder and a messy CSV: every problem named, nothing modified, and
training works on what is usable."""

from __future__ import annotations

import io
import json
import random
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import TINY_IMAGE_BACKBONE, fast_trainer_kwargs, make_image_folder, write_colour_image
from PIL import Image

from automl.cli import cli
from automl.data import ImageClassificationData, TextClassificationData
from automl.data.image import load_rgb
from automl.data.inspect import inspect_images, inspect_texts
from automl.errors import DataError
from automl.flash import ImageClassifier, finetune


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def messy(tmp_path):
    """train/ and val/ folders of three colour classes, with one of each kind of trouble in train/."""
    root = tmp_path / "messy"
    make_image_folder(root / "train", per_class=8)
    make_image_folder(root / "val", per_class=3, seed=5)
    red = root / "train" / "red things"
    (red / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 10)
    whole = png_bytes(Image.new("RGB", (64, 64), (200, 10, 10)))
    (red / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (red / "notes.txt").write_text("these are my notes")
    (red / "empty.png").write_bytes(b"")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(red / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 48 wide, shown 48 tall
    Image.new("RGB", (48, 24), (220, 20, 20)).save(red / "rotated.jpg", exif=exif)
    Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)).save(red / "sixteen.png")
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(red / "transparent.png")
    hidden = root / "train" / ".ipynb_checkpoints"
    hidden.mkdir()
    write_colour_image(hidden / "stale.png", 0, random.Random(0))
    shutil.copy(red / "000.png", root / "val" / "red things" / "copy-of-000.png")  # leaks into validation
    return root


def test_every_problem_of_a_messy_folder_is_reported(messy):
    before = sorted((p, p.stat().st_size) for p in messy.rglob("*"))
    found = inspect_images(messy)
    skipped = {f.where.split("/")[-1]: f.problem for f in found.skipped}
    assert skipped["corrupt.jpg"].startswith(("not a readable image", "corrupt"))
    assert skipped["truncated.png"].startswith("corrupt or truncated image")
    assert skipped["notes.txt"] == "not an image file"
    assert skipped["empty.png"] == "zero-byte file"
    converted = {f.where.split("/")[-1]: f.problem for f in found.converted}
    assert converted["cmyk.jpg"] == "CMYK, converted to RGB"
    assert converted["rotated.jpg"] == "EXIF orientation 6, rotated upright"
    assert converted["sixteen.png"] == "16-bit, scaled to 8 bits"
    assert converted["transparent.png"] == "RGBA, alpha composited on white"
    assert not any("ipynb_checkpoints" in f.where for f in found.skipped + found.converted)
    assert [sorted(p.split("/")[-2:] for p in group) for group in found.leaks] == [
        [["red things", "000.png"], ["red things", "copy-of-000.png"]]
    ]
    assert found.class_counts == {"blue things": 11, "green things": 11, "red things": 16}
    assert sorted((p, p.stat().st_size) for p in messy.rglob("*")) == before  # nothing modified


def test_awkward_images_are_converted_the_way_a_person_sees_them(messy):
    red = messy / "train" / "red things"
    assert load_rgb(red / "rotated.jpg").size == (24, 48)  # upright
    assert load_rgb(red / "transparent.png").getpixel((0, 0)) == (255, 255, 255)  # transparent is white
    grey = load_rgb(red / "sixteen.png").getpixel((0, 0))
    assert grey[0] == grey[1] == grey[2] and 150 <= grey[0] <= 160  # 40000 / 65535 of full scale
    assert load_rgb(red / "cmyk.jpg").mode == "RGB"


def test_training_on_a_messy_folder_uses_the_good_files(messy):
    data = ImageClassificationData.from_folders(messy, image_size=32, batch_size=8)
    files = {p.name for p, _ in data.train_samples}
    assert {"cmyk.jpg", "rotated.jpg", "sixteen.png", "transparent.png"} <= files
    assert not {"corrupt.jpg", "truncated.png", "notes.txt", "empty.png"} & files
    model = ImageClassifier(labels=data.labels, backbone=TINY_IMAGE_BACKBONE, pretrained=False)
    trainer = finetune(model, data, strategy="no_freeze", **fast_trainer_kwargs(max_epochs=1))
    assert trainer.current_epoch == 1  # a whole epoch over every usable file


def test_too_many_bad_files_stop_the_run_with_examples(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=3, classes={"a": 0, "b": 1})
    for index in range(4):
        (root / "a" / f"broken{index}.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"4 of 10 examples .* are unusable \(more than 20%\), e\.g\. .*broken0"):
        inspect_images(root)


def test_the_share_of_bad_files_that_stops_a_run_is_an_option(tmp_path):
    from automl.cli import cli

    root = make_image_folder(tmp_path / "imgs", per_class=3, classes={"a": 0, "b": 1})
    for index in range(4):
        (root / "a" / f"broken{index}.png").write_bytes(b"")
    command = ["inspect", "--task", "image_classification", "--data", str(root)]
    stopped = CliRunner().invoke(cli, command)
    assert stopped.exit_code == 2 and "allow more with --max-bad-share" in stopped.output
    allowed = CliRunner().invoke(cli, [*command, "--max-bad-share", "0.5"])
    assert allowed.exit_code == 0, allowed.output
    assert allowed.output.count("skipped: ") == 4 and "broken3.png: zero-byte file" in allowed.output


def test_a_messy_latin1_csv(tmp_path):
    rows = (
        [
            ("Très bon match, quel but", "sport"),
            ("La bourse a chuté", "finance"),
            ("", "sport"),
            ("   ", "finance"),
            ("Un texte sans étiquette", ""),
            ("Le même texte", "sport"),
            ("Le même texte", "finance"),
        ]
        + [(f"match numéro {i}", "sport") for i in range(6)]
        + [(f"action numéro {i}", "finance") for i in range(6)]
    )
    path = tmp_path / "latin1.csv"
    path.write_bytes(pd.DataFrame(rows, columns=["text", "label"]).to_csv(index=False).encode("latin-1"))
    data = TextClassificationData.from_csv(path)
    texts = {t for t, _ in data.train_samples + data.val_samples}
    assert "Très bon match, quel but" in texts and data.encoding == "latin-1"  # decoded right
    found = inspect_texts(path, max_length=3, datamodule=data)
    assert [f.where.split(", ")[-1] for f in found.skipped] == ["row 4", "row 5", "row 6"]
    flagged = " | ".join(f"{f.where}: {f.problem}" for f in found.flagged)
    assert "read as latin-1" in flagged
    assert "'Le même texte': the same text has conflicting labels: ['finance', 'sport']" in flagged
    assert "longer than max_length=3 tokens: truncated" in flagged


def test_automl_inspect_prints_and_writes_json(messy):
    result = CliRunner().invoke(cli, ["inspect", "--task", "image_classification", "--data", str(messy)])
    assert result.exit_code == 0, result.output
    assert "skipped:" in result.output and "notes.txt: not an image file" in result.output
    assert "leak (copies in train and validation)" in result.output
    as_json = CliRunner().invoke(cli, ["inspect", "--task", "image_classification", "--data", str(messy), "--json"])
    assert json.loads(as_json.output)["class_counts"]["red things"] == 16
