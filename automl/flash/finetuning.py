"""Fine-tuning strategies with Flash's names, on Lightning's ``BaseFinetuning``.

- ``"no_freeze"``: train everything from the first step.
- ``"freeze"``: train only the head; the backbone (parameters *and* BatchNorm statistics) never changes.
- ``("freeze_unfreeze", n)``: head only, then the whole backbone from epoch ``n`` at a tenth of the lr.
- ``("unfreeze_milestones", ((e1, e2), k))``: head only, the last ``k`` backbone layers from epoch
  ``e1``, everything from epoch ``e2``.

On the command line the same strategies read ``freeze_unfreeze:2`` and ``unfreeze_milestones:1,3,2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning, ProgressBar, RichProgressBar
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from automl.errors import ConfigError
from automl.progress import EpochLines, plain

STRATEGIES = ("no_freeze", "freeze", "freeze_unfreeze", "unfreeze_milestones")


@dataclass(frozen=True)
class Strategy:
    name: str
    unfreeze_epoch: int | None = None  # freeze_unfreeze
    milestones: tuple[int, int] | None = None  # unfreeze_milestones
    num_layers: int | None = None  # unfreeze_milestones

    def as_flash(self):
        """The strategy in Flash's Python form (a string or a tuple)."""
        if self.name == "freeze_unfreeze":
            return (self.name, self.unfreeze_epoch)
        if self.name == "unfreeze_milestones":
            return (self.name, (self.milestones, self.num_layers))
        return self.name

    def __str__(self) -> str:
        if self.name == "freeze_unfreeze":
            return f"freeze_unfreeze:{self.unfreeze_epoch}"
        if self.name == "unfreeze_milestones" and self.milestones is not None:
            return f"unfreeze_milestones:{self.milestones[0]},{self.milestones[1]},{self.num_layers}"
        return self.name


_USAGE = (
    "Use 'no_freeze', 'freeze', ('freeze_unfreeze', EPOCH) or ('unfreeze_milestones', ((E1, E2), N_LAYERS)); "
    "on the command line 'freeze_unfreeze:EPOCH' or 'unfreeze_milestones:E1,E2,N_LAYERS'."
)


def parse_strategy(value) -> Strategy:
    """Accept Flash's forms (``"freeze"``, ``("freeze_unfreeze", 2)``, ...) and the CLI's strings."""
    if isinstance(value, Strategy):
        return value
    try:
        if isinstance(value, str) and ":" in value:
            name, _, args = value.partition(":")
            numbers = [int(a) for a in args.split(",")]
            value = (name, numbers[0]) if name == "freeze_unfreeze" else (name, ((numbers[0], numbers[1]), numbers[2]))
        if isinstance(value, str):
            if value in ("no_freeze", "freeze"):
                return Strategy(value)
            raise ValueError
        name, arg = value
        if name == "freeze_unfreeze":
            return Strategy(name, unfreeze_epoch=int(arg))
        if name == "unfreeze_milestones":
            (first, second), layers = arg
            if not 0 <= int(first) <= int(second) or int(layers) < 1:
                raise ValueError
            return Strategy(name, milestones=(int(first), int(second)), num_layers=int(layers))
    except (ValueError, TypeError, IndexError):
        pass
    raise ConfigError(f"Unknown fine-tuning strategy {value!r}. {_USAGE}")


def backbone_layers(backbone: nn.Module) -> list[nn.Module]:
    """The backbone as an ordered list of layers (stages and blocks), input side first.

    Containers (``nn.Sequential``/``nn.ModuleList``, e.g. timm's ``blocks`` or BERT's
    ``encoder.layer``) are opened so that "the last k layers" means the last k blocks.
    """
    layers: list[nn.Module] = []
    for child in backbone.children():
        inner = list(child.children())
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            layers.extend(inner)
        elif len(inner) == 1 and isinstance(inner[0], (nn.Sequential, nn.ModuleList)):
            layers.extend(inner[0].children())
        else:
            layers.append(child)
    return layers


def freeze(module: nn.Module) -> None:
    """Stop gradients for every parameter of ``module`` (BatchNorm statistics are frozen by mode)."""
    for param in module.parameters():
        param.requires_grad = False


