"""The Flash tier: pretrained backbone + head, trained in a few lines.

>>> from automl.data import ImageClassificationData
>>> from automl.flash import ImageClassifier, finetune
>>> data = ImageClassificationData.from_folders("imgs/")
>>> model = ImageClassifier(backbone="tf_efficientnet_lite0", labels=data.labels)
>>> trainer = finetune(model, data, strategy="freeze", max_epochs=3)
"""

from __future__ import annotations

from automl.backbones import available_backbones
from automl.flash.finetuning import finetune
from automl.flash.tasks import ImageClassifier, TextClassifier

__all__ = ["ImageClassifier", "TextClassifier", "available_backbones", "finetune"]
