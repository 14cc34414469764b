"""Configuration: frozen dataclasses are the one place defaults live; YAML in and out.

>>> config = FitConfig(task="image_classification", data="imgs/")
>>> FitConfig.from_dict({"task": "image_classification", "data": "imgs/", "epochs": 3})
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from automl.errors import ConfigError, UnknownTask, close_names

IMAGE_CLASSIFICATION = "image_classification"
TEXT_CLASSIFICATION = "text_classification"
#: task name -> data modality
TASKS = {IMAGE_CLASSIFICATION: "image", TEXT_CLASSIFICATION: "text"}


def check_task(task: str) -> str:
    if task not in TASKS:
        hints = close_names(task, TASKS)
        raise UnknownTask(
            f"Unknown task '{task}'."
            + (f" Did you mean: {', '.join(hints)}?" if hints else "")
            + f" Known tasks: {', '.join(TASKS)}."
        )
    return task


@dataclass(frozen=True)
class FitConfig:
    """One Flash-tier fit: what ``automl fit`` does, and the baseline of ``automl run``."""

    task: str
    data: str
    input_field: str | None = None  # CSV/JSONL column of the texts or image paths (name or 0-based position)
    target_field: str | None = None  # ... and of the labels; both found by name when None
    header: bool = True  # False: the CSV has no header row
    backbone: str | None = None  # None: the task's default (pretrained, offline)
    weights: str | None = None  # a local weights file or folder
    pretrained: bool = True
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-3
    strategy: str = "freeze_unfreeze:1"
    image_size: int = 224
    max_length: int = 128
    val_split: float = 0.2
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    output: str = "runs"
    seed: int = 42

    def __post_init__(self) -> None:
        check_task(self.task)
        if self.weights is not None and not self.pretrained:
            raise ConfigError("--weights and --no-pretrained contradict each other: weights are pretrained weights.")
        for name in ("epochs", "batch_size", "image_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}.")

    @property
    def modality(self) -> str:
        return TASKS[self.task]

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict) -> FitConfig:
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ConfigError(
                f"Unknown configuration key(s): {', '.join(unknown)}. Valid keys: {', '.join(cls.keys())}."
            )
        return cls(**values)

    def to_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.keys()}


def dump_yaml(values: dict, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(values, sort_keys=False))


def load_yaml(path: Path) -> dict:
    import yaml

    values = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"The configuration file '{path}' must hold a mapping of option: value.")
    return values
