"""The work of each stage of ``automl run``, as functions of a ``Search`` and typed inputs to a typed
result (``automl.run_folder``). ``automl.pipeline`` runs them in order, journals their results and
prints their lines; nothing here decides whether a stage runs."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from automl import metrics as m
from automl.config import FitConfig, dump_yaml
from automl.errors import DataError
from automl.run_folder import (
    BEST_DIR,
    CHECKPOINT_FILE,
    INSPECTION_FILE,
    LABELS_FILE,
    LIGHTNING,
    LOGGED_FILES,
    PREDICTIONS_FILE,
    PREPROCESSING_FILE,
    TEMPLATE_CONFIG_FILE,
    DataReport,
    EscalationResult,
    FinalModel,
    ModelTier,
    RunFolder,
    StudyResult,
    Summary,
    TierVerdict,
    TrialResult,
    study_file,
    tier_predictions_file,
    write_json,
)
from automl.search import Search
from automl.trials import TrialLines, minutes

Say = Callable[[str], None]


# --------------------------------------------------------------------------- inspect
def inspect(search: Search, say: Say) -> DataReport:
    """The data doctor on the run's data and split; its findings go to inspection.json. ``say``
    takes the stage's lines (the pipeline puts the stage before them), as in every stage here."""
    config = search.config
    found = inspect_data(config, search.datamodule, config.max_bad_share)
    say(found.summary())
    result = found.as_dict()
    write_json(search.run_dir / INSPECTION_FILE, result)
    return DataReport.from_json(result)


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


# --------------------------------------------------------------------------- a study (baseline, tune, escalate)
@dataclass
class StudyRun:
    """What running a study to its trials or deadline gave: the result, its rows for the study CSV,
    and the stage's summary line (``note``)."""

    result: StudyResult
    summary: list[dict]
    why: str
    new: int
    seconds: float
    note: str


def run_study(
    search: Search,
    tuner,
    train,
    trials: int,
    lines: TrialLines,
    stage_name: str,
    deadline: float | None,
) -> StudyRun:
    """Run ``tuner`` up to ``trials`` or ``deadline``: the study's best trial as a ``StudyResult``."""
    t0 = time.monotonic()
    before = len(tuner.finished_trials())
    why = tuner.run(train, total_trials=trials, deadline=deadline, **lines.hooks())
    best = tuner.best_trial()
    summary = tuner.summary()
    new = len(tuner.finished_trials()) - before
    counts = Counter(row["state"].lower() for row in summary)
    note = {"trials": "all trials done", "budget": "time budget reached", "interrupted": "interrupted"}.get(why, why)
    if tuner.cheap_because:
        note = f"{note}; then only heads on cached features, as {tuner.cheap_because}"
    if tuner.out_of_time:
        note = f"{note} ({tuner.out_of_time})"
    if new == 0 and why in ("budget", "trials"):
        note = why_no_new_trial(search, tuner, why, trials, before, stage_name, deadline)
        lines.say(f"{lines.prefix}: {note}")
    note = f"{note}; {new} new; " + ", ".join(f"{n} {state}" for state, n in counts.items())
    if best is None and stage_name == "tune":
        if why == "budget" and not tuner.finished_trials():  # none even started
            raise DataError(
                f"No trial could start within the time budget: {no_time_left(search)}. Give a larger --time-budget."
            )
        raise DataError(
            f"No {lines.role} trial finished with a score; see the reasons in {search.run_dir / study_file('flash')}."
        )
    result = StudyResult(
        study=tuner.study.study_name,
        best_trial=best.number if best else None,
        score=best.value if best else None,  # None: no trial finished (e.g. the budget ran out)
        params=best.params if best else {},
        checkpoint=best.user_attrs["checkpoint"] if best else None,
        stopped=why,
        trials=len(summary),
    )
    return StudyRun(result, summary, why, new, time.monotonic() - t0, note)


def why_no_new_trial(search: Search, tuner, why: str, trials: int, before: int, stage_name: str, deadline) -> str:
    """What a stage that started no trial says: the time it lacked, or who ran the trials it asks for."""
    if why == "budget":
        if tuner.out_of_time:
            return f"no new trial: {tuner.out_of_time}"
        ran_here = before > tuner.finished_before  # the baseline stage trained in this run
        after = {"tune": "the baseline" if ran_here else "", "escalate": "tuning"}.get(stage_name, "")
        return no_time_left(search, after, deadline if stage_name == "tune" else None)
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


