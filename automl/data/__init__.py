"""User data -> LightningDataModules.

>>> from automl.data import ImageClassificationData
>>> data = ImageClassificationData.from_folders("imgs/", val_split=0.2)
"""

from __future__ import annotations

from automl.data.image import ImageClassificationData, ImageFiles
from automl.data.text import TextClassificationData

#: the public data API (the Lightning-tier template uses ImageFiles, a Dataset of image files)
__all__ = ["ImageClassificationData", "ImageFiles", "TextClassificationData"]
