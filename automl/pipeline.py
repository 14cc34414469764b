"""The jobs the CLI runs: ``fit_baseline`` (``automl fit``) and ``run`` (``automl run``).

``run`` goes through stages — inspect data, baseline, tune, verdict, (escalate), finalise — and
records each finished stage in ``journal.json``; the same command after an interruption skips what
is finished and continues the Optuna study. Stages return plain results; nothing here prints except
through the ``report`` hook the CLI hands in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from automl import metrics as m
from automl.config import FitConfig, RunConfig, dump_yaml
from automl.errors import DataError

BEST_DIR = "best"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
JOURNAL_FILE = "journal.json"
INSPECTION_FILE = "inspection.json"
PREDICTIONS_FILE = "predictions_val.csv"
STUDY_FILE = "study.csv"
STAGES = ("inspect", "baseline", "tune", "verdict", "escalate", "finalise")
#: exit status of ``automl run`` when the target is missed (0: met, 2: bad input)
EXIT_MISSED = 3


# =========================================================================== automl fit
@dataclass
class FitResult:
    run_dir: Path
    metrics: dict[str, float]
    labels: list[str]
    best_epoch: int | None
    seconds: float
    details: dict = field(default_factory=dict)

    @property
    def best_dir(self) -> Path:
        return self.run_dir / BEST_DIR


def new_run_dir(output: str | Path, task: str) -> Path:
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{task.split('_')[0]}-{secrets.token_hex(2)}"
    run_dir = Path(output) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def fit_baseline(config: FitConfig, progress: bool = True, run_dir: Path | None = None) -> FitResult:
    """Train the Flash-tier baseline once and save the best epoch's model under ``<run>/best/``."""
    from lightning.pytorch.loggers import CSVLogger

    from automl.flash import fit

    started = time.monotonic()
    datamodule = fit.load_data(config)
    run_dir = run_dir or new_run_dir(config.output, config.task)
    dump_yaml(config.to_dict(), run_dir / CONFIG_FILE)
    trained = fit.train(
        config, datamodule, run_dir, logger=CSVLogger(run_dir, name="", version="logs"), progress=progress
    )
    scores = fit.validate(trained)
    fit.save_best(run_dir / BEST_DIR, trained.checkpoint, datamodule, config)
    seconds = time.monotonic() - started
    details = {
        "task": config.task,
        "backbone": fit.default_backbone(config),
        "weights": str(trained.model.weights_source),
        "strategy": config.strategy,
        "train_size": len(datamodule.train_samples),
        "val_size": len(datamodule.val_samples),
        "labels": datamodule.labels,
    }
    fit.write_json(
        run_dir / METRICS_FILE, {**scores, "best_epoch": trained.best_epoch, "seconds": round(seconds, 1), **details}
    )
    return FitResult(run_dir, scores, datamodule.labels, trained.best_epoch, seconds, details)


# =========================================================================== automl run
class Journal:
    """``journal.json``: which stages finished, with what result, for which inputs (``key``)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"stages": {}}

    def finished(self, stage: str, key: str):
        entry = self.data["stages"].get(stage)
        return entry["result"] if entry and entry.get("key") == key else None

    def record(self, stage: str, key: str, result, seconds: float) -> None:
        self.data["stages"][stage] = {
            "key": key,
            "result": result,
            "seconds": round(seconds, 2),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.save()

    def save(self) -> None:
        from automl.flash.fit import write_json

        write_json(self.path, self.data)

    def __getitem__(self, key):
        return self.data.get(key)

    def __setitem__(self, key, value) -> None:
        self.data[key] = value
        self.save()


@dataclass
class StageLine:
    stage: str
    trials: int | None = None
    best: float | None = None
    seconds: float = 0.0
    note: str = ""


@dataclass
class RunResult:
    run_dir: Path
    target: str
    verdict: dict
    stages: list[StageLine]
    best_params: dict
    seconds: float

    @property
    def met(self) -> bool:
        return self.verdict["verdict"] == "met"

    @property
    def exit_code(self) -> int:
        return 0 if self.met else EXIT_MISSED


def data_fingerprint(path: str | Path) -> str:
    """Stable across copies: the relative paths and sizes of the files (a folder), or the bytes (a file)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path)}\0{file.stat().st_size}\n".encode())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def study_name(config: RunConfig) -> str:
    return config.study or f"{config.task}-{data_fingerprint(config.data)}"


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


Report = Callable[[str], None]


