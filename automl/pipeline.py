"""The jobs the CLI runs: ``fit_baseline`` (``automl fit``) and ``run`` (``automl run``).

``run`` goes through stages — inspect data, baseline, tune, verdict, (escalate), finalise — and
records each finished stage in ``journal.json``; the same command after an interruption skips what
is finished and continues the Optuna study. Stages return plain results; nothing here prints except
through the ``report`` hook the CLI hands in.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from automl import metrics as m
from automl.budget import Budget
from automl.config import FitConfig, RunConfig, dump_yaml
from automl.errors import DataError
from automl.flash.features import FeatureCache

BEST_DIR = "best"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
RUN_DIR_ENV = "AUTOML_RUN_DIR"
JOURNAL_FILE = "journal.json"
INSPECTION_FILE = "inspection.json"
PREDICTIONS_FILE = "predictions_val.csv"
STUDY_FILE = "study.csv"
STAGES = ("inspect", "baseline", "tune", "verdict", "escalate", "finalise")
#: the study's user attribute naming its MLflow parent run in each tracking store: {tracking URI: run id}
PARENT_RUNS_ATTR = "mlflow_parent_runs"
#: exit status of ``automl run`` when the target is missed (0: met, 2: bad input)
EXIT_MISSED = 3
#: exit status of ``automl run`` stopped by Ctrl-C (after judging and reporting what finished)
EXIT_INTERRUPTED = 130


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
    # Lightning's "ddp" starts each other rank by running this same command again: they find the run
    # folder the first one made in the environment it hands down.
    inherited = os.environ.get(RUN_DIR_ENV)
    run_dir = run_dir or (Path(inherited) if inherited else new_run_dir(config.output, config.task))
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        dump_yaml(config.to_dict(), run_dir / CONFIG_FILE)
        trained = fit.train(
            config, datamodule, run_dir, logger=CSVLogger(run_dir, name="", version="logs"), progress=progress
        )
        scores = fit.validate(trained)
    finally:  # handed to the other ranks only: the next fit in this process makes its own folder
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)
    if not trained.trainer.is_global_zero:
        sys.exit(0)  # a helper rank of a distributed fit: rank zero writes the results
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
    tier: str = "flash"  # the tier whose model is in best/
    interrupted: bool = False  # Ctrl-C: what finished was judged and reported; re-run to resume
    model: dict = field(default_factory=dict)  # the MLflow model: model_uri (registered_model, model_version)

    @property
    def met(self) -> bool:
        return self.verdict["verdict"] == "met"

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
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
FLASH = "flash"
LIGHTNING = "lightning"


def tune_worker(config: RunConfig, progress: bool = True, report: Report | None = None) -> dict:
    """``automl tune``: join (or create) the study in ``config.storage`` and run Flash-tier trials until
    it holds ``config.trials`` finished ones, whoever ran them. Verdict and report are ``automl run``'s."""
    from automl.progress import detach_run_log
    from automl.tracking import own_tracking_uri
    from automl.tuning import WORKER

    with own_tracking_uri():
        try:
            return _tune_worker(config, progress, report, WORKER)
        except BaseException as error:
            _log_error(error)
            raise
        finally:
            detach_run_log()


def _tune_worker(config: RunConfig, progress: bool, report: Report | None, worker: str) -> dict:
    job = RunJob(config, progress, report, None, who=worker)
    job.stop.install(job.say)
    try:
        job.inspect()
        job.baseline_params_enqueued()
        why = job.flash_tuner.run(
            job.flash_train,
            total_trials=config.trials,
            deadline=job.deadline,
            on_trial=job._on_trial(3, "tuning"),
            on_wait=job._on_wait(3, "tuning"),
            on_trial_end=job._on_trial_end(3, "tuning"),
        )
        job.tracker.end(job.parent, "FINISHED")
    except BaseException:
        job.tracker.end(job.parent, "FAILED")
        raise
    finally:
        job.stop.uninstall()
    trials = job.flash_tuner.finished_trials()
    best = job.flash_tuner.best_trial()
    return {
        "study": job.name,
        "stopped": why,
        "finished": len(trials),
        "requested": config.trials,
        "by_this_worker": sum(1 for t in trials if t.user_attrs.get("worker") == worker),
        "best_value": best.value if best else None,
        "worker": worker,
    }


def run(
    config: RunConfig,
    progress: bool = True,
    report: Report | None = None,
    pruner=None,
    handle_interrupts: bool = False,
    started: float | None = None,
) -> RunResult:
    """The main job: baseline, tuning, verdict against ``config.target`` and, when the target is
    missed, escalation to the Lightning tier; tracked in MLflow, resumable through ``journal.json``.

    With ``handle_interrupts`` (the CLI), Ctrl-C stops after the current epoch, judges and reports
    what finished, and the result's exit code is 130; the same command later resumes. The time budget
    counts from ``started`` (``time.time()``; the CLI's start), else from now."""
    from automl.progress import detach_run_log
    from automl.tracking import own_tracking_uri

    with own_tracking_uri():
        try:
            job = RunJob(config, progress, report, pruner, started)
            if handle_interrupts:
                job.stop.install(job.say)
            try:
                return job.execute()
            finally:
                job.stop.uninstall()
        except BaseException as error:
            _log_error(error)
            raise
        finally:
            detach_run_log()


def _log_error(error: BaseException) -> None:
    """What ended a run, as the last line of its ``run.log`` (the CLI prints it on stderr)."""
    from automl.errors import AutoMLError
    from automl.progress import stage_line

    if isinstance(error, KeyboardInterrupt):
        stage_line("stopped: interrupted")
    elif not isinstance(error, SystemExit):
        stage_line(f"error: {error}" if isinstance(error, AutoMLError) else f"error: {type(error).__name__}: {error}")


