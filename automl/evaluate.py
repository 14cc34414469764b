"""``automl evaluate RUN --data PATH``: a finished run's final model scored on any labelled data and
judged against the run's own target, the way the run judged it on its test split.

>>> evaluation = evaluate_run("runs/image_classification-1a2b3c4d5e", "new_photos/")
>>> evaluation.verdict.verdict, evaluation.exit_code, evaluation.html_path.name
('met', 0, 'evaluation.html')

``judge_inputs`` is the one place a model's predictions of labelled inputs become scores and a
verdict: ``automl run`` calls it on its test split, so ``automl evaluate`` on the same examples
gives the same verdict (the examples are put in the order of their ids first, so the interval does
not depend on the order they came in).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from automl import metrics as m
from automl.config import DEFAULT_MAX_PIXELS, TASKS, check_task
from automl.errors import DataError
from automl.run_folder import RunFolder, write_json
from automl.target import MET, MISSED, UNDECIDED, Target, Verdict, judge, parse_target, score

#: what `automl evaluate` (and `automl run`) exit with for each verdict; 2 is bad input (AutoMLError)
EXIT_MET, EXIT_MISSED, EXIT_UNDECIDED = 0, 3, 4
EXIT_CODES = {MET: EXIT_MET, MISSED: EXIT_MISSED, UNDECIDED: EXIT_UNDECIDED}
EVALUATIONS_DIR = "evaluations"
EVALUATION_JSON, EVALUATION_HTML, EVALUATION_PREDICTIONS = "evaluation.json", "evaluation.html", "predictions.csv"


def exit_code(verdict) -> int:
    """The exit status for a ``Verdict`` (or its verdict word)."""
    return EXIT_CODES[getattr(verdict, "verdict", verdict)]


# --------------------------------------------------------------------------- scoring
def probabilities(
    predictor, inputs: Sequence, batch_size: int = 32
) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """(class probabilities of the readable inputs, float64, n_readable x classes; their indices in
    ``inputs``; (index, error) of each input the predictor could not read), in batches."""
    batches, readable, unreadable = [], [], []
    for start in range(0, len(inputs), batch_size):
        ready = []
        for index in range(start, min(start + batch_size, len(inputs))):
            try:
                ready.append(predictor.prepare(inputs[index]))
                readable.append(index)
            except DataError as error:
                unreadable.append((index, str(error)))
        if ready:
            batches.append(predictor.batch_probabilities(ready).double().cpu().numpy())
    found = np.concatenate(batches) if batches else np.zeros((0, len(predictor.labels)), dtype=np.float64)
    return found, readable, unreadable


@dataclass
class Scored:
    """A model's predictions of labelled inputs (in the order of their ids), its scores and verdict."""

    ids: list[str]  # of the scored inputs
    targets: np.ndarray  # their true class indices
    probabilities: np.ndarray  # n_scored x classes
    unreadable: list[tuple[str, str]]  # (id, error) of the inputs the model could not read
    scores: dict[str, float | None]  # every validation metric, without the "val_" prefix; None: undefined
    verdict: Verdict
    inputs: list = field(default_factory=list)  # the scored inputs (image paths or texts)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def judge_inputs(
    predictor, inputs: Sequence, targets: Sequence[int], ids: Sequence[str], target, seed: int = 0
) -> Scored:
    """Score ``inputs`` (with their true class indices ``targets``, in ``predictor.labels``) and judge
    the model against ``target`` (a ``Target`` or its text).

    The examples are put in one order first, by what they are (an image's absolute path, a text's
    characters; then label and id), so that the verdict's interval (a bootstrap's resamples depend on
    the order) is the same whatever order the data came in and whatever its ids: ``automl run`` on
    its test split (ids: the inputs) and ``automl evaluate`` on the same examples (ids: paths, or
    "row N" of a table) give the same verdict."""
    if not isinstance(target, Target):
        target = parse_target(str(target))
    if not len(inputs) == len(targets) == len(ids):
        raise ValueError(f"{len(inputs)} inputs, {len(targets)} targets and {len(ids)} ids")
    order = sorted(range(len(inputs)), key=lambda i: (_order_key(inputs[i]), int(targets[i]), str(ids[i])))
    inputs = [inputs[i] for i in order]
    targets = [int(targets[i]) for i in order]
    ids = [str(ids[i]) for i in order]
    found, readable, unreadable = probabilities(predictor, inputs)
    failed = [(ids[i], error) for i, error in unreadable]
    if not readable:
        first = f" ({failed[0][0]}: {failed[0][1]})" if failed else ""
        raise DataError(f"None of the {len(inputs)} inputs could be read by the model{first}.")
    truth = np.asarray([targets[i] for i in readable], dtype=np.int64)
    scores = {name.removeprefix("val_"): safe_score(name, truth, found) for name in m.VALIDATION_METRICS}
    return Scored(
        ids=[ids[i] for i in readable],
        targets=truth,
        probabilities=found,
        unreadable=failed,
        scores=scores,
        verdict=judge(target, truth, found, seed=seed),
        inputs=[inputs[i] for i in readable],
    )


