"""``automl`` command line. The only place that turns AutoMLError into messages and exit codes.

Heavy libraries (torch, lightning, timm, transformers) are imported inside commands so that
``automl --help`` answers at once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from automl.config import DEFAULT_MAX_PIXELS, PRUNERS, TASKS, FitConfig, RunConfig, check_task, load_yaml, yaml_text
from automl.errors import AutoMLError
from automl.presets import PRESETS
from automl.version import __version__

#: when this command started: a --time-budget counts from here, Python's imports included
STARTED = time.time()

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
      automl run --task image_classification --data ./imgs --target "accuracy>=0.9"
      automl fit --task image_classification --data ./imgs
      automl backbones --task text_classification
    """


_FIT_OPTIONS = [
    click.option("--task", callback=_task, metavar="|".join(TASKS), help="What to learn (required)."),
    click.option(
        "--data",
        type=click.Path(path_type=Path),
        help="Images: a folder of class folders or a CSV. Text: a CSV, JSONL or folder of class folders (required).",
    ),
    click.option("--input-field", help="Column of the texts or image paths (name or 0-based position)."),
    click.option("--target-field", help="Column of the labels (name or 0-based position)."),
    click.option("--no-header", "no_header", is_flag=True, help="The CSV has no header row: name columns by position."),
    click.option("--backbone", help="Backbone name (see `automl backbones`); default: the task's offline one."),
    click.option("--weights", type=click.Path(path_type=Path), help="Local pretrained weights file or folder."),
    click.option(
        "--no-pretrained", "no_pretrained", is_flag=True, help="Random initialisation (no pretrained weights)."
    ),
    click.option("--epochs", type=int, help="Training epochs.  [default: 5]"),
    click.option("--batch-size", type=int, help="Batch size.  [default: 32]"),
    click.option("--learning-rate", "--lr", "learning_rate", type=float, help="[default: 0.002]"),
    click.option("--image-size", type=int, help="Image side in pixels.  [default: 224]"),
    click.option("--max-length", type=int, help="Text length in tokens.  [default: 128]"),
    click.option(
        "--strategy",
        help="no_freeze | freeze | freeze_unfreeze:EPOCH | unfreeze_milestones:E1,E2,LAYERS"
        "  [default: freeze_unfreeze:1]",
    ),
    click.option("--val-split", type=float, help="Share held out for validation.  [default: 0.2]"),
    click.option("--num-workers", type=int, help="Data loading processes.  [default: 0]"),
    click.option("--accelerator", help="cpu | gpu | mps | auto  [default: auto]"),
    click.option("--devices", help="Number of devices or 'auto'.  [default: auto]"),
    click.option(
        "--trainer-strategy",
        help="Lightning's strategy: ddp, ddp_spawn, fsdp... (run/tune: auto, single_device, ddp or ddp_spawn; "
        "with several --devices each trial trains in processes spawned from the run).  [default: auto]",
    ),
    click.option("--num-nodes", type=int, help="Machines in a distributed fit.  [default: 1]"),
    click.option("--precision", help="Lightning's precision, e.g. 16-mixed, bf16-mixed.  [default: 32-bit]"),
    click.option("--output", type=click.Path(path_type=Path), help="Runs folder.  [default: runs]"),
    click.option("--seed", type=int, help="[default: 42]"),
    click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="YAML file with any of these options (command-line options win).",
    ),
    click.option("-q", "--quiet", is_flag=True, help="No progress bars; print only the results."),
]


# what `automl run` and `automl tune` (a worker of the same study) share besides the fit options
_STUDY_OPTIONS = [
    click.option(
        "--preset",
        type=click.Choice(PRESETS),
        help="fast: one backbone's heads, 1m, no escalation; balanced: the defaults; best: a 20m budget for "
        "fine-tuning and escalation. Options given explicitly win.  [default: balanced]",
    ),
    click.option(
        "--heartbeat",
        type=click.IntRange(min=1),
        help="Seconds between a running trial's signs of life on a shared database; one silent for 3x this "
        "(its machine died) is failed and run again by another worker.  [default: 30]",
    ),
    click.option(
        "--max-bad-share",
        type=click.FloatRange(0.0, 1.0),
        help="The data doctor stops when more than this share of the examples is unusable.  [default: 0.2]",
    ),
    click.option(
        "--test-split",
        type=click.FloatRange(0.0, 1.0, max_open=True),
        help="Share of the labelled data held out to judge the final model, never used to fit or choose it "
        "(a test/ folder or --test-data wins; 0: judge on the validation split that chose it).  [default: 0.15]",
    ),
    click.option(
        "--test-data",
        type=click.Path(path_type=Path),
        help="Labelled data that only judges the final model (a folder, CSV/TSV, Parquet, JSONL or datasets folder).",
    ),
]