class RunJob:
    """One ``automl run`` (or ``automl tune`` worker, named ``who``): its stores, folder, journal,
    ``run.log`` and stages (one method each)."""

    def __init__(
        self,
        config: RunConfig,
        progress: bool,
        report: Report | None,
        pruner,
        started: float | None = None,
        who: str = "",
    ):
        from automl import tracking
        from automl.data.common import existing_path
        from automl.flash import fit
        from automl.progress import attach_run_log
        from automl.target import parse_target

        fit.quiet_library_logs()
        existing_path(config.data)
        # the data first: a bad file fails before any store or folder is made, and the search is fitted to it
        self.datamodule = fit.load_data(config)
        config = _fit_to_data(config, self.datamodule)
        self.config = config
        self.progress = progress
        self.report = report or (lambda line: None)
        self.pruner = pruner if pruner is not None else config.pruner
        self.started = time.monotonic()
        started = time.time() if started is None else started
        self.deadline = None if config.budget_seconds is None else started + config.budget_seconds
        self.budget = None if self.deadline is None else Budget(started, config.budget_seconds, config.escalate)
        # the Flash tier leaves the Lightning tier its share of the budget
        self.tune_deadline = None if self.budget is None else self.budget.tune_deadline
        self.correction = 1.0  # real / estimated time of the last fine-tuning trial
        self.target = parse_target(config.target)
        self.total = len(STAGES)
        self.lines: list[StageLine] = []

        # Stores first: an unreachable one fails before the run folder exists.
        self.output = Path(config.output)
        self.output.mkdir(parents=True, exist_ok=True)
        self.name = study_name(config)
        self.storage = config.storage or f"sqlite:///{(self.output / 'optuna.db').resolve()}"
        from automl.tuning import StopRequest

        self.stop = StopRequest()
        self.flash_tuner = self._tuner(self.name, _search_space(config, FLASH))
        self.flash_tuner.cheaper = lambda: _cheaper(self.flash_tuner)
        uri = config.tracking_uri or tracking.default_tracking_uri(self.output)
        self.tracker = tracking.Tracker(uri, self.output / "mlartifacts")

        self.run_dir = self.output / self.name
        self.run_dir.mkdir(exist_ok=True)
        attach_run_log(self.run_dir, who)
        if self.flash_tuner.recovered:
            self.say(
                f"trials {self.flash_tuner.recovered} were left running by a process that died: "
                "recorded as failed and run again"
            )
        self.features = FeatureCache(self.run_dir / "features")
        dump_yaml(
            {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}, self.run_dir / CONFIG_FILE
        )
        self.journal = Journal(self.run_dir / JOURNAL_FILE)
        self.parent = self._parent_run({"task": config.task, "target": str(self.target), "study": self.name})
        self.journal["mlflow_run_id"] = self.parent
        self.journal["study"] = self.name
        self.tracker.log_params(self.parent, {k: v for k, v in config.to_dict().items() if v is not None})
        self.notifier = None
        if config.notify_url:
            from escalation.callbacks import WebhookNotifier

            self.notifier = WebhookNotifier(config.notify_url, run=self.name)

    def _parent_run(self, tags: dict[str, str]) -> str:
        """The study's MLflow parent run: this run folder's (a resumed run), else the one the study's
        workers share in this tracking store (its id kept in the study), else a new one. On a shared
        database one process at a time picks it, so workers started together make one, not one each."""
        from automl.storage import PARENT_RUN_LOCK_KEY, advisory_lock

        study = self.flash_tuner.study
        uri = self.tracker.tracking_uri
        with advisory_lock(self.storage, PARENT_RUN_LOCK_KEY):
            known = dict(study.user_attrs.get(PARENT_RUNS_ATTR, {}))
            parent = self.tracker.start_parent(
                self.name, tags, resume_run_id=self.journal["mlflow_run_id"] or known.get(uri)
            )
            if known.get(uri) != parent:
                study.set_user_attr(PARENT_RUNS_ATTR, {**known, uri: parent})
        return parent

    def _tuner(self, name: str, space):
        from automl import tuning

        tuner = tuning.Tuner(
            space,
            self.storage,
            name,
            self.target.direction,
            self.target.metric,
            seed=self.config.seed,
            pruner=self.pruner,
            heartbeat=self.config.heartbeat,
            examples=len(self.datamodule.val_samples),
        )
        tuner.stop = self.stop  # one Ctrl-C stops whichever study is running
        tuner.sized_trials = self.budget is not None
        return tuner

    def say(self, line: str) -> None:
        """A stage line: to the CLI's ``report`` hook (stderr) and to ``run.log``."""
        from automl.progress import stage_line

        stage_line(line)
        self.report(line)

    # ------------------------------------------------------------------ the stages
    def execute(self) -> RunResult:
        if self.notifier:
            self.notifier.run_started(task=self.config.task, target=str(self.target), data=self.config.data)
        try:
            self.inspect()
            self.baseline()
            flash = self.tune()
            verdict = self.verdict(flash)
            final_tier, final, best = FLASH, verdict, flash
            if self.stop.requested:
                self.lines.append(StageLine("escalate", note="skipped: interrupted (re-run the command to resume)"))
            elif verdict["verdict"] != "met":
                final_tier, final, best = self.escalate(flash, verdict)
            else:
                self.lines.append(StageLine("escalate", note="not needed: the target is met"))
            self.finalise(final_tier, best, final)
            self.tracker.set_tags(self.parent, {"stage": "finished", "verdict": final["verdict"], "tier": final_tier})
            self.tracker.end(self.parent, "FINISHED")
        except BaseException as error:
            self.tracker.end(self.parent, "FAILED")
            if self.notifier:
                self.notifier.run_finished("failed", f"{type(error).__name__}: {error}")
            raise
        if self.notifier:
            self.notifier.run_finished(final["verdict"], final["outcome"], score=final["score"], tier=final_tier)
        return RunResult(
            self.run_dir,
            str(self.target),
            final,
            self.lines,
            best["params"],
            time.monotonic() - self.started,
            final_tier,
            self.stop.requested,
            self.model,
        )

    def stage(
        self,
        number: int,
        name: str,
        key: str,
        work: Callable[[], dict],
        summary: Callable[[dict], str] = lambda result: "",
    ) -> dict:
        done = self.journal.finished(name, key)
        if done is not None:
            self.say(f"[{number}/{self.total}] {name}: done in an earlier run, skipped")
            return done
        t0 = time.monotonic()
        self.tracker.set_tags(self.parent, {"stage": name})
        result = work()
        self.journal.record(name, key, result, time.monotonic() - t0)
        if self.notifier:
            self.notifier.stage_finished(name, summary(result))
        return result

    def inspect(self) -> None:
        key = _key(data_fingerprint(self.config.data), self.config.val_split, self.config.seed)
        result = self.stage(
            1,
            "inspect",
            key,
            lambda: _inspect(self.config, self.datamodule, self.run_dir, self.say, self.total),
            lambda r: f"{len(r['labels'])} classes, {len(r['skipped'])} files skipped",
        )
        self.lines.append(
            StageLine(
                "inspect",
                note=f"{len(result['labels'])} classes, {result['train_size']} + {result['val_size']} examples"
                + (f", {len(result['skipped'])} skipped" if result.get("skipped") else "")
                + (f", {len(result['leaks'])} train/val leaks" if result.get("leaks") else ""),
            )
        )

    def _on_trial(self, number: int, role: str):
        def show(p) -> None:
            left = "" if p.seconds_left is None else f", {_minutes(p.seconds_left)} left"
            best = "" if p.best is None else f", best {p.best:.3f}"
            # the count, and the trial's number as the epoch lines, study.csv and MLflow name it
            self.say(f"[{number}/{self.total}] {role}: trial {p.number + 1}/{p.total} (#{p.number}){best}{left}")

        return show

    def _on_trial_end(self, number: int, role: str):
        """A line per finished trial, with the epoch lines (``run.log``; stderr when it is no terminal)."""
        from automl.progress import PROGRESS, short_params

        def show(trial) -> None:
            state = trial.state.name.lower()
            seconds = trial.user_attrs.get("seconds")
            took = "" if seconds is None else f" in {_minutes(seconds)}"
            if state == "complete":
                result = f"{state}{took}: {self.target.metric}={trial.value:.4f}"
            else:  # failed or pruned, with the reason
                why = trial.user_attrs.get("fail_reason") or trial.user_attrs.get("pruned_reason") or ""
                result = f"{state}{took}" + (f" ({why.splitlines()[0][:200]})" if why.strip() else "")
            params = short_params(trial.params)
            PROGRESS.info(f"[{number}/{self.total}] {role}: trial #{trial.number} {result}; {params}")

        return show

    def _on_wait(self, number: int, role: str):
        def show(running: list) -> None:
            workers = sorted({str(t.user_attrs.get("worker", "a starting worker")) for t in running})
            self.say(
                f"[{number}/{self.total}] {role}: waiting for {len(running)} trial(s) running in other workers "
                f"({', '.join(workers)})"
            )

        return show

    def baseline_params_enqueued(self) -> dict:
        """Trial 0 of a new study is the Flash-tier defaults; returns those parameters."""
        from automl import tuning

        config = self.config
        self.flash_train = self._tracked(FLASH, self._flash_trial)
        space = self.flash_tuner.space
        params = tuning.baseline_params(
            space, config.learning_rate, config.weight_decay, config.dropout, config.label_smoothing
        )
        defaults = params
        if self.budget is not None and config.strategy == _DEFAULT_STRATEGY:
            # with a budget the baseline is the default backbone's head on cached features: seconds,
            # and its one pass over the data measures what that backbone costs here
            params = _as_head(params, config)
        self.flash_tuner.enqueue_baseline(params)
        # then the same cheap head on every other backbone: the best one's linear probe within minutes;
        # and the defaults as they are (fine-tuning), sized to the budget, before the search goes on
        probes = _probe_params(config, space, params, penalties=self.budget is not None)
        if defaults is not params:
            probes.append(defaults)
        self.flash_tuner.enqueue_probes(probes[: max(config.trials - 1, 0)])
        return params

    def baseline(self) -> None:
        params = self.baseline_params_enqueued()

        def work() -> dict:
            before = len(self.flash_tuner.finished_trials())
            why = self.flash_tuner.run(
                self.flash_train,
                total_trials=1,
                deadline=self.tune_deadline or self.deadline,
                on_trial=self._on_trial(2, "baseline"),
                on_wait=self._on_wait(2, "baseline"),
                on_trial_end=self._on_trial_end(2, "baseline"),
            )
            # trial 0, or its retry when the process running it died
            baseline = [t for t in self.flash_tuner.finished_trials() if t.user_attrs.get("role") == tuning_baseline()]
            if len(self.flash_tuner.finished_trials()) == before:  # say why it trained nothing
                if why == "budget":
                    self.say(f"[2/{self.total}] baseline: not started: {self._no_time_left()}")
                elif baseline:
                    self.say(
                        f"[2/{self.total}] baseline: trial #{baseline[0].number} finished in an earlier run or by "
                        f"another worker ({self.target.metric} {baseline[0].value})"
                    )
            return _trial_result(baseline[0]) if baseline else {"state": "not started"}

        base = self.stage(
            2, "baseline", _key(self.name, params), work, lambda r: f"{self.target.metric} {r.get('value')}"
        )
        self.lines.append(
            StageLine("baseline", 1, base.get("value"), base.get("seconds") or 0.0, base.get("state", ""))
        )

    def _run_study(
        self, tuner, train, trials: int, number: int, role: str, stage_name: str, deadline: float | None
    ) -> dict:
        """Run ``tuner`` up to ``trials`` or ``deadline``; the study's best trial as a plain result."""
        t0 = time.monotonic()
        before = len(tuner.finished_trials())
        why = tuner.run(
            train,
            total_trials=trials,
            deadline=deadline,
            on_trial=self._on_trial(number, role),
            on_wait=self._on_wait(number, role),
            on_trial_end=self._on_trial_end(number, role),
        )
        best = tuner.best_trial()
        summary = tuner.summary()
        new = len(tuner.finished_trials()) - before
        counts = Counter(row["state"].lower() for row in summary)
        note = {"trials": "all trials done", "budget": "time budget reached", "interrupted": "interrupted"}.get(
            why, why
        )
        if tuner.out_of_time:
            note = f"{note} ({tuner.out_of_time})"
        if new == 0 and why in ("budget", "trials"):
            note = self._why_no_new_trial(tuner, why, trials, before, stage_name, deadline)
            self.say(f"[{number}/{self.total}] {role}: {note}")
        note = f"{note}; {new} new; " + ", ".join(f"{n} {state}" for state, n in counts.items())
        self.lines.append(
            StageLine(stage_name, len(summary), best.value if best else None, time.monotonic() - t0, note)
        )
        if best is None and stage_name == "tune":
            if why == "budget" and not tuner.finished_trials():  # none even started
                raise DataError(
                    f"No trial could start within the time budget: {self._no_time_left()}. Give a larger --time-budget."
                )
            raise DataError(f"No {role} trial finished with a score; see the reasons in {self.run_dir / STUDY_FILE}.")
        return {
            "study": tuner.study.study_name,
            "best_trial": best.number if best else None,
            "score": best.value if best else None,  # None: no trial finished (e.g. the budget ran out)
            "params": best.params if best else {},
            "checkpoint": best.user_attrs["checkpoint"] if best else None,
            "stopped": why,
            "trials": len(summary),
            "summary": summary,
        }

    def _why_no_new_trial(self, tuner, why: str, trials: int, before: int, stage_name: str, deadline) -> str:
        """What a stage that started no trial says: the time it lacked, or who ran the trials it asks for."""
        if why == "budget":
            if tuner.out_of_time:
                return f"no new trial: {tuner.out_of_time}"
            ran_here = before > tuner.finished_before  # the baseline stage trained in this run
            after = {"tune": "the baseline" if ran_here else "", "escalate": "tuning"}.get(stage_name, "")
            return self._no_time_left(after, deadline if stage_name == "tune" else None)
        earlier = min(before, tuner.finished_before)
        here = before - earlier
        if earlier == 0:
            return f"no new trial: --trials {trials} is reached with the baseline"
        if here == 0:
            return f"no new trial: {earlier} of {trials} trials finished in earlier runs or by other workers"
        return (
            f"no new trial: --trials {trials} is reached ({earlier} trial(s) finished in earlier runs or by other "
            f"workers, {here} in this run's baseline)"
        )

    def _no_time_left(self, after: str = "", deadline: float | None = None) -> str:
        """``no time left after the baseline (14m of the 20m budget spent; ...)``."""
        spent = time.time() - self.budget.started
        text = "no time left" + (f" after {after}" if after else "")
        text += f" ({_minutes(spent)} of the {_minutes(self.budget.seconds)} budget spent"
        if deadline is not None and deadline < self.budget.deadline - 1:
            share = deadline - self.budget.started
            text += f"; tuning may use {_minutes(share)} of it, the rest is the escalation's"
        return text + ")"

    def tune(self) -> dict:
        flash = self._run_study(
            self.flash_tuner,
            self.flash_train,
            self.config.trials,
            3,
            "tuning",
            "tune",
            self.tune_deadline or self.deadline,
        )
        _write_study(self.run_dir / STUDY_FILE, flash["summary"])
        seconds = sum(row["seconds"] or 0.0 for row in flash["summary"] if row["role"] != tuning_baseline())
        flash.pop("summary")
        self.journal.record("tune", _key(self.name, self.config.trials), flash, seconds)
        if self.notifier:
            self.notifier.stage_finished("tune", f"best {self.target.metric} {flash['score']:.4f}")
        return flash

    def verdict(self, flash: dict) -> dict:
        from automl.flash import fit

        best_config = self.config.fit_config(**flash["params"])

        def work() -> dict:
            model = fit.load_classifier(flash["checkpoint"])
            served = fit.data_for(best_config, self.datamodule)
            targets, probabilities, ids = fit.predict_validation(model, served, self.config.accelerator)
            return self._judge(FLASH, flash, targets, probabilities, ids)

        t0 = time.monotonic()
        verdict = self.stage(
            4, "verdict", _key(str(self.target), flash["best_trial"], flash["score"]), work, lambda v: v["outcome"]
        )
        self._show_verdict(4, verdict, time.monotonic() - t0)
        return verdict

    def _judge(self, tier: str, best: dict, targets, probabilities, ids) -> dict:
        from automl.target import judge

        _write_predictions(
            self.run_dir / f"predictions_val.{tier}.csv", ids, targets, probabilities, self.datamodule.labels
        )
        verdict = dataclasses.asdict(judge(self.target, targets, probabilities, seed=self.config.seed))
        scores = {name: _safe_score(name, targets, probabilities) for name in m.VALIDATION_METRICS}
        met = verdict["verdict"] == "met"
        if met:
            outcome = f"met by the {tier} tier"
        elif tier == LIGHTNING or not self.config.escalate:
            outcome = f"missed{' after escalation' if tier == LIGHTNING else ''}, short by {verdict['gap']:.4f}"
        else:
            outcome = f"missed by the flash tier, short by {verdict['gap']:.4f}"
        return {**verdict, "scores": scores, "best_trial": best["best_trial"], "tier": tier, "outcome": outcome}

    def _show_verdict(self, number: int, verdict: dict, seconds: float) -> None:
        self.lines.append(
            StageLine(
                "verdict",
                None,
                verdict["score"],
                seconds,
                f"{verdict['outcome']}; {verdict['tier']} trial {verdict['best_trial']}",
            )
        )
        self.say(
            f"[{number}/{self.total}] verdict: {self.target.metric} {verdict['score']:.4f} "
            f"(95% CI {verdict['ci_low']:.3f}-{verdict['ci_high']:.3f}) -> {verdict['outcome']}"
        )

    def _escalate_key(self, flash: dict) -> str:
        trials = self.config.escalation_trials or self.config.trials
        return _key(self.name, trials, str(self.config.template or "built-in"), flash["best_trial"], str(self.target))

    def escalate(self, flash: dict, verdict: dict) -> tuple[str, dict, dict]:
        """The Lightning tier: a second study over the template, warm-started from the best Flash
        parameters, under what is left of the budget. The better tier's model is judged again."""
        if not self.config.escalate:
            self.lines.append(StageLine("escalate", note="off (--no-escalate)"))
            return FLASH, verdict, flash
        from automl import tuning
        from escalation.train import load_template, predict_validation

        template = load_template(self.config.template)
        space = _search_space(self.config, LIGHTNING)
        tuner = self._tuner(f"{self.name}-{LIGHTNING}", space)
        train = self._tracked(LIGHTNING, self._lightning_trial(template))
        self.say(f"[5/{self.total}] escalate: the target is missed; tuning the Lightning tier ({template.folder})")

        def work() -> dict:
            tuner.enqueue_baseline(tuning.warm_start_params(space, flash["params"]), role="warm start")
            trials = self.config.escalation_trials or self.config.trials
            lightning = self._run_study(tuner, train, trials, 5, "escalation", "escalate", self._escalation_deadline())
            _write_study(self.run_dir / f"study.{LIGHTNING}.csv", lightning.pop("summary"))
            score = lightning["score"]
            better = score is not None and (score > flash["score"] if self.target.maximize else score < flash["score"])
            result = {"tier": lightning, "template": str(template.folder), "better": better}
            if better:
                config = self._template_config(lightning["params"], lightning["best_trial"])
                targets, probabilities, ids = predict_validation(template, lightning["checkpoint"], config)
                result["verdict"] = self._judge(LIGHTNING, lightning, targets, probabilities, ids)
                result["template_config"] = config
            return result

        t0 = time.monotonic()
        result = self.stage(
            5, "escalate", self._escalate_key(flash), work, lambda r: f"lightning best {r['tier']['score']}"
        )
        self.journal["template"] = result["template"]
        if not any(line.stage == "escalate" for line in self.lines):  # finished in an earlier run
            lightning = result["tier"]
            self.lines.append(
                StageLine(
                    "escalate",
                    lightning["trials"],
                    lightning["score"],
                    0.0,
                    f"{lightning['trials']} trials, done in an earlier run",
                )
            )
        if not result["better"]:
            why = (
                f"the Lightning tier did not beat the Flash tier's {flash['score']:.4f}"
                if result["tier"]["score"] is not None
                else f"no Lightning-tier trial finished ({result['tier']['stopped']}; see study.{LIGHTNING}.csv)"
            )
            outcome = f"missed after escalation ({why}), short by {verdict['gap']:.4f}"
            final = {**verdict, "outcome": outcome}
            self.lines.append(StageLine("verdict", None, final["score"], 0.0, outcome))
            self.say(f"[5/{self.total}] escalate: {outcome}")
            return FLASH, final, flash
        self._show_verdict(5, result["verdict"], time.monotonic() - t0)
        return LIGHTNING, result["verdict"], result["tier"]

    def _escalation_deadline(self) -> float | None:
        """The budget's end, less the time the better tier's model takes to be judged after the study
        (a pass over the validation set, twice with test-time augmentation, and a margin)."""
        if self.deadline is None:
            return None
        forward = self.features.forward_seconds(self.config.fit_config()) or 0.0
        return self.deadline - 3 * forward * len(self.datamodule.val_samples)

    def _template_config(self, params: dict, number: int) -> dict:
        from escalation.train import template_config

        out = self.run_dir / "escalation" / str(number)
        config = template_config(self.config.to_dict(), params, out, self.target.metric)
        config["strategy"] = self.config.trial_strategy  # Lightning's, as for the Flash tier's trials
        if self.config.precision:
            config["precision"] = self.config.precision
        return config

    def finalise(self, tier: str, best: dict, verdict: dict) -> None:
        from automl.flash import fit

        def work() -> dict:
            best_dir = self.run_dir / BEST_DIR
            if tier == FLASH:
                config = self.config.fit_config(**best["params"])
                fit.save_best(best_dir, best["checkpoint"], fit.data_for(config, self.datamodule), config)
            else:
                from escalation.train import preprocessing

                config = self._template_config(best["params"], best["best_trial"])
                best_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy2(best["checkpoint"], best_dir / fit.CHECKPOINT_FILE)
                fit.write_json(best_dir / fit.LABELS_FILE, self.datamodule.labels)
                fit.write_json(
                    best_dir / fit.PREPROCESSING_FILE,
                    {**preprocessing(config), "task": self.config.task, "backbone": config["backbone"]},
                )
                dump_yaml(config, best_dir / "template_config.yaml")
            # the built-in template as None: the path differs on the machine that loads the run folder,
            # and a path there is code that `automl predict` runs only with --trust-checkpoint
            template = self.journal["template"] if self.config.template else None
            fit.write_json(best_dir / "tier.json", {"tier": tier, "template": template})
            shutil.copy2(self.run_dir / f"predictions_val.{tier}.csv", self.run_dir / PREDICTIONS_FILE)
            metrics = {
                **verdict["scores"],
                "target": str(self.target),
                "verdict": verdict["verdict"],
                "outcome": verdict["outcome"],
                "tier": tier,
                "score": verdict["score"],
                "ci_low": verdict["ci_low"],
                "ci_high": verdict["ci_high"],
                "gap": verdict["gap"],
                "best_trial": best["best_trial"],
                "best_params": best["params"],
                "labels": self.datamodule.labels,
            }
            fit.write_json(self.run_dir / METRICS_FILE, metrics)
            self.tracker.log_metrics(self.parent, {f"final_{k}": v for k, v in verdict["scores"].items()})
            self.tracker.set_tags(
                self.parent, {"verdict": verdict["verdict"], "tier": tier, "best_trial": best["best_trial"]}
            )
            logged = self._log_model(best_dir, template, verdict)
            fit.write_json(self.run_dir / METRICS_FILE, {**metrics, **logged})
            report = self._report(tier, verdict)
            for path in sorted(self.run_dir.glob("*.csv")) + [
                self.run_dir / n for n in (CONFIG_FILE, JOURNAL_FILE, INSPECTION_FILE, METRICS_FILE, *report)
            ]:
                self.tracker.log_artifact(self.parent, path)
            return {"best_dir": str(best_dir), "tier": tier, **logged}

        result = self.stage(
            6,
            "finalise",
            _key(str(self.target), tier, best["best_trial"], best["score"], self.config.register),
            work,
            lambda r: f"model in {r['best_dir']}",
        )
        self.model = {k: v for k, v in result.items() if k not in ("best_dir", "tier")}
        self.lines.append(StageLine("finalise", note=f"best/ from the {tier} tier, artifacts and model logged"))

    def _log_model(self, best_dir: Path, template: str | None, verdict: dict) -> dict:
        """The final model in MLflow (and the registry with ``--register``). The run's files are
        written already: a store that refuses the model costs a warning, not the run."""
        from automl import mlflow_model

        tags = {"verdict": verdict["verdict"], "score": f"{verdict['score']:.4f}", "run_folder": str(self.run_dir)}
        try:
            logged = mlflow_model.log_model(
                self.tracker.tracking_uri,
                self.parent,
                best_dir,
                _input_example(self.datamodule),
                template=template,
                register=self.config.register,
                tags=tags,
            )
        except Exception as exc:  # mlflow raises many types for a store that refuses
            self.say(
                f"[6/{self.total}] finalise: the model could not be logged to MLflow ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); best/ holds it"
            )
            return {}
        where = logged["model_uri"]
        if "registered_model" in logged:
            where += f", registered as {logged['registered_model']} version {logged['model_version']} (@challenger)"
        self.say(f"[6/{self.total}] finalise: MLflow model {where}")
        return logged

    def _report(self, tier: str, verdict: dict) -> tuple[str, ...]:
        """report.html and report.json; a report that fails to render costs a warning, not the run."""
        from automl.report import write_report

        try:
            html, data = write_report(self.run_dir)
        except Exception as exc:
            self.say(f"[6/{self.total}] finalise: the report could not be written ({type(exc).__name__}: {exc})")
            return ()
        self.say(f"[6/{self.total}] finalise: report written to {html}")
        return (html.name, data.name)

    # ------------------------------------------------------------------ trials
    def _flash_trial(self, number: int, params: dict, callbacks: list, logger):
        from automl import tuning
        from automl.flash import fit
        from automl.progress import EpochLines

        config = self.config.fit_config(**params)
        served = fit.data_for(config, self.datamodule)
        out = self.run_dir / "trials" / str(number)
        if self.flash_tuner.space.head_only(params):
            callbacks = [*callbacks, EpochLines(f"trial #{number}")]
            self._check_time_for_features(config, served)
            features = self.features.get(config, served)
            if self.deadline is not None:
                # the head trains in seconds once the features exist: it may run into the escalation's
                # share rather than stop half-trained, but not past the budget
                callbacks = [c for c in callbacks if not isinstance(c, tuning.Deadline)] + [
                    tuning.Deadline(self.deadline)
                ]
            trained = fit.train_head(config, served, out, features, self.target.metric, callbacks, logger)
            return tuning.TrialOutcome(trained.best_score, trained.checkpoint, trained.best_epoch)
        epochs = config.epochs
        config, head = self._warm_head(config, served, out)
        # after a head trained on cached features for the first epochs, the lines count on from them
        callbacks = [*callbacks, EpochLines(f"trial #{number}", first=epochs - config.epochs)]
        size, callbacks = self._sized(config, callbacks, self.tune_deadline, number)
        limit = 1.0
        if size is not None:
            config = dataclasses.replace(config, epochs=size.epochs)
            limit = size.train_fraction
        started = time.time()
        metric = self.target.metric
        trained = fit.train(config, served, out, metric, callbacks, logger, self.progress, limit, head=head)
        if size is not None and size.seconds:
            self.correction = max(0.2, min(5.0, self.correction * (time.time() - started) / size.seconds))
        return tuning.TrialOutcome(trained.best_score, trained.checkpoint, trained.best_epoch)

    def _warm_head(self, config, served, out: Path):
        """``freeze_unfreeze:K``: the K frozen epochs train only the head, on the same inputs each
        time; when the backbone's features are cached (or a budget is not in the way), the head trains
        on them in seconds and the trial fine-tunes the rest of its epochs from that head, the backbone
        unfrozen from the first of them. Returns the configuration left to run, and the head."""
        from automl.flash import fit
        from automl.flash.finetuning import parse_strategy

        strategy = parse_strategy(config.strategy)
        if strategy.name != "freeze_unfreeze" or not 0 < strategy.unfreeze_epoch < config.epochs:
            return config, None
        if self.budget is not None and not self.features.has(config, served):
            return config, None  # computing the features would take the trial's own time
        features = self.features.get(config, served)
        frozen = dataclasses.replace(config, epochs=strategy.unfreeze_epoch, weight_decay=self._head_penalty(config))
        head = fit.train_head(frozen, served, out / "head", features, self.target.metric, checkpoint=False)
        if head.best_score is None:  # stopped before its first validation
            return config, None
        rest = dataclasses.replace(config, strategy="freeze_unfreeze:0", epochs=config.epochs - strategy.unfreeze_epoch)
        return rest, {k: v.detach().clone() for k, v in head.model.head.state_dict().items()}

    def _head_penalty(self, config) -> float:
        """The L2 penalty of the best head on cached features of this backbone and input size so far
        (else ``--weight-decay`` or the probes' first guess): a fine-tune starts from the head a
        linear probe would keep, not from an unpenalised one that fits every training example and
        leaves the backbone a near-zero loss to learn from."""
        size = "image_size" if self.config.modality == "image" else "max_length"
        heads = [
            t
            for t in self.flash_tuner.study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE"
            and self.flash_tuner.space.head_only(t.params)
            and t.params.get("backbone") == config.backbone
            and t.params.get(size) == getattr(config, size)
        ]
        if not heads:
            return _probe_weight_decay(self.config)
        maximize = self.flash_tuner.study.direction.name == "MAXIMIZE"
        return float((max if maximize else min)(heads, key=lambda t: t.value).params["weight_decay"])

    def _check_time_for_features(self, config, served) -> None:
        """With a budget, a backbone that has not run over the data yet must fit the tuning time left."""
        from automl import tuning

        if self.budget is None or self.features.has(config, served) or self.flash_tuner.best_trial() is None:
            return  # the first model trains whatever the budget says: without it there is nothing to judge
        examples = len(served.train_samples) + len(served.val_samples)
        needed = self.features.measure(config, served) * examples
        left = self.tune_deadline - time.time()
        if needed > left:
            raise tuning.NoTimeForTrial(
                f"{config.backbone} would need about {_minutes(needed)} to run over the data, {_minutes(left)} left"
            )

    def _sized(self, config, callbacks: list, deadline: float | None, number: int):
        """With a budget: the epochs (and share of the training set) of a fine-tuning trial that fit
        half the time left until ``deadline``, and the callbacks with a deadline of the trial's own
        (the estimate may be off: a quarter past its share stops it in any case). Raises
        ``NoTimeForTrial`` when not even a tenth of an epoch fits. ``(None, callbacks)`` without a budget."""
        from automl import budget, tuning

        if self.budget is None:
            return None, callbacks
        allowance = self.budget.trial_allowance(deadline)
        forward = self.features.forward_seconds(config)
        if forward is None:  # no backbone has run over the data yet: measure this one on a few examples
            forward = self.features.measure(config, self.datamodule)
        size = budget.size_trial(
            config.epochs,
            allowance,
            forward,
            len(self.datamodule.train_samples),
            len(self.datamodule.val_samples),
            self.correction,
        )
        if size is None:
            raise tuning.NoTimeForTrial(
                f"fine-tuning {config.backbone} needs more than the {_minutes(allowance)} a trial may take now"
            )
        self.say(
            f"trial {number}: fine-tunes {size.epochs} epoch(s)"
            + (f" on {size.train_fraction:.0%} of the training batches" if size.cut else "")
            + f", about {_minutes(size.seconds)} of the {_minutes(allowance)} it may take"
        )
        return size, [*callbacks, tuning.Deadline(time.time() + 1.25 * allowance)]

    def _lightning_trial(self, template):
        from automl import tuning
        from automl.flash import fit
        from automl.progress import EpochLines

        def train(number: int, params: dict, callbacks: list, logger):
            config = self._template_config(params, number)
            shared = {k: v for k, v in params.items() if k in FitConfig.keys()}
            size, callbacks = self._sized(self.config.fit_config(**shared), callbacks, self.deadline, number)
            if size is not None:
                config["epochs"], config["limit_train_batches"] = size.epochs, size.train_fraction
            extra = [*callbacks, fit.QuietLibraries(), EpochLines(f"{LIGHTNING} trial #{number}")]
            with template.importable():  # a distributed trial's processes unpickle its classes by name
                result = template.train.fit(config, extra_callbacks=extra, logger=logger, progress=self.progress)
            return tuning.TrialOutcome(result["best_score"], result["checkpoint"], result["best_epoch"])

        return train

    def _fit_with_oom_retry(self, fit_trial, number: int, params: dict, callbacks: list, child: str):
        """Out of GPU memory: one more try at half the batch size, then the trial fails with both sizes."""
        import torch

        from automl import tuning

        try:
            return fit_trial(number, params, callbacks, self.tracker.lightning_logger(child))
        except Exception as error:
            if not tuning.is_out_of_memory(error):
                raise
            size = int(params.get("batch_size", self.config.batch_size))
            half = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.say(f"trial {number}: out of GPU memory at batch size {size}; trying once more with {half}")
            self.tracker.set_tags(child, {"oom_retry_batch_size": half})
            try:
                return fit_trial(
                    number, {**params, "batch_size": half}, callbacks, self.tracker.lightning_logger(child)
                )
            except Exception as again:
                if not tuning.is_out_of_memory(again):
                    raise
                raise RuntimeError(
                    f"out of GPU memory at batch size {size} and again at {half} ({tuning.describe_error(again)})"
                ) from error

    def _tracked(self, tier: str, fit_trial):
        """A trial as the study sees it: an MLflow child run around ``fit_trial``, and only the best
        trial's checkpoint kept on disk."""
        from automl import tuning

        folder = self.run_dir / ("trials" if tier == FLASH else "escalation")

        def train(number: int, params: dict, callbacks: list) -> tuning.TrialOutcome:
            child = self.tracker.start_child(
                self.parent, f"{tier} trial {number}", params, {"trial": str(number), "tier": tier}
            )
            status = "FAILED"
            try:
                try:
                    outcome = self._fit_with_oom_retry(fit_trial, number, params, callbacks, child)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    raise RuntimeError(
                        f"the disk is full (writing {error.filename or folder}); its partial checkpoint is "
                        f"removed. Free space under {self.run_dir} or give --output another disk, then run "
                        "the same command again"
                    ) from error
                tuning.raise_if_pruned(callbacks)  # decided in a process of a distributed trial
                if outcome.checkpoint is None:
                    raise RuntimeError("stopped before its first validation (time budget)")
                status = "FINISHED"
                self.tracker.log_metrics(child, {f"best_{self.target.metric}": outcome.score})
                _keep_only_best(folder, number, outcome.score, self.target.maximize)
                return outcome
            except BaseException as error:
                status = "KILLED" if tuning.is_pruned(error) else "FAILED"
                shutil.rmtree(folder / str(number) / "checkpoints", ignore_errors=True)
                self.tracker.set_tags(child, {"outcome": tuning.describe_error(error)[:500]})
                raise
            finally:
                self.tracker.end(child, status)

        return train


