"""Shared test doubles: tiny image folders, tiny text tables, tiny models. Never the network."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import contextlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

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


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = make_image_folder(tmp_path / "images")
    # junk a user's folder really holds: none of it is data
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "red things" / ".DS_Store").write_bytes(b"\x00\x01")
    checkpoints = root / ".ipynb_checkpoints"
    checkpoints.mkdir()
    write_colour_image(checkpoints / "stale.png", 0, random.Random(1))
    return root


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


@pytest.fixture
def text_csv(tmp_path: Path) -> Path:
    import pandas as pd

    path = tmp_path / "texts.csv"
    pd.DataFrame(make_texts(), columns=["review", "category"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT (random weights) with the packaged MiniLM tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from automl.backbones import DEFAULT_TEXT_BACKBONE, resolve_text_weights

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_weights(DEFAULT_TEXT_BACKBONE).location)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fast_trainer_kwargs(**overrides) -> dict:
    settings = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "num_sanity_val_steps": 0}
    return {**settings, **overrides}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow store per test module: creating its tables takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A tiny three-class image folder shared by a module's runs."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "imgs", per_class=8)


def tiny_run_config(images: Path, output: Path, **changes):
    """An ``automl run`` configuration that trains the tiny model on 32 px images in seconds."""
    from automl.config import RunConfig

    values = dict(
        task="image_classification",
        data=str(images),
        output=str(output),
        target="accuracy>=0.0",
        trials=3,
        backbone=TINY_IMAGE_BACKBONE,
        pretrained=False,
        epochs=2,
        batch_size=4,
        image_size=32,
        accelerator="cpu",
        pruner="none",
    )
    return RunConfig(**{**values, **changes})


# --------------------------------------------------------------------------- finished runs
#: the registered-model names of the shared finished runs below
IMAGE_MODEL, TEXT_MODEL = "tiny-images", "tiny-texts"


@pytest.fixture(scope="session")
def image_run(tmp_path_factory) -> Path:
    """A finished `automl run` on tiny images, its model registered as ``IMAGE_MODEL``; shared by
    the tests of what a run gives a person (report, predict, export, serve, the MLflow model)."""
    from automl import pipeline

    images = make_image_folder(tmp_path_factory.mktemp("data") / "imgs", per_class=8)
    output = tmp_path_factory.mktemp("image-run") / "runs"
    config = tiny_run_config(images, output, trials=5, epochs=1, register=IMAGE_MODEL)
    return pipeline.run(config, progress=False).run_dir


@pytest.fixture(scope="session")
def text_run(tmp_path_factory, tiny_bert_dir) -> Path:
    """A finished `automl run` on tiny texts with a tiny BERT, its model registered as ``TEXT_MODEL``."""
    import pandas as pd

    from automl import pipeline
    from automl.config import RunConfig

    root = tmp_path_factory.mktemp("text-run")
    csv = root / "texts.csv"
    pd.DataFrame(make_texts(per_class=10), columns=["text", "label"]).to_csv(csv, index=False)
    config = RunConfig(
        task="text_classification",
        data=str(csv),
        output=str(root / "runs"),
        target="accuracy>=0",
        trials=1,
        backbone=str(tiny_bert_dir),
        epochs=1,
        batch_size=8,
        max_length=16,
        accelerator="cpu",
        pruner="none",
        strategy="no_freeze",
        register=TEXT_MODEL,
    )
    return pipeline.run(config, progress=False).run_dir


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