def _options(options: list):
    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


fit_options = _options(_FIT_OPTIONS)
study_options = _options(_STUDY_OPTIONS)


def _stage_reporter(quiet: bool):
    """Stage lines (``[3/7] tuning: trial 7/20 ...``) on stderr, or nowhere with -q. When stderr is not
    a terminal (a log file, CI, nohup), a line per epoch and per trial too, instead of a live bar."""
    _plain_progress(quiet)

    def report(line: str) -> None:
        if not quiet:
            click.secho(line, fg="cyan", err=True)

    return report


def _plain_progress(quiet: bool) -> None:
    from automl.progress import plain, progress_to_stderr

    progress_to_stderr(not quiet and plain())


def _values(config_file: Path | None, no_pretrained: bool, no_header: bool, options: dict) -> dict:
    """YAML values, overridden by the options given on the command line."""
    values = load_yaml(config_file) if config_file else {}
    values.update({k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v is not None})
    if no_pretrained:
        values["pretrained"] = False
    if no_header:
        values["header"] = False
    return values


@cli.command()
@fit_options
def fit(config_file: Path | None, quiet: bool, no_pretrained: bool, no_header: bool, **options) -> None:
    """Train the Flash-tier baseline once and save the best model.

    Writes RUN/best/ (model.ckpt, labels.json, preprocessing.json), RUN/metrics.json and
    RUN/config.yaml under --output, and prints the validation metrics.
    """
    config = FitConfig.from_dict(_values(config_file, no_pretrained, no_header, options))

    from automl.fit_job import fit_baseline

    _plain_progress(quiet)
    if quiet:
        from automl.flash.fit import quiet_library_logs

        quiet_library_logs()
    result = fit_baseline(config, progress=not quiet)
    _print_fit(result)


