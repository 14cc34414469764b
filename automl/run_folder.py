"""The run folder of ``automl run``: the names of its files, its journal, and what each stage leaves.

Everything that reads or writes a run folder (the pipeline, the report, ``automl runs``, predict,
export, eject, promote) goes through this module, so a file or key is named in one place::

    runs/<study>/
      config.yaml              the resolved configuration          CONFIG_FILE
      run.log                  stage, trial and epoch lines          (automl.progress)
      journal.json             finished stages and their results    Journal
      inspection.json          the data doctor's findings           INSPECTION_FILE
      splits.csv               which example is train, val or test   SPLITS_FILE
      study.csv, study.lightning.csv                                 study_file(tier)
      predictions_val.csv      the chosen trial on validation        PREDICTIONS_FILE (+ .flash/.lightning)
      predictions_test.csv     the final model on the test split     TEST_PREDICTIONS_FILE
      metrics.json             the final model's scores and verdict  Summary
      report.html, report.json
      best/                    the final model                       BestFolder
      trials/, escalation/, features/  (escalation/warm_start/: the Flash weights its first trial starts from)

``journal.json`` keeps the shape automl 0.1 wrote (``{"stages": {name: {"key", "result", "seconds",
"finished_at"}}, ...}``): old run folders load, and a folder that is not a run gets a clear error.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from automl.errors import DataError
from automl.trial_record import Tier

CONFIG_FILE = "config.yaml"
JOURNAL_FILE = "journal.json"
INSPECTION_FILE = "inspection.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions_val.csv"
TEST_PREDICTIONS_FILE = "predictions_test.csv"
SPLITS_FILE = "splits.csv"
#: the space each tier's study searched: its knobs' ranges and choices (the user's shape applied)
SEARCH_SPACE_FILE = "search_space.yaml"
#: explanations/explanations.json (and overlay PNGs beside it): why the final model answered as it did
EXPLANATIONS_DIR, EXPLANATIONS_FILE = "explanations", "explanations.json"
STUDY_FILE = "study.csv"
REPORT_HTML, REPORT_JSON = "report.html", "report.json"
BEST_DIR = "best"
CHECKPOINT_FILE = "model.ckpt"
LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"
TIER_FILE = "tier.json"
TEMPLATE_CONFIG_FILE = "template_config.yaml"
EXPORT_FILE = "export.json"
#: in best/ when the final model is an ensemble: its members (folders under best/) and their weights
ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
#: the run's own records, logged to its MLflow parent run at the end (with the CSVs and the report)
LOGGED_FILES = (CONFIG_FILE, JOURNAL_FILE, INSPECTION_FILE, METRICS_FILE)


def study_file(tier: Tier | str) -> str:
    return STUDY_FILE if tier == Tier.FLASH else f"study.{tier}.csv"


def tier_predictions_file(tier: str) -> str:
    return f"predictions_val.{tier}.csv"


def write_json(path: Path, values) -> None:
    """Written whole or not at all: a crash mid-write leaves the previous file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    tmp.replace(path)


def read_json(path: Path, default=None):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


@dataclass
class ModelTier:
    """``best/tier.json``: which tier made the final model, and its template (None: the built-in one)."""

    tier: Tier = Tier.FLASH
    template: str | None = None

    @classmethod
    def read(cls, best: Path) -> ModelTier:
        values = read_json(Path(best) / TIER_FILE, {})  # 0.1 folders of the Flash tier may have none
        return cls(Tier(values.get("tier", Tier.FLASH)), values.get("template"))

    def write(self, best: Path) -> None:
        write_json(Path(best) / TIER_FILE, dataclasses.asdict(self))


