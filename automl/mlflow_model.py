"""The final model as an MLflow ``python_function`` model, and its place in the Model Registry.

At the end of ``automl run`` the run's ``best/`` folder is logged to the MLflow parent run as the
model ``runs:/<parent run id>/model``: ``mlflow.pyfunc.load_model``, ``mlflow models serve`` and
``mlflow.pyfunc.spark_udf`` can use it. ``--register NAME`` also makes it a version of the
registered model NAME with the alias ``challenger``; ``automl promote RUN --alias champion`` moves
an alias to a run's version.

Input: a DataFrame with a ``text`` column (text models), or an ``image`` column of paths and/or an
``image_bytes`` column of encoded images (image models; over HTTP, bytes are base64 as MLflow's
scoring server expects for a binary column). Output: one row per input with ``label``,
``probability``, ``probability_<label>`` for every class and ``error`` (empty, or why the input
could not be read: that row's label is empty and its probabilities missing).

With ``tracking.py``, the only module that imports mlflow.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.pyfunc.model import PythonModel

from automl.run_folder import LABELS_FILE, PREPROCESSING_FILE, read_json
from automl.tracking import own_tracking_uri

MODEL_PATH = "model"  # runs:/<parent run id>/model
CHALLENGER = "challenger"
TEXT_INPUT = "text"
IMAGE_PATH_INPUT = "image"
IMAGE_BYTES_INPUT = "image_bytes"
PROBABILITY_PREFIX = "probability_"
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class AutomlModel(PythonModel):
    """``automl.predict.Predictor`` behind MLflow's pyfunc interface."""

    def load_context(self, context) -> None:
        from automl.predict import Predictor

        template = context.artifacts.get("template")
        # Loading an MLflow model trusts it already (its Python object is unpickled): a run's own
        # edited template, shipped inside the model, is loaded like the built-in one.
        self.predictor = Predictor.load_folder(
            Path(context.artifacts["best"]), trust_checkpoint=True, template=template
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        predictor = self.predictor
        if predictor.kind == "image":
            sources = image_sources(frame)
            rows = predictor.predict_images(
                sources, ids=[str(i) for i in range(len(sources))], top_k=len(predictor.labels)
            )
        else:
            texts = list(frame[_text_column(frame)])
            rows = predictor.predict_texts(texts, top_k=len(predictor.labels))
        return output_frame(rows, predictor.labels)


def image_sources(frame: pd.DataFrame) -> list:
    """Per row, the encoded image in ``image_bytes`` when it has one, else the path in ``image``."""
    if IMAGE_BYTES_INPUT not in frame and IMAGE_PATH_INPUT not in frame:
        raise ValueError(
            f"An image model takes a column '{IMAGE_PATH_INPUT}' (file paths) or '{IMAGE_BYTES_INPUT}' (encoded "
            f"images); the input has: {', '.join(map(str, frame.columns)) or '(no column)'}."
        )
    sources: list[str | bytes] = []
    for _, row in frame.iterrows():
        data = row.get(IMAGE_BYTES_INPUT)
        if isinstance(data, (bytes, bytearray)) and data:
            sources.append(bytes(data))
        else:
            path = row.get(IMAGE_PATH_INPUT)
            sources.append(str(path) if isinstance(path, str) else b"")  # empty bytes: an error row
    return sources


def _text_column(frame: pd.DataFrame) -> str:
    if TEXT_INPUT in frame:
        return TEXT_INPUT
    if len(frame.columns) == 1:
        return frame.columns[0]
    raise ValueError(
        f"A text model takes a column '{TEXT_INPUT}'; the input has: {', '.join(map(str, frame.columns))}."
    )


def output_frame(rows: list[dict], labels: list[str]) -> pd.DataFrame:
    """``Predictor`` rows (with every class in ``top_k``) as the model's output columns."""
    records = []
    for row in rows:
        scores = dict(row["top_k"])
        record = {"label": row["label"] or "", "probability": row["probability"]}  # no label: see "error"
        record.update({f"{PROBABILITY_PREFIX}{label}": scores.get(label) for label in labels})
        record["error"] = row["error"] or ""
        records.append(record)
    return pd.DataFrame.from_records(records, columns=["label", "probability", *_class_columns(labels), "error"])


def _class_columns(labels: list[str]) -> list[str]:
    return [f"{PROBABILITY_PREFIX}{label}" for label in labels]


def signature(kind: str, labels: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    if kind == "image":
        inputs = Schema(
            [ColSpec("string", IMAGE_PATH_INPUT, required=False), ColSpec("binary", IMAGE_BYTES_INPUT, required=False)]
        )
    else:
        inputs = Schema([ColSpec("string", TEXT_INPUT)])
    outputs = Schema(
        [
            ColSpec("string", "label"),
            ColSpec("double", "probability"),
            *[ColSpec("double", name) for name in _class_columns(labels)],
            ColSpec("string", "error"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_model(
    tracking_uri: str,
    parent_run_id: str,
    best_dir: Path,
    example: pd.DataFrame,
    template: str | None = None,
    register: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict:
    """Log ``best_dir`` to the parent run as ``runs:/<parent>/model``; with ``register``, make it a
    new version of that registered model and point the ``challenger`` alias at it.

    Returns what the run folder records: ``model_uri``, and ``registered_model``, ``model_version``,
    ``model_alias`` when registered."""
    from automl.version import __version__

    best_dir = Path(best_dir)
    labels = read_json(best_dir / LABELS_FILE)
    kind = read_json(best_dir / PREPROCESSING_FILE)["kind"]
    artifacts = {"best": str(best_dir)}
    if template:  # the edited template's package only (not an ejected project's outputs/)
        from escalation.train import load_template

        artifacts["template"] = str(load_template(template).source)
    with own_tracking_uri(), _quiet():
        mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(run_id=parent_run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name=MODEL_PATH,
                python_model=AutomlModel(),
                artifacts=artifacts,
                signature=signature(kind, labels),
                input_example=example,
                pip_requirements=[f"automl=={__version__}", *_requirements()],
            )
        model_uri = f"runs:/{parent_run_id}/{MODEL_PATH}"
        logged = {"model_uri": model_uri, "tracking_uri": tracking_uri}
        if register:
            version = mlflow.register_model(info.model_uri, register, tags=tags)
            client = mlflow.MlflowClient(tracking_uri)
            client.set_registered_model_alias(register, CHALLENGER, version.version)
            logged.update(registered_model=register, model_version=str(version.version), model_alias=CHALLENGER)
    return logged


@contextmanager
def _quiet():
    """MLflow's notes while it logs a model (its progress bars, "Successfully registered...", the
    advice to pickle less) are not the run's: the run says in one line what was logged."""
    before = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        if before is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = before


def _requirements() -> list[str]:
    """The libraries the model's code imports, at the versions it was trained with."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "torchvision", "timm", "transformers", "lightning", "pillow", "pandas"):
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    return found


def promote(tracking_uri: str | None, name: str, version: str, alias: str) -> str | None:
    """Point ``alias`` of the registered model ``name`` at ``version``; the version it pointed at
    before (None if none)."""
    from automl.errors import StoreUnavailable

    client = mlflow.MlflowClient(tracking_uri)
    try:
        before = str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        before = None
    try:
        client.set_registered_model_alias(name, alias, version)
    except mlflow.exceptions.MlflowException as exc:
        raise StoreUnavailable(
            f"Cannot point {name}@{alias} at version {version} in the registry of '{tracking_uri}': "
            f"{str(exc).strip().splitlines()[0]}"
        ) from exc
    return before