def run(config: RunConfig, progress: bool = True, report: Report | None = None, pruner=None) -> RunResult:
    """The main job: baseline, tuning and verdict against ``config.target``, tracked in MLflow."""
    from automl import tracking, tuning
    from automl.data.common import existing_path
    from automl.flash import backbones as bb
    from automl.flash import fit
    from automl.target import judge, parse_target

    fit.quiet_library_logs()
    say = report or (lambda line: None)
    started = time.monotonic()
    deadline = None if config.budget_seconds is None else time.time() + config.budget_seconds
    target = parse_target(config.target)
    existing_path(config.data)

    # Stores first: an unreachable one fails before anything is written.
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    name = study_name(config)
    space = _search_space(config, bb)
    storage = config.storage or f"sqlite:///{(output / 'optuna.db').resolve()}"
    tuner = tuning.Tuner(
        space,
        storage,
        name,
        target.direction,
        target.metric,
        seed=config.seed,
        pruner=pruner if pruner is not None else config.pruner,
    )
    tracker = tracking.Tracker(config.tracking_uri or tracking.default_tracking_uri(output), output / "mlartifacts")

    run_dir = output / name
    run_dir.mkdir(exist_ok=True)
    dump_yaml({k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}, run_dir / CONFIG_FILE)
    journal = Journal(run_dir / JOURNAL_FILE)
    parent = tracker.start_parent(
        name, {"task": config.task, "target": str(target), "study": name}, resume_run_id=journal["mlflow_run_id"]
    )
    journal["mlflow_run_id"] = parent
    journal["study"] = name
    tracker.log_params(parent, {k: v for k, v in config.to_dict().items() if v is not None})
    lines: list[StageLine] = []
    total = len(STAGES) - 1  # escalation is not available yet

    def stage(number: int, stage_name: str, key: str, work: Callable[[], dict]) -> dict:
        done = journal.finished(stage_name, key)
        if done is not None:
            say(f"[{number}/{total}] {stage_name}: done in an earlier run, skipped")
            return done
        t0 = time.monotonic()
        tracker.set_tags(parent, {"stage": stage_name})
        result = work()
        journal.record(stage_name, key, result, time.monotonic() - t0)
        return result

    try:
        # 1. inspect ------------------------------------------------------------------
        datamodule = fit.load_data(config)
        fingerprint = data_fingerprint(config.data)
        inspection = stage(
            1,
            "inspect",
            _key(fingerprint, config.val_split, config.seed),
            lambda: _inspect(datamodule, run_dir, say, total),
        )
        lines.append(
            StageLine(
                "inspect",
                note=f"{len(inspection['labels'])} classes, {inspection['train_size']} + "
                f"{inspection['val_size']} examples",
            )
        )

        train_trial = _trial_trainer(config, datamodule, run_dir, tracker, parent, target, progress)
        baseline = tuning.baseline_params(
            space, config.learning_rate, config.weight_decay, config.dropout, config.label_smoothing
        )
        tuner.enqueue_baseline(baseline)

        def on_trial(p: tuning.Progress) -> None:
            left = "" if p.seconds_left is None else f", {_minutes(p.seconds_left)} left"
            best = "" if p.best is None else f", best {p.best:.3f}"
            role = "baseline" if p.number == 0 else "tuning"
            say(f"[{2 if role == 'baseline' else 3}/{total}] {role}: trial {p.number + 1}/{p.total}{best}{left}")

        # 2. baseline: trial 0 of the study ----------------------------------------------
        def run_baseline() -> dict:
            tuner.run(train_trial, total_trials=1, deadline=deadline, on_trial=on_trial)
            return _trial_result(tuner.study.trials[0]) if tuner.study.trials else {"state": "not started"}

        base = stage(2, "baseline", _key(name, baseline), run_baseline)
        lines.append(StageLine("baseline", 1, base.get("value"), base.get("seconds") or 0.0, base.get("state", "")))

        # 3. tune -----------------------------------------------------------------------
        t_tune = time.monotonic()
        before = len(tuner.finished_trials())
        why = tuner.run(train_trial, total_trials=config.trials, deadline=deadline, on_trial=on_trial)
        best_trial = tuner.best_trial()
        if best_trial is None:
            raise DataError(
                "No trial finished with a score; see the failed trials' reasons in the study "
                f"summary ({run_dir / STUDY_FILE})."
            )
        summary = tuner.summary()
        _write_study(run_dir / STUDY_FILE, summary)
        new = len(tuner.finished_trials()) - before
        if new == 0:
            say(f"[3/{total}] tuning: {before} of {config.trials} trials finished in earlier runs, nothing to add")
        note = {"trials": "all trials done", "budget": "time budget reached"}.get(why, why)
        counts = Counter(row["state"] for row in summary)
        lines.append(
            StageLine(
                "tune",
                len(summary),
                best_trial.value,
                time.monotonic() - t_tune,
                f"{note}; {new} new; " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()),
            )
        )
        journal.record(
            "tune",
            _key(name, config.trials),
            {"best_trial": best_trial.number, "stopped": why},
            time.monotonic() - t_tune,
        )

        # 4. verdict on the best trial's model ---------------------------------------------------
        best_config = _trial_config(config, best_trial.params)

        def take_verdict() -> dict:
            model = fit.load_classifier(best_trial.user_attrs["checkpoint"])
            served = fit.data_for(best_config, datamodule)
            targets, probabilities, ids = fit.predict_validation(model, served, config.accelerator)
            _write_predictions(run_dir / PREDICTIONS_FILE, ids, targets, probabilities, datamodule.labels)
            verdict = judge(target, targets, probabilities, seed=config.seed)
            all_scores = {name: _safe_score(name, targets, probabilities) for name in m.VALIDATION_METRICS}
            return {**dataclasses.asdict(verdict), "scores": all_scores, "best_trial": best_trial.number}

        t_verdict = time.monotonic()
        verdict = stage(4, "verdict", _key(str(target), best_trial.number, best_trial.value), take_verdict)
        lines.append(
            StageLine(
                "verdict",
                None,
                verdict["score"],
                time.monotonic() - t_verdict,
                f"trial {verdict['best_trial']}'s model on {len(datamodule.val_samples)} validation examples",
            )
        )
        say(
            f"[4/{total}] verdict: {target.metric} {verdict['score']:.4f} "
            f"(95% CI {verdict['ci_low']:.3f}-{verdict['ci_high']:.3f}) -> {verdict['verdict']}"
        )
        if verdict["verdict"] != "met":
            say("escalation to the Lightning tier is not available yet: the run ends with the tuned Flash tier")
            lines.append(StageLine("escalate", note="not available yet"))

        # 5. finalise ------------------------------------------------------------------------
        def finalise() -> dict:
            fit.save_best(
                run_dir / BEST_DIR,
                best_trial.user_attrs["checkpoint"],
                fit.data_for(best_config, datamodule),
                best_config,
            )
            metrics = {
                **verdict["scores"],
                "target": str(target),
                "verdict": verdict["verdict"],
                "score": verdict["score"],
                "ci_low": verdict["ci_low"],
                "ci_high": verdict["ci_high"],
                "best_trial": best_trial.number,
                "best_params": best_trial.params,
                "labels": datamodule.labels,
            }
            fit.write_json(run_dir / METRICS_FILE, metrics)
            tracker.log_metrics(parent, {f"final_{k}": v for k, v in verdict["scores"].items()})
            tracker.set_tags(parent, {"verdict": verdict["verdict"], "best_trial": best_trial.number})
            for artifact in (CONFIG_FILE, JOURNAL_FILE, STUDY_FILE, PREDICTIONS_FILE, INSPECTION_FILE, METRICS_FILE):
                tracker.log_artifact(parent, run_dir / artifact)
            tracker.log_artifact(parent, run_dir / BEST_DIR, "best")
            return {"best_dir": str(run_dir / BEST_DIR)}

        stage(5, "finalise", _key(str(target), best_trial.number), finalise)
        lines.append(StageLine("finalise", note="best/ written, artifacts logged"))
        tracker.set_tags(parent, {"stage": "finished", "verdict": verdict["verdict"]})
        tracker.end(parent, "FINISHED")
    except BaseException:
        tracker.end(parent, "FAILED")
        raise
    return RunResult(run_dir, str(target), verdict, lines, best_trial.params, time.monotonic() - started)