@dataclass
class _Record:
    """A stage's result: a dataclass that is saved as the JSON object 0.1 wrote. It also reads like
    the dict 0.1 returned (``result.verdict["outcome"]``), for callers of the Python API."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def __getitem__(self, key: str):
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    @classmethod
    def from_json(cls, values: dict | None):
        if values is None:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# --------------------------------------------------------------------------- stage results
@dataclass
class DataReport(_Record):
    """The inspect stage: the data doctor's findings (``automl.data.inspect.Inspection``, as saved)."""

    kind: str
    labels: list
    class_counts: dict
    train_size: int
    val_size: int
    skipped: list = field(default_factory=list)
    converted: list = field(default_factory=list)
    flagged: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    leaks: list = field(default_factory=list)
    small_classes: list = field(default_factory=list)
    imbalance_ratio: float = 1.0
    class_weights: dict | None = None
    encoding: str | None = None
    test_size: int = 0
    holdout: dict = field(default_factory=dict)  # where the test split came from (automl.data.holdout)
    val_source: str = ""  # where the validation split came from: the user's val/ folder, or carved

    def line(self) -> str:
        return (
            f"{len(self.labels)} classes, {self.train_size} train + {self.val_size} val + "
            f"{self.test_size} test examples"
            + (f", {len(self.skipped)} skipped" if self.skipped else "")
            + (f", {len(self.leaks)} train/val leaks" if self.leaks else "")
        )


@dataclass
class TrialResult(_Record):
    """The baseline stage: trial 0 (or its retry), or ``state="not started"``."""

    state: str = "not started"
    number: int | None = None
    value: float | None = None
    params: dict = field(default_factory=dict)
    seconds: float | None = None
    reason: str | None = None


@dataclass
class StudyResult(_Record):
    """A tier's study: its best trial (None when none finished) and why it stopped."""

    study: str
    best_trial: int | None
    score: float | None
    params: dict
    checkpoint: str | None
    stopped: str
    trials: int


@dataclass
class TierVerdict(_Record):
    """A tier's best model judged against the target (``automl.target.judge``), with every metric."""

    target: str
    metric: str
    score: float
    ci_low: float
    ci_high: float
    verdict: str
    gap: float
    scores: dict  # every metric on the validation split (the selection scores)
    best_trial: int | None
    tier: str
    outcome: str
    interval: str = ""  # how ci_low-ci_high was computed (automl.target.interval)
    examples: int = 0  # the examples it was judged on
    split: str = "val"  # the split it was judged on: "test" for the run's verdict when it has one
    test_scores: dict = field(default_factory=dict)  # test_accuracy, ...: every metric on the test split
    notes: list = field(default_factory=list)  # what a reader of the verdict should know
    # the final model's calibration on the verdict's split (automl.calibration.measured); {}: none
    calibration: dict = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return self.verdict == "met"


@dataclass
class EscalationResult(_Record):
    """The Lightning tier's study, the template it used, and, when it beat the Flash tier, its verdict."""

    tier: StudyResult
    template: str
    better: bool
    verdict: TierVerdict | None = None
    template_config: dict | None = None
    #: the template settings naming the Flash model's weights the warm-start trial started from
    #: (``escalation/warm_start/``) and that trial's number (its retries' too); empty: a random head
    warm_start: dict = field(default_factory=dict)
    #: why a Lightning tier that scored higher was not kept: its gain within what validation resolves
    unresolved: str = ""

    @classmethod
    def from_json(cls, values: dict | None):
        if values is None:
            return None
        return cls(
            StudyResult.from_json(values["tier"]),
            values["template"],
            values["better"],
            TierVerdict.from_json(values.get("verdict")),
            values.get("template_config"),
            values.get("warm_start") or {},
        )

    def best_start(self) -> dict:
        """The settings the best trial started from (``init_head``, ``init_backbone``): empty unless
        it was the warm-start trial and that one started from the Flash model."""
        settings = {key: value for key, value in self.warm_start.items() if key != "trials"}
        return settings if self.tier.best_trial in self.warm_start.get("trials", ()) else {}


