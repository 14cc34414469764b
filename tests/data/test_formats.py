"""The formats people bring besides CSV: Parquet tables and folders saved by the Hugging Face
`datasets` library, for training, the data doctor and `automl predict` (issue 14)."""

from __future__ import annotations

import sys
from collections import Counter

import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import COLOURS, make_image_folder, make_texts

from automl.cli import cli
from automl.data import ImageClassificationData, TextClassificationData
from automl.data.inspect import inspect_images, inspect_texts
from automl.errors import DataError
from automl.predict import read_inputs


def texts_frame(per_class: int = 10) -> pd.DataFrame:
    return pd.DataFrame(make_texts(per_class=per_class), columns=["review", "label"])


def test_texts_from_parquet_match_the_same_rows_from_csv(tmp_path):
    frame = texts_frame()
    frame.to_parquet(tmp_path / "texts.parquet")
    frame.to_csv(tmp_path / "texts.csv", index=False)
    parquet = TextClassificationData.from_path(tmp_path / "texts.parquet", val_split=0.2, seed=3)
    csv = TextClassificationData.from_path(tmp_path / "texts.csv", val_split=0.2, seed=3)
    assert parquet.labels == csv.labels == ["finance", "sport"]
    assert parquet.train_samples == csv.train_samples and parquet.val_samples == csv.val_samples


def test_a_parquet_label_column_of_integers_becomes_label_names(tmp_path):
    frame = texts_frame()
    frame["label"] = [1 if label == "sport" else 5 for label in frame["label"]]
    frame.to_parquet(tmp_path / "texts.parquet")
    data = TextClassificationData.from_parquet(tmp_path / "texts.parquet")
    assert data.labels == ["1", "5"] and len(data.train_samples) + len(data.val_samples) == 20


def test_a_parquet_file_without_a_text_column_is_named_with_its_columns(tmp_path):
    pd.DataFrame({"body": ["a", "b"], "label": ["x", "y"]}).to_parquet(tmp_path / "odd.parquet")
    with pytest.raises(DataError, match=r"the Parquet file '.*odd.parquet'.*Its columns are: body, label"):
        TextClassificationData.from_path(tmp_path / "odd.parquet")


def test_an_empty_text_in_parquet_is_skipped_and_its_row_named(tmp_path):
    frame = texts_frame()
    frame.loc[3, "review"] = "  "
    frame.to_parquet(tmp_path / "texts.parquet")
    data = TextClassificationData.from_path(tmp_path / "texts.parquet")
    assert [f.where for f in data.skipped] == [f"the Parquet file '{tmp_path / 'texts.parquet'}', row 4"]


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError, match=r"Cannot read the Parquet file '.*broken.parquet'"):
        TextClassificationData.from_path(tmp_path / "broken.parquet")


def test_texts_from_a_saved_datasets_folder_with_class_label_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = make_texts(per_class=10)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["finance", "sport"])}
    )
    saved = datasets.Dataset.from_dict(
        {"text": [t for t, _ in rows], "label": [0 if label == "finance" else 1 for _, label in rows]},
        features=features,
    )
    saved.save_to_disk(str(tmp_path / "ds"))
    data = TextClassificationData.from_path(tmp_path / "ds", val_split=0.5, seed=0)
    assert data.labels == ["finance", "sport"]  # names, not the codes 0 and 1
    assert Counter(t for _, t in data.val_samples) == {0: 5, 1: 5}
    text, target = data.train_samples[0]
    assert (text, data.labels[target]) in rows


def test_the_train_split_of_a_saved_dataset_dict_is_read(tmp_path):
    datasets = pytest.importorskip("datasets")
    frame = texts_frame()
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_pandas(frame), "test": datasets.Dataset.from_pandas(frame.head(4))}
    )
    splits.save_to_disk(str(tmp_path / "dsd"))
    data = TextClassificationData.from_path(tmp_path / "dsd")
    assert len(data.train_samples) + len(data.val_samples) == 20

    only_test = datasets.DatasetDict({"test": datasets.Dataset.from_pandas(frame)})
    only_test.save_to_disk(str(tmp_path / "no-train"))
    with pytest.raises(DataError, match=r"'.*no-train' has the splits test but no 'train' split"):
        TextClassificationData.from_path(tmp_path / "no-train")


def test_a_datasets_folder_without_the_library_names_the_extra_to_install(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_pandas(texts_frame()).save_to_disk(str(tmp_path / "ds"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(DataError, match=r"saved by the Hugging Face datasets library.*pip install 'automl\[hf\]'"):
        TextClassificationData.from_path(tmp_path / "ds")


def image_table(tmp_path, per_class: int = 4) -> pd.DataFrame:
    root = make_image_folder(tmp_path / "imgs", per_class=per_class)
    return pd.DataFrame(
        [(str(p.relative_to(tmp_path)), p.parent.name) for p in sorted(root.rglob("*.png"))], columns=["path", "label"]
    )


def test_images_from_a_parquet_table_of_paths_relative_to_it(tmp_path):
    image_table(tmp_path).to_parquet(tmp_path / "labels.parquet")
    data = ImageClassificationData.from_path(tmp_path / "labels.parquet")
    assert data.labels == sorted(COLOURS)
    samples = data.train_samples + data.val_samples
    assert len(samples) == 12 and all(path.is_file() for path, _ in samples)
    assert all(data.labels[target] == path.parent.name for path, target in samples)


def test_a_missing_image_in_parquet_names_the_file_row_and_column(tmp_path):
    frame = image_table(tmp_path)
    frame.loc[5, "path"] = "imgs/nowhere.png"
    frame.to_parquet(tmp_path / "labels.parquet")
    with pytest.raises(
        DataError, match=r"the Parquet file '.*labels.parquet', row 6: .*nowhere.png' does not exist.*'path'"
    ):
        ImageClassificationData.from_path(tmp_path / "labels.parquet")


def test_the_data_doctor_reads_parquet_texts_and_images(tmp_path):
    frame = texts_frame()
    frame = pd.concat([frame, frame.head(1)], ignore_index=True)  # one duplicate text
    frame.to_parquet(tmp_path / "texts.parquet")
    texts = inspect_texts(tmp_path / "texts.parquet")
    assert texts.duplicates and texts.train_size + texts.val_size == 21

    table = image_table(tmp_path)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not a png")
    table.loc[len(table)] = ["imgs/bad.png", "red things"]
    table.to_parquet(tmp_path / "labels.parquet")
    images = inspect_images(tmp_path / "labels.parquet")
    assert any("bad.png" in finding.where for finding in images.skipped + images.converted)

    result = CliRunner().invoke(
        cli, ["inspect", "--task", "text_classification", "--data", str(tmp_path / "texts.parquet"), "--json"]
    )
    assert result.exit_code == 0, result.output


def test_predict_reads_parquet_texts_and_a_csv_of_image_paths(tmp_path, image_run, text_run):
    from automl.predict import Predictor

    texts = texts_frame(per_class=2)
    texts.to_parquet(tmp_path / "new.parquet")
    inputs, ids = read_inputs(Predictor.load(text_run), tmp_path / "new.parquet", "review")
    assert inputs == list(texts["review"]) and ids == [f"row {n}" for n in range(1, 5)]

    table = image_table(tmp_path, per_class=1)
    table.to_csv(tmp_path / "new.csv", index=False)
    inputs, ids = read_inputs(Predictor.load(image_run), tmp_path / "new.csv")
    assert inputs == [tmp_path / p for p in table["path"]] and ids == [str(tmp_path / p) for p in table["path"]]
