"""``from automl import AutoML``: the whole ``automl run`` from Python, and what a finished run gives.

>>> from automl import AutoML
>>> run = AutoML("image_classification", "accuracy>=0.9", time_budget="5m").fit("data/digits")
>>> run.verdict.verdict, run.verdict.score                      # doctest: +SKIP
('met', 0.97)
>>> run.leaderboard()                                           # every trial of both tiers
>>> run.predict(["a.png", "b.png"])                             # a DataFrame with a label column
>>> AutoML.load(run.run_dir).evaluate("data/more_digits")       # automl evaluate's figures

It is a thin object over the stages the CLI runs (``automl.pipeline.run``), not a second pipeline:
the options are the CLI's option names as keyword arguments (``trials=20``, ``backbones=[...]``,
``escalate=False`` for ``--no-escalate``, ``output="runs"``), checked when the object is made, and
the run folder it writes is the one ``automl run`` would write for the same data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl.config import TASKS, RunConfig, check_task
from automl.errors import DataError
from automl.run_folder import REPORT_HTML, RunFolder, study_file
from automl.trial_record import Tier

if TYPE_CHECKING:
    import pandas as pd

    from automl.pipeline import RunResult
    from automl.predict import Predictor

#: what ``data`` may be: a path (a folder of class folders, a table, ...) or a DataFrame of
#: texts or image paths with their labels
Data = Any
#: the data a run reads until ``fit`` gives it: options are checked before any data is read
_NO_DATA_YET = "<the data given to fit>"


@dataclass(frozen=True)
class Verdict:
    """A finished run's verdict against its target (``metrics.json``): ``verdict`` is met, missed or
    undecided; ``score`` and its 95% interval ``ci_low``-``ci_high`` come from ``split`` (``test``:
    examples no trial saw; ``val`` when the run had no test split), judged on ``examples`` of them."""

    verdict: str
    outcome: str
    target: str
    metric: str
    score: float
    ci_low: float
    ci_high: float
    tier: str
    split: str
    examples: int

    @property
    def met(self) -> bool:
        return self.verdict == "met"


class AutoML:
    """An ``automl run`` from Python.

    ``task``: ``image_classification`` or ``text_classification``; ``target``: e.g. ``"accuracy>=0.9"``;
    ``time_budget``: ``"90s"``, ``"20m"``, ``"1h"`` or seconds; ``options``: any ``automl run`` option
    by its name (``trials``, ``backbones``, ``output``, ``escalate``, ``ensemble``, ``input_field``, ...).
    A bad task, target or option raises the ``automl.errors`` exception the CLI turns into exit 2,
    before anything is read or written."""

    def __init__(self, task: str, target: str, time_budget: str | float | None = None, **options: Any) -> None:
        check_task(task)
        if isinstance(time_budget, int | float) and not isinstance(time_budget, bool):
            time_budget = f"{time_budget:g}s"
        values = {"task": task, "target": target, "time_budget": time_budget, **options}
        if isinstance(values.get("backbones"), str):
            values["backbones"] = [b.strip() for b in values["backbones"].split(",") if b.strip()]
        self._values = {k: v for k, v in values.items() if v is not None}
        self._check({"data": _NO_DATA_YET})
        self.run_dir: Path | None = None
        self.interrupted = False  # fit was stopped by Ctrl-C (after the epoch): re-run fit to resume
        self._result: RunResult | None = None
        self._predictor: Predictor | None = None

    def _check(self, values: dict) -> RunConfig:
        return RunConfig.from_dict({**self._values, **values})

    # ------------------------------------------------------------------ the run
    def fit(self, data: Data, test_data: Data = None, progress: bool = True) -> AutoML:
        """Run the search on ``data`` (a path, or a DataFrame of texts or image paths and their
        labels; ``test_data`` the same, only to judge): baseline, tuning, the verdict against the
        target, escalation when it is missed, the report. Returns this object, its run folder set.
        Ctrl-C stops after the current epoch and keeps what finished (``interrupted``); calling
        ``fit`` again with the same data resumes."""
        from automl.pipeline import run
        from automl.progress import plain, progress_to_stderr

        output = Path(self._values.get("output", "runs"))
        values = {"data": self._as_path(data, output, "data")}
        if test_data is not None:
            values["test_data"] = self._as_path(test_data, output, "test_data")
        config = self._check(values)
        progress_to_stderr(progress and plain())  # a notebook's stderr: lines, not live bars
        result = run(config, progress=progress, report=_report if progress else None, handle_interrupts=True)
        self._result, self.run_dir, self.interrupted = result, result.run_dir, result.interrupted
        self._predictor = None
        return self

    def _as_path(self, data: Data, output: Path, name: str) -> str:
        """A path as given; a DataFrame written once as a CSV under ``output/inputs/`` (named by its
        content, so the same frame resumes the same study), its columns checked first."""
        if isinstance(data, str | Path):
            return str(data)
        import pandas as pd

        if not isinstance(data, pd.DataFrame):
            raise DataError(
                f"{name} must be a path (a folder or a table) or a pandas DataFrame, got {type(data).__name__}."
            )
        task = self._values["task"]
        frame, fields = _labelled_frame(data, task, self._values.get("input_field"), self._values.get("target_field"))
        self._values.update(fields)
        text = frame.to_csv(index=False)
        path = output / "inputs" / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}.csv"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return str(path)

    @classmethod
    def load(cls, run_dir: str | Path) -> AutoML:
        """A finished run's folder (``automl run`` or ``AutoML.fit`` wrote it) as an ``AutoML``."""
        folder = RunFolder(run_dir)
        folder.require_finished()
        config = folder.config()
        self = cls.__new__(cls)
        self._values = {k: v for k, v in config.items() if k in RunConfig.keys() and k != "data" and v is not None}
        self.run_dir, self.interrupted, self._result, self._predictor = folder.path, False, None, None
        return self

    def _finished(self) -> RunFolder:
        if self.run_dir is None:
            raise DataError("This AutoML has not run yet: call fit(data) first, or AutoML.load(run_dir).")
        return RunFolder(self.run_dir)

    # ------------------------------------------------------------------ what it gives
    @property
    def verdict(self) -> Verdict:
        """The run's verdict against its target, on the test split no trial saw."""
        from automl.target import parse_target

        _, summary = self._finished().require_finished()
        return Verdict(
            verdict=summary.verdict,
            outcome=summary.outcome,
            target=summary.target,
            metric=parse_target(summary.target).metric,
            score=summary.score,
            ci_low=summary.ci_low,
            ci_high=summary.ci_high,
            tier=summary.tier,
            split=summary.judged_on,
            examples=summary.examples,
        )

    @property
    def report_path(self) -> Path:
        return self._finished() / REPORT_HTML

    @property
    def model_uri(self) -> str | None:
        """The final model in MLflow (``mlflow.pyfunc.load_model(model_uri)``); None if not logged."""
        return self._finished().require_finished()[1].model_uri

    def leaderboard(self) -> pd.DataFrame:
        """Every trial of both tiers, as ``study.csv`` and ``study.lightning.csv`` list them: tier,
        number, role, state, score (the validation score), seconds, the reason a trial failed, the
        cross-validated score of heads, and one ``param_*`` column per parameter."""
        import pandas as pd

        folder = self._finished()
        frames = []
        for tier in (Tier.FLASH, Tier.LIGHTNING):
            path = folder / study_file(tier)
            if path.exists():
                frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
                frames.append(frame.assign(tier=str(tier)).rename(columns={"value": "score"}))
        board = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        first = [c for c in ("tier", "number", "role", "state", "score", "seconds") if c in board.columns]
        return board[first + [c for c in board.columns if c not in first]]

    def predict(self, data: Data, top_k: int = 3, batch_size: int = 32) -> pd.DataFrame:
        """Predictions as ``automl predict`` writes them: id, label, probability, top_k, error (an
        unreadable input gets its error, not a crash). ``data``: a path, a list of image paths or
        texts, or a DataFrame (its text or image path column found by name, or ``input_field``)."""
        from automl.predict import predictions_frame

        return predictions_frame(self._rows(data, top_k, batch_size))

    def predict_proba(self, data: Data, batch_size: int = 32) -> pd.DataFrame:
        """id, label, one column of probabilities per class (the run's labels), error."""
        import pandas as pd

        predictor = self._load_predictor()
        labels = [str(label) for label in predictor.labels]
        rows = self._rows(data, len(labels), batch_size)
        probabilities = [dict(row["top_k"]) for row in rows]
        frame = pd.DataFrame({"id": [r["id"] for r in rows], "label": [r["label"] for r in rows]})
        for label in labels:
            frame[label] = [p.get(label) for p in probabilities]
        frame["error"] = [r["error"] or "" for r in rows]
        return frame

    def evaluate(self, data: Data, output: str | Path | None = None) -> dict:
        """``automl evaluate``: the final model on labelled ``data`` (all of it) judged against the
        run's target; returns evaluation.json's content and writes it, evaluation.html and
        predictions.csv into ``output`` (default: the run folder's ``evaluations/<data name>/``)."""
        from automl.evaluate import evaluate_run

        folder = self._finished()
        path = self._as_path(data, folder.path / "evaluations", "data")
        values = self._values
        header = values.get("header", True)
        return evaluate_run(
            folder.path, path, output, values.get("input_field"), values.get("target_field"), header
        ).facts

    def eject(self, destination: str | Path, force: bool = False) -> Path:
        """``automl eject``: the Lightning-tier template of this run as an editable project."""
        from escalation.eject import eject

        return Path(eject(self._finished().path, destination, force=force).folder)

    def _load_predictor(self) -> Predictor:
        if self._predictor is None:
            from automl.predict import Predictor

            self._predictor = Predictor.load(self._finished().path)
        return self._predictor

    def _rows(self, data: Data, top_k: int, batch_size: int) -> list[dict]:
        predictor = self._load_predictor()
        inputs, ids = _inputs(predictor, data, self._values.get("input_field"))
        method = predictor.predict_images if predictor.kind == "image" else predictor.predict_texts
        return method(inputs, ids, top_k=top_k, batch_size=batch_size)

    def __repr__(self) -> str:
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        return f"AutoML(task={self._values['task']!r}, target={self._values['target']!r}{where})"


