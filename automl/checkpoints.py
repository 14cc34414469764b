"""Checkpoints that load without running anybody's code.

Every checkpoint automl writes (Flash-tier trials and heads on cached features, Lightning-tier
trials, ``best/model.ckpt``) holds tensors and plain values only, so it loads with
``torch.load(..., weights_only=True)``: PyTorch's restricted unpickler, which builds tensors, dicts,
lists and scalars and refuses everything else. A run folder received from someone else is loaded
that way; a checkpoint that needs full pickle loading (which can call any function while it
loads) is refused unless its user passes ``--trust-checkpoint``.

No extra globals need allowing: Lightning's checkpoints (loops, callbacks, optimiser and scheduler
states, the weight-averaging callbacks included) are plain already, and ``plain`` keeps the
hyper-parameters so.

>>> state = load("runs/image_classification-1a2b3c4d5e/best/model.ckpt")
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

from automl.errors import AutoMLError

TRUST_OPTION = "--trust-checkpoint"
_PLAIN = (str, int, float, bool, type(None))


class UntrustedCode(AutoMLError):
    """Loading a file from a run folder would run code from it, and the user did not say they trust it."""


def plain(value, name: str = "hyper_parameters"):
    """``value`` as str/int/float/bool/None, lists and dicts of them: what ``weights_only`` loads.

    Paths become strings, tuples lists, NumPy scalars Python numbers; anything else is an error
    naming the key, raised when the checkpoint is written rather than when someone loads it.
    """
    if type(value) in _PLAIN:  # exactly: numpy.float64 is a float, but pickles as a NumPy global
        return value
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # NumPy scalars (pandas, a caller's code)
        return plain(value.item(), name)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {key: plain(item, f"{name}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item, f"{name}[{index}]") for index, item in enumerate(value)]
    raise TypeError(
        f"{name} is a {type(value).__name__}; a checkpoint's hyper-parameters must be str, int, float, bool, "
        "None, or lists and dicts of them, so that the checkpoint loads with weights_only=True."
    )


def refusal(path: str | Path, error: Exception) -> UntrustedCode:
    """The error for a checkpoint PyTorch's restricted unpickler refused: the file, what it holds, the fix."""
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Please| Check|$)", str(error), re.S)
    what = f" ({found.group(1).strip().rstrip('.')})" if found else ""
    return UntrustedCode(
        f"'{path}' is not a plain checkpoint{what}: loading it needs full pickle loading, which can run any "
        f"code it carries. Checkpoints written by automl never need it. Get the run folder again from its "
        f"source, or, only if you trust whoever made it, pass {TRUST_OPTION}."
    )


def _weights_only_refused(error: Exception) -> bool:
    return isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error)


def load(path: str | Path, trust: bool = False) -> dict:
    """The checkpoint's contents on the CPU, loaded with ``weights_only=True`` unless ``trust``."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        if _weights_only_refused(error):
            raise refusal(path, error) from None
        raise


def load_module(cls, path: str | Path, trust: bool = False, **kwargs):
    """``cls.load_from_checkpoint(path, **kwargs)`` on the CPU under the same rule as ``load``
    (Lightning's own default would be full pickle loading on PyTorch before 2.6)."""
    try:
        return cls.load_from_checkpoint(path, map_location="cpu", weights_only=not trust, **kwargs)
    except pickle.UnpicklingError as error:
        if _weights_only_refused(error):
            raise refusal(path, error) from None
        raise
