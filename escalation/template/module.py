"""The model side of the Lightning tier: backbone + head, loss, metrics and optimiser.

A stronger recipe than the Flash tier, every part switchable from ``config``:
discriminative learning rates (backbone vs head), warm-up + cosine schedule, label smoothing,
class-weighted loss, mixup / cutmix and flip test-time augmentation for images, layer-wise
learning-rate decay and mean or CLS pooling for text. Edit freely: this file is yours once ejected.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import nn
from torchvision.transforms import v2

from automl.backbones import create_image_backbone, create_text_backbone
from automl.checkpoints import plain
from automl.metrics import VAL_LOSS, build_metric_collection


def make_head(num_features: int, num_classes: int, dropout: float) -> nn.Module:
    """The classification head. Change it here (e.g. add a hidden layer) and escalation uses it."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))


class TemplateModule(pl.LightningModule):
    def __init__(self, config: dict, labels: list[str], class_weights: list[float] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.config = config
        self.labels = list(labels)
        self.is_image = config["task"] == "image_classification"
        pretrained = config.get("pretrained", True)
        if self.is_image:
            built = create_image_backbone(config["backbone"], pretrained=pretrained, weights=config.get("weights"))
            self.backbone, num_features = built.model, built.num_features
        else:
            built = create_text_backbone(config["backbone"], pretrained=pretrained, weights=config.get("weights"))
            self.backbone, num_features = built.model.train(), built.hidden_size
        self.head = make_head(num_features, len(self.labels), config.get("dropout", 0.1))
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.get("label_smoothing", 0.1))
        self.val_metrics = build_metric_collection(len(self.labels), prefix="val_")
        self.test_metrics = build_metric_collection(len(self.labels), prefix="test_")
        self.mix = self._make_mix(config.get("mix", "none"))

    def _make_mix(self, kind: str):
        if not self.is_image or kind == "none":
            return None
        if kind == "mixup":
            return v2.MixUp(num_classes=len(self.labels))
        return v2.CutMix(num_classes=len(self.labels))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # plain values only, so that `automl predict` loads the checkpoint with weights_only=True
        checkpoint["hyper_parameters"] = plain(checkpoint.get("hyper_parameters", {}))

    # ------------------------------------------------------------------ forward
    def forward(self, inputs) -> torch.Tensor:
        if self.is_image:
            return self.head(self.backbone(inputs))
        hidden = self.backbone(**inputs).last_hidden_state
        if self.config.get("pooling", "mean") == "cls":
            pooled = hidden[:, 0]
        else:
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return self.head(pooled)

    def predict_logits(self, inputs) -> torch.Tensor:
        """Logits for evaluation; with test-time augmentation, averaged with the mirrored image's."""
        logits = self(inputs)
        if self.is_image and self.config.get("tta", False):
            logits = (logits + self(torch.flip(inputs, dims=[3]))) / 2
        return logits

    # ------------------------------------------------------------------ steps
    def on_train_epoch_start(self) -> None:
        # A pretrained backbone normalises with its own BatchNorm statistics while their scale and
        # shift train: batch statistics of small batches far from ImageNet wreck a short fine-tune.
        if self.config.get("pretrained", True) and self.config.get("keep_bn_statistics", True):
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def training_step(self, batch, batch_idx: int):
        inputs, targets = batch
        if self.mix is not None:
            inputs, targets = self.mix(inputs, targets)  # soft targets: CrossEntropyLoss takes them
        loss = self.criterion(self(inputs), targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"The training loss became {loss.item()} at step {self.global_step}.")
        # sync_dist: averaged over the processes of a distributed fit (a no-op in one process)
        self.log(
            "train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch[1]), sync_dist=True
        )
        return loss

    def _evaluate(self, batch, metrics, loss_name: str) -> None:
        inputs, targets = batch
        logits = self.predict_logits(inputs)
        loss = self.criterion(logits, targets)
        self.log(loss_name, loss, prog_bar=True, on_epoch=True, batch_size=len(targets), sync_dist=True)
        metrics.update(logits.softmax(dim=-1), targets)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, VAL_LOSS)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True, on_epoch=True, sync_dist=True)
        self.val_metrics.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test_loss")

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), on_epoch=True, sync_dist=True)
        self.test_metrics.reset()

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        inputs, _ = batch
        return self.predict_logits(inputs).softmax(dim=-1)

    # ------------------------------------------------------------------ optimiser
    def parameter_groups(self) -> list[dict]:
        """The head at the full learning rate; the backbone lower (discriminative learning rates);
        for text, each encoder layer lower still the further it is from the top (layer-wise decay)."""
        lr = self.config.get("learning_rate", 1e-3)
        backbone_lr = lr * self.config.get("backbone_lr_ratio", 0.1)
        groups = [{"params": list(self.head.parameters()), "lr": lr, "name": "head"}]
        decay = self.config.get("layer_decay", 1.0)
        layers = getattr(getattr(self.backbone, "encoder", None), "layer", None)
        if self.is_image or layers is None or decay >= 1.0:
            groups.append({"params": list(self.backbone.parameters()), "lr": backbone_lr, "name": "backbone"})
            return groups
        seen = set()
        for depth, layer in enumerate(reversed(list(layers))):
            params = list(layer.parameters())
            seen.update(id(p) for p in params)
            groups.append(
                {"params": params, "lr": backbone_lr * decay**depth, "name": f"layer{len(layers) - 1 - depth}"}
            )
        rest = [p for p in self.backbone.parameters() if id(p) not in seen]  # embeddings, pooler
        groups.append({"params": rest, "lr": backbone_lr * decay ** len(layers), "name": "embeddings"})
        return groups

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameter_groups(), weight_decay=self.config.get("weight_decay", 0.01))
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        steps_per_epoch = max(total // max(int(self.trainer.max_epochs or 1), 1), 1)
        # a trial the time budget cut to an epoch or two would otherwise spend all of it warming up
        warmup = min(int(self.config.get("warmup_epochs", 1) * steps_per_epoch), total // 10)

        def warmup_cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