@cli.command()
@fit_options
@click.option("--target", help="The goal, e.g. 'accuracy>=0.9', 'f1_macro>=0.8', 'val_loss<=0.3' (required).")
@click.option("--trials", type=int, help="Trials in the study, the baseline (trial 0) included.  [default: 10]")
@click.option("--time-budget", help="e.g. 90s, 20m, 1h: no trial starts after it; a running one stops at it.")
@click.option("--storage", help="Optuna storage URL.  [default: sqlite:///OUTPUT/optuna.db]")
@click.option("--study", help="Study name.  [default: task + data fingerprint, so a re-run resumes]")
@click.option(
    "--tracking-uri", help="MLflow tracking URI.  [default: $MLFLOW_TRACKING_URI or sqlite:///OUTPUT/mlflow.db]"
)
@click.option("--pruner", type=click.Choice(PRUNERS), help="[default: median]")
@study_options
@click.option("--backbones", help="Comma-separated backbones the search may pick.  [default: those available offline]")
@click.option("--no-escalate", "no_escalate", is_flag=True, help="Stop at the tuned Flash tier, even when missed.")
@click.option(
    "--no-refit", "no_refit", is_flag=True, help="Keep the chosen trial's weights (no retraining on train+val)."
)
@click.option(
    "--no-ensemble",
    "no_ensemble",
    is_flag=True,
    help="Keep the chosen model alone (no weighted ensemble of the candidates after tuning).",
)
@click.option(
    "--no-calibrate",
    "no_calibrate",
    is_flag=True,
    help="Keep the final model's raw probabilities (no temperature fitted on the selection split).",
)
@click.option("--escalation-trials", type=int, help="Trials of the Lightning-tier study.  [default: --trials]")
@click.option(
    "--template",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="An edited template folder (from `automl eject`) to escalate with.",
)
@click.option("--notify-url", help="Webhook POSTed (Slack-style JSON) at run start, each stage's end and run end.")
@click.option(
    "--register",
    metavar="NAME",
    help="Register the final model in the MLflow Model Registry as NAME, with the alias 'challenger'.",
)
@click.option(
    "--print-config",
    "print_config",
    is_flag=True,
    help="Print the resolved configuration (preset, options, the search space of each tier) as YAML and exit.",
)
def run(
    config_file: Path | None,
    quiet: bool,
    no_pretrained: bool,
    no_header: bool,
    no_escalate: bool,
    no_refit: bool,
    no_ensemble: bool,
    no_calibrate: bool,
    print_config: bool,
    **options,
) -> None:
    """Baseline, Optuna tuning, a verdict against --target and, when it is missed, escalation to
    the Lightning-tier template; tracked in MLflow.

    The verdict is given on a test split that no trial saw (a test/ folder, --test-data, or
    --test-split of the data), with a 95% interval. Exit status: 0 when the target is met (the whole
    interval clears it), 3 when it is missed (the whole interval falls short), 4 when it is undecided
    (the interval straddles it: more data decides), 2 for bad input, 130 after Ctrl-C (which stops
    after the current epoch and still writes the report). Re-running the same command
    resumes: finished stages are skipped and the studies continue.
    """
    if options.get("backbones"):
        options["backbones"] = [b.strip() for b in options["backbones"].split(",") if b.strip()]
    values = _values(config_file, no_pretrained, no_header, options)
    if no_escalate:
        values["escalate"] = False
    if no_refit:
        values["refit"] = False
    if no_ensemble:
        values["ensemble"] = False
    if no_calibrate:
        values["calibrate"] = False
    config = RunConfig.from_dict(values)
    if print_config:
        from automl.space import resolved_config

        click.echo(yaml_text(resolved_config(config)), nl=False)
        return

    from automl.pipeline import run as run_pipeline

    result = run_pipeline(
        config, progress=not quiet, report=_stage_reporter(quiet), handle_interrupts=True, started=STARTED
    )
    _print_run(result)
    sys.exit(result.exit_code)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--to", "destination", required=True, type=click.Path(path_type=Path), help="The project folder to write."
)
@click.option("--force", is_flag=True, help="Write into a folder that is not empty.")
def eject(run_dir: Path, destination: Path, force: bool) -> None:
    """Write the Lightning-tier template of a finished run as a standalone, editable project.

    The folder gets the template package (template/: config.py, datamodule.py, module.py, train.py),
    a config.yaml holding the run's best parameters, and a README. `python -m template --config
    config.yaml` inside it trains the model again; `automl run ... --template FOLDER` escalates with
    your edited copy.
    """
    from escalation.eject import eject as write_project

    project = write_project(run_dir, destination, force=force)
    click.echo(f"wrote {project.folder}: {', '.join(project.files)}")
    click.echo(f"expected {project.monitor}: {project.expected:.4f} (the {project.tier} tier of the run)")
    click.echo(f"next: cd {project.folder} && python -m template --config config.yaml")


