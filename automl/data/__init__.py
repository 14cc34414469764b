"""User data -> LightningDataModules.

>>> from automl.data import ImageClassificationData
>>> data = ImageClassificationData.from_folders("imgs/", val_split=0.2)
"""

from __future__ import annotations

from automl.data.image import CROP_PCT, ImageClassificationData, ImageFiles
from automl.data.text import TextClassificationData

#: the public data API (the Lightning-tier template uses ImageFiles, a Dataset of image files, and
#: CROP_PCT, the evaluation crop every image model shares)
__all__ = ["CROP_PCT", "ImageClassificationData", "ImageFiles", "TextClassificationData"]
