"""Test helpers shared by the test modules: tiny image folders and text tables, a tiny run's
configuration, processes that answer HTTP. Fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: dominant colour channel of each synthetic image class (names with spaces: labels keep their names)
COLOURS = {"red things": 0, "green things": 1, "blue things": 2}


TINY_IMAGE_BACKBONE = "test_resnet"


def write_colour_image(path: Path, channel: int, rng: random.Random, size: int = 32) -> None:
    pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    pixels[..., channel] = rng.randrange(170, 256)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_image_folder(root: Path, per_class: int = 20, classes: dict[str, int] = COLOURS, seed: int = 0) -> Path:
    """``root/<class>/<n>.png``: each class is a dominant colour, so a tiny net separates them."""
    rng = random.Random(seed)
    for name, channel in classes.items():
        for index in range(per_class):
            write_colour_image(root / name / f"{index:03d}.png", channel, rng)
    return root


def decompression_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG of a few hundred kB that decodes to ``width`` x ``height`` black pixels (900 MB in PIL's
    1-bit mode, 2.7 GB as RGB). Written row by row, so making it takes no memory."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + one bit a pixel
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


SPORTS = "match goal team coach striker league season win stadium referee".split()


FINANCE = "stock market bank shares profit investor bond dividend earnings inflation".split()


def make_texts(per_class: int = 40, seed: int = 0) -> list[tuple[str, str]]:
    """Sentences drawn from two disjoint vocabularies: separable by any model that reads words."""
    rng = random.Random(seed)
    rows = []
    for label, words in (("sport", SPORTS), ("finance", FINANCE)):
        for _ in range(per_class):
            rows.append((" ".join(rng.choices(words, k=rng.randint(4, 12))), label))
    rng.shuffle(rows)
    return rows


def fast_trainer_kwargs(**overrides) -> dict:
    settings = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "num_sanity_val_steps": 0}
    return {**settings, **overrides}


#: the options of an ``automl run`` (or ``AutoML``) that trains the tiny model on 32 px images in seconds
TINY_RUN_OPTIONS = dict(
    trials=3,
    backbone=TINY_IMAGE_BACKBONE,
    pretrained=False,
    epochs=2,
    batch_size=4,
    image_size=32,
    accelerator="cpu",
    pruner="none",
)


def tiny_run_config(images: Path, output: Path, **changes):
    """An ``automl run`` configuration that trains the tiny model on 32 px images in seconds."""
    from automl.config import RunConfig

    values = dict(
        task="image_classification", data=str(images), output=str(output), target="accuracy>=0.0", **TINY_RUN_OPTIONS
    )
    return RunConfig(**{**values, **changes})


# --------------------------------------------------------------------------- finished runs
#: the registered-model names of the shared finished runs below
IMAGE_MODEL, TEXT_MODEL = "tiny-images", "tiny-texts"


def logged_epochs(params: dict) -> int:
    """Validation points a trial logs to MLflow: one per epoch. ``freeze_unfreeze:K`` trains its K
    frozen epochs on cached features, unlogged, before the logged ones (Lightning-tier trials have no
    strategy)."""
    strategy, epochs = str(params.get("strategy", "")), int(params["epochs"])
    if strategy.startswith("freeze_unfreeze:"):
        return epochs - int(strategy.partition(":")[2])
    return epochs


# --------------------------------------------------------------------------- automl serve
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def answering(command: list[str], probe: str, seconds: float = 120, env: dict | None = None):
    """A server ``command`` started in its own process group, polled until ``probe`` (a URL) answers
    (a bounded wait, not a sleep); its process, then the whole group stopped at the end. A server
    that exits or stays silent fails the test with the end of its output."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + seconds
    try:
        while True:
            try:
                with urllib.request.urlopen(probe, timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    _stop_group(process, signal.SIGKILL)
                    pytest.fail(f"{command[0]} did not start: {process.stdout.read().decode()[-3000:]}")
                time.sleep(0.2)
        yield process
    finally:
        _stop_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _stop_group(process, signal.SIGKILL)
            process.wait(timeout=20)


def _stop_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


@contextlib.contextmanager
def serving(run_dir: Path, *options: str):
    """``automl serve`` in a subprocess on a loopback port: (its base URL, its process)."""
    port = free_port()
    command = [sys.executable, "-m", "automl", "serve", str(run_dir), "--port", str(port), *options]
    url = f"http://127.0.0.1:{port}"
    with answering(command, f"{url}/health") as process:
        yield url, process


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A one-file multipart/form-data body and its content type."""
    import urllib3

    return urllib3.encode_multipart_formdata({field: (filename, data, "application/octet-stream")})


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict | str]:
    """POST ``body``: (status, the answer as JSON, or as text when it is not JSON)."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            return error.code, json.loads(text)
        return error.code, text
