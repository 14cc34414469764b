"""The Flash tier's tasks: ``ImageClassifier`` and ``TextClassifier`` (LightningModules).

A task wires a backbone and a head built by functions in :mod:`automl.backbones`; the
training, metrics and optimiser logic is shared by :class:`ClassificationTask`.

>>> model = ImageClassifier(backbone="tf_efficientnet_lite0", labels=data.labels)
>>> trainer = finetune(model, data, strategy="freeze", max_epochs=3)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch import nn

from automl import backbones as bb
from automl import metrics as m
from automl.checkpoints import plain
from automl.errors import ConfigError, DataError

OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULERS = (None, "cosine", "step")
POOLINGS = ("mean", "cls")
#: the normalisation image checkpoints saved before they stored their own were trained with, where it
#: differs from what the backbone's name gives today ("efficientnet_lite0" then meant the TensorFlow weights)
LEGACY_NORMALIZATION = {"efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def make_head(num_features: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """The classification head: dropout then one linear layer."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))


class ClassificationTask(pl.LightningModule):
    """Training, validation, test and prediction steps shared by every classification task.

    Subclasses set ``self.backbone`` and ``self.head`` and implement ``forward``.
    """

    def __init__(
        self,
        labels: Sequence[str] | int,
        learning_rate: float = 1e-3,
        optimizer: str = "adamw",
        lr_scheduler: str | None = None,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if isinstance(labels, int):
            labels = [str(i) for i in range(labels)]
        self.labels = [str(label) for label in labels]
        if len(self.labels) < 2:
            raise ConfigError(f"A classifier needs at least two labels, got {self.labels}.")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer '{optimizer}'. Choose one of: {', '.join(OPTIMIZERS)}.")
        if lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"Unknown lr_scheduler '{lr_scheduler}'. Choose one of: None, cosine, step.")
        self.learning_rate = learning_rate
        self.optimizer_name = optimizer
        self.lr_scheduler_name = lr_scheduler
        self.weight_decay = weight_decay
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.val_metrics = m.build_metric_collection(self.num_classes, prefix="val_")
        self.test_metrics = m.build_metric_collection(self.num_classes, prefix="test_")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    # ------------------------------------------------------------------ fitting hooks
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # plain values only, so that the checkpoint loads with weights_only=True (automl.checkpoints)
        checkpoint["hyper_parameters"] = plain(checkpoint.get("hyper_parameters", {}))

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        labels = getattr(datamodule, "labels", None)
        if labels is not None and list(labels) != self.labels:
            raise DataError(
                f"The data's labels {list(labels)} differ from the model's {self.labels}. "
                "Build the model with labels=data.labels."
            )

    def training_step(self, batch, batch_idx: int):
        inputs, targets = batch
        logits = self(inputs)
        loss = self.criterion(logits, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"The training loss became {loss.item()} at step {self.global_step}.")
        accuracy = (logits.argmax(dim=-1) == targets).float().mean()
        batch_size = targets.shape[0]
        # sync_dist: epoch values averaged over the processes of a distributed fit (a no-op otherwise)
        self.log(m.TRAIN_LOSS, loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size, sync_dist=True)
        self.log(m.TRAIN_ACCURACY, accuracy, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)
        return loss

    def _evaluate(self, batch, metrics, loss_name: str) -> None:
        inputs, targets = batch
        logits = self(inputs)
        loss = self.criterion(logits, targets)
        self.log(loss_name, loss, prog_bar=True, on_epoch=True, batch_size=targets.shape[0], sync_dist=True)
        metrics.update(logits.softmax(dim=-1), targets)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, m.VAL_LOSS)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test_loss")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def _log_metrics(self, metrics) -> None:
        values = metrics.compute()
        metrics.reset()
        for name, value in values.items():
            # torchmetrics already gathered every process's predictions: the value is the same on each
            self.log(name, value, prog_bar=name.endswith(("accuracy", "f1_macro")), on_epoch=True, sync_dist=True)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Class probabilities, one row per input."""
        inputs, _ = batch
        return self(inputs).softmax(dim=-1)

    def configure_optimizers(self):
        # Frozen parameters stay out of the optimiser; BaseFinetuning adds them when it unfreezes.
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(params, lr=self.learning_rate, momentum=0.9, weight_decay=self.weight_decay)
        elif self.optimizer_name == "adam":
            optimizer = torch.optim.Adam(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        if self.lr_scheduler_name is None:
            return optimizer
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        if self.lr_scheduler_name == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        else:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(epochs // 3, 1), gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class ImageClassifier(ClassificationTask):
    """A timm backbone + a linear head.

    >>> model = ImageClassifier(backbone="tf_efficientnet_lite0", labels=["cat", "dog"])

    Its checkpoints keep the input normalisation it was trained with (``normalization``), so that a
    reload with ``pretrained=False`` serves inputs the same way whatever the registry says later.
    """

    def __init__(
        self,
        labels: Sequence[str] | int,
        backbone: str = bb.DEFAULT_IMAGE_BACKBONE,
        pretrained: bool = True,
        weights: str | os.PathLike | None = None,
        learning_rate: float = 1e-3,
        optimizer: str = "adamw",
        lr_scheduler: str | None = None,
        dropout: float = 0.0,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__(labels, learning_rate, optimizer, lr_scheduler, weight_decay, label_smoothing)
        self.save_hyperparameters()
        built = bb.create_image_backbone(backbone, pretrained=pretrained, weights=weights)
        self.backbone = built.model
        self.head = make_head(built.num_features, self.num_classes, dropout)
        self.normalization = (built.mean, built.std)
        self.weights_source = built.source

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["normalization"] = [list(self.normalization[0]), list(self.normalization[1])]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("normalization")
        if saved is None:  # saved before checkpoints held it: what the registry said then
            saved = LEGACY_NORMALIZATION.get(checkpoint.get("hyper_parameters", {}).get("backbone"))
        if saved is not None:
            self.normalization = (tuple(saved[0]), tuple(saved[1]))

    @staticmethod
    def available_backbones() -> list[str]:
        return bb.available_backbones(bb.IMAGE)

    def input_options(self) -> dict:
        """What a datamodule should do to images for this model (its ``configure``)."""
        return {"mean": self.normalization[0], "std": self.normalization[1]}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's output, which the head maps to logits (what ensemble members that share a
        frozen backbone compute once)."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class TextClassifier(ClassificationTask):
    """A transformers encoder, mean (or CLS) pooling and a linear head.

    >>> model = TextClassifier(backbone="all-MiniLM-L6-v2", labels=["neg", "pos"])
    """

    def __init__(
        self,
        labels: Sequence[str] | int,
        backbone: str = bb.DEFAULT_TEXT_BACKBONE,
        pretrained: bool = True,
        weights: str | os.PathLike | None = None,
        max_length: int = 128,
        pooling: str = "mean",
        learning_rate: float = 1e-3,
        optimizer: str = "adamw",
        lr_scheduler: str | None = None,
        dropout: float = 0.1,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__(labels, learning_rate, optimizer, lr_scheduler, weight_decay, label_smoothing)
        if pooling not in POOLINGS:
            raise ConfigError(f"Unknown pooling '{pooling}'. Choose one of: {', '.join(POOLINGS)}.")
        self.save_hyperparameters()
        built = bb.create_text_backbone(backbone, pretrained=pretrained, weights=weights)
        self.backbone = built.model.train()  # from_pretrained returns eval mode; Lightning expects train mode
        self.head = make_head(built.hidden_size, self.num_classes, dropout)
        self.tokenizer_source = built.tokenizer_source
        self.max_length = max_length
        self.pooling = pooling
        self.weights_source = built.source

    @staticmethod
    def available_backbones() -> list[str]:
        return bb.available_backbones(bb.TEXT)

    def input_options(self) -> dict:
        """What a datamodule should do to texts for this model (its ``configure``)."""
        return {"tokenizer": self.tokenizer_source, "max_length": self.max_length}

    def features(self, encoded: dict) -> torch.Tensor:
        """The pooled encoder output, which the head maps to logits."""
        hidden = self.backbone(**encoded).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        # Mean over real tokens only: how sentence-transformers models were trained.
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def forward(self, encoded: dict) -> torch.Tensor:
        return self.head(self.features(encoded))
