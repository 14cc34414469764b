"""Running the Lightning-tier template: load it (built in or an edited, ejected copy), turn tuned
parameters into its configuration, train it, and predict with what it trained.

``automl.tuning`` drives the trials; this module only knows the template.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from automl.errors import ConfigError

TEMPLATE_DIR = Path(__file__).parent / "template"
TEMPLATE_MODULES = ("datamodule", "module", "train")
TEMPLATE_FILES = tuple(f"{name}.py" for name in TEMPLATE_MODULES)

#: The template's own defaults: the recipe before any tuning. Every key is documented in the
#: ejected README and can be set in its config.yaml.
RECIPE = {
    "learning_rate": 1e-3,
    "backbone_lr_ratio": 0.1,  # backbone lr = learning_rate * ratio (discriminative learning rates)
    "warmup_epochs": 1,  # linear warm-up, then cosine decay, stepped per batch
    "weight_decay": 0.01,
    "label_smoothing": 0.1,
    "dropout": 0.1,
    "epochs": 10,
    "batch_size": 32,
    "gradient_clip": 1.0,  # 0 turns clipping off
    "weight_averaging": "none",  # none | ema | swa
    "ema_decay": 0.99,
    "class_weighted": True,  # inverse-frequency loss weights, used only when classes are imbalanced
    "patience": 3,  # early stopping, in epochs without improvement
    "limit_train_batches": 1.0,  # share of the training batches an epoch sees (a time budget may lower it)
    "keep_bn_statistics": True,  # a pretrained backbone's BatchNorm layers keep their running statistics
    # images
    "image_size": 224,
    "augment": "trivialaugment",  # none | trivialaugment | randaugment
    "mix": "none",  # none | mixup | cutmix
    "tta": True,  # average predictions with the horizontally flipped image
    # text
    "max_length": 128,
    "pooling": "mean",  # mean | cls
    "layer_decay": 0.9,  # each encoder layer below the top gets this factor of the one above
}
#: Keys copied from the run's configuration (data, devices) into the template's.
RUN_KEYS = (
    "task",
    "data",
    "input_field",
    "target_field",
    "header",
    "val_split",
    "seed",
    "backbone",
    "pretrained",
    "weights",
    "accelerator",
    "devices",
    "num_workers",
    "image_size",
    "max_length",
    "epochs",
    "batch_size",
)


@dataclass
class Template:
    folder: Path
    datamodule: ModuleType
    module: ModuleType
    train: ModuleType

    def given(self, samples) -> dict:
        """``samples=`` for the template's ``fit`` and ``TemplateDataModule``, when they take it (a
        template ejected before they did reads its data itself)."""
        import inspect

        takes = "samples" in inspect.signature(self.datamodule.TemplateDataModule).parameters
        return {"samples": samples} if takes and samples is not None else {}

    @contextmanager
    def importable(self):
        """While a fit runs, the template's files importable by their plain names (as ``python
        train.py`` has them): the processes of a distributed fit unpickle ``module.TemplateModule``."""
        saved = {name: sys.modules[name] for name in TEMPLATE_MODULES if name in sys.modules}
        sys.modules.update({"datamodule": self.datamodule, "module": self.module, "train": self.train})
        sys.path.insert(0, str(self.folder))
        try:
            yield
        finally:
            sys.path.remove(str(self.folder))
            for name in TEMPLATE_MODULES:
                sys.modules.pop(name, None)
            sys.modules.update(saved)


def load_template(folder: str | Path | None = None) -> Template:
    """Import a template's three files from ``folder`` (default: the built-in one)."""
    folder = Path(folder or TEMPLATE_DIR).expanduser().resolve()
    missing = [name for name in TEMPLATE_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(
            f"The template folder '{folder}' lacks {', '.join(missing)}. "
            "Pass a folder written by `automl eject` (it holds datamodule.py, module.py and train.py)."
        )
    # The files import each other by plain name, as they do when run as `python train.py`; the
    # names are taken out of sys.modules again so that another template can be loaded later.
    saved = {name: sys.modules.pop(name) for name in TEMPLATE_MODULES if name in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        loaded = {name: importlib.import_module(name) for name in TEMPLATE_MODULES}
    except Exception as exc:
        raise ConfigError(f"The template in '{folder}' does not import: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(folder))
        for name in TEMPLATE_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return Template(folder, loaded["datamodule"], loaded["module"], loaded["train"])


def template_config(run: dict, params: dict, output_dir: str | Path, monitor: str) -> dict:
    """The template's configuration: the recipe, the run's data and devices, then tuned ``params``."""
    config = {**RECIPE, **{key: run.get(key) for key in RUN_KEYS if run.get(key) is not None}}
    config["data"] = str(Path(config["data"]).resolve())
    if not config.get("backbone"):
        from automl.backbones import DEFAULT_IMAGE_BACKBONE, DEFAULT_TEXT_BACKBONE

        config["backbone"] = DEFAULT_IMAGE_BACKBONE if run["task"] == "image_classification" else DEFAULT_TEXT_BACKBONE
    config.update(params)
    config["monitor"] = monitor
    config["output_dir"] = str(output_dir)
    return config


def predict_validation(template: Template, checkpoint: str | Path, config: dict, samples=None):
    """(true class indices, class probabilities, inputs) of a template checkpoint on the validation
    split (``samples``: the data already read and split, else read here)."""
    import lightning.pytorch as pl
    import numpy as np
    import torch

    from automl import checkpoints

    datamodule = template.datamodule.TemplateDataModule(config, **template.given(samples))
    model = checkpoints.load_module(template.module.TemplateModule, checkpoint, config={**config, "pretrained": False})
    trainer = pl.Trainer(
        accelerator=config.get("accelerator", "auto"),
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    probabilities = torch.cat(trainer.predict(model, datamodule=datamodule)).float().numpy()
    samples = datamodule.samples.val_samples
    targets = np.array([target for _, target in samples])
    return targets, probabilities, [item for item, _ in samples]


def preprocessing(config: dict) -> dict:
    """What a deployed template model needs done to its inputs."""
    if config["task"] == "image_classification":
        from automl.backbones import image_normalization

        mean, std = image_normalization(config["backbone"])
        size = int(config["image_size"])
        return {
            "kind": "image",
            "image_size": size,
            "resize": int(round(size / 0.875)),
            "crop": "center",
            "mean": list(mean),
            "std": list(std),
            "color_mode": "RGB",
            "tta": bool(config.get("tta")),
        }
    return {"kind": "text", "max_length": int(config["max_length"]), "padding": "longest", "truncation": True}
