"""Predictions from a finished run's final model, whichever tier it came from.

``Predictor.load(run_dir)`` is what ``automl predict``, ``automl export`` and ``automl serve`` use:

>>> predictor = Predictor.load("runs/image_classification-1a2b3c4d5e")
>>> predictor.predict_images(["cat.jpg", "broken.jpg"], top_k=3)
[{'id': 'cat.jpg', 'label': 'cat', 'probability': 0.97, 'top_k': [...], 'error': None}, {... 'error': '...'}]
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import torch

from automl.calibration import read_temperature, scaled
from automl.config import DEFAULT_MAX_PIXELS
from automl.errors import DataError
from automl.run_folder import (
    BEST_DIR,
    CHECKPOINT_FILE,
    ENSEMBLE_FILE,
    LABELS_FILE,
    PREPROCESSING_FILE,
    TEMPLATE_CONFIG_FILE,
    TIER_FILE,
    ModelTier,
    read_json,
)
from automl.trial_record import Tier

if TYPE_CHECKING:
    from automl.ensemble import TfidfMember

MAX_PIXELS_OPTION = "--max-megapixels"


class ImageTooLarge(DataError):
    """An image claims more pixels than the cap: refused before it is decoded."""


@dataclass
class Predictor:
    model: Any  # eval mode; forward(inputs) -> logits; a Flash-tier task or the template's: backbone, head, features()
    logits_fn: Callable  # inputs -> logits (test-time augmentation included where the model uses it)
    labels: list[str]
    preprocessing: dict
    tier: str
    tokenizer: Any = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: best/calibration.json's (automl.calibration): probabilities are softmax(log p / temperature)
    temperature: float = 1.0

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
        members: bool = True,
    ) -> Predictor:
        """The model in a run's ``best/`` folder (or a copy of it, as inside an MLflow model);
        ``template``: where its Lightning-tier template is now, when not where ``tier.json`` says.
        An ensemble (``ensemble.json``) loads as an :class:`EnsemblePredictor`, unless ``members`` is
        False: then only the folder's own model, the ensemble's best single member."""
        import yaml

        from automl import checkpoints

        checkpoint = best / CHECKPOINT_FILE
        labels = read_json(best / LABELS_FILE)
        preprocessing = read_json(best / PREPROCESSING_FILE)
        tier = ModelTier.read(best)
        tokenizer = None
        if tier.tier == Tier.LIGHTNING:
            from escalation.train import load_template

            folder = str(template) if template is not None else tier.template
            if not (trust_checkpoint or _built_in_template(folder)):
                raise checkpoints.UntrustedCode(
                    f"{best / TIER_FILE} names the template '{folder}': Python code that loading this model "
                    f"would run. Only automl's built-in template runs unless you pass {checkpoints.TRUST_OPTION} "
                    "(do so only for a run folder whose maker you trust)."
                )
            config = yaml.safe_load((best / TEMPLATE_CONFIG_FILE).read_text())
            loaded = load_template(folder)
            model = checkpoints.load_module(
                loaded.model_class(config), checkpoint, trust_checkpoint, config={**config, "pretrained": False}
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
        ensemble = (best / ENSEMBLE_FILE).exists()
        # the folder's temperature is its final model's: the ensemble's when it is one, and then its
        # best single member (as a member, or judged alone with members=False) keeps raw probabilities
        temperature = read_temperature(best)
        raw = 1.0 if ensemble else temperature
        single = cls(model, logits_fn, labels, preprocessing, tier.tier, tokenizer, max_pixels, raw)
        if members and ensemble:
            return EnsemblePredictor.around(single, best, trust_checkpoint, temperature)
        return single

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
        return self.image_transform()(self.decode(source))

    def decode(self, source):
        """A path, raw bytes or PIL image -> an RGB PIL image (the checks of :meth:`image_tensor`)."""
        from PIL import Image

        from automl.data.image import to_rgb

        try:
            image = self._open(source)
            if not isinstance(source, Image.Image):
                image.load()
            return to_rgb(image)
        except _UNREADABLE as exc:
            raise DataError(f"not a readable image ({type(exc).__name__}: {exc})") from exc

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
        return (self.logits_fn(inputs).float() / self.temperature).softmax(dim=-1)

    def prepare(self, item):
        """One input (an image source, or a text) made ready for :meth:`batch_probabilities`; raises
        ``DataError`` for one the model cannot read."""
        return self.image_tensor(item) if self.kind == "image" else _text(item)

    def batch_probabilities(self, ready: list) -> torch.Tensor:
        """Class probabilities of inputs :meth:`prepare` readied, one row each."""
        return self.probabilities(torch.stack(ready) if self.kind == "image" else self.encode(ready))

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
        return self._predict(sources, ids, self.prepare, self.batch_probabilities, top_k, batch_size, on_batch)

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
        return self._predict(texts, ids, self.prepare, self.batch_probabilities, top_k, batch_size, on_batch)

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
        return cast("list[dict]", rows)  # every index filled: a row or an error row


@dataclass
class Member:
    """One member of an ensemble: a network (``predictor``) or a TF-IDF model (``tfidf``), its weight,
    and ``shares``: members with the same key run one frozen backbone, whose output each head maps."""

    name: str
    weight: float
    predictor: Predictor | None = None
    tfidf: TfidfMember | None = None
    shares: str | None = None


@dataclass
class EnsemblePredictor(Predictor):
    """A weighted average of its members' class probabilities, with the interface of a ``Predictor``
    (its own ``model``, ``preprocessing``, ``tier`` are its best single member's). An image is decoded
    once, then each distinct preprocessing of the members is applied to it; members that share a
    frozen backbone share its forward pass."""

    members: list[Member] = field(default_factory=list)

    @classmethod
    def around(
        cls, single: Predictor, best: Path, trust_checkpoint: bool = False, temperature: float = 1.0
    ) -> EnsemblePredictor:
        from automl.ensemble import TfidfMember

        spec = read_json(best / ENSEMBLE_FILE)
        members = []
        for entry in spec["members"]:
            folder = best / entry["folder"]
            if entry["kind"] == "tfidf":
                members.append(Member(entry["name"], entry["weight"], tfidf=TfidfMember.load(folder)))
                continue
            predictor = (
                single
                if entry["folder"] == "."
                else Predictor.load_folder(folder, trust_checkpoint, single.max_pixels, members=False)
            )
            members.append(Member(entry["name"], entry["weight"], predictor, shares=entry.get("shares")))
        fields = {name: getattr(single, name) for name in single.__dataclass_fields__}
        return cls(**{**fields, "temperature": temperature}, members=members)

    def _networks(self) -> list[Predictor]:
        return [member.predictor for member in self.members if member.predictor is not None]

    @staticmethod
    def _input_key(predictor: Predictor) -> str:
        import json

        p = predictor.preprocessing
        keys = ("resize", "image_size", "mean", "std") if p["kind"] == "image" else ("max_length",)
        source = getattr(predictor.tokenizer, "name_or_path", None)
        return json.dumps([source, *[p.get(k) for k in keys]])

    def prepare(self, item):
        if self.kind != "image":
            return _text(item)
        image = self.decode(item)
        ready = {}
        for predictor in self._networks():
            key = self._input_key(predictor)
            if key not in ready:
                ready[key] = predictor.image_transform()(image)
        return ready

    @torch.inference_mode()
    def batch_probabilities(self, ready: list) -> torch.Tensor:
        inputs: dict[str, object] = {}
        shared: dict[str, torch.Tensor] = {}
        total = None
        for member in self.members:
            if member.tfidf is not None:
                probabilities = torch.as_tensor(member.tfidf.probabilities(ready), dtype=torch.float32)
            else:
                predictor = member.predictor
                assert predictor is not None, "a member is a network when it is not a TF-IDF model"
                key = self._input_key(predictor)
                if key not in inputs:
                    inputs[key] = (
                        torch.stack([r[key] for r in ready]) if self.kind == "image" else predictor.encode(ready)
                    )
                if member.shares:
                    if member.shares not in shared:
                        shared[member.shares] = predictor.model.features(inputs[key])
                    logits = predictor.model.head(shared[member.shares])
                else:
                    logits = predictor.logits_fn(inputs[key])
                probabilities = logits.float().softmax(dim=-1)
            total = member.weight * probabilities if total is None else total + member.weight * probabilities
        assert total is not None, "an ensemble has members"
        return scaled(total, self.temperature)

    def probabilities(self, inputs) -> torch.Tensor:
        raise TypeError("an ensemble's members take different inputs: use prepare() and batch_probabilities()")


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


def predictions_frame(rows: list[dict]):
    """The rows of ``predict_images`` / ``predict_texts`` as ``automl predict`` writes them."""
    import pandas as pd

    return pd.DataFrame(
        {
            "id": [r["id"] for r in rows],
            "label": [r["label"] for r in rows],
            "probability": [r["probability"] for r in rows],
            "top_k": [";".join(f"{label}:{p:.4f}" for label, p in r["top_k"]) for r in rows],
            "error": [r["error"] or "" for r in rows],
        }
    )


def write_predictions(rows: list[dict], path: str | Path | TextIO) -> None:
    predictions_frame(rows).to_csv(path, index=False)