@cli.command()
@click.option("--task", required=True, callback=_task, metavar="|".join(TASKS))
@click.option("--data", required=True, type=click.Path(path_type=Path))
@click.option("--val-split", type=float, default=0.2, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--max-bad-share",
    type=click.FloatRange(0.0, 1.0),
    default=0.2,
    show_default=True,
    help="Stop with an error when more than this share of the examples is unusable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def inspect(task: str, data: Path, val_split: float, seed: int, max_bad_share: float, as_json: bool) -> None:
    """The data doctor: what automl would skip, convert or warn about in --data. Changes nothing."""
    import json

    from automl.stages import inspect_data

    config = FitConfig(task=task, data=str(data), val_split=val_split, seed=seed)
    found = inspect_data(config, max_bad_share=max_bad_share)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2))
        return
    click.echo(f"{data}: {found.summary()}")
    click.echo("class counts: " + ", ".join(f"{k}={v}" for k, v in found.class_counts.items()))
    for title, items in (("skipped", found.skipped), ("converted", found.converted), ("flagged", found.flagged)):
        for item in items:
            click.echo(f"  {title}: {item.where}: {item.problem}")
    for group in found.duplicates:
        click.echo(f"  duplicates: {', '.join(group)}")
    for group in found.leaks:
        click.echo(f"  leak (copies in train and validation): {', '.join(group)}")
    if found.small_classes:
        click.echo(f"  small classes (< 5 examples): {', '.join(found.small_classes)}")
    if found.class_weights:
        click.echo(f"  imbalance {found.imbalance_ratio}x; suggested class weights: {found.class_weights}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report(run_dir: Path) -> None:
    """Render RUN_DIR/report.html (self-contained) and RUN_DIR/report.json again."""
    from automl.report import write_report

    html, data = write_report(run_dir)
    click.echo(f"wrote {html} and {data}")


def _finished_runs(output: Path) -> list[tuple]:
    """(finished, task, data, target, val, test, verdict, tier, seconds, path) of each finished run."""
    from automl.run_folder import METRICS_FILE, RunFolder

    rows = []
    for metrics_path in sorted(Path(output).glob(f"*/{METRICS_FILE}")):
        folder = RunFolder(metrics_path.parent)
        summary = folder.summary()
        if summary is None:
            continue  # an `automl fit` folder
        journal, config = folder.journal, folder.config()
        finalise = journal.stage("finalise")
        rows.append(
            (
                finalise.finished_at if finalise else "",
                config.get("task", ""),
                config.get("data", ""),
                summary.target,
                summary.selection_score,
                summary.score if summary.judged_on == "test" else None,
                summary.verdict or "",
                summary.tier or "",
                journal.total_seconds(),
                str(folder.path),
            )
        )
    return rows


@cli.command()
@click.option("--output", default="runs", type=click.Path(path_type=Path), help="Runs folder.  [default: runs]")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as one JSON list (whole values, for programs).")
def runs(output: Path, as_json: bool) -> None:
    """A leaderboard of the finished runs under --output, newest first. On a terminal a table; piped
    or redirected, one tab-separated line per run with a header line (no cell is cut)."""
    import json

    from rich.console import Console
    from rich.table import Table

    rows = _finished_runs(output)
    columns = ("finished", "task", "data", "target", "val", "test", "verdict", "tier", "seconds", "path")
    if as_json:
        click.echo(json.dumps([dict(zip(columns, row, strict=True)) for row in sorted(rows, reverse=True)]))
        return
    if not rows:
        click.echo(f"No finished runs under {output}/ (automl run writes them there).", err=True)
        return
    if not sys.stdout.isatty():  # a file or another program: whole values, one line a run
        click.echo("\t".join(columns))
        for row in sorted(rows, reverse=True):
            click.echo("\t".join("" if value is None else str(value) for value in row))
        return
    table = Table(title=f"runs in {output}/", title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in ("val", "test", "seconds") else "left")
    for finished, task, data, target, val, test, verdict, tier, seconds, path in sorted(rows, reverse=True):
        table.add_row(
            finished,
            task,
            data,
            target,
            f"{val:.4f}" if val is not None else "",
            f"{test:.4f}" if test is not None else "",
            verdict,
            tier,
            f"{seconds:.0f}s",
            path,
        )
    Console().print(table)


_trust_checkpoint = click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Load the run folder's checkpoint with full pickle loading and its own template, which can run any "
    "code they carry. Only for a run folder whose maker you trust; automl's own never need it.",
)
_max_megapixels = click.option(
    "--max-megapixels",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_MAX_PIXELS / 1e6,
    show_default=True,
    help="Images with more pixels are refused before they are decoded (decompression bombs).",
)


def _pixels(megapixels: float) -> int:
    return int(megapixels * 1_000_000)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Images: a file or folder. Texts: a CSV/JSONL (column found by name), a .txt file (a text a line) "
    "or a folder of .txt files.",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="CSV to write.  [default: stdout]")
