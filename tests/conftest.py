"""Fixtures: tiny image folders, tiny text tables, a tiny BERT, finished tiny runs. Never the network.
The helpers they use, and the tests import, are in helpers.py."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from helpers import IMAGE_MODEL, TEXT_MODEL, make_image_folder, make_texts, tiny_run_config, write_colour_image  # noqa: E402


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


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow store per test module: creating its tables takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A tiny three-class image folder shared by a module's runs."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "imgs", per_class=8)


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
