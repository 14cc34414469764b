"""What someone else hands a finished run: a run folder they made, and uploads meant to hurt.

Nothing in a run folder runs as code unless its user says they trust it (``--trust-checkpoint``),
and an image that claims more pixels than the cap is refused from its header, before decoding.
"""

from __future__ import annotations

import builtins
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import (
    TINY_IMAGE_BACKBONE,
    decompression_bomb,
    free_port,
    make_image_folder,
    multipart,
    post,
    serving,
    tiny_run_config,
)
from PIL import Image

from automl import pipeline
from automl.cli import cli

UNREACHABLE = "val_loss<=0.0"  # a loss is never exactly 0: the run escalates


@pytest.fixture(scope="module")
def flash_run(tmp_path_factory, images, tracking_uri) -> Path:
    """A Flash-tier run; with a time budget its model is a head trained on cached features."""
    output = tmp_path_factory.mktemp("flash-run")
    config = tiny_run_config(images, output, trials=1, time_budget="10m", escalate=False, tracking_uri=tracking_uri)
    return pipeline.run(config, progress=False).run_dir


@pytest.fixture(scope="module")
def escalated_run(tmp_path_factory, images, tracking_uri) -> Path:
    """A run that fine-tunes (Lightning's own checkpoints) and escalates to the Lightning tier."""
    output = tmp_path_factory.mktemp("escalated-run")
    config = tiny_run_config(
        images, output, target=UNREACHABLE, trials=1, escalation_trials=1, epochs=1, tracking_uri=tracking_uri
    )
    return pipeline.run(config, progress=False).run_dir


def lightning_best(run_dir: Path, folder: Path) -> Path:
    """``folder/best/`` as `automl run` writes it when the Lightning tier wins, from ``run_dir``'s
    Lightning-tier trial (which tier a tiny run keeps is up to its scores)."""
    from escalation.train import preprocessing, template_config

    trial = json.loads((run_dir / "journal.json").read_text())["stages"]["escalate"]["result"]["tier"]
    run = yaml.safe_load((run_dir / "config.yaml").read_text())
    config = template_config(run, trial["params"], run_dir / "escalation", "val_loss")
    best = folder / "best"
    best.mkdir(parents=True)
    shutil.copy2(trial["checkpoint"], best / "model.ckpt")
    shutil.copy2(run_dir / "best" / "labels.json", best / "labels.json")
    (best / "preprocessing.json").write_text(json.dumps(preprocessing(config)))
    (best / "template_config.yaml").write_text(yaml.safe_dump(config))
    (best / "tier.json").write_text(json.dumps({"tier": "lightning", "template": None}))
    return folder