@click.option("--top-k", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--input-field", help="The text column of a CSV/JSONL.")
@click.option(
    "--explain",
    "explain_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write why each prediction was made into this folder: a Grad-CAM overlay per image, or each "
    "text's token scores, listed in explanations.json.",
)
@_max_megapixels
@_trust_checkpoint
def predict(
    run_dir: Path,
    data: Path,
    output: Path | None,
    top_k: int,
    batch_size: int,
    input_field: str | None,
    explain_dir: Path | None,
    max_megapixels: float,
    trust_checkpoint: bool,
) -> None:
    """Predict with a finished run's final model. Unreadable inputs (and images over the pixel cap)
    get an error row, not a crash."""
    from rich.console import Console
    from rich.progress import Progress

    from automl.predict import Predictor, our_pixel_cap_only, read_inputs, write_predictions

    our_pixel_cap_only()
    predictor = Predictor.load(run_dir, trust_checkpoint, _pixels(max_megapixels))
    inputs, ids = read_inputs(predictor, data, input_field)
    method = predictor.predict_images if predictor.kind == "image" else predictor.predict_texts
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("predicting", total=len(inputs))
        rows = method(inputs, ids, top_k=top_k, batch_size=batch_size, on_batch=lambda n: progress.advance(task, n))
    errors = sum(1 for row in rows if row["error"])
    write_predictions(rows, output or sys.stdout)
    if output:
        click.echo(
            f"wrote {len(rows)} predictions to {output}" + (f" ({errors} inputs could not be read)" if errors else "")
        )
    elif errors:
        click.echo(f"{errors} inputs could not be read; see their error column", err=True)
    if explain_dir is not None:
        import json

        from automl.explain import explained_rows

        explained = explained_rows(predictor, inputs, [None] * len(inputs), explain_dir, float("inf"))
        (explain_dir / "explanations.json").write_text(json.dumps({"rows": explained}, indent=2) + "\n")
        done = sum(1 for row in explained if "file" in row or "tokens" in row)
        click.echo(f"wrote {done} explanations to {explain_dir}", err=True)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Labelled examples: a folder of class folders, or a CSV/TSV, Parquet, JSONL or datasets folder with a "
    "label column (image paths relative to the table's folder). All of it is scored; nothing is split off.",
)
@click.option("--json", "as_json", is_flag=True, help="Print evaluation.json's content (one JSON object) on stdout.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for evaluation.json, evaluation.html and predictions.csv.  [default: RUN_DIR/evaluations/<data name>]",
)
@click.option(
    "--input-field", help="Column of the texts or image paths (name or 0-based position).  [default: the run's]"
)
@click.option("--target-field", help="Column of the labels (name or 0-based position).  [default: the run's]")
@click.option("--no-header", "no_header", is_flag=True, help="The CSV has no header row: name columns by position.")
@_max_megapixels
@_trust_checkpoint
def evaluate(
    run_dir: Path,
    data: Path,
    as_json: bool,
    output: Path | None,
    input_field: str | None,
    target_field: str | None,
    no_header: bool,
    max_megapixels: float,
    trust_checkpoint: bool,
) -> None:
    """Score a finished run's final model on labelled data and judge it against the run's target.

    Writes evaluation.json, evaluation.html (metrics, per-class scores, confusion matrix, the most
    confident mistakes, the inputs it could not read) and predictions.csv. Exit status: 0 when the
    target is met on this data, 3 when it is missed, 4 when it is undecided (the 95% interval
    straddles the target: more data decides), 2 for bad input.
    """
    import json

    from automl.evaluate import evaluate_run

    click.echo(f"evaluating the final model of {run_dir} on {data}", err=True)
    evaluation = evaluate_run(
        run_dir, data, output, input_field, target_field, not no_header, trust_checkpoint, _pixels(max_megapixels)
    )
    if as_json:
        click.echo(json.dumps(evaluation.facts))
    else:
        for line in evaluation.lines():
            click.echo(line)
    sys.exit(evaluation.exit_code)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@_trust_checkpoint
def export(run_dir: Path, fmt: str, trust_checkpoint: bool) -> None:
    """Export the final model (checked against PyTorch on the first validation batch, within 1e-4)."""
    from automl.export import export as do_export

    exported = do_export(run_dir, fmt, trust_checkpoint)
    if exported.warning:
        click.echo(f"warning: {exported.warning}", err=True)
    click.echo(
        f"wrote {exported.path} (+ export.json with its preprocessing); max difference from PyTorch on "
        f"{exported.checked} validation examples: {exported.max_abs_diff:.2e}"
    )


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--max-body-mb", type=float, default=10.0, show_default=True, help="Larger requests get 413.")
@_max_megapixels
@_trust_checkpoint
def serve(
    run_dir: Path, host: str, port: int, max_body_mb: float, max_megapixels: float, trust_checkpoint: bool
) -> None:
    """Serve the final model over HTTP: POST /predict, GET /health, GET /labels, docs at /docs."""
    from automl.serve import serve as run_server

    run_server(run_dir, host, port, int(max_body_mb * 1024 * 1024), _pixels(max_megapixels), trust_checkpoint)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--alias", default="champion", show_default=True, help="The registry alias to point at this run's model.")