# --------------------------------------------------------------------------- helpers of run
def _search_space(config: RunConfig, bb):
    from automl.tuning import SearchSpace

    modality = config.modality
    if config.backbones:
        backbones = tuple(config.backbones)
    elif config.backbone:
        backbones = (config.backbone,)
    elif not config.pretrained:
        backbones = (bb.DEFAULT_IMAGE_BACKBONE if modality == "image" else bb.DEFAULT_TEXT_BACKBONE,)
    else:
        # the default first (the baseline), then any other whose weights are here already
        default = bb.DEFAULT_IMAGE_BACKBONE if modality == "image" else bb.DEFAULT_TEXT_BACKBONE
        offline = [n for n in bb.available_backbones(modality) if n != default and _offline(bb, n, modality)]
        backbones = (default, *offline)
    return SearchSpace(
        modality, backbones, config.epochs, config.image_size, config.max_length, config.batch_size, config.strategy
    )


def _offline(bb, name: str, modality: str) -> bool:
    source = bb.weights_status(name, modality)
    return source is not None and source.kind != "hub"


def _trial_config(config: RunConfig, params: dict) -> FitConfig:
    return config.fit_config(**params)


def _trial_trainer(config: RunConfig, datamodule, run_dir: Path, tracker, parent: str, target, progress: bool):
    from automl import tuning
    from automl.flash import fit

    def train_trial(number: int, params: dict, callbacks: list) -> tuning.TrialOutcome:
        trial_config = _trial_config(config, params)
        child = tracker.start_child(parent, f"trial {number}", params, {"trial": str(number)})
        status = "FAILED"
        try:
            trained = fit.train(
                trial_config,
                fit.data_for(trial_config, datamodule),
                run_dir / "trials" / str(number),
                monitor=target.metric,
                callbacks=callbacks,
                logger=tracker.lightning_logger(child),
                progress=progress,
            )
            if trained.checkpoint is None:
                raise RuntimeError("stopped before its first validation (time budget)")
            status = "FINISHED"
            tracker.log_metrics(child, {f"best_{target.metric}": trained.best_score})
            _keep_only_best(run_dir / "trials", number, trained.best_score, target.maximize)
            return tuning.TrialOutcome(trained.best_score, trained.checkpoint, trained.best_epoch)
        except BaseException as error:
            status = "KILLED" if tuning.is_pruned(error) else "FAILED"
            shutil.rmtree(run_dir / "trials" / str(number) / "checkpoints", ignore_errors=True)
            tracker.set_tags(child, {"outcome": f"{type(error).__name__}: {error}"[:500]})
            raise
        finally:
            tracker.end(child, status)

    return train_trial


