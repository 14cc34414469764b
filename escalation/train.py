"""Running the Lightning-tier template: load it (built in or an edited, ejected copy), turn tuned
parameters into its configuration, train it, and predict with what it trained.

``automl.tuning`` drives the trials; this module only knows the template.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import shutil
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, cast

from automl.errors import ConfigError

if TYPE_CHECKING:
    from escalation.template.train import FitResult

TEMPLATE_PACKAGE = "escalation.template"
TEMPLATE_DIR = Path(__file__).parent / "template"
#: what automl calls in a template package (its ``__init__`` exports them)
TEMPLATE_API = ("TemplateConfig", "fit", "make_datamodule", "model_class")
#: the package's folder inside an ejected project
EJECTED_PACKAGE = "template"
#: the folder (in the run's escalation/ and in an ejected project) of the weights the warm-start trial starts from
WARM_START_DIR = "warm_start"
#: the template's settings that name them, and the part of the model each one is
WARM_START_PARTS = {"init_head": "head", "init_backbone": "backbone"}
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
    folder: Path  # as named by --template (an ejected project or the package in it), or the built-in one
    package: ModuleType

    @property
    def source(self) -> Path:
        """The package's own folder (the files to copy)."""
        assert self.package.__file__ is not None, "a template is a package of files"
        return Path(self.package.__file__).parent

    def config(self, values: dict):
        """The template's typed configuration of ``values`` (its defaults for the rest)."""
        return self.package.TemplateConfig.from_dict(values)

    def fit(self, config, **kwargs) -> FitResult:
        """One training run of the template. A template ejected before ``fit()`` returned a
        ``FitResult`` returns the same facts as a dict: read alike."""
        from escalation.template.train import FitResult

        result = self.package.fit(config, **kwargs)
        if isinstance(result, dict):
            result = FitResult(
                str(result.get("monitor")),
                result.get("best_score"),
                result.get("checkpoint"),
                result.get("best_epoch"),
                result.get("epochs_run", 0),
            )
        return result

    def datamodule(self, config, samples=None):
        return self.package.make_datamodule(self.package.TemplateConfig.of(config), samples)

    def model_class(self, config):
        return self.package.model_class(config)


def load_template(folder: str | Path | None = None) -> Template:
    """The template package in ``folder``: an ejected project (its ``template/`` package) or a package
    folder; default: the built-in one (``escalation.template``)."""
    if folder is None or Path(folder).expanduser().resolve() == TEMPLATE_DIR.resolve():
        return Template(TEMPLATE_DIR, importlib.import_module(TEMPLATE_PACKAGE))
    folder = Path(folder).expanduser().resolve()
    package = folder / EJECTED_PACKAGE if (folder / EJECTED_PACKAGE / "__init__.py").is_file() else folder
    if not (package / "__init__.py").is_file():
        flat = all((folder / name).is_file() for name in ("datamodule.py", "module.py", "train.py"))
        raise ConfigError(
            f"'{folder}' holds a template in automl 0.1's layout (datamodule.py, module.py and train.py importing "
            "each other by name), which this version does not load. Eject the run again (`automl eject RUN --to "
            "DIR`) and carry your edits over to DIR/template/."
            if flat
            else f"'{folder}' holds no template package. Pass a folder written by `automl eject` (it holds "
            "template/__init__.py, config.py, datamodule.py, module.py and train.py)."
        )
    try:
        module = importlib.import_module(_importable_name(package))
    except Exception as exc:
        raise ConfigError(f"The template in '{package}' does not import: {type(exc).__name__}: {exc}") from exc
    missing = [name for name in TEMPLATE_API if not hasattr(module, name)]
    if missing:
        raise ConfigError(
            f"The template in '{package}' lacks {', '.join(missing)}: its __init__.py must export "
            f"{', '.join(TEMPLATE_API)} (see the one `automl eject` writes)."
        )
    return Template(folder, module)


def _importable_name(package: Path) -> str:
    """A name under which the package at ``package`` imports like any other: a link of that name in
    a folder of this process's ``sys.path``. The name is unique to the folder and its files' times,
    so two templates (or an edited one) never meet in ``sys.modules``; the processes a distributed
    fit spawns inherit ``sys.path``, so they import the template's classes by the same name."""
    stamp = "".join(f"{f.name}{f.stat().st_mtime_ns}" for f in sorted(package.glob("*.py")))
    name = "automl_template_" + hashlib.sha1(f"{package}{stamp}".encode()).hexdigest()[:16]
    link = _links_folder() / name
    if not link.exists():
        link.symlink_to(package, target_is_directory=True)
    return name


@cache
def _links_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="automl-templates-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    sys.path.append(str(folder))
    return folder