@dataclass
class EnsembleResult(_Record):
    """The ensemble stage: whether the ensemble of the candidates is the final model, why, each
    candidate (``name``, ``kind``: the chosen trial's tier, ``head`` or ``tfidf``; ``trial``, ``params``,
    ``weight``, ``score`` on the selection split, ``cv_mean``/``cv_std`` for heads) and the evidence
    (``scores``: the ensemble on the whole split, cross-fitted ensemble and single model, gain, resolution)."""

    kept: bool
    why: str
    members: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)

    def chosen(self) -> list[dict]:
        """The members the final model uses (weight above zero), when the ensemble is kept."""
        return [member for member in self.members if member.get("weight")] if self.kept else []


@dataclass
class FinalModel(_Record):
    """Where the final model is: ``best/``, and in MLflow (``model_uri``; registry name and version)."""

    best_dir: str
    tier: str
    model_uri: str | None = None
    tracking_uri: str | None = None
    registered_model: str | None = None
    model_version: str | None = None
    model_alias: str | None = None
    verdict: dict | None = None  # the run's verdict (a TierVerdict, on the test split when there is one)

    def mlflow(self) -> dict:
        """The MLflow fields that are set (what metrics.json and the run summary show)."""
        return {k: v for k, v in self.to_json().items() if k not in ("best_dir", "tier", "verdict") and v is not None}

    def final_verdict(self) -> TierVerdict | None:
        return TierVerdict.from_json(self.verdict)


STAGE_RESULTS: dict[str, type[_Record]] = {
    "inspect": DataReport,
    "baseline": TrialResult,
    "tune": StudyResult,
    "verdict": TierVerdict,
    "escalate": EscalationResult,
    "ensemble": EnsembleResult,
    "finalise": FinalModel,
}


# --------------------------------------------------------------------------- the journal
class _Saved:
    """A value of the journal beside its stages, saved to the file when it is set."""

    def __init__(self, doc: str):
        self.__doc__ = doc

    def __set_name__(self, owner, name: str) -> None:
        self.key = name

    def __get__(self, journal, owner=None):
        return self if journal is None else journal.data.get(self.key)

    def __set__(self, journal, value) -> None:
        journal._set(self.key, value)


@dataclass
class StageEntry:
    result: object
    seconds: float
    finished_at: str


class Journal:
    """``journal.json``: which stages finished, with what result, for which inputs (``key``): the
    same command after an interruption skips them."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data = read_json(self.path, {"stages": {}})

    def finished(self, stage: str, key: str):
        """The stage's typed result when it finished for these inputs, else None."""
        entry = self.data["stages"].get(stage)
        return _typed(stage, entry["result"]) if entry and entry.get("key") == key else None

    def record(self, stage: str, key: str, result, seconds: float) -> None:
        self.data["stages"][stage] = {
            "key": key,
            "result": result.to_json() if isinstance(result, _Record) else result,
            "seconds": round(seconds, 2),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)

    def stage(self, name: str) -> StageEntry | None:
        entry = self.data["stages"].get(name)
        if entry is None:
            return None
        return StageEntry(_typed(name, entry.get("result")), entry.get("seconds", 0.0), entry.get("finished_at", ""))

    def result(self, name: str):
        entry = self.stage(name)
        return entry.result if entry else None

    def total_seconds(self) -> float:
        return sum(entry.get("seconds", 0.0) for entry in self.data["stages"].values())

    def stage_seconds(self) -> dict[str, float]:
        return {name: entry.get("seconds", 0.0) for name, entry in self.data["stages"].items()}

    # the run's identities, kept beside the stages (each saved as it is set)
    mlflow_run_id = _Saved("the MLflow parent run")
    study = _Saved("the Optuna study")
    template = _Saved("the template folder the escalation used (None: it did not escalate)")

    def _set(self, key: str, value) -> None:
        self.data[key] = value
        self.save()


def _typed(stage: str, result):
    kind = STAGE_RESULTS.get(stage)
    return kind.from_json(result) if kind is not None and result is not None else result


