"""The Lightning tier of automl: a LightningModule and a LightningDataModule for image or text
classification, in plain PyTorch Lightning.

    config.py      TemplateConfig: every setting and its default, in one place
    datamodule.py  the data: ClassificationData, with ImageData (transforms) and TextData (tokenizer)
    module.py      the model: Classifier, with ImageClassifier and TextClassifier; make_head
    train.py       the Trainer and its callbacks: fit(config) -> FitResult, and main() for the command line

Train it with ``python -m template --config config.yaml`` from the folder above this one. Edit any
file; ``automl run --template FOLDER`` tunes and judges your version. What automl calls is the four
names below: keep them (and their arguments) when you edit.
"""

from .config import TemplateConfig
from .datamodule import make_datamodule
from .module import model_class
from .train import fit

__all__ = ["TemplateConfig", "fit", "make_datamodule", "model_class"]