def _keep_only_best(trials_dir: Path, number: int, score: float, maximize: bool) -> None:
    """Checkpoints of trials that are not the best so far are deleted (they can be large)."""
    marker = trials_dir / "best.json"
    best = json.loads(marker.read_text()) if marker.exists() else None
    better = best is None or (score > best["score"] if maximize else score < best["score"])
    loser = best["number"] if better and best is not None else (None if better else number)
    if better:
        marker.write_text(json.dumps({"number": number, "score": score}))
    if loser is not None:
        shutil.rmtree(trials_dir / str(loser) / "checkpoints", ignore_errors=True)


def _trial_result(trial) -> dict:
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "params": trial.params,
        "seconds": trial.duration.total_seconds() if trial.duration else None,
        "reason": trial.user_attrs.get("fail_reason"),
    }


def _inspect(datamodule, run_dir: Path, say: Report, total: int) -> dict:
    from automl.flash.fit import write_json

    say(
        f"[1/{total}] inspect: {len(datamodule.labels)} classes, {len(datamodule.train_samples)} training and "
        f"{len(datamodule.val_samples)} validation examples"
    )

    counts = Counter(datamodule.labels[t] for _, t in datamodule.train_samples + datamodule.val_samples)
    result = {
        "labels": datamodule.labels,
        "class_counts": dict(counts),
        "train_size": len(datamodule.train_samples),
        "val_size": len(datamodule.val_samples),
    }
    write_json(run_dir / INSPECTION_FILE, result)
    return result


def _safe_score(name: str, targets, probabilities) -> float | None:
    from automl.target import score

    try:
        return score(name, targets, probabilities)
    except ValueError:
        return None


def _write_predictions(path: Path, ids, targets, probabilities, labels: list[str]) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": ids,
            "true": [labels[t] for t in targets],
            "predicted": [labels[i] for i in probabilities.argmax(axis=1)],
            "confidence": probabilities.max(axis=1),
        }
    )
    for index, label in enumerate(labels):
        frame[f"p_{label}"] = probabilities[:, index]
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


def _write_study(path: Path, summary: list[dict]) -> None:
    import pandas as pd

    rows = [
        {**{k: v for k, v in row.items() if k != "params"}, **{f"param_{k}": v for k, v in row["params"].items()}}
        for row in summary
    ]
    tmp = path.with_suffix(".tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(path)


def _minutes(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds / 60:.0f}m" if seconds >= 90 else f"{seconds:.0f}s"