class FlashFinetuning(BaseFinetuning):
    """Applies a :class:`Strategy` to ``pl_module.backbone`` during ``Trainer.fit``."""

    def __init__(self, strategy="freeze", unfreeze_lr_factor: float = 0.1):
        super().__init__()
        self.strategy = parse_strategy(strategy)
        self.unfreeze_lr_factor = unfreeze_lr_factor

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        if self.strategy.name != "no_freeze":
            freeze(backbone_of(pl_module))

    def _unfreeze(self, modules, optimizer) -> None:
        lr = optimizer.param_groups[0]["lr"] * self.unfreeze_lr_factor
        self.unfreeze_and_add_param_group(modules, optimizer, lr=lr, train_bn=True)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer) -> None:
        strategy = self.strategy
        if strategy.name == "freeze_unfreeze" and epoch == strategy.unfreeze_epoch:
            self._unfreeze(backbone_of(pl_module), optimizer)
        elif strategy.name == "unfreeze_milestones" and strategy.milestones and strategy.num_layers is not None:
            layers = backbone_layers(backbone_of(pl_module))
            (first, second), last = strategy.milestones, strategy.num_layers
            if epoch == first:
                self._unfreeze(layers[-last:], optimizer)
            if epoch == second:
                self._unfreeze(layers[:-last] or layers, optimizer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        pretrained = bool(getattr(pl_module, "hparams", {}).get("pretrained", False))
        set_frozen_modes(backbone_of(pl_module), keep_statistics=pretrained)


def backbone_of(module: pl.LightningModule) -> nn.Module:
    """The part a strategy freezes: every Flash-tier task (and the template's model) names it ``backbone``."""
    backbone = module.backbone
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"{type(module).__name__} has no backbone module for a fine-tuning strategy to freeze")
    return backbone


def set_frozen_modes(backbone: nn.Module, keep_statistics: bool = False) -> None:
    """A fully frozen backbone runs in eval mode (no dropout, no BatchNorm statistic updates); in a
    partly frozen one, BatchNorm layers whose parameters are frozen keep their running statistics.

    ``keep_statistics`` (a pretrained backbone): every BatchNorm layer normalises with its pretrained
    running statistics while its scale and shift still train. Batch statistics of 32 images far from
    ImageNet (digits at 96 px) made a 2-epoch fine-tune of EfficientNet-Lite0 fall from its head's
    0.975 to 0.58; with the statistics kept it ends at 0.95 (``bench``, measured on this machine)."""
    trainable = [p.requires_grad for p in backbone.parameters()]
    if not any(trainable):
        backbone.eval()
        return
    backbone.train()
    for module in backbone.modules():
        if isinstance(module, _BatchNorm):
            own = list(module.parameters(recurse=False))
            if keep_statistics or (own and not any(p.requires_grad for p in own)):
                module.eval()


def finetune(model: pl.LightningModule, datamodule: pl.LightningDataModule, strategy="freeze", **trainer_kwargs):
    """Fit ``model`` on ``datamodule`` with a fine-tuning ``strategy``; returns the ``Trainer``.
    What ``datamodule`` leaves open (normalisation, tokenizer, length) it takes from ``model``.

    ``trainer_kwargs`` go to ``lightning.pytorch.Trainer`` (``max_epochs=3``, no logger and no
    checkpoint files unless you ask for them; the progress bar goes to stderr, as a line per epoch
    when stderr is not a terminal); Lightning's own
    ``strategy`` (``"ddp"``...) is passed as ``trainer_strategy``.

    >>> trainer = finetune(model, data, strategy=("freeze_unfreeze", 1), max_epochs=3)
    >>> trainer.validate(model, datamodule=data)
    """
    callbacks = [*(trainer_kwargs.pop("callbacks", None) or []), FlashFinetuning(strategy)]
    if "trainer_strategy" in trainer_kwargs:  # Lightning's own strategy (ddp, ...), named apart from ours
        trainer_kwargs["strategy"] = trainer_kwargs.pop("trainer_strategy")
    if trainer_kwargs.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        if plain():  # a log file, CI, nohup: a line per epoch, not a live bar's fragments
            trainer_kwargs["enable_progress_bar"] = False
            if not any(isinstance(c, EpochLines) for c in callbacks):
                callbacks.append(EpochLines())
        else:  # progress is not a result: keep stdout clean for what the user pipes or parses
            callbacks.append(RichProgressBar(leave=True, console_kwargs={"stderr": True}))
    settings = {
        "max_epochs": 3,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        **trainer_kwargs,
        "callbacks": callbacks,
    }
    trainer = pl.Trainer(**settings)
    serve_for(model, datamodule)
    trainer.fit(model, datamodule=datamodule)
    return trainer


def serve_for(model: pl.LightningModule, datamodule: pl.LightningDataModule) -> None:
    """The data served as ``model`` expects where the datamodule leaves it open: an image backbone's
    normalisation, a text model's tokenizer and length (``model.input_options()`` given to
    ``datamodule.configure``). A datamodule or model without them (yours, cached features) is as it is."""
    options, configure = getattr(model, "input_options", None), getattr(datamodule, "configure", None)
    if callable(options) and callable(configure):
        configure(**options())
