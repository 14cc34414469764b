"""Every setting of the template and its default, in one place.

``config.yaml`` and ``--set key=value`` change them; a key that is not here is an error that lists
the ones that are (a typo is never silently ignored). Add a field here and it becomes a setting of
config.yaml, of ``--set`` and of ``automl run --template``'s trials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from automl.backbones import DEFAULT_IMAGE_BACKBONE, DEFAULT_TEXT_BACKBONE
from automl.errors import ConfigError
from automl.metrics import VALIDATION_METRICS

IMAGE, TEXT = "image_classification", "text_classification"
#: the settings that take one of a few values, and those values
CHOICES = {
    "task": (IMAGE, TEXT),
    "weight_averaging": ("none", "ema", "swa"),
    "augment": ("none", "trivialaugment", "randaugment"),
    "mix": ("none", "mixup", "cutmix"),
    "pooling": ("mean", "cls"),
}


@dataclass
class TemplateConfig:
    # ------------------------------------------------------------------ the data
    task: str = IMAGE  # image_classification | text_classification
    data: str = ""  # a folder of class folders, a CSV/TSV, Parquet or JSONL file, or a saved `datasets` folder
    input_field: str | None = None  # tables: the column of texts or image paths (None: found by name)
    target_field: str | None = None  # tables: the column of labels (None: found by name)
    header: bool = True  # CSV/TSV: the first row names the columns
    val_split: float = 0.2  # the validation share: seeded and stratified, the split automl run used
    seed: int = 42
    num_workers: int = 0  # DataLoader processes
    batch_size: int = 32

    # ------------------------------------------------------------------ the model
    backbone: str = ""  # a timm model (images) or a transformers encoder (texts); "": automl's default
    pretrained: bool = True
    weights: str | None = None  # a local weights file or folder, instead of the packaged or cached ones
    dropout: float = 0.1  # before the head's linear layer
    init_head: str | None = None  # a state dict (.pt) of make_head's head to start from; None: a random one
    init_backbone: str | None = None  # a state dict (.pt) of the backbone to start from; None: the pretrained one

    # ------------------------------------------------------------------ the recipe
    epochs: int = 10
    learning_rate: float = 1e-3  # the head's
    backbone_lr_ratio: float = 0.1  # backbone lr = learning_rate * ratio (discriminative learning rates)
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay, stepped per batch
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    gradient_clip: float = 1.0  # 0 turns clipping off
    weight_averaging: str = "none"  # none | ema | swa
    ema_decay: float = 0.99
    class_weighted: bool = True  # inverse-frequency loss weights, used only when classes are imbalanced
    patience: int = 3  # early stopping, in epochs without improvement
    limit_train_batches: float = 1.0  # share of the training batches an epoch sees (a time budget may lower it)

    # ------------------------------------------------------------------ images
    image_size: int = 224
    augment: str = "trivialaugment"  # none | trivialaugment | randaugment
    mix: str = "none"  # none | mixup | cutmix
    tta: bool = True  # average predictions with the horizontally flipped image
    keep_bn_statistics: bool = True  # a pretrained backbone's BatchNorm layers keep their running statistics

    # ------------------------------------------------------------------ texts
    max_length: int = 128  # tokens; longer texts are truncated
    pooling: str = "mean"  # mean | cls
    layer_decay: float = 0.9  # each encoder layer below the top gets this factor of the one above's lr

    # ------------------------------------------------------------------ the trainer
    monitor: str = "val_accuracy"  # the metric the checkpoint and early stopping follow
    output_dir: str = "outputs"  # checkpoints/ and, by default, the MLflow store
    accelerator: str = "auto"  # cpu | gpu | mps | auto
    devices: int | str = "auto"  # a count, "0,1", or auto
    strategy: str = "auto"  # Lightning's: ddp, ddp_spawn, fsdp...
    num_nodes: int = 1
    precision: str = "auto"  # auto: 16-mixed on a GPU, else 32-true
    tracking_uri: str | None = None  # an MLflow store; None: sqlite in output_dir
    experiment: str = "automl-template"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, _typed(field, getattr(self, field.name)))
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} is {getattr(self, key)!r}; it takes one of {', '.join(allowed)}.")
        if self.monitor not in VALIDATION_METRICS:
            raise ConfigError(f"monitor is {self.monitor!r}; it takes one of {', '.join(VALIDATION_METRICS)}.")
        if not 0 < self.val_split < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("val_split must lie between 0 and 1, and epochs and batch_size be at least 1.")
        if not self.backbone:
            self.backbone = DEFAULT_IMAGE_BACKBONE if self.is_image else DEFAULT_TEXT_BACKBONE

    @property
    def is_image(self) -> bool:
        return self.task == IMAGE

    @classmethod
    def keys(cls) -> list[str]:
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict, source: str = "the configuration") -> TemplateConfig:
        """``values`` over the defaults; a key this class does not have is an error naming it."""
        for key in values:
            cls.check_key(key, source)
        return cls(**values)

    @classmethod
    def check_key(cls, key: str, source: str) -> None:
        if key not in cls.keys():
            valid = ", ".join(sorted(cls.keys()))
            raise ConfigError(f"Unknown configuration key {key!r} in {source}. Valid keys: {valid}.")

    @classmethod
    def of(cls, config: TemplateConfig | dict) -> TemplateConfig:
        return config if isinstance(config, TemplateConfig) else cls.from_dict(dict(config))

    @classmethod
    def load(cls, path: str | Path, overrides: Sequence[str] = ()) -> TemplateConfig:
        """The YAML file at ``path``, then ``KEY=VALUE`` overrides (values read as YAML)."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        for key in values:
            cls.check_key(key, str(path))
        for item in overrides:
            key, equals, value = item.partition("=")
            if not equals:
                raise ConfigError(f"--set takes KEY=VALUE, got {item!r}.")
            cls.check_key(key, "--set")
            values[key] = yaml.safe_load(value)
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TemplateConfig:
        return dataclasses.replace(self, **changes)


def _typed(field: dataclasses.Field, value):
    """YAML reads ``3e-4`` as a string and ``1`` as an int: numbers become the field's type."""
    kind = field.type
    try:
        if kind == "float" and isinstance(value, (int, str)) and not isinstance(value, bool):
            return float(value)
        if kind == "int" and isinstance(value, str):
            return int(value)
        if kind == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
    except ValueError:
        raise ConfigError(f"{field.name} must be a number, got {value!r}.") from None
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{field.name} must be true or false, got {value!r}.")
    return value
