from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
from helpers import make_texts

from automl.data import TextClassificationData
from automl.errors import DataError


def test_from_csv_detects_columns_and_stratifies(text_csv, tiny_bert_dir):
    data = TextClassificationData.from_csv(text_csv, val_split=0.25, seed=0, backbone=str(tiny_bert_dir))
    assert data.labels == ["finance", "sport"]
    assert Counter(t for _, t in data.val_samples) == {0: 10, 1: 10}
    assert len(data.train_samples) == 60


def test_batches_are_padded_to_their_longest_text(tiny_bert_dir):
    samples = [("short", 0), ("a somewhat longer text than the first one", 1)]
    data = TextClassificationData(["a", "b"], train_samples=samples, backbone=str(tiny_bert_dir), batch_size=2)
    encoded, targets = next(iter(data.train_dataloader()))
    longest = len(data.tokenizer("a somewhat longer text than the first one")["input_ids"])
    assert encoded["input_ids"].shape == (2, longest)  # dynamic padding, not max_length
    assert encoded["attention_mask"].sum().item() == longest + len(data.tokenizer("short")["input_ids"])
    assert sorted(targets.tolist()) == [0, 1]


def test_max_length_truncates(tiny_bert_dir):
    samples = [("word " * 200, 0), ("word", 1)]
    data = TextClassificationData(["a", "b"], train_samples=samples, backbone=str(tiny_bert_dir), max_length=16)
    encoded, _ = next(iter(data.train_dataloader()))
    assert encoded["input_ids"].shape[1] == 16


def test_from_jsonl_with_given_fields(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join(json.dumps({"body": t, "stars": s}) for t, s in make_texts(per_class=5)) + "\n\n")
    data = TextClassificationData.from_jsonl(path, input_field="body", target_field="stars")
    assert data.labels == ["finance", "sport"]
    assert len(data.train_samples) + len(data.val_samples) == 10


def test_from_jsonl_names_a_broken_line(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        TextClassificationData.from_jsonl(path)


def test_from_folders_reads_txt_files_and_ignores_hidden_ones(tmp_path):
    for index, (text, label) in enumerate(make_texts(per_class=4)):
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / f"{index}.txt").write_text(text)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "x.txt").write_text("stale")
    (tmp_path / "sport" / ".hidden.txt").write_text("hidden")
    data = TextClassificationData.from_folders(tmp_path)
    assert data.labels == ["finance", "sport"]
    texts = [t for t, _ in data.train_samples + data.val_samples]
    assert len(texts) == 8 and "stale" not in texts and "hidden" not in texts


def test_csv_without_text_column_lists_its_columns(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"body": ["x", "y"], "label": ["a", "b"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"Cannot find the text column .* Its columns are: body, label"):
        TextClassificationData.from_csv(path)


def test_rows_with_an_empty_label_or_text_are_skipped_and_named(tmp_path, caplog):
    path = tmp_path / "gap.csv"
    pd.DataFrame({"text": ["x", "y", "z", "  ", "w"], "label": ["a", "", "b", "a", "b"]}).to_csv(path, index=False)
    data = TextClassificationData.from_csv(path)
    assert sorted(t for t, _ in data.train_samples + data.val_samples) == ["w", "x", "z"]
    assert [(f.where.split(", ")[-1], f.problem) for f in data.skipped] == [
        ("row 3", "the label in column 'label' is empty"),
        ("row 5", "the text in column 'text' is empty"),
    ]
    assert "row 3: the label in column 'label' is empty" in caplog.text


def test_a_headerless_csv_takes_columns_by_position(tmp_path):
    path = tmp_path / "news.csv"
    rows = [(label, f"title {i}", text) for i, (text, label) in enumerate(make_texts(per_class=5))]
    pd.DataFrame(rows).to_csv(path, index=False, header=False)
    with pytest.raises(DataError, match=r"Cannot find the text column .*--no-header"):
        TextClassificationData.from_csv(path)
    data = TextClassificationData.from_csv(path, input_field=2, target_field="0", header=False)
    assert data.labels == ["finance", "sport"]
    texts = {t for t, _ in data.train_samples + data.val_samples}
    assert texts == {text for text, _ in make_texts(per_class=5)}
