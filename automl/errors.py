"""One exception family for every mistake a user can make.

``automl.cli`` is the only place that turns these into messages and exit codes; library code raises
them with a message that says what went wrong *and* what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AutoMLError(Exception):
    """Base class of every error automl raises on purpose."""

    exit_code = 2


class DataError(AutoMLError):
    """The user's data cannot be used as given (missing path, one class, unreadable files...)."""


class WeightsUnavailable(AutoMLError):
    """Pretrained weights were asked for but none could be found locally or downloaded."""


class UnknownBackbone(AutoMLError):
    """The backbone name is not one we can build."""


class UnknownTask(AutoMLError):
    """The task name is not one automl knows."""


class ConfigError(AutoMLError):
    """An option or configuration value is invalid."""


class TargetSyntax(ConfigError):
    """The target string does not parse, names an unknown metric, or asks for an impossible value."""


class StoreUnavailable(AutoMLError):
    """The Optuna storage or the MLflow tracking store cannot be reached."""


def close_names(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` candidates that look like ``name`` (for "did you mean" hints)."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if len(matches) < n:
        lowered = name.lower()
        matches += [c for c in candidates if lowered in c.lower() and c not in matches][: n - len(matches)]
    return matches
