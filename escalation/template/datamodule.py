"""The data side of the Lightning tier: your files -> train / val / test / predict batches.

Built on ``automl.data`` (which reads folders, CSV, Parquet and JSONL files and saved datasets, and
makes the seeded, stratified split the Flash tier used, so scores compare), with a stronger training
augmentation for images.
Edit freely: this file is yours once ejected.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from automl.backbones import image_normalization, load_tokenizer
from automl.data import ImageClassificationData, ImageFiles, TextClassificationData

AUGMENTATIONS = ("none", "trivialaugment", "randaugment")


def load_split(config: dict):
    """The automl datamodule holding the labelled samples of ``config["data"]``."""
    path = Path(config["data"])
    common = {"val_split": config.get("val_split", 0.2), "seed": config.get("seed", 42)}
    fields = {
        "input_field": config.get("input_field"),
        "target_field": config.get("target_field"),
        "header": config.get("header", True),
    }
    data = ImageClassificationData if config["task"] == "image_classification" else TextClassificationData
    return data.from_path(path, **fields, **common)


class TemplateDataModule(pl.LightningDataModule):
    """Batches for the template's LightningModule, images or texts, as ``config`` describes."""

    def __init__(self, config: dict, samples=None):
        """``samples``: the data already read and split (an ``automl.data`` datamodule of the same
        ``data``, ``val_split`` and ``seed``), as ``automl run`` hands it to every escalation trial;
        by default it is read here."""
        super().__init__()
        self.config = config
        self.is_image = config["task"] == "image_classification"
        self.batch_size = int(config.get("batch_size", 32))
        self.num_workers = int(config.get("num_workers", 0))
        self.samples = samples if samples is not None else load_split(config)  # every loader serves these
        self.labels = self.samples.labels
        self.predict_samples = []  # set by whoever wants predictions (see automl predict)
        if self.is_image:
            self.image_size = int(config.get("image_size", 224))
            self.mean, self.std = image_normalization(config["backbone"])
        else:
            self.tokenizer = load_tokenizer(config["backbone"], config.get("weights"))
            self.max_length = int(config.get("max_length", 128))

    # ------------------------------------------------------------------ transforms (images)
    def train_transform(self):
        augment = self.config.get("augment", "trivialaugment")
        steps = [v2.RandomResizedCrop(self.image_size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        if augment == "trivialaugment":
            steps.append(v2.TrivialAugmentWide())
        elif augment == "randaugment":
            steps.append(v2.RandAugment())
        return v2.Compose([*steps, *self._to_tensor()])

    def eval_transform(self):
        resize = int(round(self.image_size / 0.875))
        return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(self.image_size), *self._to_tensor()])

    def _to_tensor(self):
        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]

    # ------------------------------------------------------------------ batching (texts)
    def collate_texts(self, batch):
        texts, targets = zip(*batch, strict=True)
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(encoded), torch.tensor(targets, dtype=torch.long)

    # ------------------------------------------------------------------ loaders
    def _loader(self, samples, train: bool) -> DataLoader:
        if self.is_image:
            dataset = ImageFiles(samples, self.train_transform() if train else self.eval_transform())
            collate = None
        else:
            dataset, collate = list(samples), self.collate_texts
        share = -(-len(samples) // (self.trainer.world_size if self.trainer is not None else 1))  # per process
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and share > self.batch_size,  # a batch of one breaks BatchNorm
            num_workers=self.num_workers,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.samples.train_samples, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.samples.val_samples, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.samples.test_samples or self.samples.val_samples, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_samples or self.samples.val_samples, train=False)
