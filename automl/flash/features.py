"""Frozen-backbone features, computed once and reused by every trial that trains only a head.

A trial whose backbone never changes (the ``freeze`` strategy, no random augmentation) sees the same
backbone output for an example in every epoch. Its head can train on those outputs instead of on the
images or texts: the backbone runs once per (backbone, weights, input size) for the whole study, and
such a trial costs seconds instead of minutes. The head it trains is put back on the backbone, so
the trial's checkpoint is an ordinary ``ImageClassifier`` / ``TextClassifier`` one: the verdict,
predict, export and serve see no difference.

>>> cache = FeatureCache(run_dir / "features")
>>> features = cache.get(config, datamodule)      # seconds the first time, milliseconds after
>>> trained = train_head(config, features, labels, out_dir)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from automl.backbones import default_backbone
from automl.config import IMAGE_CLASSIFICATION, FitConfig
from automl.flash.pixels import PixelCache
from automl.flash.tasks import ClassificationTask

#: L-BFGS iterations a head on cached features runs in all (spread over its epochs): a logistic
#: regression on ~1000 standardised features converges in one to two hundred.
PROBE_ITERATIONS = 200
#: the L2 penalty a head on cached features starts from when none was given (``C = 1000 / n``): the
#: best of a grid on digits for every packaged backbone; the search tunes it
PROBE_WEIGHT_DECAY = 1e-3
#: the penalties the default backbone's head also tries right after the first one, before the search
#: goes on: sentence embeddings want ~0.4 where photo features want 1e-3 (one second each)
PROBE_WEIGHT_DECAYS = (1e-2, 1e-1, 1.0)
FEATURE_BATCH_SIZE = 64


def head_only(strategy: str, augment: bool | None) -> bool:
    """Whether a trial with this strategy trains only its head on unchanging inputs."""
    return str(strategy) == "freeze" and not augment


@dataclass
class Features:
    """Backbone outputs of the training and validation examples, in the datamodule's order."""

    train: torch.Tensor
    train_targets: torch.Tensor
    val: torch.Tensor
    val_targets: torch.Tensor
    seconds: float  # what computing them cost (0 when read back from the cache)
    seconds_per_example: float  # one forward pass of one example, as measured when they were computed

    @property
    def num_features(self) -> int:
        return int(self.train.shape[1])

    def labelled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, targets) of train and val together, in that order: what a head's cross-validation
        folds over and what a refit trains on."""
        return torch.cat([self.train, self.val]), torch.cat([self.train_targets, self.val_targets])


class FeatureCache:
    """Features by (backbone, weights, input size), in memory and, when ``folder`` is given, on disk
    (a resumed run, or an ``automl tune`` worker on the same machine, does not compute them again).

    Images are decoded once for all backbones (``pixels``, :mod:`automl.flash.pixels`): a pass of a
    second backbone only normalises the crops the first pass kept for its input size (``plan_images``)."""

    def __init__(self, folder: Path | None = None, pixels: PixelCache | None = None):
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[str, Features] = {}
        #: seconds of one example's forward pass, by (backbone, input size)
        self.costs: dict[tuple[str, int], float] = {}
        self.pixels = pixels if pixels is not None else PixelCache()

    def plan_images(self, sizes, say=None) -> None:
        """The input sizes the search's backbones will run at: each image file, decoded once, is
        cropped for all of them; ``say`` hears when the memory limit sends the rest back to their files."""
        self.pixels.plan(sizes)
        if say is not None:
            self.pixels.say = say

    def key(self, config: FitConfig, datamodule) -> str:

        size = config.image_size if config.task == IMAGE_CLASSIFICATION else config.max_length
        parts = [
            config.task,
            default_backbone(config),
            str(config.weights),
            config.pretrained,
            size,
            [str(item) for item, _ in datamodule.train_samples],
            [str(item) for item, _ in datamodule.val_samples],
        ]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def forward_seconds(self, config: FitConfig) -> float | None:
        """One example's forward pass through ``config``'s backbone at ``config``'s input size, as
        measured when features were computed (scaled by the pixel count from another image size of
        the same backbone); None when that backbone has not run here yet."""

        name = default_backbone(config)
        size = config.image_size if config.task == IMAGE_CLASSIFICATION else config.max_length
        same = [(s, cost) for (n, s), cost in self.costs.items() if n == name]
        for measured, cost in same:
            if measured == size:
                return cost
        if same and config.task == IMAGE_CLASSIFICATION:
            measured, cost = same[0]
            return cost * (size / measured) ** 2
        return same[0][1] if same else None

    def measure(self, config: FitConfig, datamodule) -> float:
        """Time ``config``'s backbone on a batch of training examples (a first, untimed pass warms it up)."""

        encode = _encoder(config, datamodule, self.pixels)
        examples = 16 if config.task == IMAGE_CLASSIFICATION else FEATURE_BATCH_SIZE
        few = datamodule.train_samples[:examples]
        # warmed up on other examples: those timed are read as the pass will read them (decoded or kept)
        warm = datamodule.train_samples[examples : examples + max(1, examples // 4)] or few[: max(1, examples // 4)]
        with torch.inference_mode():
            encode(warm)
            started = time.monotonic()
            encode(few)
        cost = (time.monotonic() - started) / max(len(few), 1)
        size = config.image_size if config.task == IMAGE_CLASSIFICATION else config.max_length
        self.costs[(default_backbone(config), size)] = cost
        return cost

    def has(self, config: FitConfig, datamodule) -> bool:
        """Whether ``get`` would find these features already computed."""
        key = self.key(config, datamodule)
        return key in self._memory or (self.folder is not None and (self.folder / f"{key}.pt").exists())

    def get(self, config: FitConfig, datamodule) -> Features:
        key = self.key(config, datamodule)
        if key in self._memory:
            return self._memory[key]
        path = None if self.folder is None else self.folder / f"{key}.pt"
        if path is not None and path.exists():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            features = Features(**{**stored, "seconds": 0.0})
        else:
            features = extract(config, datamodule, self.pixels)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(features.__dict__, tmp)
                tmp.replace(path)
        self._memory[key] = features

        size = config.image_size if config.task == IMAGE_CLASSIFICATION else config.max_length
        self.costs[(default_backbone(config), size)] = features.seconds_per_example
        return features


def extract(config: FitConfig, datamodule, pixels: PixelCache | None = None) -> Features:
    """Run ``config``'s pretrained backbone once over the training and validation examples (images:
    from ``pixels`` when given, else from their files)."""
    started = time.monotonic()
    encode = _encoder(config, datamodule, pixels)
    with torch.inference_mode():
        train = encode(datamodule.train_samples)
        val = encode(datamodule.val_samples)
    seconds = time.monotonic() - started
    count = len(datamodule.train_samples) + len(datamodule.val_samples)

    def targets(samples):
        return torch.tensor([target for _, target in samples], dtype=torch.long)

    return Features(
        train, targets(datamodule.train_samples), val, targets(datamodule.val_samples), seconds, seconds / max(count, 1)
    )


def _encoder(config: FitConfig, datamodule, pixels: PixelCache | None = None):
    """A function from samples to their backbone outputs (one row each)."""
    torch.manual_seed(config.seed)  # --no-pretrained: the same random backbone the trial's model gets
    if config.task == IMAGE_CLASSIFICATION:
        return _image_encoder(config, datamodule, pixels)
    return _text_encoder(config)


def _image_encoder(config: FitConfig, datamodule, pixels: PixelCache | None = None):
    from automl import backbones as bb

    built = bb.create_image_backbone(default_backbone(config), pretrained=config.pretrained, weights=config.weights)
    model = built.model.eval()
    served = datamodule.with_options(image_size=config.image_size, augment=False, mean=built.mean, std=built.std)
    if not _reads_files_plainly(served):
        pixels = None  # a datamodule of its own making serves its own images

    def encode(samples) -> torch.Tensor:
        if not samples:
            return torch.empty(0, built.num_features)
        if pixels is not None:  # the same batches as from the files, of images decoded once for every backbone
            batches = range(0, len(samples), FEATURE_BATCH_SIZE)
            inputs = (pixels.inputs(served, samples[start : start + FEATURE_BATCH_SIZE]) for start in batches)
            return torch.cat([model(images).float() for images in inputs])
        loader = DataLoader(served.make_dataset(samples, train=False), batch_size=FEATURE_BATCH_SIZE)
        return torch.cat([model(images).float() for images, _ in loader])

    return encode


def _reads_files_plainly(served) -> bool:
    """Whether ``served`` makes its evaluation inputs as ``ImageClassificationData`` does, from files:
    what the pixel cache reproduces."""
    from automl.data.image import ImageClassificationData as Plain

    kind = type(served)
    return isinstance(served, Plain) and all(
        getattr(kind, name) is getattr(Plain, name)
        for name in ("eval_transform", "make_dataset", "normalise", "_to_tensor", "resize_size")
    )


def _text_encoder(config: FitConfig):
    from automl import backbones as bb

    name = default_backbone(config)
    model = bb.create_text_backbone(name, pretrained=config.pretrained, weights=config.weights).model.eval()
    tokenizer = bb.load_tokenizer(name, config.weights)

    def encode(samples) -> torch.Tensor:
        # texts of similar length together: far less padding; the order is restored at the end
        order = sorted(range(len(samples)), key=lambda i: len(samples[i][0]))
        pooled = []
        for start in range(0, len(order), FEATURE_BATCH_SIZE):
            texts = [samples[i][0] for i in order[start : start + FEATURE_BATCH_SIZE]]
            encoded = tokenizer(texts, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt")
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled.append((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9))  # TextClassifier's pooling
        result = torch.empty(len(samples), pooled[0].shape[1]) if pooled else torch.empty(0)
        if pooled:
            result[torch.tensor(order)] = torch.cat(pooled).float()
        return result

    return encode


# --------------------------------------------------------------------------- training a head
class HeadClassifier(ClassificationTask):
    """The Flash tier's head alone on cached backbone outputs, fitted as a logistic regression is:
    standardised features, the whole training set as one batch, L-BFGS, and ``weight_decay`` as an L2
    penalty on the weights (``0.5 * weight_decay * |W|^2`` added to the mean loss; scikit-learn's
    ``C`` is ``1 / (weight_decay * n)``). On a 2-core CPU this converges in under a second where
    mini-batch Adam needed seconds and stopped short of it (measured on digits, ``bench``).

    It is one fit: a single L-BFGS solve of up to :data:`PROBE_ITERATIONS` iterations in one Lightning
    epoch, the same solve ``automl.flash.heads.fit_linear`` makes for cross-validation, the ensemble
    and the refit (``epochs`` is not used: more epochs would only repeat a converged solution).
    :meth:`classifier_head` folds the standardisation into the linear layer, for the head of an
    ordinary classifier."""

    mean: torch.Tensor  # buffers: the training features' mean and spread
    std: torch.Tensor

    def __init__(self, labels, features: Features, weight_decay: float = 0.0, epochs: int = 1, **task):
        super().__init__(labels, **task)
        self.backbone = nn.Identity()  # the fine-tuning callback expects one; it has no parameters
        self.head = nn.Linear(features.num_features, self.num_classes)
        nn.init.zeros_(self.head.weight)  # the convex problem's usual start: every class equally likely
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mean", features.train.mean(dim=0))
        self.register_buffer("std", features.train.std(dim=0).clamp(min=1e-6))
        self.penalty = float(weight_decay)
        self.iterations = PROBE_ITERATIONS

    def solver_iterations(self) -> int | None:
        """L-BFGS iterations the solve took (after it ran), from the optimiser's state."""
        trainer = self._trainer
        if trainer is None or not trainer.optimizers:
            return None
        state = trainer.optimizers[0].state
        counts = [int(s["n_iter"]) for s in state.values() if isinstance(s, dict) and "n_iter" in s]
        return counts[0] if counts else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head((features - self.mean) / self.std)

    def training_step(self, batch, batch_idx: int):
        loss = super().training_step(batch, batch_idx)
        return loss + 0.5 * self.penalty * self.head.weight.pow(2).sum()

    def configure_optimizers(self):
        return lbfgs(self.head.parameters(), self.iterations)

    def classifier_head(self, state: dict | None = None) -> dict:
        """The state dict of :func:`make_head` that maps raw backbone outputs as this head maps
        standardised ones (of ``state``, a copy of this head's, when given)."""
        state = state if state is not None else self.head.state_dict()
        weight, bias = unstandardised(state["weight"], state["bias"], self.mean, self.std)
        return {"1.weight": weight.detach().clone(), "1.bias": bias.detach().clone()}


def lbfgs(parameters, iterations: int) -> torch.optim.LBFGS:
    """The optimiser of a head on cached features (here and in ``automl.flash.heads``)."""
    return torch.optim.LBFGS(
        parameters,
        lr=1.0,
        max_iter=iterations,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )


def unstandardised(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
    """(weight, bias) of a linear layer on raw features that maps them as ``weight``, ``bias`` map
    ``(features - mean) / std``."""
    weight = weight / std
    return weight, bias - weight @ mean


class FeatureData(pl.LightningDataModule):
    """Cached features served as batches: the whole training set as one, for L-BFGS."""

    def __init__(self, features: Features, labels: list[str]):
        super().__init__()
        self.features, self.labels = features, list(labels)

    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(self.features.train, self.features.train_targets)
        return DataLoader(data, batch_size=max(len(data), 1))

    def val_dataloader(self) -> DataLoader:
        data = TensorDataset(self.features.val, self.features.val_targets)
        return DataLoader(data, batch_size=4096)
