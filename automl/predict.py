"""Predictions from a finished run's final model, whichever tier it came from.

``Predictor.load(run_dir)`` is what ``automl predict``, ``automl export`` and ``automl serve`` use:

>>> predictor = Predictor.load("runs/image_classification-1a2b3c4d5e")
>>> predictor.predict_images(["cat.jpg", "broken.jpg"], top_k=3)
[{'id': 'cat.jpg', 'label': 'cat', 'probability': 0.97, 'top_k': [...], 'error': None}, {... 'error': '...'}]
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from automl.config import DEFAULT_MAX_PIXELS
from automl.errors import DataError
from automl.run_folder import (
    BEST_DIR,
    CHECKPOINT_FILE,
    LABELS_FILE,
    LIGHTNING,
    PREPROCESSING_FILE,
    TEMPLATE_CONFIG_FILE,
    TIER_FILE,
    ModelTier,
    read_json,
)

MAX_PIXELS_OPTION = "--max-megapixels"


class ImageTooLarge(DataError):
    """An image claims more pixels than the cap: refused before it is decoded."""


@dataclass
class Predictor:
    model: nn.Module  # eval mode; forward(inputs) -> logits
    logits_fn: Callable  # inputs -> logits (test-time augmentation included where the model uses it)
    labels: list[str]
    preprocessing: dict
    tier: str
    tokenizer: object = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, run_dir: str | Path, trust_checkpoint: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> Predictor:
        """The run's final model. Nothing in the run folder runs as code unless ``trust_checkpoint``:
        the checkpoint loads with ``weights_only=True`` and only the built-in template is imported;
        otherwise ``UntrustedCode`` names the file and the fix (``--trust-checkpoint``)."""
        best = Path(run_dir) / BEST_DIR
        if not (best / CHECKPOINT_FILE).exists():
            raise DataError(
                f"'{run_dir}' holds no trained model ({best / CHECKPOINT_FILE} is missing). Pass a run folder that "
                "`automl run` finished (its best/ folder)."
            )
        return cls.load_folder(best, trust_checkpoint, max_pixels)

    @classmethod
    def load_folder(
        cls,
        best: Path,
        trust_checkpoint: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        template: str | Path | None = None,
    ) -> Predictor:
        """The model in a run's ``best/`` folder (or a copy of it, as inside an MLflow model);
        ``template``: where its Lightning-tier template is now, when not where ``tier.json`` says."""
        import yaml

        from automl import checkpoints

        checkpoint = best / CHECKPOINT_FILE
        labels = read_json(best / LABELS_FILE)
        preprocessing = read_json(best / PREPROCESSING_FILE)
        tier = ModelTier.read(best)
        tokenizer = None
        if tier.tier == LIGHTNING:
            from escalation.train import load_template

            folder = str(template) if template is not None else tier.template
            if not (trust_checkpoint or _built_in_template(folder)):
                raise checkpoints.UntrustedCode(
                    f"{best / TIER_FILE} names the template '{folder}': Python code that loading this model "
                    f"would run. Only automl's built-in template runs unless you pass {checkpoints.TRUST_OPTION} "
                    "(do so only for a run folder whose maker you trust)."
                )
            config = yaml.safe_load((best / TEMPLATE_CONFIG_FILE).read_text())
            template = load_template(folder)
            model = checkpoints.load_module(
                template.model_class(config), checkpoint, trust_checkpoint, config={**config, "pretrained": False}
            )
            logits_fn = model.predict_logits
            if preprocessing["kind"] == "text":
                from automl.backbones import load_tokenizer

                tokenizer = load_tokenizer(config["backbone"], config.get("weights"))
        else:
            from automl.flash.fit import load_classifier

            model = load_classifier(checkpoint, trust_checkpoint)
            logits_fn = model
            if preprocessing["kind"] == "text":
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_source)
        model.eval()
        return cls(model, logits_fn, labels, preprocessing, tier.tier, tokenizer, max_pixels)

    @property
    def kind(self) -> str:
        return self.preprocessing["kind"]

    # ------------------------------------------------------------------ inputs
    def image_transform(self):
        from torchvision.transforms import v2

        p = self.preprocessing
        return v2.Compose(
            [
                v2.Resize(p["resize"], antialias=True),
                v2.CenterCrop(p["image_size"]),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(p["mean"], p["std"]),
            ]
        )

    def image_tensor(self, source) -> torch.Tensor:
        """A path, raw bytes or PIL image -> the network's input; raises ``DataError`` for non-images
        and ``ImageTooLarge`` for an image over ``max_pixels`` (before decoding it)."""
        from PIL import Image

        from automl.data.image import to_rgb

        try:
            image = self._open(source)
            if not isinstance(source, Image.Image):
                image.load()
            image = to_rgb(image)
        except _UNREADABLE as exc:
            raise DataError(f"not a readable image ({type(exc).__name__}: {exc})") from exc
        return self.image_transform()(image)

    def check_pixels(self, source) -> None:
        """Raise ``ImageTooLarge`` when ``source`` (a path, bytes or PIL image) claims more than
        ``max_pixels``; only its header is read, and any other problem is left to ``image_tensor``."""
        try:
            image = self._open(source)
        except _UNREADABLE:
            return
        if image is not source:
            image.close()

    def _open(self, source):
        """The image, opened lazily: its header's size is checked against the cap before any pixel is
        decoded, so a tiny file that claims 30000x30000 costs microseconds and no memory."""
        from PIL import Image

        if isinstance(source, Image.Image):
            image = source
        else:
            try:
                image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            except Image.DecompressionBombError as exc:  # PIL's own, higher limit, where it is still on
                raise ImageTooLarge(f"{exc} It is over the limit of {self._cap()} ({MAX_PIXELS_OPTION}).") from exc
        width, height = image.size
        if width * height > self.max_pixels:
            raise ImageTooLarge(
                f"the image is {width}x{height} pixels ({width * height / 1e6:.3g} megapixels), over the limit of "
                f"{self._cap()} ({MAX_PIXELS_OPTION}); it was not decoded"
            )
        return image

    def _cap(self) -> str:
        return f"{self.max_pixels / 1e6:g} megapixels"

    def encode(self, texts: Sequence[str]) -> dict:
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.preprocessing["max_length"],
            return_tensors="pt",
        )
        return dict(encoded)

    # ------------------------------------------------------------------ predicting
    @torch.inference_mode()
    def probabilities(self, inputs) -> torch.Tensor:
        return self.logits_fn(inputs).float().softmax(dim=-1)

    def rows(self, ids: Sequence[str], probabilities: torch.Tensor, top_k: int) -> list[dict]:
        k = max(1, min(top_k, len(self.labels)))
        values, indices = probabilities.topk(k, dim=-1)
        return [
            {
                "id": id_,
                "label": self.labels[int(idx[0])],
                "probability": float(val[0]),
                "top_k": [(self.labels[int(i)], float(v)) for v, i in zip(val, idx, strict=True)],
                "error": None,
            }
            for id_, val, idx in zip(ids, values, indices, strict=True)
        ]

    def predict_images(
        self,
        sources: Iterable,
        ids: Sequence[str] | None = None,
        top_k: int = 3,
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[dict]:
        """Predict images (paths, bytes or PIL images); an unreadable one gets a row with its error."""
        sources = list(sources)
        ids = list(ids) if ids is not None else [str(s) for s in sources]

        def score(tensors: list) -> torch.Tensor:
            return self.probabilities(torch.stack(tensors))

        return self._predict(sources, ids, self.image_tensor, score, top_k, batch_size, on_batch)

    def predict_texts(
        self,
        texts: Sequence,
        ids: Sequence[str] | None = None,
        top_k: int = 3,
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[dict]:
        """Predict texts; an empty or non-text entry gets a row with its error."""
        texts = list(texts)
        ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]

        def score(good: list[str]) -> torch.Tensor:
            return self.probabilities(self.encode(good))

        return self._predict(texts, ids, _text, score, top_k, batch_size, on_batch)

    def _predict(
        self, inputs: list, ids: list, prepare, batch_probabilities, top_k, batch_size, on_batch
    ) -> list[dict]:
        """Batches of ``inputs``: ``prepare`` readies one or raises ``DataError`` (that input gets a row
        with its error, the rest of its batch goes on); ``batch_probabilities`` scores the ready ones."""
        rows: list[dict | None] = [None] * len(inputs)
        for start in range(0, len(inputs), batch_size):
            good, ready = [], []
            for index in range(start, min(start + batch_size, len(inputs))):
                try:
                    ready.append(prepare(inputs[index]))
                    good.append(index)
                except DataError as error:
                    rows[index] = _error_row(ids[index], str(error))
            if good:
                batch_rows = self.rows([ids[i] for i in good], batch_probabilities(ready), top_k)
                for index, row in zip(good, batch_rows, strict=True):
                    rows[index] = row
            if on_batch:
                on_batch(min(batch_size, len(inputs) - start))
        return rows


#: what PIL raises for a file that is not an image it can decode
_UNREADABLE = (OSError, SyntaxError, ValueError)  # UnidentifiedImageError is an OSError


def our_pixel_cap_only() -> None:
    """For a process that decodes untrusted images (``automl predict``, ``automl serve``): turn off
    PIL's decompression-bomb limit, a warning at 89 and an error at 179 megapixels that would answer
    the largest bombs before our lower, explicit cap (``Predictor.max_pixels``, checked on every
    input) with a message that names no option."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None


