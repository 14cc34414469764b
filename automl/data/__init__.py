"""User data -> LightningDataModules.

>>> from automl.data import ImageClassificationData
>>> data = ImageClassificationData.from_folders("imgs/", val_split=0.2)
"""

from __future__ import annotations

from automl.data.image import ImageClassificationData
from automl.data.text import TextClassificationData

__all__ = ["ImageClassificationData", "TextClassificationData"]