# --------------------------------------------------------------------------- helpers of run
def tuning_baseline() -> str:
    from automl.tuning import BASELINE

    return BASELINE


def _search_space(config: RunConfig, tier: str):
    from automl.flash import backbones as bb
    from automl.tuning import SearchSpace, TemplateSearchSpace

    modality = config.modality
    default = bb.DEFAULT_IMAGE_BACKBONE if modality == "image" else bb.DEFAULT_TEXT_BACKBONE
    if config.backbones:
        backbones = tuple(config.backbones)
    elif config.backbone:
        backbones = (config.backbone,)
    elif not config.pretrained:
        backbones = (default,)
    else:
        # the default first (the baseline), then any other whose weights are here already
        offline = [n for n in bb.available_backbones(modality) if n != default and _offline(bb, n, modality)]
        backbones = (default, *offline)
    fields = (
        modality,
        backbones,
        config.epochs,
        config.image_size,
        config.max_length,
        config.batch_size,
        config.strategy,
    )
    sizes = tuple(sorted(set(_native_sizes(config, backbones).values())))
    if tier == FLASH:
        return SearchSpace(*fields, augment=config.augment, image_sizes=sizes)
    return TemplateSearchSpace(*fields, image_sizes=sizes)


_DEFAULT_STRATEGY = FitConfig.__dataclass_fields__["strategy"].default
_DEFAULT_IMAGE_SIZE = FitConfig.__dataclass_fields__["image_size"].default
_DEFAULT_MAX_LENGTH = FitConfig.__dataclass_fields__["max_length"].default
_DEFAULT_WEIGHT_DECAY = FitConfig.__dataclass_fields__["weight_decay"].default