# --------------------------------------------------------------------------- metrics.json
@dataclass
class Summary(_Record):
    """``metrics.json`` of a finished run: the final model's scores, verdict and where it is."""

    target: str
    verdict: str
    outcome: str
    tier: str
    score: float
    ci_low: float
    ci_high: float
    gap: float
    best_trial: int | None
    best_params: dict
    labels: list
    scores: dict = field(default_factory=dict)  # val_accuracy, val_f1_macro, ... (flat in the file)
    test_scores: dict = field(default_factory=dict)  # test_accuracy, ... (flat in the file)
    judged_on: str = "val"  # the split the verdict, score and interval come from: "test" or "val"
    examples: int = 0  # how many examples that split has
    interval: str = ""  # how the interval was computed
    selection_score: float | None = None  # the chosen trial's score on the validation split
    notes: list = field(default_factory=list)
    holdout: dict = field(default_factory=dict)  # where the test split came from (automl.data.holdout)
    refit: str = ""  # what the refit on train+val did
    # the ensemble stage (EnsembleResult's fields), and when kept the best single member on the test
    # split and the prediction time per example of both
    ensemble: dict = field(default_factory=dict)
    # the temperature and the ECE before and after it on the verdict's split (automl.calibration)
    calibration: dict = field(default_factory=dict)
    # the final model in MLflow (flat in the file too)
    model_uri: str | None = None
    tracking_uri: str | None = None
    registered_model: str | None = None
    model_version: str | None = None
    model_alias: str | None = None

    MODEL_FIELDS = ("model_uri", "tracking_uri", "registered_model", "model_version", "model_alias")

    def model(self) -> dict:
        """The MLflow fields that are set."""
        return {k: getattr(self, k) for k in self.MODEL_FIELDS if getattr(self, k) is not None}

    def to_json(self) -> dict:
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("scores", "test_scores")}
        return {
            **self.scores,
            **self.test_scores,
            **{k: v for k, v in values.items() if k not in self.MODEL_FIELDS},
            **self.model(),
        }

    @classmethod
    def from_json(cls, values: dict | None):
        if values is None:
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = {k for k, f in fields.items() if f.default is f.default_factory is dataclasses.MISSING}
        given = {k: values[k] for k in fields if k in values and k not in ("scores", "test_scores")}
        return cls(
            **{**{k: None for k in required}, **given},
            scores={k: v for k, v in values.items() if k.startswith("val_")},
            test_scores={k: v for k, v in values.items() if k.startswith("test_")},
        )


# --------------------------------------------------------------------------- the folder
class RunFolder:
    """A run folder, read or written; ``RunFolder(path).require_finished()`` for the commands that
    need a finished run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def best(self) -> Path:
        return self.path / BEST_DIR

    @property
    def journal(self) -> Journal:
        return Journal(self.path / JOURNAL_FILE)

    def config(self) -> dict:
        import yaml

        file = self.path / CONFIG_FILE
        return (yaml.safe_load(file.read_text()) or {}) if file.exists() else {}

    def summary(self) -> Summary | None:
        """metrics.json of a finished ``automl run`` (None for an ``automl fit`` folder or none)."""
        values = read_json(self.path / METRICS_FILE)
        if not values or "target" not in values:
            return None
        return Summary.from_json(values)

    def write_summary(self, summary: Summary) -> None:
        write_json(self.path / METRICS_FILE, summary.to_json())

    def inspection(self) -> dict:
        return read_json(self.path / INSPECTION_FILE, {})

    def require_finished(self, what: str = "") -> tuple[Journal, Summary]:
        """The journal and summary of a finished run, or a ``DataError`` naming what is missing."""
        journal_path, metrics_path = self.path / JOURNAL_FILE, self.path / METRICS_FILE
        summary = self.summary() if metrics_path.exists() else None
        if not journal_path.exists() or summary is None:
            raise DataError(
                f"'{self.path}' is not a finished automl run (no {JOURNAL_FILE} / {METRICS_FILE}"
                f"{' with a verdict' if metrics_path.exists() else ''}). Pass a folder written by `automl run` "
                f"that got to its finalise stage{what}."
            )
        return self.journal, summary
