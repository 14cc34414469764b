"""``automl run``: the stages of one run, in order (``automl fit`` is ``automl.fit_job``, an
``automl tune`` worker ``automl.worker``).

``run`` goes through the stages of ``STAGES`` in order, each the function of ``automl.stages`` of
the same name, and records each finished stage's result in ``journal.json`` (``automl.run_folder``);
the same command after an interruption skips what is finished and continues the Optuna study.
Nothing here prints except through the ``report`` hook the CLI hands in.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from automl import evaluate, space, stages
from automl.config import RunConfig, dump_yaml
from automl.progress import Report, log_error
from automl.run_folder import (
    BEST_DIR,
    CONFIG_FILE,
    JOURNAL_FILE,
    SEARCH_SPACE_FILE,
    EnsembleResult,
    Journal,
    StudyResult,
    TierVerdict,
    TrialResult,
    study_file,
)
from automl.search import data_fingerprint, enqueue_start, open_search
from automl.stages import NUMBER, STAGES
from automl.trial_record import Role, Tier
from automl.trials import TrialLines

#: the stages of ``automl run``, numbered in this order in its lines ("[3/7] tuning: ...")
#: exit status of ``automl run`` (and ``automl evaluate``) for each verdict: met 0, missed 3 (the whole
#: interval falls short), undecided 4 (the interval straddles the target); 2 is bad input
EXIT_MISSED, EXIT_UNDECIDED = evaluate.EXIT_MISSED, evaluate.EXIT_UNDECIDED
#: exit status of ``automl run`` stopped by Ctrl-C (after judging and reporting what finished)
EXIT_INTERRUPTED = 130

Result = TypeVar("Result")  # a stage's result


# =========================================================================== automl run
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
    verdict: TierVerdict
    stages: list[StageLine]
    best_params: dict
    seconds: float
    tier: str = Tier.FLASH  # the tier whose model is in best/
    interrupted: bool = False  # Ctrl-C: what finished was judged and reported; re-run to resume
    model: dict = field(default_factory=dict)  # the MLflow model: model_uri (registered_model, model_version)

    @property
    def met(self) -> bool:
        return self.verdict.met

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return evaluate.exit_code(self.verdict.verdict)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


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
                job.search.studies.stop.install(job.say)
            try:
                return job.execute()
            finally:
                job.search.studies.stop.uninstall()
        except BaseException as error:
            log_error(error)
            raise
        finally:
            detach_run_log()


class RunJob:
    """One ``automl run``: the search, the run folder's journal, and the stages in order."""

    def __init__(self, config: RunConfig, progress: bool, report: Report | None, pruner, started: float | None = None):
        self.report = report or (lambda line: None)
        self.started = time.monotonic()
        self.total = len(STAGES)
        self.lines: list[StageLine] = []
        # a resumed run continues its MLflow parent run, named in the journal of its folder
        self.search = search = open_search(
            config,
            progress,
            self.say,
            pruner,
            started,
            resume_parent=lambda run_dir: Journal(run_dir / JOURNAL_FILE).mlflow_run_id,
        )
        self.data, self.progress = search.data, progress
        config, name = self.data.config, search.studies.name
        dump_yaml(config.to_dict(), self.data.run_dir / CONFIG_FILE)
        searched = {Tier.FLASH: search.flash.space, Tier.LIGHTNING: space.search_space(config, Tier.LIGHTNING)}
        dump_yaml({str(t): s.described() for t, s in searched.items()}, self.data.run_dir / SEARCH_SPACE_FILE)
        self.journal = Journal(self.data.run_dir / JOURNAL_FILE)
        self.journal.mlflow_run_id = search.parent.run_id
        self.journal.study = name
        self.notifier = None
        if config.notify_url:
            from escalation.callbacks import WebhookNotifier

            self.notifier = WebhookNotifier(config.notify_url, run=name)

    def say(self, line: str) -> None:
        """A stage line: to the CLI's ``report`` hook (stderr) and to ``run.log``."""
        from automl.progress import stage_line

        stage_line(line)
        self.report(line)

    def stage_say(self, name: str, role: str | None = None) -> Callable[[str], None]:
        """``say`` for the lines of one stage: ``[3/7] tuning: ...``."""
        return lambda text: self.say(f"[{NUMBER[name]}/{self.total}] {role or name}: {text}")

    def trial_lines(self, name: str, role: str) -> TrialLines:
        return TrialLines(self.say, NUMBER[name], self.total, role, self.data.target.metric)

    # ------------------------------------------------------------------ the stages, in order
    def execute(self) -> RunResult:
        if self.notifier:
            config = self.data.config
            self.notifier.run_started(task=config.task, target=str(self.data.target), data=config.data)
        try:
            self.inspect()
            self.baseline()
            flash = self.tune()
            verdict = self.verdict(flash)
            final_tier, final, best = Tier.FLASH, verdict, flash
            if self.search.studies.stop.requested:
                self.lines.append(StageLine("escalate", note="skipped: interrupted (re-run the command to resume)"))
            elif not self.data.target.met(verdict.score):  # the selection score decides; the test split judges
                final_tier, final, best = self.escalate(flash, verdict)
            else:
                self.lines.append(StageLine("escalate", note="not needed: the target is met"))
            ensembled = self.ensemble(final_tier, best)
            model = self.finalise(final_tier, best, final, ensembled)
            final = model.final_verdict() or final
            self.search.parent.set_tags({"stage": "finished", "verdict": final.verdict, "tier": final_tier})
            self.search.parent.end("FINISHED")
        except BaseException as error:
            self.search.parent.end("FAILED")
            if self.notifier:
                self.notifier.run_finished("failed", f"{type(error).__name__}: {error}")
            raise
        if self.notifier:
            self.notifier.run_finished(final.verdict, final.outcome, score=final.score, tier=final_tier)
        seconds = time.monotonic() - self.started
        interrupted = self.search.studies.stop.requested
        run_dir, target = self.data.run_dir, str(self.data.target)
        return RunResult(
            run_dir, target, final, self.lines, best.params, seconds, final_tier, interrupted, model.mlflow()
        )

    def stage(self, name: str, key: str, work: Callable[[], Result], summary: Callable[[Result], str] = str) -> Result:
        """``work()``'s result, or the journal's when the stage finished for the same inputs (``key``)."""
        done = self.journal.finished(name, key)
        if done is not None:
            self.stage_say(name)("done in an earlier run, skipped")
            return done
        t0 = time.monotonic()
        self.search.parent.set_tags({"stage": name})
        result = work()
        self.journal.record(name, key, result, time.monotonic() - t0)
        if self.notifier:
            self.notifier.stage_finished(name, summary(result))
        return result

    def inspect(self) -> None:
        config = self.data.config
        test_data = data_fingerprint(config.test_data) if config.test_data else None
        key = _key(data_fingerprint(config.data), config.val_split, config.seed, config.test_split, test_data)
        report = self.stage(
            "inspect",
            key,
            lambda: stages.inspect(self.data, self.stage_say("inspect")),
            lambda r: f"{len(r.labels)} classes, {len(r.skipped)} files skipped",
        )
        self.lines.append(StageLine("inspect", note=report.line()))

    def baseline(self) -> None:
        search, config, metric = self.search, self.data.config, self.data.target.metric
        params = enqueue_start(search.flash, config, budgeted=search.plan.budget is not None)
        lines, say = self.trial_lines("baseline", "baseline"), self.stage_say("baseline")

        def work() -> TrialResult:
            return stages.baseline(search.flash, search.flash_train, search.plan, config.escalate, lines, say)

        base = self.stage("baseline", _key(search.studies.name, params), work, lambda r: f"{metric} {r.value}")
        self.lines.append(StageLine("baseline", 1, base.value, base.seconds or 0.0, base.state))

    def tune(self) -> StudyResult:
        search, config, reasons = self.search, self.data.config, self.data.run_dir / study_file(Tier.FLASH)
        lines, deadline, budget = self.trial_lines("tune", "tuning"), search.plan.tuning_deadline(), search.plan.budget
        study = stages.run_study(
            search.flash,
            search.flash_train,
            config.trials,
            lines,
            "tune",
            deadline,
            reasons=reasons,
            budget=budget,
            escalate=config.escalate,
            rebuild_head=search.trainers.rebuild_head,
        )
        flash = study.result
        self.lines.append(StageLine("tune", len(study.summary), flash.score, study.seconds, study.note))
        stages.write_study(reasons, study.summary)
        seconds = sum(record.seconds or 0.0 for record in study.summary if record.role != Role.BASELINE)
        self.journal.record("tune", _key(search.studies.name, config.trials), flash, seconds)
        if self.notifier:
            self.notifier.stage_finished("tune", f"best {self.data.target.metric} {flash.score:.4f}")
        return flash

    def verdict(self, flash: StudyResult) -> TierVerdict:
        t0 = time.monotonic()
        key = _key(str(self.data.target), flash.best_trial, flash.score)
        verdict = self.stage("verdict", key, lambda: stages.judge_flash(self.data, flash), lambda v: v.outcome)
        self._show_verdict("verdict", verdict, time.monotonic() - t0)
        return verdict

    def _show_verdict(self, name: str, verdict: TierVerdict, seconds: float) -> None:
        note = f"{verdict.outcome}; {verdict.tier} trial {verdict.best_trial}"
        self.lines.append(StageLine("verdict", None, verdict.score, seconds, note))
        self.stage_say(name, "verdict")(  # the escalation's verdict is numbered as its stage
            f"{self.data.target.metric} {verdict.score:.4f} (95% CI {verdict.ci_low:.3f}-{verdict.ci_high:.3f}) "
            f"-> {verdict.outcome}"
        )

    def escalate(self, flash: StudyResult, verdict: TierVerdict) -> tuple[Tier, TierVerdict, StudyResult]:
        """The Lightning tier when the Flash tier missed; the better tier's model and verdict."""
        if not self.data.config.escalate:
            self.lines.append(StageLine("escalate", note="off (--no-escalate)"))
            return Tier.FLASH, verdict, flash
        from escalation.train import load_template

        template = load_template(self.data.config.template)
        say = self.stage_say("escalate")
        say(f"the target is missed; tuning the Lightning tier ({template.folder})")
        lines = self.trial_lines("escalate", "escalation")
        studies = []

        def work():
            s = self.search
            space = s.flash.space
            result, study = stages.escalate(
                self.data, flash, template, lines, s.studies, s.trainers, s.life, space, s.plan
            )
            studies.append(study)
            return result

        t0, config = time.monotonic(), self.data.config
        trials, used = config.escalation_trials or config.trials, str(config.template or "built-in")
        key = _key(self.search.studies.name, trials, used, flash.best_trial, str(self.data.target))
        result = self.stage("escalate", key, work, lambda r: f"lightning best {r.tier.score}")
        self.journal.template = result.template
        lightning = result.tier
        if studies:
            self.lines.append(
                StageLine("escalate", len(studies[0].summary), lightning.score, studies[0].seconds, studies[0].note)
            )
        else:  # finished in an earlier run
            note = f"{lightning.trials} trials, done in an earlier run"
            self.lines.append(StageLine("escalate", lightning.trials, lightning.score, 0.0, note))
        if not result.better:
            final = stages.flash_kept(flash, verdict, lightning, result.unresolved)
            self.lines.append(StageLine("verdict", None, final.score, 0.0, final.outcome))
            say(final.outcome)
            return Tier.FLASH, final, flash
        self._show_verdict("escalate", result.verdict, time.monotonic() - t0)
        return Tier.LIGHTNING, result.verdict, lightning

    def ensemble(self, tier: Tier, best: StudyResult) -> EnsembleResult:
        key = _key(str(self.data.target), tier, best.best_trial, best.score, self.data.config.ensemble)
        say = self.stage_say("ensemble")
        t0 = time.monotonic()

        def work() -> EnsembleResult:
            return stages.ensemble(self.data, self.search.features, self.search.flash, tier, best, say)

        result = self.stage("ensemble", key, work, lambda r: r.why)
        score = result.scores.get("ensemble") if result.kept else None
        note = f"{'kept' if result.kept else 'not kept'}: {result.why}"
        self.lines.append(StageLine("ensemble", len(result.members) or None, score, time.monotonic() - t0, note))
        return result

    def finalise(self, tier: Tier, best: StudyResult, verdict: TierVerdict, ensembled: EnsembleResult):
        template = self.journal.template if self.data.config.template else None
        say, search = self.stage_say("finalise"), self.search
        # what making best/ uses besides the data
        deadline, template_config = search.plan.deadline, search.trainers.template_config
        inputs = stages.FinaliseInputs(search.features, search.flash, template_config, deadline, self.progress)
        config = self.data.config
        key = _key(str(self.data.target), tier, best.best_trial, best.score, config.register, config.refit)
        key = _key(key, config.calibrate)
        key = _key(key, ensembled.kept, [(m["name"], m["weight"]) for m in ensembled.chosen()])
        final = self.stage(
            "finalise",
            key,
            lambda: stages.finalise(self.data, inputs, search.parent, tier, best, verdict, template, say, ensembled),
            lambda r: f"model in {r.best_dir}",
        )
        self.lines.append(StageLine("finalise", note=f"{BEST_DIR}/ from the {tier} tier, artifacts and model logged"))
        return final
