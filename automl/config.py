"""Configuration: frozen dataclasses are the one place defaults live; YAML in and out.

>>> config = FitConfig(task="image_classification", data="imgs/")
>>> FitConfig.from_dict({"task": "image_classification", "data": "imgs/", "epochs": 3})
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from automl.errors import ConfigError, UnknownTask, close_names

IMAGE_CLASSIFICATION = "image_classification"
TEXT_CLASSIFICATION = "text_classification"
#: task name -> data modality
TASKS = {IMAGE_CLASSIFICATION: "image", TEXT_CLASSIFICATION: "text"}
#: the most pixels an image given to `automl predict` / `automl serve` may have (checked on its header
#: before anything is decoded): generous for photos (a 40-megapixel camera), far below a decompression bomb
DEFAULT_MAX_PIXELS = 40_000_000


def check_task(task: str) -> str:
    if task not in TASKS:
        hints = close_names(task, TASKS)
        raise UnknownTask(
            f"Unknown task '{task}'."
            + (f" Did you mean: {', '.join(hints)}?" if hints else "")
            + f" Known tasks: {', '.join(TASKS)}."
        )
    return task


Config = TypeVar("Config", bound="FitConfig")  # FitConfig or a subclass (RunConfig)


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
    weight_decay: float = 0.0
    dropout: float = 0.0
    label_smoothing: float = 0.0
    image_size: int = 224
    augment: bool = True  # images: random-resized-crop + horizontal flip while training
    max_length: int = 128
    val_split: float = 0.2
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    trainer_strategy: str = "auto"  # Lightning's: ddp, ddp_spawn, fsdp... (--strategy is the fine-tuning one)
    num_nodes: int = 1
    precision: str | None = None  # Lightning's, e.g. 16-mixed, bf16-mixed; None: 32-bit
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
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.label_smoothing < 1.0 or self.weight_decay < 0:
            raise ConfigError("dropout and label_smoothing lie in [0, 1), weight_decay is at least 0.")

    @property
    def modality(self) -> str:
        return TASKS[self.task]

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[Config], values: dict) -> Config:
        missing = [key for key in ("task", "data") if values.get(key) in (None, "")]
        if missing:
            raise ConfigError(
                " and ".join(missing)
                + " must be given: "
                + " ".join(f"--{k} ..." for k in missing)
                + " on the command line, or in the --config YAML."
            )
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ConfigError(
                f"Unknown configuration key(s): {', '.join(unknown)}. Valid keys: {', '.join(cls.keys())}."
            )
        return cls(**{key: _coerce(cls, key, value) for key, value in values.items()})

    def to_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.keys()}


def yaml_text(values: dict) -> str:
    """``values`` as YAML, in their order; tuples as lists."""
    import yaml

    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return yaml.safe_dump(plain, sort_keys=False)


def dump_yaml(values: dict, path: Path) -> None:
    path.write_text(yaml_text(values))


def load_yaml(path: Path) -> dict:
    import yaml

    values = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"The configuration file '{path}' must hold a mapping of option: value.")
    return values


def _coerce(cls, key: str, value):
    """YAML and the command line hand over strings and lists; fields say what they hold."""
    kind = str({f.name: f.type for f in dataclasses.fields(cls)}[key])
    if isinstance(value, list) and "tuple" in kind:
        return tuple(value)
    return value


@dataclass(frozen=True)
class RunConfig(FitConfig):
    """``automl run``: the Flash-tier options (the baseline) plus tuning, target and tracking."""

    target: str | None = None  # e.g. "accuracy>=0.9"; required
    # every finished trial of the study counts, the baseline included; with a time budget and no
    # trials given, BUDGETED_TRIALS: the budget is the limit
    trials: int = 10
    time_budget: str | None = None  # "90s", "20m", "1h": no new trial starts past it
    storage: str | None = None  # Optuna storage URL; default sqlite:///<output>/optuna.db
    study: str | None = None  # default: task + data fingerprint, so re-running resumes
    tracking_uri: str | None = None  # MLflow; default MLFLOW_TRACKING_URI or sqlite:///<output>/mlflow.db
    pruner: str = "median"  # median | hyperband | none
    heartbeat: int = 30  # seconds; on a shared database a trial silent for 3x this is failed and retried
    max_bad_share: float = 0.2  # the data doctor stops the run when more of the examples are unusable
    backbones: tuple[str, ...] | None = None  # backbones the search may pick; default: those available offline
    escalate: bool = True  # a missed target escalates to the Lightning tier
    escalation_trials: int | None = None  # trials of the Lightning-tier study; default: trials
    template: str | None = None  # an edited, ejected template folder for the escalation
    notify_url: str | None = None  # webhook told of run start, each stage's end and run end
    register: str | None = None  # register the final model under this name (alias "challenger")
    # the test split judges the final model and nothing else: a test/ folder, else --test-data, else
    # this share carved from the labelled data (0: judged on the validation split that chose it)
    test_split: float = 0.15
    test_data: str | None = None  # labelled data that only judges (any input from_path reads)
    refit: bool = True  # retrain the chosen configuration on train+val before the test verdict
    ensemble: bool = True  # a weighted ensemble of the candidates, kept when validation resolves its gain
    calibrate: bool = True  # a temperature fitted on the selection split makes the probabilities calibrated
    preset: str = "balanced"  # fast | balanced | best (automl.presets): a bundle of the options above
    search_space: dict | None = None  # the user's shape of the search (automl.shaping), checked

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.target:
            raise ConfigError("automl run needs a target, e.g. --target 'accuracy>=0.9'.")
        from automl.target import parse_target

        parse_target(self.target)
        if self.trials < 1:
            raise ConfigError(f"trials must be at least 1 (the baseline is trial 0), got {self.trials}.")
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        if self.trainer_strategy not in TRIAL_STRATEGIES:
            raise ConfigError(
                f"automl run/tune train a trial with --trainer-strategy {', '.join(TRIAL_STRATEGIES)}, not "
                f"{self.trainer_strategy} (that one is for `automl fit`)."
            )
        if self.num_nodes != 1:
            raise ConfigError(
                "automl run/tune train each trial on one machine (--num-nodes 1); to use several machines, start "
                "`automl tune` workers on each with a shared --storage."
            )
        if not 0.0 <= self.max_bad_share <= 1.0:
            raise ConfigError(f"max_bad_share is a share between 0 and 1, got {self.max_bad_share}.")
        if self.heartbeat < 1:
            raise ConfigError(f"heartbeat must be at least 1 second, got {self.heartbeat}.")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"Unknown pruner '{self.pruner}'. Choose {', '.join(PRUNERS)}.")
        if not 0.0 <= self.test_split < 1.0 or self.test_split + self.val_split >= 1.0:
            raise ConfigError(
                f"test_split is a share in [0, 1) that leaves training data beside val_split {self.val_split:g}, "
                f"got {self.test_split:g}."
            )
        from automl import shaping
        from automl.presets import preset_values

        preset_values(self.preset, self.modality)  # an unknown preset names the known ones
        shaping.check(self.search_space, self.modality)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        """``values`` over their preset's (``preset``, default balanced): an explicit option wins, and
        a ``search_space`` given is laid knob by knob over the preset's."""
        from automl.presets import DEFAULT_PRESET, preset_values

        preset = values.get("preset") or DEFAULT_PRESET
        modality = TASKS.get(str(values.get("task", "")))
        under = preset_values(preset, modality)
        if isinstance(values.get("search_space"), dict) and under.get("search_space"):
            values = {**values, "search_space": {**under["search_space"], **values["search_space"]}}
        resolved = {**under, **values, "preset": preset}
        if resolved.get("time_budget") and values.get("trials") is None:
            resolved["trials"] = BUDGETED_TRIALS  # a budget is a budget: it alone bounds the trials
        return super().from_dict(resolved)

    @property
    def budget_seconds(self) -> float | None:
        return None if self.time_budget is None else parse_duration(self.time_budget)

    @property
    def trial_strategy(self) -> str:
        """Lightning's strategy for one trial. Several devices take DDP with processes spawned from
        this one (``ddp_spawn``), so that Optuna, the journal and MLflow stay in this process (rank
        zero's parent); Lightning's ``ddp`` would start each rank by running the whole command again."""
        if self.trainer_strategy == "single_device" or device_count(self.accelerator, self.devices) <= 1:
            return self.trainer_strategy if self.trainer_strategy == "single_device" else "auto"
        return "ddp_spawn"

    def fit_config(self, **changes) -> FitConfig:
        values = {key: getattr(self, key) for key in FitConfig.keys()}
        return FitConfig(**{**values, "trainer_strategy": self.trial_strategy, **changes})