class RunsCode:
    """Pickled as a call to ``exec`` that writes ``marker``: what full pickle loading would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.fixture(params=["flash", "lightning"])
def foreign(request, tmp_path, flash_run, escalated_run) -> tuple[Path, Path]:
    """(a run folder whose checkpoint carries code, the file that code writes when it runs)."""
    folder, marker = tmp_path / "foreign", tmp_path / "marker"
    if request.param == "flash":
        shutil.copytree(flash_run / "best", folder / "best")
    else:
        lightning_best(escalated_run, folder)
    checkpoint = torch.load(folder / "best" / "model.ckpt", map_location="cpu", weights_only=True)
    checkpoint["note"] = RunsCode(marker)
    torch.save(checkpoint, folder / "best" / "model.ckpt")
    return folder, marker


def is_plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(map(is_plain, value))
    return value is None or type(value) in (str, int, float, bool)


# --------------------------------------------------------------------------- what automl writes
def test_every_checkpoint_a_run_writes_loads_with_weights_only(flash_run, escalated_run, tmp_path):
    lightning = lightning_best(escalated_run, tmp_path / "lightning")
    files = {
        p: root
        for root in (flash_run, escalated_run, lightning)
        for p in root.rglob("*")
        if p.suffix in (".ckpt", ".pt")
    }
    # heads on cached features and the features, Lightning's fine-tuning and template checkpoints, the
    # refit on train+val, best/
    parts = {p.relative_to(root).parts[0] for p, root in files.items()}
    assert parts == {"best", "features", "trials", "escalation", "refit"}
    for path in files:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # PyTorch's rules, nothing allowed on top
        assert is_plain(saved.get("hyper_parameters", {})), path


def test_hyper_parameters_from_numpy_or_paths_are_stored_as_plain_values(tmp_path):
    from automl.flash.fit import save_checkpoint
    from automl.flash.tasks import ImageClassifier

    # what pandas or a caller's code hands over: NumPy numbers, a tuple
    model = ImageClassifier(
        ("cat", "dog"), TINY_IMAGE_BACKBONE, pretrained=False, learning_rate=np.float64(0.01), dropout=np.float32(0.25)
    )
    save_checkpoint(model, tmp_path / "head.ckpt", epoch=0)  # a head trained on cached features
    by_trainer = {"hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(by_trainer)  # what a Trainer does to its checkpoint
    torch.save(by_trainer, tmp_path / "trainer.ckpt")
    for path in (tmp_path / "head.ckpt", tmp_path / "trainer.ckpt"):
        hparams = torch.load(path, weights_only=True)["hyper_parameters"]
        assert hparams["learning_rate"] == 0.01 and hparams["dropout"] == 0.25 and hparams["labels"] == ["cat", "dog"]
        assert is_plain(hparams)


def test_plain_values_are_what_weights_only_loads_and_anything_else_is_named_when_saving():
    from automl.checkpoints import plain

    assert plain({"weights": Path("/w"), "sizes": (1, np.int64(2))}) == {"weights": "/w", "sizes": [1, 2]}
    with pytest.raises(TypeError, match=r"hyper_parameters\.extra is a object; .* weights_only=True"):
        plain({"extra": object()})


# --------------------------------------------------------------------------- a foreign run folder
def test_a_checkpoint_that_carries_code_is_refused_and_the_code_never_runs(foreign, images):
    folder, marker = foreign
    image = str(next(images.rglob("*.png")))
    for command in (["predict", str(folder), "--data", image], ["export", str(folder), "--format", "torchscript"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert f"'{folder / 'best' / 'model.ckpt'}' is not a plain checkpoint" in result.output
        assert "GLOBAL exec" in result.output and "--trust-checkpoint" in result.output
        assert not marker.exists()
    # trusted: full pickle loading, as before, which runs what the file carries
    trusted = CliRunner().invoke(cli, ["predict", str(folder), "--data", image, "--trust-checkpoint"])
    assert trusted.exit_code == 0, trusted.output
    assert marker.exists()


@pytest.mark.slow
def test_the_service_does_not_start_on_a_checkpoint_that_carries_code(foreign):
    folder, marker = foreign
    process = subprocess.Popen(
        [sys.executable, "-m", "automl", "serve", str(folder), "--port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # a bounded wait for it to refuse (or, wrongly, to load and serve)
    if process.poll() is None:
        process.kill()
    output = process.communicate()[0]
    assert process.returncode == 2, output[-3000:]
    assert "is not a plain checkpoint" in output and "--trust-checkpoint" in output
    assert not marker.exists()


def test_a_run_folder_that_names_its_own_template_is_refused_and_it_never_runs(escalated_run, tmp_path, images):
    marker, template = tmp_path / "marker", tmp_path / "their-template"
    template.mkdir()
    (template / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")  # a template package
    folder = lightning_best(escalated_run, tmp_path / "foreign")
    (folder / "best" / "tier.json").write_text(json.dumps({"tier": "lightning", "template": str(template)}))
    predict = ["predict", str(folder), "--data", str(next(images.rglob("*.png")))]
    result = CliRunner().invoke(cli, predict)
    assert result.exit_code == 2, result.output
    assert f"names the template '{template}'" in result.output and "--trust-checkpoint" in result.output
    assert not marker.exists()
    CliRunner().invoke(cli, [*predict, "--trust-checkpoint"])  # trusted: their template is imported, as before
    assert marker.exists()


# --------------------------------------------------------------------------- hostile images
def test_predict_names_an_image_over_the_pixel_cap_and_goes_on(flash_run, tmp_path, monkeypatch):
    # `automl predict` turns PIL's own limit off for its process; this one gets it back afterwards
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    folder = make_image_folder(tmp_path / "new", per_class=1, seed=3)
    (folder / "bomb.png").write_bytes(decompression_bomb())
    Image.new("RGB", (200, 100)).save(folder / "wide.png")
    out = tmp_path / "predictions.csv"
    predict = ["predict", str(flash_run), "--data", str(folder), "--output", str(out)]

    result = CliRunner().invoke(cli, predict)
    assert result.exit_code == 0, result.output
    assert "(1 inputs could not be read)" in result.output
    errors = pd.read_csv(out, keep_default_na=False).set_index("id")["error"]
    assert errors[str(folder / "bomb.png")] == (
        "the image is 30000x30000 pixels (900 megapixels), over the limit of 40 megapixels (--max-megapixels); "
        "it was not decoded"
    )
    assert (errors == "").sum() == 4  # the other images are predicted

    result = CliRunner().invoke(cli, [*predict, "--max-megapixels", "0.01"])  # 10,000 pixels
    assert result.exit_code == 0, result.output
    errors = pd.read_csv(out, keep_default_na=False).set_index("id")["error"]
    assert errors[str(folder / "wide.png")].startswith("the image is 200x100 pixels (0.02 megapixels), over the limit")
    assert (errors == "").sum() == 3  # the 32x32 images are under it


@pytest.mark.slow
def test_the_service_answers_a_decompression_bomb_with_413_at_once_and_without_memory(flash_run, images):
    good = next(images.rglob("*.png")).read_bytes()
    with serving(flash_run, "--max-body-mb", "1") as (url, process):
        predict = f"{url}/predict"
        assert post(predict, *multipart("file", "good.png", good))[0] == 200  # the first pays for lazy imports
        before = peak_rss_mb(process.pid)
        started = time.monotonic()
        status, answer = post(predict, *multipart("file", "bomb.png", decompression_bomb()))
        seconds = time.monotonic() - started
        assert status == 413, answer
        assert answer["detail"] == (
            "bomb.png: the image is 30000x30000 pixels (900 megapixels), over the limit of 40 megapixels "
            "(--max-megapixels); it was not decoded"
        )
        # decoding it would take 900 MB (2.7 GB as RGB) and seconds; its header takes neither
        assert peak_rss_mb(process.pid) - before < 100 and seconds < 10
        assert post(predict, *multipart("file", "good.png", good))[0] == 200


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")
