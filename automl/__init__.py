"""automl: a pretrained baseline, an Optuna-tuned version of it, and a Lightning-tier escalation.

Importing ``automl`` is cheap; ``AutoML`` (the whole run from Python) loads what it needs when first
used, and the Flash-tier API lives in submodules:

>>> from automl import AutoML
>>> from automl.data import ImageClassificationData
>>> from automl.flash import ImageClassifier, finetune
"""

from automl.version import __version__

__all__ = ["AutoML", "Verdict", "__version__"]


def __getattr__(name: str):
    if name in ("AutoML", "Verdict"):
        from automl import api

        return getattr(api, name)
    raise AttributeError(f"module 'automl' has no attribute {name!r}")
