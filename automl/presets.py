"""Presets: named bundles of ``automl run``'s options (``--preset``, ``preset:`` in YAML, ``preset=``
in Python). An option given explicitly wins over its preset's value; config.yaml records the preset
and every resolved value.

``fast``
    The task's default backbone only, heads on its cached features (a logistic regression on one
    pass over the data; no fine-tuning), images at 128 px, as many trials as a 1-minute budget
    holds, no escalation, no ensemble: a judged model in about a minute on the demo digits.
``balanced``
    The defaults: every backbone whose weights are here looked at, heads first, fine-tuning sized
    to the time left, escalation when the target is missed, an ensemble when it resolves a gain.
``best``
    A 20-minute budget unless given, and the budget is the only limit: fine-tuning and, when the
    target is missed, the Lightning tier's escalation get the time; 8 epochs a trial.
"""

from __future__ import annotations

from automl.errors import ConfigError

DEFAULT_PRESET = "balanced"


def preset_values(name: str, modality: str | None) -> dict:
    """The options preset ``name`` sets for a task of ``modality`` ("image" or "text"; explicit
    options are laid over them)."""
    from automl.backbones import DEFAULT_IMAGE_BACKBONE, DEFAULT_TEXT_BACKBONE

    default = DEFAULT_IMAGE_BACKBONE if modality == "image" else DEFAULT_TEXT_BACKBONE
    presets = {
        "fast": {
            "backbones": (default,),
            "search_space": {"strategy": ["freeze"]},
            **({"image_size": 128} if modality == "image" else {}),
            "time_budget": "1m",
            "escalate": False,
            "ensemble": False,
        },
        DEFAULT_PRESET: {},
        "best": {"time_budget": "20m", "epochs": 8},
    }
    if name not in presets:
        raise ConfigError(f"Unknown preset '{name}'. Presets: {', '.join(presets)}.")
    return presets[name]


PRESETS = ("fast", DEFAULT_PRESET, "best")
