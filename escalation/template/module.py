"""The model side of the Lightning tier: backbone + head, loss, metrics and optimiser.

``Classifier`` holds what images and texts share: the head, the loss (label smoothing, class
weights), the steps and metrics, discriminative learning rates and a warm-up + cosine schedule.
``ImageClassifier`` adds a timm backbone, mixup / cutmix, flip test-time augmentation and frozen
BatchNorm statistics; ``TextClassifier`` a transformers encoder, mean or CLS pooling and layer-wise
learning-rate decay. Every part is switchable from the config.
Edit freely: this file is yours once ejected.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import nn
from torchvision.transforms import v2

from automl.backbones import create_image_backbone, create_text_backbone
from automl.checkpoints import plain
from automl.errors import ConfigError
from automl.metrics import VAL_LOSS, build_metric_collection

from .config import TemplateConfig


def make_head(num_features: int, num_classes: int, dropout: float) -> nn.Module:
    """The classification head. Change it here (e.g. add a hidden layer) and escalation uses it."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))


def load_start(part: nn.Module, path: str, setting: str) -> None:
    """``part``'s tensors replaced by the state dict saved at ``path`` (the ``init_head`` or
    ``init_backbone`` setting): it must hold every tensor of ``part``, each of the same shape."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{setting} is '{path}', which does not exist.") from None
    own = part.state_dict()
    differences = [f"{key} is missing" for key in own if key not in state]
    differences += [f"{key} has no place in it" for key in state if key not in own]
    differences += [
        f"{key} is {tuple(state[key].shape)}, the model's {tuple(own[key].shape)}"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    if differences:
        more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        raise ConfigError(f"{setting} '{path}' does not fit this model: {'; '.join(differences[:3])}{more}.")
    part.load_state_dict(state)


class Classifier(pl.LightningModule):
    def __init__(self, config: TemplateConfig | dict, labels: list[str], class_weights: list[float] | None = None):
        super().__init__()
        config = TemplateConfig.of(config)
        # plain values, so that a checkpoint loads with weights_only=True (see on_save_checkpoint)
        self.save_hyperparameters({"config": config.to_dict(), "labels": list(labels), "class_weights": class_weights})
        self.config = config
        self.labels = list(labels)
        self.backbone, num_features = self.make_backbone()
        self.head = make_head(num_features, len(self.labels), config.dropout)
        # where training starts: saved weights when the config names them (automl's warm-start trial:
        # the Flash tier's best model), else the pretrained backbone and a random head
        if config.init_backbone:
            load_start(self.backbone, config.init_backbone, "init_backbone")
        if config.init_head:
            load_start(self.head, config.init_head, "init_head")
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
        self.val_metrics = build_metric_collection(len(self.labels), prefix="val_")
        self.test_metrics = build_metric_collection(len(self.labels), prefix="test_")

    def make_backbone(self) -> tuple[nn.Module, int]:
        """(the pretrained network, the size of the features it gives the head)."""
        raise NotImplementedError

    def features(self, inputs) -> torch.Tensor:
        return self.backbone(inputs)

    def forward(self, inputs) -> torch.Tensor:
        return self.head(self.features(inputs))

    def predict_logits(self, inputs) -> torch.Tensor:
        """Logits for evaluation and prediction."""
        return self(inputs)

    def mix(self, inputs, targets):
        """The training batch as the loss sees it (images: mixup / cutmix)."""
        return inputs, targets

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        hyper_parameters = plain(checkpoint.get("hyper_parameters", {}))
        if "config" in hyper_parameters:  # it holds its own weights: loading it reads no other file
            hyper_parameters["config"].update(init_head=None, init_backbone=None)
        checkpoint["hyper_parameters"] = hyper_parameters

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx: int):
        inputs, targets = self.mix(*batch)  # soft targets after mixing: CrossEntropyLoss takes them
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
        """The head at the full learning rate, the backbone lower (discriminative learning rates)."""
        lr = self.config.learning_rate
        return [
            {"params": list(self.head.parameters()), "lr": lr, "name": "head"},
            {"params": list(self.backbone.parameters()), "lr": lr * self.config.backbone_lr_ratio, "name": "backbone"},
        ]

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameter_groups(), weight_decay=self.config.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        steps_per_epoch = max(total // max(int(self.trainer.max_epochs or 1), 1), 1)
        # a trial the time budget cut to an epoch or two would otherwise spend all of it warming up
        warmup = min(int(self.config.warmup_epochs * steps_per_epoch), total // 10)

        def warmup_cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ImageClassifier(Classifier):
    def __init__(self, config: TemplateConfig | dict, labels: list[str], class_weights: list[float] | None = None):
        super().__init__(config, labels, class_weights)
        mixers = {"mixup": v2.MixUp, "cutmix": v2.CutMix}
        self.mixer = mixers[self.config.mix](num_classes=len(self.labels)) if self.config.mix in mixers else None

    def make_backbone(self) -> tuple[nn.Module, int]:
        config = self.config
        # init_backbone replaces every tensor: no pretrained weights to read first
        pretrained = config.pretrained and not config.init_backbone
        built = create_image_backbone(config.backbone, pretrained=pretrained, weights=config.weights)
        return built.model, built.num_features

    def mix(self, inputs, targets):
        return self.mixer(inputs, targets) if self.mixer is not None else (inputs, targets)

    def predict_logits(self, inputs) -> torch.Tensor:
        """With test-time augmentation, averaged with the mirrored image's logits."""
        logits = self(inputs)
        if self.config.tta:
            logits = (logits + self(torch.flip(inputs, dims=[3]))) / 2
        return logits

    def on_train_epoch_start(self) -> None:
        # A pretrained backbone normalises with its own BatchNorm statistics while their scale and
        # shift train: batch statistics of small batches far from ImageNet wreck a short fine-tune.
        if self.config.pretrained and self.config.keep_bn_statistics:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()


class TextClassifier(Classifier):
    def make_backbone(self) -> tuple[nn.Module, int]:
        config = self.config
        pretrained = config.pretrained and not config.init_backbone  # init_backbone replaces every tensor
        built = create_text_backbone(config.backbone, pretrained=pretrained, weights=config.weights)
        return built.model.train(), built.hidden_size

    def features(self, inputs) -> torch.Tensor:
        hidden = self.backbone(**inputs).last_hidden_state
        if self.config.pooling == "cls":
            return hidden[:, 0]
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def parameter_groups(self) -> list[dict]:
        """Layer-wise decay: each encoder layer's learning rate lower the further it is from the top."""
        layers = getattr(getattr(self.backbone, "encoder", None), "layer", None)
        decay = self.config.layer_decay
        if layers is None or decay >= 1.0:
            return super().parameter_groups()
        lr = self.config.learning_rate
        backbone_lr = lr * self.config.backbone_lr_ratio
        groups = [{"params": list(self.head.parameters()), "lr": lr, "name": "head"}]
        seen: set[int] = set()
        for depth, layer in enumerate(reversed(list(layers))):
            params = list(layer.parameters())
            seen.update(id(p) for p in params)
            groups.append(
                {"params": params, "lr": backbone_lr * decay**depth, "name": f"layer{len(layers) - 1 - depth}"}
            )
        rest = [p for p in self.backbone.parameters() if id(p) not in seen]  # embeddings, pooler
        groups.append({"params": rest, "lr": backbone_lr * decay ** len(layers), "name": "embeddings"})
        return groups


def model_class(config: TemplateConfig | dict) -> type[Classifier]:
    """The model for the config's task (also what loads its checkpoints: ``load_from_checkpoint``)."""
    return ImageClassifier if TemplateConfig.of(config).is_image else TextClassifier
