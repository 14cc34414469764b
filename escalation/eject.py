"""``automl eject RUN_DIR --to DIR``: the Lightning-tier template of a finished run as a standalone,
editable project (template files, a config.yaml with the run's best parameters, a README)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from automl.errors import ConfigError
from automl.run_folder import RunFolder
from automl.trial_record import Tier
from escalation.train import EJECTED_PACKAGE, WARM_START_DIR, load_template, template_config


@dataclass
class EjectedProject:
    folder: Path
    files: list[str]
    monitor: str
    expected: float | None  # the score train.py should reproduce (the run's best Lightning-tier trial)
    tier: str


def eject(run_dir: str | Path, destination: str | Path, force: bool = False) -> EjectedProject:
    from automl.space import warm_start_params
    from automl.target import parse_target

    folder = RunFolder(run_dir)
    run_dir = folder.path
    journal, summary = folder.require_finished()
    config = folder.config()
    monitor = parse_target(summary.target).metric
    escalated = journal.result("escalate")
    start = {}  # the best trial's init_head / init_backbone files, when it was the warm start
    if escalated:
        tier, params, expected = Tier.LIGHTNING, escalated.tier.params, escalated.tier.score
        start = escalated.best_start()
    else:
        # never escalated: the template starts from the best Flash-tier parameters it shares
        from automl.space import SearchSpace

        space = SearchSpace("image" if config["task"] == "image_classification" else "text", (), 1)
        tier, params, expected = Tier.FLASH, warm_start_params(space, summary.best_params), None
    template = load_template(config.get("template"))  # the run's (an edited one, or None: built in)

    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()) and not force:
        raise ConfigError(f"'{destination}' is not empty. Choose a new folder, or pass --force to write into it.")
    destination.mkdir(parents=True, exist_ok=True)
    package = destination / EJECTED_PACKAGE
    shutil.copytree(template.source, package, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    copied = []
    for setting, path in start.items():  # relative to the project: train.py runs from its folder
        source = run_dir / "escalation" / WARM_START_DIR / Path(path).name  # wherever the run folder is now
        if not source.is_file():
            raise ConfigError(f"'{source}', which the best Lightning-tier trial started from ({setting}), is gone.")
        copied.append(f"{WARM_START_DIR}/{source.name}")
        (destination / WARM_START_DIR).mkdir(exist_ok=True)
        shutil.copy2(source, destination / copied[-1])
        params = {**params, setting: copied[-1]}
    project_config = template_config(config, params, "outputs", monitor, template)
    (destination / "config.yaml").write_text(yaml.safe_dump(project_config, sort_keys=False))
    (destination / "README.md").write_text(_readme(run_dir, project_config, monitor, expected, tier))
    files = [f"{EJECTED_PACKAGE}/{p.name}" for p in sorted(package.glob("*.py"))]
    return EjectedProject(destination, [*files, *copied, "config.yaml", "README.md"], monitor, expected, tier)


def _readme(run_dir: Path, config: dict, monitor: str, expected: float | None, tier: str) -> str:
    # long: one Markdown document, written top to bottom as the reader sees it
    score = (
        f"The run's best Lightning-tier trial scored **{monitor} = {expected:.4f}**; with the same data, seed and "
        "machine, training with this config.yaml reproduces it (within noise elsewhere)."
        if expected is not None
        else "The run met its target with the Flash tier, so this template was never trained by it; "
        "config.yaml starts from the Flash tier's best parameters."
    )
    if config.get("init_head"):
        score += (
            f" That trial was the warm start: it started from the Flash tier's best model, whose weights are in "
            f"`{WARM_START_DIR}/` (`init_head`, `init_backbone`); set them to `null` to start from a random head."
        )
    settings = "\n".join(f"| `{key}` | `{value}` |" for key, value in config.items())
    return f"""# Lightning-tier project ejected from `{run_dir}`

{score}

## Run it

```
python -m template --config config.yaml              # train; prints the best score and checkpoint
python -m template --config config.yaml --set epochs=20 learning_rate=3e-4
```

Run it from this folder. Checkpoints go to `outputs/checkpoints/`; metrics to an MLflow store in
`outputs/mlflow.db` (`mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`). It needs the
`automl` package installed (it reads the data with `automl.data` and builds backbones with
`automl.backbones`).

## The files

`template/` is a Python package:

- `config.py`: `TemplateConfig`, every setting with its default and what it does. A key in
  config.yaml or `--set` that is not there is an error listing the valid ones.
- `datamodule.py`: the data. `ClassificationData` (the split, the loaders), `ImageData` (its
  `train_transform` is the augmentation) and `TextData` (the tokenizer).
- `module.py`: the model. `Classifier` (the head from `make_head`, the loss, metrics, optimiser and
  schedule), `ImageClassifier` (timm backbone, mixup/cutmix, test-time flip) and `TextClassifier`
  (transformers encoder, pooling, layer-wise learning-rate decay).
- `train.py`: `fit(config)`: the `Trainer`, its callbacks (checkpoint, early stopping, weight
  averaging), the logger and the device flags (`accelerator`, `devices`, `strategy`, `num_nodes`,
  `precision`); `main()` is the command line.

`config.yaml` holds every setting; the data path is absolute.

## Change it

Edit any file: it is plain PyTorch Lightning. A different head is a change to `make_head` in
`module.py`; another augmentation is a line in `datamodule.py`; a new setting is a field in
`config.py`; anything in PyTorch can go in `features` or `training_step`. To let automl tune and
judge your version when a target is missed:

```
automl run --task {config["task"]} --data {config["data"]} --target "..." --template PATH/TO/THIS/FOLDER
```

automl calls what `template/__init__.py` exports (`TemplateConfig`, `fit`, `make_datamodule`,
`model_class`): keep those names and arguments.

## The settings (as in config.yaml)

| key | value |
|---|---|
{settings}
"""
