"""The data side of the Lightning tier: your files -> train / val / test / predict batches.

``ClassificationData`` holds what images and texts share (the split, the loaders); ``ImageData``
adds the transforms (a stronger training augmentation than the Flash tier's), ``TextData`` the
tokenizer. The files are read by ``automl.data`` (folders, CSV, Parquet and JSONL files, saved
datasets), which makes the seeded, stratified split the Flash tier used, so scores compare.
Edit freely: this file is yours once ejected.
"""

from __future__ import annotations

from typing import cast

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from automl.backbones import image_normalization, load_tokenizer
from automl.data import CROP_PCT, ImageClassificationData, ImageFiles, TextClassificationData

from .config import TemplateConfig


def read_split(config: TemplateConfig):
    """The labelled samples of ``config.data``, split into training and validation."""
    data = ImageClassificationData if config.is_image else TextClassificationData
    return data.from_path(
        config.data,
        input_field=config.input_field,
        target_field=config.target_field,
        header=config.header,
        val_split=config.val_split,
        seed=config.seed,
    )


class ClassificationData(pl.LightningDataModule):
    """Batches of (inputs, class index) for the template's model.

    ``samples``: the data already read and split (an ``automl.data`` datamodule of the same ``data``,
    ``val_split`` and ``seed``), as ``automl run`` hands it to every escalation trial; by default it
    is read here.
    """

    def __init__(self, config: TemplateConfig, samples=None):
        super().__init__()
        self.config = config
        self.samples = samples if samples is not None else read_split(config)  # every loader serves these
        self.labels = self.samples.labels
        self.predict_samples: list = []  # set by whoever wants predictions (see automl predict)

    def dataset(self, samples: list, train: bool) -> Dataset:
        raise NotImplementedError

    def collate(self, batch):
        return torch.utils.data.default_collate(batch)

    def _loader(self, samples: list, train: bool) -> DataLoader:
        share = -(-len(samples) // (self.trainer.world_size if self.trainer is not None else 1))  # per process
        return DataLoader(
            self.dataset(samples, train),
            batch_size=self.config.batch_size,
            shuffle=train,
            drop_last=train and share > self.config.batch_size,  # a batch of one breaks BatchNorm
            num_workers=self.config.num_workers,
            collate_fn=self.collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.samples.train_samples, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.samples.val_samples, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.samples.test_samples or self.samples.val_samples, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_samples or self.samples.val_samples, train=False)


class ImageData(ClassificationData):
    def __init__(self, config: TemplateConfig, samples=None):
        super().__init__(config, samples)
        self.mean, self.std = image_normalization(config.backbone)  # what the backbone's weights expect

    def dataset(self, samples: list, train: bool) -> Dataset:
        return ImageFiles(samples, self.train_transform() if train else self.eval_transform())

    def train_transform(self):
        steps = [
            v2.RandomResizedCrop(self.config.image_size, scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if self.config.augment == "trivialaugment":
            steps.append(v2.TrivialAugmentWide())
        elif self.config.augment == "randaugment":
            steps.append(v2.RandAugment())
        return v2.Compose([*steps, *self._to_tensor()])

    def eval_transform(self):
        """Resize, centre-crop: what automl predict and serve do to an image (the Flash tier's too)."""
        size = self.config.image_size
        return v2.Compose([v2.Resize(round(size / CROP_PCT), antialias=True), v2.CenterCrop(size), *self._to_tensor()])

    def _to_tensor(self) -> list:
        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]


class TextData(ClassificationData):
    def __init__(self, config: TemplateConfig, samples=None):
        super().__init__(config, samples)
        self.tokenizer = load_tokenizer(config.backbone, config.weights)

    def dataset(self, samples: list, train: bool) -> Dataset:
        # (text, class index) pairs, a dataset to the DataLoader as any sequence is; the tokenizer runs per batch
        return cast(Dataset, list(samples))

    def collate(self, batch):
        texts, targets = zip(*batch, strict=True)
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
        )
        return dict(encoded), torch.tensor(targets, dtype=torch.long)


def make_datamodule(config: TemplateConfig, samples=None) -> ClassificationData:
    return (ImageData if config.is_image else TextData)(config, samples)
