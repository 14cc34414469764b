"""A search space the user shapes: the ``search_space:`` section of a run's YAML (``search_space=`` in
Python), checked against the knobs the code has before anything runs.

.. code-block:: yaml

    search_space:
      backbone: tf_efficientnet_lite1          # a value: the knob is fixed
      learning_rate: [1.0e-4, 3.0e-3]          # two numbers: a range inside the built-in one
      strategy: [freeze, freeze_unfreeze:1]    # a list of a choice knob: those choices only
      lightning:                               # the Lightning tier's own knobs
        weight_averaging: [none, ema]

Knobs both tiers share (``learning_rate``, ``batch_size``, ``backbone``, ``weight_decay``,
``dropout``, ``epochs``, ``label_smoothing``, ``image_size`` / ``max_length``) shape both tiers'
studies; ``strategy`` and ``augment`` at the top are the Flash tier's. ``automl.space`` applies the
shape (:class:`Shape`) when it suggests a trial's parameters and when it enqueues the first trials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from automl.errors import ConfigError

FIXED, RANGE, CHOICES = "fixed", "range", "choices"
#: the section of the Lightning tier's own knobs
LIGHTNING = "lightning"


@dataclass(frozen=True)
class Knob:
    """One knob of the built-in space: a float or int range (``low``-``high``, the bounds a shaped
    range must lie in) or a choice (``choices``: the only values allowed; None: any value of ``kind``)."""

    kind: type  # float, int, str or bool
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    modality: str | None = None  # "image" or "text" when only that task has it

    @property
    def ranged(self) -> bool:
        return self.low is not None

    def allowed(self) -> str:
        if self.ranged:
            return f"{self.kind.__name__}s from {self.low:g} to {self.high:g}"
        if self.choices is not None:
            return ", ".join(str(c) for c in self.choices)
        return "any whole number from 1" if self.kind is int else f"any {self.kind.__name__}"


#: the knobs both tiers share, with the ranges the code supports (automl.space samples inside them)
SHARED = {
    "learning_rate": Knob(float, 1e-4, 3e-2),
    "weight_decay": Knob(float, 1e-6, 1.0),
    "dropout": Knob(float, 0.0, 0.5),
    "label_smoothing": Knob(float, 0.0, 0.2),
    "epochs": Knob(int, 1, 100),
    "batch_size": Knob(int),
    "backbone": Knob(str),
    "image_size": Knob(int, modality="image"),
    "max_length": Knob(int, modality="text"),
}
#: the Flash tier's own
FLASH = {
    **SHARED,
    "strategy": Knob(str, choices=("freeze", "freeze_unfreeze:1", "no_freeze")),
    "augment": Knob(bool, choices=(True, False), modality="image"),
}
#: the Lightning tier's own (escalation/template), under ``lightning:``
TEMPLATE = {
    "backbone_lr_ratio": Knob(float, 0.01, 1.0),
    "warmup_epochs": Knob(int, 0, 5),
    "gradient_clip": Knob(float, choices=(0.0, 1.0)),
    "weight_averaging": Knob(str, choices=("none", "ema", "swa")),
    "class_weighted": Knob(bool, choices=(True, False)),
    "augment": Knob(str, choices=("none", "trivialaugment", "randaugment"), modality="image"),
    "mix": Knob(str, choices=("none", "mixup", "cutmix"), modality="image"),
    "tta": Knob(bool, choices=(True, False), modality="image"),
    "pooling": Knob(str, choices=("mean", "cls"), modality="text"),
    "layer_decay": Knob(float, 0.6, 1.0, modality="text"),
}


@dataclass(frozen=True)
class Shape:
    """A checked ``search_space:`` section: for each shaped knob, ``(FIXED, value)``, ``(RANGE, low,
    high)`` or ``(CHOICES, values)``; ``flash`` holds the shared and Flash-tier knobs, ``lightning``
    the Lightning tier's own."""

    flash: tuple[tuple[str, tuple], ...] = ()
    lightning: tuple[tuple[str, tuple], ...] = ()

    def of(self, tier: str) -> dict[str, tuple]:
        """The knobs shaped for ``tier``'s study: the shared ones, and the tier's own."""
        if tier == LIGHTNING:
            return {**{k: v for k, v in self.flash if k in SHARED}, **dict(self.lightning)}
        return dict(self.flash)

    def __bool__(self) -> bool:
        return bool(self.flash or self.lightning)


def check(values: dict | None, modality: str) -> Shape:
    """``values`` (the YAML section) checked against the built-in knobs of ``modality``'s task: an
    unknown name, a value of the wrong type, or a range or choice outside what the code supports is a
    ``ConfigError`` naming the knob and what it allows."""
    if not values:
        return Shape()
    if not isinstance(values, dict):
        raise ConfigError(f"search_space must map knob names to values, got {type(values).__name__}.")
    own = values.get(LIGHTNING) or {}
    if not isinstance(own, dict):
        raise ConfigError(f"search_space.{LIGHTNING} must map the Lightning tier's knobs to values.")
    flash = _section({k: v for k, v in values.items() if k != LIGHTNING}, FLASH, modality, "search_space")
    lightning = _section(own, TEMPLATE, modality, f"search_space.{LIGHTNING}")
    return Shape(flash, lightning)


def _section(values: dict, knobs: dict[str, Knob], modality: str, where: str) -> tuple[tuple[str, tuple], ...]:
    known = {name: knob for name, knob in knobs.items() if knob.modality in (None, modality)}
    shaped = []
    for name, value in values.items():
        if name not in known:
            raise ConfigError(
                f"{where}: unknown knob '{name}' for this task. Knobs: {', '.join(sorted(known))}"
                + (f"; the Lightning tier's own go under {LIGHTNING}:." if where == "search_space" else ".")
            )
        shaped.append((name, _spec(f"{where}.{name}", known[name], value)))
    return tuple(shaped)


def _spec(where: str, knob: Knob, value: Any) -> tuple:
    if isinstance(value, list | tuple):
        if not value:
            raise ConfigError(f"{where}: an empty list leaves nothing to try. It allows {knob.allowed()}.")
        if knob.ranged and len(value) == 2 and not isinstance(value[0], bool):
            low, high = (_value(where, knob, v) for v in value)
            if low > high:
                raise ConfigError(f"{where}: the range [{low:g}, {high:g}] is upside down.")
            return (RANGE, low, high)
        if knob.ranged:
            raise ConfigError(
                f"{where}: a range is two numbers [low, high], got {value!r}. It allows {knob.allowed()}."
            )
        choices = tuple(dict.fromkeys(_value(where, knob, v) for v in value))
        return (FIXED, choices[0]) if len(choices) == 1 else (CHOICES, choices)
    return (FIXED, _value(where, knob, value))


def _value(where: str, knob: Knob, value: Any):
    """One value of ``knob``, converted to its type (YAML reads ``1e-4`` as a string) and checked."""
    try:
        if knob.kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            converted: Any = value
        elif knob.kind is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            converted = int(float(value))
        elif knob.kind is float:
            if isinstance(value, bool):
                raise ValueError
            converted = float(value)
        else:
            converted = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a {knob.kind.__name__}. It allows {knob.allowed()}.") from None
    outside = (knob.ranged and not knob.low <= converted <= knob.high) or (  # type: ignore[operator]
        knob.choices is not None and converted not in knob.choices
    )
    if outside or (knob.kind is int and not knob.ranged and converted < 1):
        raise ConfigError(f"{where}: {value!r} is outside what automl supports. It allows {knob.allowed()}.")
    return converted