def no_time_left(search: Search, after: str = "", deadline: float | None = None) -> str:
    """``no time left after the baseline (14m of the 20m budget spent; ...)``."""
    budget = search.budget
    spent = time.time() - budget.started
    text = "no time left" + (f" after {after}" if after else "")
    text += f" ({minutes(spent)} of the {minutes(budget.seconds)} budget spent"
    if deadline is not None and deadline < budget.deadline - 1:
        share = deadline - budget.started
        text += f"; tuning may use {minutes(share)} of it, the rest is the escalation's"
    return text + ")"


def trial_result(trial) -> TrialResult:
    return TrialResult(
        state=trial.state.name.lower(),
        number=trial.number,
        value=trial.value,
        params=trial.params,
        seconds=trial.duration.total_seconds() if trial.duration else None,
        reason=trial.user_attrs.get("fail_reason"),
    )


def write_study(path: Path, summary: list[dict]) -> None:
    import pandas as pd

    rows = [
        {**{k: v for k, v in row.items() if k != "params"}, **{f"param_{k}": v for k, v in row["params"].items()}}
        for row in summary
    ]
    tmp = path.with_suffix(".tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(path)


# --------------------------------------------------------------------------- verdict
def judge_flash(search: Search, flash: StudyResult) -> TierVerdict:
    """The best Flash-tier model on the validation split, judged against the target."""
    from automl.flash import fit

    best_config = search.config.fit_config(**flash.params)
    model = fit.load_classifier(flash.checkpoint)
    served = fit.data_for(best_config, search.datamodule)
    targets, probabilities, ids = fit.predict_validation(model, served, search.config.accelerator)
    return judge(search, "flash", flash, targets, probabilities, ids)


def judge(search: Search, tier: str, best: StudyResult, targets, probabilities, ids) -> TierVerdict:
    from automl.target import judge as judged

    labels, target = search.datamodule.labels, search.target
    write_predictions(search.run_dir / tier_predictions_file(tier), ids, targets, probabilities, labels)
    verdict = judged(target, targets, probabilities, seed=search.config.seed)
    scores = {name: safe_score(name, targets, probabilities) for name in m.VALIDATION_METRICS}
    if verdict.met:
        outcome = f"met by the {tier} tier"
    elif tier == LIGHTNING or not search.config.escalate:
        outcome = f"missed{' after escalation' if tier == LIGHTNING else ''}, short by {verdict.gap:.4f}"
    else:
        outcome = f"missed by the flash tier, short by {verdict.gap:.4f}"
    return TierVerdict(
        **dataclasses.asdict(verdict), scores=scores, best_trial=best.best_trial, tier=tier, outcome=outcome
    )


def safe_score(name: str, targets, probabilities) -> float | None:
    from automl.target import score

    try:
        return score(name, targets, probabilities)
    except ValueError:
        return None


def write_predictions(path: Path, inputs, targets, probabilities, labels: list[str]) -> None:
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


# --------------------------------------------------------------------------- escalate
def escalate(search: Search, flash: StudyResult, template, lines: TrialLines) -> tuple[EscalationResult, StudyRun]:
    """The Lightning tier: a second study over the template, warm-started from the best Flash
    parameters, under what is left of the budget; its best model judged when it beats the Flash tier."""
    from automl import tuning
    from automl.search import search_space
    from escalation.train import predict_validation

    trainers = search.trainers
    space = search_space(search.config, LIGHTNING)
    tuner = search.tuner(f"{search.name}-{LIGHTNING}", space)
    train = search.life.tracked(LIGHTNING, trainers.lightning(template))
    tuner.enqueue_baseline(tuning.warm_start_params(space, flash.params), role="warm start")
    trials = search.config.escalation_trials or search.config.trials
    study = run_study(search, tuner, train, trials, lines, "escalate", trainers.escalation_deadline())
    write_study(search.run_dir / study_file(LIGHTNING), study.summary)
    lightning = study.result
    score = lightning.score
    better = score is not None and (score > flash.score if search.target.maximize else score < flash.score)
    result = EscalationResult(lightning, str(template.folder), better)
    if better:
        config = trainers.template_config(lightning.params, lightning.best_trial, template)
        targets, probabilities, ids = predict_validation(template, lightning.checkpoint, config, search.datamodule)
        result.verdict = judge(search, LIGHTNING, lightning, targets, probabilities, ids)
        result.template_config = config
    return result, study


# --------------------------------------------------------------------------- finalise
def finalise(
    search: Search, tier: str, best: StudyResult, verdict: TierVerdict, template: str | None, say: Say
) -> FinalModel:
    """best/ (the final model, whichever tier), metrics.json, the MLflow artifacts and model, the
    report. ``template``: the edited template the escalation used (None: the built-in one)."""
    from automl.flash import fit

    run_dir, config, datamodule = search.run_dir, search.config, search.datamodule
    best_dir = run_dir / BEST_DIR
    if tier == "flash":
        fit_config = config.fit_config(**best.params)
        fit.save_best(best_dir, best.checkpoint, fit.data_for(fit_config, datamodule), fit_config)
    else:
        from escalation.train import load_template, preprocessing

        template_config = search.trainers.template_config(best.params, best.best_trial, load_template(template))
        best_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(best.checkpoint, best_dir / CHECKPOINT_FILE)
        write_json(best_dir / LABELS_FILE, datamodule.labels)
        write_json(
            best_dir / PREPROCESSING_FILE,
            {**preprocessing(template_config), "task": config.task, "backbone": template_config["backbone"]},
        )
        dump_yaml(template_config, best_dir / TEMPLATE_CONFIG_FILE)
    # the built-in template as None: the path differs on the machine that loads the run folder,
    # and a path there is code that `automl predict` runs only with --trust-checkpoint
    ModelTier(tier, template).write(best_dir)
    shutil.copy2(run_dir / tier_predictions_file(tier), run_dir / PREDICTIONS_FILE)
    summary = Summary(
        target=str(search.target),
        verdict=verdict.verdict,
        outcome=verdict.outcome,
        tier=tier,
        score=verdict.score,
        ci_low=verdict.ci_low,
        ci_high=verdict.ci_high,
        gap=verdict.gap,
        best_trial=best.best_trial,
        best_params=best.params,
        labels=datamodule.labels,
        scores=verdict.scores,
    )
    folder = RunFolder(run_dir)
    folder.write_summary(summary)
    tracker, parent = search.tracker, search.parent
    tracker.log_metrics(parent, {f"final_{k}": v for k, v in verdict.scores.items()})
    tracker.set_tags(parent, {"verdict": verdict.verdict, "tier": tier, "best_trial": best.best_trial})
    final = FinalModel(str(best_dir), tier, **log_model(search, best_dir, template, verdict, say))
    folder.write_summary(dataclasses.replace(summary, **final.mlflow()))
    report = write_report(run_dir, say)
    for path in sorted(run_dir.glob("*.csv")) + [run_dir / n for n in (*LOGGED_FILES, *report)]:
        tracker.log_artifact(parent, path)
    return final


def log_model(search: Search, best_dir: Path, template: str | None, verdict: TierVerdict, say: Say) -> dict:
    """The final model in MLflow (and the registry with ``--register``). The run's files are
    written already: a store that refuses the model costs a warning, not the run."""
    from automl import mlflow_model

    tags = {"verdict": verdict.verdict, "score": f"{verdict.score:.4f}", "run_folder": str(search.run_dir)}
    try:
        logged = mlflow_model.log_model(
            search.tracker.tracking_uri,
            search.parent,
            best_dir,
            input_example(search.datamodule),
            template=template,
            register=search.config.register,
            tags=tags,
        )
    except Exception as exc:  # mlflow raises many types for a store that refuses
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        say(f"the model could not be logged to MLflow ({type(exc).__name__}: {first}); best/ holds it")
        return {}
    where = logged["model_uri"]
    if "registered_model" in logged:
        where += f", registered as {logged['registered_model']} version {logged['model_version']} (@challenger)"
    say(f"MLflow model {where}")
    return logged


def input_example(datamodule):
    """A few validation inputs, as the MLflow model takes them (the smallest image file: the
    example is stored with the model)."""
    import pandas as pd

    if datamodule.preprocessing()["kind"] == "text":
        return pd.DataFrame({"text": [text for text, _ in datamodule.val_samples[:3]]})
    smallest = min((path for path, _ in datamodule.val_samples), key=lambda path: Path(path).stat().st_size)
    return pd.DataFrame({"image_bytes": [Path(smallest).read_bytes()]})


def write_report(run_dir: Path, say: Say) -> tuple[str, ...]:
    """report.html and report.json; a report that fails to render costs a warning, not the run."""
    from automl.report import write_report as render

    try:
        html, data = render(run_dir)
    except Exception as exc:
        say(f"the report could not be written ({type(exc).__name__}: {exc})")
        return ()
    say(f"report written to {html}")
    return (html.name, data.name)