def _built_in_template(folder: str | None) -> bool:
    """Runs since this check record the built-in template as None; older ones as its path here."""
    from escalation.train import TEMPLATE_DIR

    return folder is None or Path(folder).resolve() == TEMPLATE_DIR.resolve()


def _text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise DataError("empty or not a text")
    return text


def _error_row(id_: str, error: str) -> dict:
    return {"id": id_, "label": None, "probability": None, "top_k": [], "error": error}


def read_inputs(predictor: Predictor, path: str | Path, input_field: str | None = None) -> tuple[list, list[str]]:
    """(inputs, ids) from ``path``: images (a file, a folder, every file in it tried, or a CSV/Parquet
    table of image paths) or texts (a CSV/TSV, Parquet or JSONL file, a saved ``datasets`` folder, a
    .txt file with one text per line, or a folder of .txt files)."""
    from automl.data import common

    path = common.existing_path(path)
    table = path.suffix.lower() in common.TABLE_SUFFIXES or common.is_hf_dataset(path)
    if predictor.kind == "image" and not table:
        files = [path] if path.is_file() else common.files_in(path, None)
        return files, [str(f) for f in files]
    if path.is_dir() and not table:
        files = common.files_in(path, (".txt",))
        return [f.read_text(encoding="utf-8", errors="replace") for f in files], [str(f) for f in files]
    if table:
        from automl.data.image import IMAGE_COLUMNS
        from automl.data.text import TEXT_COLUMNS

        frame, source, first_row = common.read_table(path)
        image = predictor.kind == "image"
        column = common.pick_column(
            frame, input_field, IMAGE_COLUMNS if image else TEXT_COLUMNS, source, "image path" if image else "text"
        )
        if image:  # paths are relative to the table's folder, as for training
            folder = path if path.is_dir() else path.parent
            files = [folder / str(value) for value in frame[column]]
            return files, [str(f) for f in files]
        return list(frame[column]), [f"row {i + first_row}" for i in range(len(frame))]
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines, [f"line {i + 1}" for i in range(len(lines))]


def write_predictions(rows: list[dict], path: str | Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": [r["id"] for r in rows],
            "label": [r["label"] for r in rows],
            "probability": [r["probability"] for r in rows],
            "top_k": [";".join(f"{label}:{p:.4f}" for label, p in r["top_k"]) for r in rows],
            "error": [r["error"] or "" for r in rows],
        }
    )
    frame.to_csv(path, index=False)
