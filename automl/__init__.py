"""automl: a pretrained baseline, an Optuna-tuned version of it, and a Lightning-tier escalation.

Importing ``automl`` is cheap; the Flash-tier API lives in submodules:

>>> from automl.data import ImageClassificationData
>>> from automl.flash import ImageClassifier, finetune
"""

__version__ = "0.1.0"
