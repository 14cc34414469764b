"""``automl eject RUN_DIR --to DIR``: the Lightning-tier template of a finished run as a standalone,
editable project (template files, a config.yaml with the run's best parameters, a README)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from automl.errors import ConfigError
from automl.run_folder import FLASH, LIGHTNING, RunFolder
from escalation.train import RECIPE, TEMPLATE_DIR, TEMPLATE_FILES, template_config


@dataclass
class EjectedProject:
    folder: Path
    files: list[str]
    monitor: str
    expected: float | None  # the score train.py should reproduce (the run's best Lightning-tier trial)
    tier: str


def eject(run_dir: str | Path, destination: str | Path, force: bool = False) -> EjectedProject:
    from automl.target import parse_target
    from automl.tuning import warm_start_params

    folder = RunFolder(run_dir)
    run_dir = folder.path
    journal, summary = folder.require_finished()
    config = folder.config()
    monitor = parse_target(summary.target).metric
    escalated = journal.result("escalate")
    if escalated:
        tier, params, expected = LIGHTNING, escalated.tier.params, escalated.tier.score
        template = Path(escalated.template)
    else:
        # never escalated: the template starts from the best Flash-tier parameters it shares
        from automl.tuning import SearchSpace

        space = SearchSpace("image" if config["task"] == "image_classification" else "text", (), 1)
        tier, params, expected = FLASH, warm_start_params(space, summary.best_params), None
        template = Path(config.get("template") or TEMPLATE_DIR)

    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()) and not force:
        raise ConfigError(f"'{destination}' is not empty. Choose a new folder, or pass --force to write into it.")
    destination.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_FILES:
        shutil.copy2(template / name, destination / name)
    project_config = template_config(config, params, "outputs", monitor)
    (destination / "config.yaml").write_text(yaml.safe_dump(project_config, sort_keys=False))
    (destination / "README.md").write_text(_readme(run_dir, project_config, monitor, expected, tier))
    return EjectedProject(destination, [*TEMPLATE_FILES, "config.yaml", "README.md"], monitor, expected, tier)


def _readme(run_dir: Path, config: dict, monitor: str, expected: float | None, tier: str) -> str:
    score = (
        f"The run's best Lightning-tier trial scored **{monitor} = {expected:.4f}**; with the same data, seed and "
        "machine, `train.py` reproduces it (within noise elsewhere)."
        if expected is not None
        else "The run met its target with the Flash tier, so this template was never trained by it; "
        "config.yaml starts from the Flash tier's best parameters."
    )
    recipe = "\n".join(f"| `{key}` | `{config.get(key)}` |" for key in RECIPE)
    return f"""# Lightning-tier project ejected from `{run_dir}`

{score}

## Run it

```
python train.py --config config.yaml              # train; prints the best score and checkpoint
python train.py --config config.yaml --set epochs=20 learning_rate=3e-4
```

Checkpoints go to `outputs/checkpoints/`; metrics to an MLflow store in `outputs/mlflow.db`
(`mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`). It needs the `automl` package
installed (it reads the data with `automl.data` and builds backbones with `automl.backbones`).

## The files

- `datamodule.py`: `TemplateDataModule`, the data and its augmentation (`train_transform`).
- `module.py`: `TemplateModule`, the model (`make_head`, `forward`), the loss, metrics and the
  optimiser (`parameter_groups`, `configure_optimizers`).
- `train.py`: the `Trainer`, its callbacks (checkpoint, early stopping, weight averaging), the logger
  and the device flags (`accelerator`, `devices`, `strategy`, `num_nodes`, `precision`).
- `config.yaml`: every setting; the data path is absolute.

## Change it

Edit any file: it is plain PyTorch Lightning. A different head is a change to `make_head` in
`module.py`; another augmentation is a line in `datamodule.py`; anything in PyTorch can go in
`forward` or `training_step`. To let automl tune and judge your version when a target is missed:

```
automl run --task {config["task"]} --data {config["data"]} --target "..." --template PATH/TO/THIS/FOLDER
```

## The recipe's settings (as in config.yaml)

| key | value |
|---|---|
{recipe}
"""