def _order_key(item) -> str:
    """What an example is, whatever its id: an image file's absolute path, a text itself."""
    if isinstance(item, Path):
        return str(item.resolve())
    return str(item)


def safe_score(metric: str, targets, probabilities) -> float | None:
    """``metric`` of these predictions, or None where it is undefined on them."""
    try:
        value = score(metric, targets, probabilities)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- automl evaluate
@dataclass
class Evaluation:
    """What ``automl evaluate`` found and wrote: ``facts`` is evaluation.json's content."""

    folder: Path
    scored: Scored
    facts: dict

    @property
    def verdict(self):
        return self.scored.verdict

    @property
    def exit_code(self) -> int:
        return exit_code(self.verdict)

    @property
    def json_path(self) -> Path:
        return self.folder / EVALUATION_JSON

    @property
    def html_path(self) -> Path:
        return self.folder / EVALUATION_HTML

    def lines(self) -> list[str]:
        """A short summary for a person."""
        v, counts = self.facts["verdict"], self.facts["counts"]
        name = str(v["metric"]).removeprefix("val_")
        how = f", {v['interval']}" if v.get("interval") else ""
        lines = [
            f"target {v['target']} on {self.facts['data']}: {name} {v['score']:.4f} "
            f"(95% CI {v['ci_low']:.4f}-{v['ci_high']:.4f}{how}) -> {str(v['verdict']).upper()}",
            f"scored {counts['scored']} of {counts['examples']} examples"
            + (f"; {counts['unreadable']} unreadable" if counts["unreadable"] else "")
            + (f"; {counts['skipped']} left out by the reader" if counts["skipped"] else ""),
            "metrics: "
            + ", ".join(f"{k} {'-' if val is None else f'{val:.4f}'}" for k, val in self.facts["metrics"].items()),
        ]
        for id_, error in self.scored.unreadable[:5]:
            lines.append(f"  unreadable: {id_}: {error}")
        lines.append(f"wrote {self.html_path} (and {EVALUATION_JSON}, {EVALUATION_PREDICTIONS} beside it)")
        return lines


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    output: str | Path | None = None,
    input_field: str | None = None,
    target_field: str | None = None,
    header: bool = True,
    trust_checkpoint: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Evaluation:
    """Score RUN's final model on the labelled examples in ``data``, judge it against the run's
    target, and write evaluation.json, evaluation.html and predictions.csv into ``output``
    (default: ``RUN/evaluations/<data name>/``)."""
    from automl.data.labelled import WrongKind, read_labelled
    from automl.predict import Predictor

    folder = RunFolder(run_dir)
    _, summary = folder.require_finished(" (automl evaluate judges its final model against its target)")
    config = folder.config()
    task = check_task(config.get("task", ""))
    target = parse_target(summary.target)
    predictor = Predictor.load(folder.path, trust_checkpoint, max_pixels)
    try:
        found = _read(read_labelled, task, data, input_field, target_field, header, config)
    except WrongKind as error:
        raise error.naming(folder.path) from None
    labels = [str(label) for label in predictor.labels]
    unknown = sorted(set(found.names) - set(labels))
    if unknown:
        raise DataError(
            f"The labels {', '.join(map(repr, unknown))} in '{data}' are not the run's labels "
            f"({', '.join(map(repr, labels))}). Rename them or leave those examples out."
        )
    if not found.inputs:
        why = "; ".join(f"{where}: {reason}" for where, reason in found.skipped[:3])
        raise DataError(f"'{data}' holds no usable labelled example" + (f" ({why})." if why else "."))
    index = {label: i for i, label in enumerate(labels)}
    seed = int(config.get("seed") or 0)
    scored = judge_inputs(predictor, found.inputs, [index[n] for n in found.names], found.ids, target, seed=seed)
    data = Path(data)
    out = Path(output) if output is not None else folder.path / EVALUATIONS_DIR / _data_name(data)
    out.mkdir(parents=True, exist_ok=True)
    frame = _predictions(scored, labels, TASKS[task] == "text")
    facts = _facts(folder.path, task, data, predictor.tier, seed, labels, found, scored, frame, out)
    evaluation = Evaluation(out, scored, facts)
    _write(evaluation, frame, task)
    return evaluation


