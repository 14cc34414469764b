"""Presets: named bundles of ``automl run``'s options (``--preset``, ``preset:`` in YAML, ``preset=``
in Python). An option given explicitly wins over its preset's value; config.yaml records the preset
and every resolved value.

``fast``
    The task's default backbone only, heads on its cached features (a logistic regression on one
    pass over the data; no fine-tuning), images at 128 px, 20 trials within a 1-minute budget, no
    escalation, no ensemble: a judged model in about a minute on the demo digits.
``balanced``
    The defaults: every backbone whose weights are here looked at, heads first, fine-tuning sized
    to the time left, escalation when the target is missed, an ensemble when it resolves a gain.
``best``
    The budget is the limit (200 trials, 20-minute budget unless given): fine-tuning and, when the
    target is missed, the Lightning tier's escalation (50 trials) get the time; 8 epochs a trial.
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
            "trials": 20,
            "time_budget": "1m",
            "escalate": False,
            "ensemble": False,
        },
        DEFAULT_PRESET: {},
        "best": {"trials": 200, "time_budget": "20m", "escalation_trials": 50, "epochs": 8},
    }
    if name not in presets:
        raise ConfigError(f"Unknown preset '{name}'. Presets: {', '.join(presets)}.")
    return presets[name]


PRESETS = ("fast", DEFAULT_PRESET, "best")