def template_config(
    run: dict, params: dict, output_dir: str | Path, monitor: str, template: Template | None = None
) -> dict:
    """The template's configuration: its defaults, the run's data and devices, then tuned ``params``
    (those the template has: an edited template may have dropped a setting)."""
    template = template or load_template()
    keys = template.package.TemplateConfig.keys()
    values = {key: run[key] for key in RUN_KEYS if run.get(key) is not None and key in keys}
    values["data"] = str(Path(values["data"]).resolve())
    values.update({key: value for key, value in params.items() if key in keys})
    values.update(monitor=monitor, output_dir=str(output_dir))
    return template.config(values).to_dict()


@dataclass
class WarmStart:
    """Where the Lightning tier's warm-start trial starts: ``settings`` name the files of the Flash
    model's weights it starts from (empty: a random head, as every other trial), ``params`` are what it
    must share with that model for them to fit, ``note`` says which in one line."""

    settings: dict
    params: dict
    note: str


def warm_start(
    template: Template,
    checkpoint: str | None,
    run: dict,
    params: dict,
    monitor: str,
    labels: list[str],
    folder: Path,
    backbone: bool,
) -> WarmStart:
    """The best Flash-tier model's head (and its backbone too when ``backbone``: it is not the pretrained
    one the template builds) written to ``folder`` as state dicts, for the template's ``init_head`` and
    ``init_backbone``. ``run``, ``params`` and ``monitor`` make the warm-start trial's configuration
    (``template_config``), from which the template's model is built once (random weights) to check that
    the files fit; when they do not (another backbone, an edited head, a template without the settings),
    the trial starts as any other, and the note says why."""
    try:
        return _warm_start(
            template, checkpoint, template_config(run, params, folder, monitor, template), labels, folder, backbone
        )
    except Exception as error:  # an edited template that breaks here fails its own trials, not the stage
        shutil.rmtree(folder, ignore_errors=True)
        return _random_head(f"the template's model does not take the Flash tier's best one ({_first_line(error)})")


def _warm_start(template: Template, checkpoint, config: dict, labels, folder: Path, backbone: bool) -> WarmStart:
    import torch

    from automl import checkpoints

    keys = template.package.TemplateConfig.keys()
    if "init_head" not in keys:
        return _random_head("the template has no init_head setting (an edited copy of an older one)")
    if not checkpoint or not Path(checkpoint).exists():
        return _random_head(f"the Flash tier's best checkpoint ({checkpoint}) is gone")
    saved = checkpoints.load(checkpoint)
    hyper_parameters, state = saved.get("hyper_parameters", {}), saved.get("state_dict", {})
    if hyper_parameters.get("backbone") != config["backbone"]:
        return _random_head(
            f"the Flash tier's best model has the backbone {hyper_parameters.get('backbone')}, this trial "
            f"{config['backbone']}"
        )
    params = {}
    if "pooling" in hyper_parameters and "pooling" in keys:  # texts: the head reads the pooled encoder output
        params["pooling"] = hyper_parameters["pooling"]
    parts = ["init_head", *(["init_backbone"] if backbone and "init_backbone" in keys else [])]
    folder.mkdir(parents=True, exist_ok=True)
    settings = {}
    for setting in parts:
        prefix = f"{WARM_START_PARTS[setting]}."
        path = folder / f"{WARM_START_PARTS[setting]}.pt"
        torch.save({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, path)
        settings[setting] = str(path)
    trial = template.config({**config, **params, **settings, "pretrained": False})
    template.model_class(trial)(trial, list(labels))  # raises when the files do not fit its model
    what = "model (head and backbone)" if "init_backbone" in settings else "head (on the same pretrained backbone)"
    return WarmStart(settings, params, f"the warm-start trial starts from the Flash tier's best {what}")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _random_head(why: str) -> WarmStart:
    return WarmStart({}, {}, f"the warm-start trial starts from a random head: {why}")


def predict_validation(template: Template, checkpoint: str | Path, config: dict, samples=None):
    """(true class indices, class probabilities, inputs) of a template checkpoint on the validation
    split (``samples``: the data already read and split, else read here)."""
    import lightning.pytorch as pl
    import numpy as np
    import torch

    from automl import checkpoints

    datamodule = template.datamodule(config, samples)
    model = checkpoints.load_module(template.model_class(config), checkpoint, config={**config, "pretrained": False})
    trainer = pl.Trainer(
        accelerator=config.get("accelerator", "auto"),
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    batches = cast("list[torch.Tensor]", trainer.predict(model, datamodule=datamodule))  # one dataloader
    probabilities = torch.cat(batches).float().numpy()
    samples = datamodule.samples.val_samples
    targets = np.array([target for _, target in samples])
    return targets, probabilities, [item for item, _ in samples]


def preprocessing(config: dict) -> dict:
    """What a deployed template model needs done to its inputs: what the Flash tier's data does at
    the template's image size (or text length), and the template's test-time flip."""
    from automl.data import ImageClassificationData, TextClassificationData

    if config["task"] == "image_classification":
        served = ImageClassificationData([], image_size=int(config["image_size"]), backbone=config["backbone"])
        return {**served.preprocessing(), "tta": bool(config.get("tta"))}
    return TextClassificationData([], max_length=int(config["max_length"])).preprocessing()