TRIAL_STRATEGIES = ("auto", "single_device", "ddp", "ddp_spawn")
#: trials of a run with a time budget and no --trials: more than any budget holds, so the budget decides
BUDGETED_TRIALS = 1000
#: Optuna pruners a study can use (``tuning.make_pruner`` builds them)
PRUNERS = ("median", "hyperband", "none")


def device_count(accelerator: str, devices: str) -> int:
    """How many devices Lightning will train on for ``accelerator`` and ``devices`` ("auto", "-1",
    "2", "0,1", "[0, 1]")."""
    text = str(devices).strip().strip("[]").strip()
    if "," in text:
        return len([part for part in text.split(",") if part.strip()])
    if text not in ("auto", "-1"):
        return int(text) if text.isdigit() else 1
    if accelerator not in ("auto", "gpu", "cuda"):
        return 1  # CPU, MPS, TPU...: Lightning's "auto" means one device there
    import torch

    return max(1, torch.cuda.device_count())


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(text: str | float | int) -> float:
    """Seconds in "90s", "20m", "1h", "1h30m" or a plain number of seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        cleaned = str(text).strip().lower()
        try:
            seconds = float(cleaned)
        except ValueError:
            parts = _DURATION.findall(cleaned)
            if not parts or _DURATION.sub("", cleaned).strip():
                raise ConfigError(
                    f"Cannot read the time budget {text!r}: write e.g. '90s', '20m', '1h' or '1h30m'."
                ) from None
            seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in parts)
    if seconds <= 0:
        raise ConfigError(f"The time budget must be positive, got {text!r}.")
    return seconds