def _read(read_labelled, task, data, input_field, target_field, header, config):
    """The labelled data, its columns named as given, else as the run named them; a column the run
    named that this table lacks is looked for by name instead."""
    run_input, run_target = config.get("input_field"), config.get("target_field")
    if input_field is not None or target_field is not None or (run_input is None and run_target is None):
        return read_labelled(task, data, input_field, target_field, header)
    try:
        return read_labelled(task, data, run_input, run_target, header)
    except DataError as first:
        try:
            return read_labelled(task, data, None, None, header)
        except DataError:
            raise first from None


def _data_name(data: Path) -> str:
    name = data.name if data.is_dir() else data.stem
    return name or data.resolve().name or "data"


def _predictions(scored: Scored, labels: list[str], texts: bool):
    """One row per scored example: id, (text,) true and predicted label, confidence, every class's probability."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": scored.ids,
            "true": [labels[t] for t in scored.targets],
            "predicted": [labels[i] for i in scored.predicted],
            "confidence": scored.probabilities.max(axis=1),
        }
    )
    if texts:
        frame.insert(1, "text", [str(t) for t in scored.inputs])
    for i, label in enumerate(labels):
        frame[f"p_{label}"] = scored.probabilities[:, i]
    return frame


def _facts(run_dir, task, data, tier, seed, labels, found, scored, frame, out) -> dict:
    from automl.report import facts as report

    confusion = report.confusion(frame, labels)
    return _json_safe(
        {
            "run": str(run_dir),
            "task": task,
            "data": str(data),
            "tier": tier,
            "seed": seed,
            "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "target": scored.verdict.target,
            "verdict": dataclasses.asdict(scored.verdict),
            "exit_code": exit_code(scored.verdict),
            "metrics": scored.scores,
            "labels": labels,
            "per_class": report.per_class(confusion["matrix"], labels),
            "confusion": confusion,  # rows: true labels, columns: predicted
            "mistakes": report.mistakes(frame),
            "counts": {
                "examples": len(found.inputs),
                "scored": len(scored.ids),
                "unreadable": len(scored.unreadable),
                "skipped": len(found.skipped),
            },
            "unreadable": [{"id": id_, "error": error} for id_, error in scored.unreadable],
            "skipped": [{"where": where, "why": why} for where, why in found.skipped],
            "files": {
                "json": str(out / EVALUATION_JSON),
                "html": str(out / EVALUATION_HTML),
                "predictions": str(out / EVALUATION_PREDICTIONS),
            },
        }
    )


def _json_safe(value):
    """Plain JSON: numpy numbers as Python ones, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write(evaluation: Evaluation, frame, task: str) -> None:
    import jinja2

    from automl.report import plots

    facts = evaluation.facts
    tmp = evaluation.folder / (EVALUATION_PREDICTIONS + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(evaluation.folder / EVALUATION_PREDICTIONS)
    write_json(evaluation.json_path, facts)
    figures = {"confusion": plots.confusion(facts["confusion"]["labels"], facts["confusion"]["matrix"])}
    images = TASKS[task] == "image"
    thumbs = [plots.thumbnail(mistake["id"]) for mistake in facts["mistakes"]] if images else []
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(plots.__file__).parent),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
    )
    html = environment.get_template("evaluation.html.j2").render(e=facts, p=figures, thumbs=thumbs, images=images)
    tmp = evaluation.html_path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(evaluation.html_path)