def promote(run_dir: Path, alias: str) -> None:
    """Point an alias of the registered model at the version RUN_DIR registered (`automl run --register NAME`).

    Loaders of models:/NAME@ALIAS get this run's model from then on."""
    from automl.errors import DataError
    from automl.mlflow_model import promote as move_alias
    from automl.run_folder import METRICS_FILE, RunFolder

    summary = RunFolder(run_dir).summary()
    if summary is None or not summary.registered_model or not summary.model_version:
        raise DataError(
            f"'{run_dir}' registered no model ({run_dir / METRICS_FILE} names none). Register it by running its "
            "`automl run` command again with --register NAME (finished stages are skipped)."
        )
    name, version = summary.registered_model, summary.model_version
    before = move_alias(summary.tracking_uri, name, version, alias)
    moved = f" (it pointed at version {before})" if before and before != version else ""
    click.echo(f"models:/{name}@{alias} -> version {version}{moved}")


@cli.command()
@fit_options
@click.option("--target", help="The run's target; its metric is what the study optimises (required).")
@click.option("--trials", type=int, help="Finished trials the study should hold, whoever runs them.  [default: 10]")
@click.option("--time-budget", help="e.g. 90s, 20m, 1h, for this worker.")
@click.option("--storage", help="The shared Optuna storage, e.g. postgresql://user:pass@host/db (required).")
@click.option("--study", help="Study name; every worker and the final `automl run` use the same.")
@click.option("--tracking-uri", help="MLflow tracking URI.")
@click.option("--pruner", type=click.Choice(PRUNERS))
@study_options
def tune(config_file: Path | None, quiet: bool, no_pretrained: bool, no_header: bool, **options) -> None:
    """A tuning worker: join a shared study and run trials until it holds --trials finished ones.

    Start one per machine with the same --storage and --study; then `automl run` with the same
    options (and --target) judges the best trial and writes the report.
    """
    if not options.get("storage"):
        raise click.UsageError("automl tune needs --storage (a database URL the workers share).")
    config = RunConfig.from_dict(_values(config_file, no_pretrained, no_header, options))

    from automl.worker import tune_worker

    result = tune_worker(config, progress=not quiet, report=_stage_reporter(quiet))
    click.echo(
        f"study {result['study']}: {result['finished']} of {result['requested']} trials finished "
        f"({result['by_this_worker']} by this worker, {result['worker']}); best {result['best_value']}; "
        f"stopped: {result['stopped']}"
    )


def _print_run(result) -> None:
    from rich.console import Console
    from rich.table import Table

    verdict = result.verdict
    table = Table(title=f"automl run: {result.run_dir}", title_justify="left")
    for column in ("stage", "trials", "best val score", "time"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for line in result.stages:
        table.add_row(
            line.stage,
            "" if line.trials is None else str(line.trials),
            "" if line.best is None else f"{line.best:.4f}",
            f"{line.seconds:.0f}s" if line.seconds else "",
        )
    console = Console()
    console.print(table)
    for line in result.stages:
        if line.note:
            console.print(f"  {line.stage}: {line.note}", highlight=False)
    for note in verdict.notes:
        console.print(f"  {note}", highlight=False)
    console.print(
        f"target {result.target}: [bold]{verdict.verdict.upper()}[/bold], {verdict.outcome} "
        f"({verdict.interval or 'bootstrap'} interval)",
        highlight=False,
    )
    console.print(f"best: {result.tier} tier, trial {verdict.best_trial}: {result.best_params}")
    console.print(f"model: {result.run_dir / 'best'}   total time: {result.seconds:.0f}s")
    if result.model.get("model_uri"):
        registered = result.model.get("registered_model")
        alias = f"   registered: models:/{registered}@{result.model['model_alias']}" if registered else ""
        console.print(f"MLflow model: {result.model['model_uri']}{alias}", highlight=False)


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

    from automl import backbones as bb

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