def _fit_to_data(config: RunConfig, datamodule) -> RunConfig:
    """Text left at the default ``--max-length``: the longest 1% of the training texts set it (in
    tokens, rounded up to 8), so short sentences are not padded and attended to 128 tokens deep."""
    if config.modality != "text" or config.max_length != _DEFAULT_MAX_LENGTH or not datamodule.train_samples:
        return config
    from automl.flash import backbones as bb
    from automl.flash.fit import default_backbone

    tokenizer = bb.load_tokenizer(default_backbone(config), config.weights)
    lengths = sorted(len(ids) for ids in tokenizer([text for text, _ in datamodule.train_samples])["input_ids"])
    longest = lengths[min(len(lengths) - 1, int(0.99 * len(lengths)))]
    fitted = min(config.max_length, max(16, -(-longest // 8) * 8))
    return dataclasses.replace(config, max_length=fitted)


def _native_sizes(config: RunConfig, backbones: tuple[str, ...]) -> dict[str, int]:
    """Each backbone's native input size, offered to the search when ``--image-size`` was left at
    its default (an explicit size is the user's choice for every backbone)."""
    if config.modality != "image" or config.image_size != _DEFAULT_IMAGE_SIZE:
        return {}
    from automl.flash import backbones as bb

    return {name: size for name in backbones if (size := bb.native_image_size(name))}


def _probe_weight_decay(config: RunConfig) -> float:
    """A head on cached features is a logistic regression: unpenalised, it overfits. The user's
    ``--weight-decay``, else a first guess the search goes on from."""
    from automl.flash.features import PROBE_WEIGHT_DECAY

    return config.weight_decay if config.weight_decay != _DEFAULT_WEIGHT_DECAY else PROBE_WEIGHT_DECAY


def _as_head(params: dict, config: RunConfig) -> dict:
    """``params`` as a head on cached features: frozen backbone, no augmentation, a penalty."""
    head = {**params, "strategy": "freeze", "weight_decay": _probe_weight_decay(config)}
    if "augment" in head:
        head["augment"] = False
    return head


def _probe_params(config: RunConfig, space, baseline: dict, penalties: bool = True) -> list[dict]:
    """Heads on cached features to run after the baseline: every other backbone of the search (at
    its native size), then, when ``penalties``, the baseline's backbone with a few stronger penalties
    (unless ``--weight-decay`` was given)."""
    from automl.flash.features import PROBE_WEIGHT_DECAYS

    sizes = _native_sizes(config, space.backbones)
    first = _as_head(baseline, config)
    probes = []
    for name in space.backbones:
        if name != baseline["backbone"]:
            probes.append({**first, "backbone": name})
            if "image_size" in first:
                probes[-1]["image_size"] = sizes.get(name, baseline["image_size"])
    if penalties and config.weight_decay == _DEFAULT_WEIGHT_DECAY:
        probes += [{**first, "weight_decay": penalty} for penalty in PROBE_WEIGHT_DECAYS]
    return probes


def _cheaper(tuner) -> dict | None:
    """When a fine-tuning trial no longer fits the budget: heads on the cached features of the best
    trial's backbone and input size, their other knobs left to the search."""
    best = tuner.best_trial()
    if best is None:
        return None
    fixed = {"strategy": "freeze"}
    for key in ("backbone", "image_size", "max_length"):
        if key in best.params:
            fixed[key] = best.params[key]
    return fixed


def _offline(bb, name: str, modality: str) -> bool:
    source = bb.weights_status(name, modality)
    return source is not None and source.kind != "hub"


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


def _inspect(config, datamodule, run_dir: Path, say: Report, total: int) -> dict:
    """The data doctor on the run's data and split; its findings go to inspection.json."""
    from automl.flash.fit import write_json

    found = inspect_data(config, datamodule, config.max_bad_share)
    say(f"[1/{total}] inspect: {found.summary()}")
    result = found.as_dict()
    write_json(run_dir / INSPECTION_FILE, result)
    return result


def inspect_data(config: FitConfig, datamodule=None, max_bad_share: float | None = None):
    """The data doctor for ``config``'s data (``automl inspect`` and the first stage of a run); more
    than ``max_bad_share`` unusable examples stop it."""
    from automl.data.inspect import MAX_BAD_SHARE, inspect_images, inspect_texts

    share = MAX_BAD_SHARE if max_bad_share is None else max_bad_share
    if config.task == "image_classification":
        return inspect_images(config.data, config.val_split, config.seed, share, datamodule=datamodule)
    fields = {"input_field": config.input_field, "target_field": config.target_field}
    return inspect_texts(
        config.data,
        config.val_split,
        config.seed,
        config.max_length,
        share,
        datamodule=datamodule,
        **({k: v for k, v in fields.items() if v is not None}),
    )


def _input_example(datamodule):
    """A few validation inputs, as the MLflow model takes them (the smallest image files: the
    example is stored with the model)."""
    import pandas as pd

    if datamodule.preprocessing()["kind"] == "text":
        return pd.DataFrame({"text": [text for text, _ in datamodule.val_samples[:3]]})
    smallest = min((path for path, _ in datamodule.val_samples), key=lambda path: Path(path).stat().st_size)
    return pd.DataFrame({"image_bytes": [Path(smallest).read_bytes()]})


def _safe_score(name: str, targets, probabilities) -> float | None:
    from automl.target import score

    try:
        return score(name, targets, probabilities)
    except ValueError:
        return None


def _write_predictions(path: Path, inputs, targets, probabilities, labels: list[str]) -> None:
    """One row per validation example: its file (images) or text, true and predicted label, confidence
    and every class probability."""
    import pandas as pd

    texts = bool(inputs) and isinstance(inputs[0], str)
    frame = pd.DataFrame(
        {
            "id": [f"val {i}" for i in range(len(inputs))] if texts else [str(item) for item in inputs],
            "true": [labels[t] for t in targets],
            "predicted": [labels[i] for i in probabilities.argmax(axis=1)],
            "confidence": probabilities.max(axis=1),
        }
    )
    if texts:
        frame.insert(1, "text", list(inputs))
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