def _report(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _labelled_frame(frame: pd.DataFrame, task: str, input_field, target_field) -> tuple[pd.DataFrame, dict]:
    """The DataFrame's input and label columns (found by name as in a CSV, or named), image paths made
    absolute (the CSV is read from another folder); a missing column is a ``DataError`` naming it."""
    from automl.data.common import pick_column
    from automl.data.image import IMAGE_COLUMNS, TARGET_COLUMNS
    from automl.data.text import TEXT_COLUMNS

    image = TASKS[task] == "image"
    source = "the DataFrame"
    column = pick_column(
        frame, input_field, IMAGE_COLUMNS if image else TEXT_COLUMNS, source, "image path" if image else "text"
    )
    label = pick_column(frame, target_field, TARGET_COLUMNS, source, "label")
    out = frame[[column, label]].copy()
    if image:
        out[column] = [str(Path(str(value)).resolve()) for value in out[column]]
    return out, {"input_field": column, "target_field": label}


def _inputs(predictor: Predictor, data: Data, input_field) -> tuple[list, list[str]]:
    """(inputs, ids) from a path (as ``automl predict --data``), a list, or a DataFrame's column."""
    import pandas as pd

    from automl.predict import read_inputs

    if isinstance(data, str | Path):
        return read_inputs(predictor, data, input_field)
    if isinstance(data, pd.DataFrame):
        from automl.data.common import pick_column
        from automl.data.image import IMAGE_COLUMNS
        from automl.data.text import TEXT_COLUMNS

        image = predictor.kind == "image"
        names = IMAGE_COLUMNS if image else TEXT_COLUMNS
        column = pick_column(data, input_field, names, "the DataFrame", "image path" if image else "text")
        data = list(data[column])
    if isinstance(data, list | tuple):
        if predictor.kind == "image":
            return [Path(str(item)) for item in data], [str(item) for item in data]
        return list(data), [str(index) for index in range(len(data))]
    raise DataError(f"data must be a path, a list or a pandas DataFrame, got {type(data).__name__}.")
