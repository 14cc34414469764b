"""``automl`` command line. The only place that turns AutoMLError into messages and exit codes.

Heavy libraries (torch, lightning, timm, transformers) are imported inside commands so that
``automl --help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from automl import __version__
from automl.config import TASKS, FitConfig, check_task, load_yaml
from automl.errors import AutoMLError

EXIT_USAGE = 2


def _fail(error: AutoMLError) -> None:
    click.secho(f"error: {error}", fg="red", err=True)
    sys.exit(error.exit_code)


class AutoMLGroup(click.Group):
    """Runs commands so that an ``AutoMLError`` becomes one line on stderr and a non-zero exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AutoMLError as error:
            _fail(error)


def _task(ctx, param, value):
    if value is None:
        return value
    try:
        return check_task(value)
    except AutoMLError as error:
        raise click.BadParameter(str(error)) from error


@click.group(cls=AutoMLGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="automl")
def cli() -> None:
    """AutoML for image and text classification: a pretrained baseline in one command.

    \b
      automl fit --task image_classification --data ./imgs
      automl backbones --task text_classification
    """


@cli.command()
@click.option("--task", required=True, callback=_task, metavar="|".join(TASKS), help="What to learn.")
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Images: a folder of class folders or a CSV. Text: a CSV, JSONL or folder of class folders.",
)
@click.option("--input-field", default=None, help="Column of the texts or image paths (name or 0-based position).")
@click.option("--target-field", default=None, help="Column of the labels (name or 0-based position).")
@click.option("--no-header", "no_header", is_flag=True, help="The CSV has no header row: name columns by position.")
@click.option(
    "--backbone", default=None, help="Backbone name (see `automl backbones`); default: the task's offline one."
)
@click.option(
    "--weights", default=None, type=click.Path(path_type=Path), help="Local pretrained weights file or folder."
)
@click.option("--no-pretrained", "no_pretrained", is_flag=True, help="Random initialisation (no pretrained weights).")
@click.option("--epochs", type=int, default=None, help="Training epochs.  [default: 5]")
@click.option("--batch-size", type=int, default=None, help="Batch size.  [default: 32]")
@click.option("--learning-rate", "--lr", "learning_rate", type=float, default=None, help="[default: 0.002]")
@click.option("--image-size", type=int, default=None, help="Image side in pixels.  [default: 224]")
@click.option("--max-length", type=int, default=None, help="Text length in tokens.  [default: 128]")
@click.option(
    "--strategy",
    default=None,
    help="no_freeze | freeze | freeze_unfreeze:EPOCH | unfreeze_milestones:E1,E2,LAYERS  [default: freeze_unfreeze:1]",
)
@click.option("--val-split", type=float, default=None, help="Share held out for validation.  [default: 0.2]")
@click.option("--num-workers", type=int, default=None, help="Data loading processes.  [default: 0]")
@click.option("--accelerator", default=None, help="cpu | gpu | mps | auto  [default: auto]")
@click.option("--devices", default=None, help="Number of devices or 'auto'.  [default: auto]")
@click.option("--output", default=None, type=click.Path(path_type=Path), help="Runs folder.  [default: runs]")
@click.option("--seed", type=int, default=None, help="[default: 42]")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML file with any of these options (command-line options win).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; print only the results.")
def fit(config_file: Path | None, quiet: bool, no_pretrained: bool, no_header: bool, **options) -> None:
    """Train the Flash-tier baseline once and save the best model.

    Writes RUN/best/ (model.ckpt, labels.json, preprocessing.json), RUN/metrics.json and
    RUN/config.yaml under --output, and prints the validation metrics.
    """
    values = load_yaml(config_file) if config_file else {}
    values.update({k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v is not None})
    if no_pretrained:
        values["pretrained"] = False
    if no_header:
        values["header"] = False
    config = FitConfig.from_dict(values)

    from automl.pipeline import fit_baseline

    result = fit_baseline(config, progress=not quiet)
    _print_fit(result)


def _print_fit(result) -> None:
    from rich.console import Console
    from rich.table import Table

    details = result.details
    unit = "images" if details["task"] == "image_classification" else "texts"
    console = Console()
    console.print(
        f"Validation metrics of the best epoch ({result.best_epoch}) on {details['val_size']} {unit}, "
        f"trained on {details['train_size']} in {result.seconds:.0f}s:"
    )
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(
        f"backbone: {details['backbone']} (weights: {details['weights'].split(':')[0]}), "
        f"strategy: {details['strategy']}"
    )
    console.print(f"best model: {result.best_dir}")


@cli.command()
@click.option("--task", required=True, callback=_task, metavar="|".join(TASKS))
def backbones(task: str) -> None:
    """List the curated backbones for a task and where their weights would come from."""
    from rich.console import Console
    from rich.table import Table

    from automl.flash import backbones as bb

    modality = TASKS[task]
    table = Table(
        title=f"{task} backbones (any {'timm model' if modality == 'image' else 'Hugging Face id'} also works)",
        title_justify="left",
    )
    for column in ("backbone", "description", "weights", "offline"):
        table.add_column(column)
    for name in bb.available_backbones(modality):
        source = bb.weights_status(name, modality)
        where = "unavailable" if source is None else ("download" if source.kind == "hub" else source.kind)
        offline = "yes" if source is not None and source.kind != "hub" else "no"
        default = " (default)" if name in (bb.DEFAULT_IMAGE_BACKBONE, bb.DEFAULT_TEXT_BACKBONE) else ""
        table.add_row(name + default, bb.REGISTRY[name].description, where, offline)
    Console().print(table)


def main() -> None:
    cli(prog_name="automl")


if __name__ == "__main__":
    main()
