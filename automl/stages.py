"""The work of each stage of ``automl run``: typed inputs (the run's data, and the values of
``automl.search`` the stage uses) to a typed result (``automl.run_folder``). ``automl.pipeline``
runs them in order, journals their results and prints their lines; nothing here decides whether a
stage runs."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from automl import metrics as m
from automl import trial_record
from automl.calibration import CALIBRATION_FILE
from automl.config import FitConfig, dump_yaml
from automl.data.holdout import NONE
from automl.errors import DataError
from automl.run_data import RunData
from automl.run_folder import (
    BEST_DIR,
    CHECKPOINT_FILE,
    ENSEMBLE_FILE,
    EXPLANATIONS_DIR,
    EXPLANATIONS_FILE,
    INSPECTION_FILE,
    LABELS_FILE,
    LOGGED_FILES,
    MEMBERS_DIR,
    PREDICTIONS_FILE,
    PREPROCESSING_FILE,
    TEMPLATE_CONFIG_FILE,
    TEST_PREDICTIONS_FILE,
    DataReport,
    EnsembleResult,
    EscalationResult,
    FinalModel,
    ModelTier,
    RunFolder,
    StudyResult,
    Summary,
    TierVerdict,
    TrialResult,
    read_json,
    study_file,
    tier_predictions_file,
    write_json,
)
from automl.trial_record import Role, Tier, TrialRecord
from automl.trials import TrialLines, minutes

if TYPE_CHECKING:
    from automl.budget import Budget, Plan
    from automl.flash.features import FeatureCache
    from automl.search import ParentRun, Studies
    from automl.space import SearchSpace
    from automl.trainers import Trainers
    from automl.trials import TrialLife
    from automl.tuning import Tuner

#: the stages of ``automl run``, in order (``automl.pipeline`` runs them), and each one's number
STAGES = ("inspect", "baseline", "tune", "verdict", "escalate", "ensemble", "finalise")
NUMBER = {name: index for index, name in enumerate(STAGES, start=1)}

Say = Callable[[str], None]


# --------------------------------------------------------------------------- inspect
def inspect(data: RunData, say: Say) -> DataReport:
    """The data doctor on the run's data and split; its findings go to inspection.json. ``say``
    takes the stage's lines (the pipeline puts the stage before them), as in every stage here."""
    config, holdout = data.config, data.holdout
    found = inspect_data(config, data.datamodule, config.max_bad_share)
    say(found.summary())
    say(holdout.line())
    carved = getattr(data.datamodule, "val_carved", True)
    val_source = (
        f"a seeded ({config.seed}), stratified {config.val_split:.0%} of the data (--val-split)"
        if carved
        else "your val/ folder"
    )
    result = {
        **found.as_dict(),
        "test_size": len(data.datamodule.test_samples),
        "holdout": holdout.to_json(),
        "val_source": val_source,
    }
    write_json(data.run_dir / INSPECTION_FILE, result)
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
    summary: list[TrialRecord]
    why: str
    new: int
    seconds: float
    note: str


def run_study(
    tuner,
    train,
    trials: int,
    lines: TrialLines,
    stage_name: str,
    deadline: float | None,
    *,
    reasons: Path,
    budget: Budget | None,
    escalate: bool = True,
    rebuild_head: Callable[[int, dict], str | None] | None = None,
) -> StudyRun:
    """Run ``tuner`` up to ``trials`` or ``deadline``: the study's best trial as a ``StudyResult``.
    ``reasons``: the study file that will say why trials failed; ``budget`` and ``escalate``: what a
    stage that started no trial says; ``rebuild_head``: the Flash tier's way back to a chosen head's
    checkpoint that ``keep_only_best`` removed (``Trainers.rebuild_head``)."""
    t0 = time.monotonic()
    before = len(tuner.finished_trials())
    why = tuner.run(train, total_trials=trials, deadline=deadline, **lines.hooks())
    best = tuner.best_trial()
    summary = tuner.summary()
    new = len(tuner.finished_trials()) - before
    counts = Counter(record.state.lower() for record in summary)
    note = {"trials": "all trials done", "budget": "time budget reached", "interrupted": "interrupted"}.get(why, why)
    if tuner.cheap_because:
        note = f"{note}; then only heads on cached features, as {tuner.cheap_because}"
    if tuner.out_of_time:
        note = f"{note} ({tuner.out_of_time})"
    for skipped in tuner.skipped:
        note += "" if skipped in note else f"; {skipped}"
    if new == 0 and why in ("budget", "trials"):
        note = why_no_new_trial(tuner, why, trials, before, stage_name, deadline, budget, escalate)
        lines.say(f"{lines.prefix}: {note}")
    note = f"{note}; {new} new; " + ", ".join(f"{n} {state}" for state, n in counts.items())
    if best is None and stage_name == "tune":
        if why == "budget" and not tuner.finished_trials():  # none even started
            raise DataError(
                f"No trial could start within the time budget: {no_time_left(budget, escalate)}. "
                "Give a larger --time-budget."
            )
        raise DataError(f"No {lines.role} trial finished with a score; see the reasons in {reasons}.")
    checkpoint = best.user_attrs[trial_record.CHECKPOINT] if best else None
    rebuild = rebuild_head is not None and best is not None and tuner.space.head_only(best.params)
    if checkpoint and not Path(checkpoint).exists() and rebuild:  # chosen by its cross-validated score
        assert rebuild_head is not None and best is not None
        checkpoint = rebuild_head(best.number, best.params)
    result = StudyResult(
        study=tuner.study.study_name,
        best_trial=best.number if best else None,
        score=best.value if best else None,  # None: no trial finished (e.g. the budget ran out)
        params=best.params if best else {},
        checkpoint=checkpoint,
        stopped=why,
        trials=len(summary),
    )
    return StudyRun(result, summary, why, new, time.monotonic() - t0, note)


def why_no_new_trial(
    tuner, why: str, trials: int, before: int, stage_name: str, deadline, budget: Budget | None, escalate: bool
) -> str:
    """What a stage that started no trial says: the time it lacked, or who ran the trials it asks for."""
    if why == "budget":
        if tuner.out_of_time:
            return f"no new trial: {tuner.out_of_time}"
        ran_here = before > tuner.finished_before  # the baseline stage trained in this run
        after = {"tune": "the baseline" if ran_here else "", "escalate": "tuning"}.get(stage_name, "")
        return no_time_left(budget, escalate, after, deadline if stage_name == "tune" else None)
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


def no_time_left(budget: Budget | None, escalate: bool, after: str = "", deadline: float | None = None) -> str:
    """``no time left after the baseline (14m of the 20m budget spent; ...)``; ``escalate``: whether
    the budget's rest is the escalation's."""
    assert budget is not None, "only a run with a time budget runs out of time"
    spent = time.time() - budget.started
    text = "no time left" + (f" after {after}" if after else "")
    text += f" ({minutes(spent)} of the {minutes(budget.seconds)} budget spent"
    if deadline is not None and deadline < budget.deadline - 1:
        share = deadline - budget.started
        rest = "the escalation's" if escalate else "kept to judge the model and write the report"
        text += f"; tuning may use {minutes(share)} of it, the rest is {rest}"
    return text + ")"


def baseline(tuner: Tuner, train, plan: Plan, escalate: bool, lines: TrialLines, say: Say) -> TrialResult:
    """Trial 0 (enqueued by ``automl.search.enqueue_start``), or its retry when the process running it
    died; when it trained nothing here, ``say`` tells why (no time, or it finished earlier)."""
    before = len(tuner.finished_trials())
    why = tuner.run(train, total_trials=1, deadline=plan.tuning_deadline(), **lines.hooks())
    trials = [t for t in tuner.finished_trials() if trial_record.role(t) == Role.BASELINE]
    if len(tuner.finished_trials()) == before:
        if why == "budget":
            say(f"not started: {no_time_left(plan.budget, escalate)}")
        elif trials:
            say(
                f"trial #{trials[0].number} finished in an earlier run or by another worker "
                f"({lines.metric} {trials[0].value})"
            )
    return trial_result(trials[0]) if trials else TrialResult()


def trial_result(trial) -> TrialResult:
    """The baseline stage's journal record of its trial (the shape automl 0.1 wrote)."""
    return TrialResult(
        state=trial.state.name.lower(),
        number=trial.number,
        value=trial.value,
        params=trial.params,
        seconds=trial.duration.total_seconds() if trial.duration else None,
        reason=trial.user_attrs.get(trial_record.FAIL_REASON),
    )


def write_study(path: Path, summary: list[TrialRecord]) -> None:
    """``study.csv``: a row per trial (:meth:`TrialRecord.row`), a ``param_<name>`` column per parameter."""
    import pandas as pd

    rows = []
    for record in summary:
        row = record.row()
        params = row.pop("params")
        rows.append({**row, **{f"param_{k}": v for k, v in params.items()}})
    tmp = path.with_suffix(".tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(path)


# --------------------------------------------------------------------------- verdict
def judge_flash(data: RunData, flash: StudyResult) -> TierVerdict:
    """The best Flash-tier model on the validation split, judged against the target."""
    from automl.flash import fit

    best_config = data.config.fit_config(**flash.params)
    assert flash.checkpoint is not None, "the tune stage ends in an error when no trial finished"
    model = fit.load_classifier(flash.checkpoint)
    served = fit.data_for(best_config, data.datamodule)
    targets, probabilities, ids = fit.predict_validation(model, served, data.config.accelerator)
    return judge(data, Tier.FLASH, flash, targets, probabilities, ids)


def judge(data: RunData, tier: Tier, best: StudyResult, targets, probabilities, ids) -> TierVerdict:
    """A tier's best trial on the validation split: the *selection* score, which decides whether the
    run escalates; the run's verdict comes from the test split (``judge_test``)."""
    from automl.evaluate import safe_score
    from automl.target import judge as judged

    labels, target = data.labels, data.target
    write_predictions(data.run_dir / tier_predictions_file(tier), ids, targets, probabilities, labels)
    verdict = judged(target, targets, probabilities, seed=data.config.seed)
    scores = {name: safe_score(name, targets, probabilities) for name in m.VALIDATION_METRICS}
    if target.met(verdict.score):
        outcome = f"met by the {tier} tier on the validation split"
    elif tier == Tier.LIGHTNING or not data.config.escalate:
        outcome = f"missed{' after escalation' if tier == Tier.LIGHTNING else ''}, short by {verdict.gap:.4f}"
    else:
        outcome = f"missed by the flash tier, short by {verdict.gap:.4f}"
    return TierVerdict(
        **dataclasses.asdict(verdict), scores=scores, best_trial=best.best_trial, tier=tier, outcome=outcome
    )


def write_predictions(path: Path, inputs, targets, probabilities, labels: list[str], split: str = "val") -> None:
    """One row per example of ``split``: its file (images) or text, true and predicted label, confidence
    and every class probability."""
    import pandas as pd

    texts = bool(inputs) and isinstance(inputs[0], str)
    frame = pd.DataFrame(
        {
            "id": [f"{split} {i}" for i in range(len(inputs))] if texts else [str(item) for item in inputs],
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
def escalate(
    data: RunData,
    flash: StudyResult,
    template,
    lines: TrialLines,
    studies: Studies,
    trainers: Trainers,
    life: TrialLife,
    flash_space: SearchSpace,
    plan: Plan,
) -> tuple[EscalationResult, StudyRun]:
    """The Lightning tier: a second study over the template, warm-started from the best Flash
    parameters and weights (``warm_start``), under what is left of the budget; its best model judged
    when it beats the Flash tier by more than validation resolves (``unresolved_gain``). ``studies``
    opens its study, ``trainers`` and ``life`` make its trials, ``flash_space`` is the Flash tier's
    (which of its trials are heads), ``plan`` says when the trials must end."""
    from automl.space import search_space
    from escalation.train import predict_validation

    config, target = data.config, data.target
    space = search_space(config, Tier.LIGHTNING)
    tuner = studies.open(Tier.LIGHTNING, space)
    start, warm = warm_start(data, flash, template, space, flash_space)
    lines.say(f"{lines.prefix}: {start.note}")
    tracked = life.tracked(Tier.LIGHTNING, trainers.lightning(template))

    def warm_trials() -> list[int]:  # the enqueued warm-start trial, and any retry of it
        return [t.number for t in tuner.study.get_trials(deepcopy=False) if trial_record.role(t) == Role.WARM_START]

    def train(number: int, params: dict, callbacks: list):
        if start.settings and number in warm_trials():
            params = {**params, **start.settings}  # logged with the trial's parameters
        return tracked(number, params, callbacks)

    tuner.enqueue_baseline({**warm, **start.params}, role=Role.WARM_START)
    trials = config.escalation_trials or config.trials
    reasons = data.run_dir / study_file(Tier.LIGHTNING)
    study = run_study(
        tuner, train, trials, lines, "escalate", plan.escalation_deadline(), reasons=reasons, budget=plan.budget
    )
    write_study(reasons, study.summary)
    lightning = study.result
    score, before = lightning.score, flash.score
    assert before is not None, "escalation follows a Flash-tier model"
    better = score is not None and (score > before if target.maximize else score < before)
    result = EscalationResult(lightning, str(template.folder), better)
    if start.settings:
        result.warm_start = {**start.settings, "trials": warm_trials()}
    if better:
        assert lightning.best_trial is not None and lightning.checkpoint is not None  # it scored
        template_config = trainers.template_config(lightning.params, lightning.best_trial, template)
        found = predict_validation(template, lightning.checkpoint, template_config, data.datamodule)
        targets, probabilities, ids = found
        result.unresolved = unresolved_gain(data, targets, probabilities)
        result.better = not result.unresolved
        if result.better:
            result.verdict = judge(data, Tier.LIGHTNING, lightning, targets, probabilities, ids)
            result.template_config = template_config
    return result, study


def unresolved_gain(data: RunData, targets, probabilities) -> str:
    """Why the Lightning tier's higher validation score does not replace the Flash tier's model: its
    paired gain on the same validation examples is within what they resolve (one bootstrap standard
    error, as for an ensemble); "" when it is more, or when the two predictions cannot be paired."""
    import numpy as np

    from automl import ensemble as ens

    path = data.run_dir / tier_predictions_file(Tier.FLASH)
    if not path.exists():
        return ""
    flash, flash_targets = read_predictions(path, data.labels)
    targets = np.asarray(targets)
    if len(flash_targets) != len(targets) or not np.array_equal(flash_targets, targets):
        return ""
    metric, maximize = data.target.metric, data.target.maximize
    gain, resolution = ens.paired_gain(targets, np.asarray(probabilities), flash, metric, maximize, data.config.seed)
    if gain > resolution:
        return ""
    return (
        f"its gain of {gain:.4f} over the Flash tier on the {len(targets)} validation examples is within the "
        f"{resolution:.4f} they resolve"
    )


def warm_start(data: RunData, flash: StudyResult, template, space: SearchSpace, flash_space: SearchSpace):
    """The warm-start trial's start (``escalation.train.warm_start``: the best Flash model's weights
    written for the template) and its parameters: the best Flash trial's, and a gentle first epoch
    (``space.FROM_HEAD_RECIPE``) when it starts from a head fitted on cached features."""
    from automl.space import warm_start_params
    from escalation.train import WARM_START_DIR
    from escalation.train import warm_start as start_from

    warm = warm_start_params(space, flash.params)
    frozen = data.config.pretrained and str(flash.params.get("strategy")) == "freeze"
    start = start_from(
        template,
        flash.checkpoint,
        data.config.to_dict(),
        warm,
        data.target.metric,
        data.labels,
        data.run_dir / "escalation" / WARM_START_DIR,
        backbone=not frozen,
    )
    if "init_head" in start.settings and flash_space.head_only(flash.params):
        warm = warm_start_params(space, flash.params, from_head=True)
    return start, warm


def flash_kept(flash: StudyResult, verdict: TierVerdict, lightning: StudyResult, unresolved: str = "") -> TierVerdict:
    """The Flash tier's verdict after an escalation that did not beat it (or not by more than the
    validation split resolves: ``unresolved``), saying why."""
    why = (
        f"the Lightning tier did not beat the Flash tier's {flash.score:.4f}"
        if lightning.score is not None
        else f"no Lightning-tier trial finished ({lightning.stopped}; see {study_file(Tier.LIGHTNING)})"
    )
    if unresolved:
        why = f"the Lightning tier's {lightning.score:.4f} is not kept: {unresolved}"
    outcome = f"missed after escalation ({why}), short by {verdict.gap:.4f}"
    return TierVerdict.from_json({**verdict.to_json(), "outcome": outcome})


# --------------------------------------------------------------------------- ensemble
#: the ensemble's name for the chosen trial's model (best/ itself)
CHOSEN = "chosen"


def ensemble(
    data: RunData, features: FeatureCache, flash: Tuner, tier: Tier, best: StudyResult, say: Say
) -> EnsembleResult:
    """An ensemble (``automl.ensemble``: Caruana's greedy selection, or equal weights over one model
    per backbone, :func:`one_per_backbone`) of the chosen model, the best head on cached features of
    each other backbone and input size (refitted here in a second each) and, for texts, a TF-IDF +
    logistic regression; kept only when its gain is more than the selection data resolves.
    That data is the validation split, or, when the chosen model is a head too, out-of-fold
    predictions over train+val (five times as many examples). ``finalise`` builds the kept one into best/.
    ``features``: the study's cache; ``flash``: the Flash tier's study (its heads are the candidates)."""
    from automl import ensemble as ens

    if not data.config.ensemble:
        return EnsembleResult(False, "off (--no-ensemble)")
    members = ensemble_members(data, flash, tier, best)
    if tier != Tier.LIGHTNING and flash.space.head_only(best.params):
        # every candidate is a head (or TF-IDF): out-of-fold predictions over train+val, on the folds
        # that ranked the heads, resolve far more than the validation split alone
        split = "out-of-fold predictions over train+val"
        probabilities, targets = out_of_fold_probabilities(data, features, members)
    else:
        split = "the validation split"
        found = validation_probabilities(data, features, tier, members)
        if found is None:
            return EnsembleResult(False, "the chosen model's validation predictions are not in the split's order")
        probabilities, targets = found
    target = data.target
    equal = one_per_backbone(members, target.maximize)
    decision = ens.decide(probabilities, targets, target.metric, target.maximize, data.config.seed, equal)
    rows = [
        {**member, "weight": decision.weights.get(name, 0.0), "score": decision.single_scores.get(name)}
        for name, member in members.items()
    ]
    scores = {
        "ensemble": decision.ensemble_score,
        "crossfit_ensemble": decision.crossfit_ensemble,
        "crossfit_single": decision.crossfit_single,
        "gain": decision.gain,
        "resolution": decision.resolution,
        "examples": len(targets),
        "split": split,
        "method": decision.method,
    }
    if decision.kept:  # its temperature, on the data that chose it (automl.calibration)
        from automl import calibration

        mixed = sum(weight * probabilities[name] for name, weight in decision.weights.items() if weight)
        floor = None if split.startswith("out-of-fold") else 1.0  # the validation split flatters the choice
        scores["temperature"] = calibration.fit_temperature(mixed, targets, at_least=floor)
    weights = ", ".join(f"{name} {weight:.2f}" for name, weight in decision.weights.items())
    outcome = "kept" if decision.kept else "not kept"
    found = f"{len(members)} candidate(s) on {len(targets)} {split}, {decision.method} {weights}"
    say(f"{found}: {outcome}, {decision.why}")
    return EnsembleResult(decision.kept, decision.why, rows, scores)


def ensemble_members(data: RunData, flash: Tuner, tier: Tier, best: StudyResult) -> dict[str, dict]:
    """The ensemble's candidates by name: the chosen model, the best head of each other backbone and
    input size, and for texts the TF-IDF member."""
    from automl import ensemble as ens

    members: dict[str, dict] = {CHOSEN: {"name": CHOSEN, "kind": tier, "trial": best.best_trial, "params": best.params}}
    for trial in head_candidates(flash, data, tier, best):
        record = TrialRecord.of(tier, trial)
        name = f"head #{record.number}"
        members[name] = {
            "name": name,
            "kind": "head",
            "trial": record.number,
            "params": record.params,
            "cv_mean": record.cv_mean,
            "cv_std": record.cv_std,
        }
    if data.config.modality == "text" and data.datamodule.train_samples:
        members[ens.TFIDF_MEMBER] = {"name": ens.TFIDF_MEMBER, "kind": "tfidf", "trial": None, "params": {}}
    return members


def _texts(datamodule) -> list[str]:
    return [text for text, _ in datamodule.train_samples + datamodule.val_samples]


def head_out_of_fold(data: RunData, features: FeatureCache, params: dict):
    """(out-of-fold probabilities over train+val, float64; the targets they predict) of the head on
    cached features that ``params`` make, on the folds, penalty and label smoothing its trial's
    cross-validation used."""
    import numpy as np

    from automl.flash import fit, heads

    config = data.config.fit_config(**params)
    x, y = features.get(config, fit.data_for(config, data.datamodule)).labelled()
    folds = heads.cross_validate(
        x, y, len(data.labels), config.weight_decay, data.target.metric, config.label_smoothing, seed=data.config.seed
    )
    return folds.out_of_fold.astype(np.float64), y.numpy()


def _out_of_fold_once(data: RunData, features: FeatureCache) -> Callable[[dict], tuple]:
    """``head_out_of_fold`` for finalise, computed once per head (calibration and label doubts often
    ask for the same one)."""
    import json

    computed: dict[str, tuple] = {}

    def out_of_fold(params: dict) -> tuple:
        key = json.dumps(params, sort_keys=True, default=str)
        if key not in computed:
            computed[key] = head_out_of_fold(data, features, params)
        return computed[key]

    return out_of_fold


def out_of_fold_probabilities(data: RunData, features: FeatureCache, members: dict[str, dict]):
    """Each member's out-of-fold probabilities over train+val (the folds that ranked the heads) and
    the targets they predict."""
    import numpy as np

    from automl import ensemble as ens

    config, datamodule, labels = data.config, data.datamodule, data.labels
    probabilities: dict[str, np.ndarray] = {}
    for name, member in members.items():
        if member["kind"] != "tfidf":
            probabilities[name], targets = head_out_of_fold(data, features, member["params"])
    if ens.TFIDF_MEMBER in members:
        probabilities[ens.TFIDF_MEMBER] = ens.TfidfMember.out_of_fold(_texts(datamodule), targets, labels, config.seed)
    return probabilities, targets


def validation_probabilities(data: RunData, features: FeatureCache, tier: Tier, members: dict[str, dict]):
    """Each member's probabilities on the validation split (the chosen model's as its tier wrote
    them; the others fitted on the training split here) and its targets; None when the chosen
    model's predictions file is not in the split's order."""
    import numpy as np

    from automl import ensemble as ens
    from automl.flash import fit, heads

    config, datamodule, labels = data.config, data.datamodule, data.labels
    targets = np.array([t for _, t in datamodule.val_samples])
    chosen, truth = read_predictions(data.run_dir / tier_predictions_file(tier), labels)
    if len(truth) != len(targets) or not np.array_equal(truth, targets):
        return None
    probabilities = {CHOSEN: chosen}
    texts, trained = _texts(datamodule), len(datamodule.train_samples)
    for name, member in members.items():
        if member["kind"] == "head":
            fit_config = config.fit_config(**member["params"])
            cached = features.get(fit_config, fit.data_for(fit_config, datamodule))
            head = heads.fit_linear(
                cached.train,
                cached.train_targets,
                len(labels),
                fit_config.weight_decay,
                fit_config.label_smoothing,
            )
            probabilities[name] = head.probabilities(cached.val).astype(np.float64)
        elif member["kind"] == "tfidf":
            train_targets = [t for _, t in datamodule.train_samples]
            tfidf = ens.TfidfMember.fit(texts[:trained], train_targets, labels, config.seed)
            probabilities[name] = tfidf.probabilities(texts[trained:])
    return probabilities, targets


def one_per_backbone(members: dict[str, dict], maximize: bool = True) -> list[str]:
    """The equal-weight ensemble's members: the chosen model, the best head (by cross-validated score)
    of each other backbone, and the TF-IDF model. Heads of one backbone at other sizes add little that
    the chosen one lacks; other backbones' features are where the diversity is."""
    chosen = members[CHOSEN]
    picked: dict[object, tuple[float, str]] = {chosen["params"].get("backbone", CHOSEN): (float("inf"), CHOSEN)}
    for name, member in members.items():
        if member["kind"] == "tfidf":
            picked[name] = (float("inf"), name)
        elif member["kind"] == "head":
            key, rank = member["params"].get("backbone"), member.get("cv_mean")
            rank = float("-inf") if rank is None else rank if maximize else -rank
            if key not in picked or rank > picked[key][0]:
                picked[key] = (rank, name)
    return [name for _, name in picked.values()]


def head_candidates(tuner: Tuner, data: RunData, tier: Tier, best: StudyResult | None = None) -> list:
    """The best head on cached features (by cross-validated score) of each backbone and input size
    in ``tuner`` (the Flash tier's study), but the chosen trial's own when the chosen trial (``best``)
    is such a head."""
    size = "image_size" if data.config.modality == "image" else "max_length"

    def group(params: dict) -> tuple:
        return params.get("backbone"), params.get(size)

    complete = [
        t
        for t in tuner.study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE" and t.value is not None and tuner.space.head_only(t.params)
    ]
    chosen_head = best is not None and tier != Tier.LIGHTNING and tuner.space.head_only(best.params)
    skip = group(best.params) if best is not None and chosen_head else None
    sign = 1.0 if data.target.maximize else -1.0
    chosen: dict[tuple, tuple[float, object]] = {}  # (rank, Optuna's trial) by backbone and size
    for trial in complete:
        key = group(trial.params)
        rank = sign * (TrialRecord.of(tier, trial).ranking_score or 0.0)  # complete: it has a score
        if key != skip and (key not in chosen or rank > chosen[key][0]):
            chosen[key] = (rank, trial)
    return [trial for _, trial in chosen.values()]


# --------------------------------------------------------------------------- finalise
@dataclass(frozen=True)
class FinaliseInputs:
    """What making best/ uses besides the run's data: the study's feature cache (heads refitted on
    it), the Flash tier's study (the chosen trial's time, which parameters make a head), the Lightning
    tier's template settings of a trial (``Trainers.template_config``), the budget's end (a refit
    stops there) and whether a refit's epochs show progress bars."""

    features: FeatureCache
    flash: Tuner
    template_config: Callable[..., dict]
    deadline: float | None
    progress: bool


def finalise(
    data: RunData,
    inputs: FinaliseInputs,
    parent: ParentRun,
    tier: Tier,
    best: StudyResult,
    verdict: TierVerdict,
    template: str | None,
    say: Say,
    ensembled: EnsembleResult | None = None,
) -> FinalModel:
    """best/ (the final model, whichever tier, refitted on train+val when it can be), its verdict on the
    test split, metrics.json, the MLflow artifacts and model, the report. ``verdict``: the chosen
    trial's selection score (validation); ``template``: the edited template the escalation used (None:
    the built-in one)."""
    run_dir = data.run_dir
    best_dir = run_dir / BEST_DIR
    (best_dir / ENSEMBLE_FILE).unlink(missing_ok=True)  # a resumed run's earlier ensemble and temperature
    (best_dir / CALIBRATION_FILE).unlink(missing_ok=True)
    shutil.rmtree(best_dir / MEMBERS_DIR, ignore_errors=True)
    refit_note = save_chosen(data, inputs, tier, best, template, best_dir)
    say(f"refit: {refit_note}")
    # the built-in template as None: the path differs on the machine that loads the run folder,
    # and a path there is code that `automl predict` runs only with --trust-checkpoint
    ModelTier(tier, template).write(best_dir)
    shutil.copy2(run_dir / tier_predictions_file(tier), run_dir / PREDICTIONS_FILE)
    kept = ensembled if ensembled is not None and ensembled.kept else None
    single = judge_test(data, tier, best_dir, verdict, refit_note, template) if kept else None
    if kept:
        build_ensemble(data, inputs.features, inputs.flash.space, best_dir, tier, kept)
        say(f"the ensemble of {len(kept.chosen())} members is the final model")
    out_of_fold = _out_of_fold_once(data, inputs.features)
    calibrate(data, inputs, tier, best, best_dir, kept, out_of_fold, say)
    final = judge_test(data, tier, best_dir, verdict, refit_note, template)
    say(f"verdict on the {final.split} split: {final.outcome}")
    ensemble_facts = ensembled.to_json() if ensembled is not None else {}
    if kept and single is not None:
        ensemble_facts.update(single_test_score=single.score, single_test_split=single.split)
        ensemble_facts.update(prediction_seconds(data, best_dir, template))
    summary = _summary(data, tier, best, verdict, final, refit_note, ensemble_facts)
    record_label_doubts(data, inputs, out_of_fold, say)
    explain_for_report(data, best_dir, template, say)
    folder = RunFolder(run_dir)
    folder.write_summary(summary)
    tracker, run_id = parent.tracker, parent.run_id
    tracker.log_metrics(run_id, {f"final_{k}": v for k, v in verdict.scores.items() if v is not None})
    tracker.log_metrics(run_id, {k: v for k, v in final.test_scores.items() if v is not None})
    tracker.set_tags(run_id, {"verdict": final.verdict, "tier": tier, "best_trial": best.best_trial})
    logged = log_model(data, parent, best_dir, template, final, say)
    model = FinalModel(str(best_dir), tier, verdict=final.to_json(), **logged)
    folder.write_summary(dataclasses.replace(summary, **model.mlflow()))
    report = write_report(run_dir, say)
    for path in sorted(run_dir.glob("*.csv")) + [run_dir / n for n in (*LOGGED_FILES, *report)]:
        tracker.log_artifact(run_id, path)
    return model


def explain_for_report(data: RunData, best_dir: Path, template: str | None, say: Say) -> None:
    """explanations/explanations.json (and, for images, an overlay per example): why the final model
    answered as it did (``automl.explain``) for the most confident mistakes on the verdict's split and
    the two most confident right answers of each class; time-boxed (``budget.explain_seconds``)."""
    import pandas as pd

    from automl import explain
    from automl.budget import explain_seconds
    from automl.predict import Predictor
    from automl.report.facts import MISTAKES

    folder = data.run_dir / EXPLANATIONS_DIR
    shutil.rmtree(folder, ignore_errors=True)
    judged = data.run_dir / TEST_PREDICTIONS_FILE
    frame = pd.read_csv(judged if judged.exists() else data.run_dir / PREDICTIONS_FILE, keep_default_na=False)
    frame = frame.sort_values("confidence", ascending=False)
    wrong = frame[frame["true"].astype(str) != frame["predicted"].astype(str)].head(MISTAKES)
    right = frame[frame["true"].astype(str) == frame["predicted"].astype(str)].groupby("true").head(2)
    chosen = pd.concat([wrong.assign(kind="mistake"), right.assign(kind="right")])
    column = "text" if "text" in chosen.columns else "id"
    started = time.time()
    try:
        predictor = Predictor.load_folder(best_dir, template is not None, template=template)
        until = started + explain_seconds(data.config.budget_seconds)
        inputs = [str(value) for value in chosen[column]]
        rows = explain.explained_rows(predictor, inputs, [None] * len(inputs), folder, until)
    except Exception as error:  # explanations that fail cost the explanations, never the run
        say(f"explanations: not made ({type(error).__name__}: {error})")
        write_json(folder / EXPLANATIONS_FILE, {"unavailable": f"{type(error).__name__}: {error}", "rows": []})
        return
    for row, (_, example) in zip(rows, chosen.iterrows(), strict=True):
        row.update(kind=example["kind"], true=str(example["true"]), predicted=str(example["predicted"]))
        row["confidence"] = float(example["confidence"])
    done = sum(1 for row in rows if "file" in row or "tokens" in row)
    seconds = time.time() - started
    write_json(folder / EXPLANATIONS_FILE, {"rows": rows, "seconds": seconds, "explained": done})
    say(f"explanations: {done} of {len(rows)} examples in {seconds:.0f}s")


def record_label_doubts(data: RunData, inputs: FinaliseInputs, out_of_fold: Callable[[dict], tuple], say: Say) -> None:
    """inspection.json's ``label_doubts``: the training and validation examples whose given label the
    best head's out-of-fold probabilities disagree with most (``automl.flash.doubts``), on the cached
    features of the best head's backbone; never removed. Skipped, and said, when no head was tried."""
    from automl.flash import doubts

    heads = head_candidates(inputs.flash, data, Tier.FLASH)
    found: dict = {"found": []}
    if not heads:
        found["skipped"] = "no head on cached features was tried, so there are no out-of-fold probabilities"
    else:
        sign = 1.0 if data.target.maximize else -1.0
        best = max(heads, key=lambda t: sign * (TrialRecord.of(Tier.FLASH, t).ranking_score or 0.0))
        config = data.config.fit_config(**best.params)
        samples = data.datamodule.train_samples + data.datamodule.val_samples
        trained = len(data.datamodule.train_samples)
        for doubt in doubts.doubts_from(*out_of_fold(best.params)):
            found["found"].append(
                {
                    "input": str(samples[doubt.index][0]),
                    "split": "train" if doubt.index < trained else "val",
                    "given": data.labels[doubt.given],
                    "suggested": data.labels[doubt.suggested],
                    "p_given": doubt.p_given,
                    "p_suggested": doubt.p_suggested,
                }
            )
        found.update(backbone=config.backbone, trial=best.number, examples=len(samples))
        say(f"label doubts: {len(found['found'])} of {len(samples)} examples (out-of-fold, {config.backbone} head)")
    path = data.run_dir / INSPECTION_FILE
    write_json(path, {**read_json(path, {}), "label_doubts": found})


def calibrate(
    data: RunData,
    inputs: FinaliseInputs,
    tier: Tier,
    best: StudyResult,
    best_dir: Path,
    kept: EnsembleResult | None,
    out_of_fold: Callable[[dict], tuple],
    say: Say,
) -> None:
    """best/calibration.json: the final model's temperature (``automl.calibration``); none with
    ``--no-calibrate``. A head on cached features: fitted on its out-of-fold probabilities over
    train+val (5 folds, none of them chose it alone); a kept ensemble: in its stage, on the data its
    weights were chosen on; any other model: on the validation split that chose it, where it may only
    soften (``at_least=1``), as that split flatters the model it chose."""
    from automl import calibration

    (best_dir / calibration.CALIBRATION_FILE).unlink(missing_ok=True)
    if not data.config.calibrate:
        return
    if kept is not None:
        temperature = float(kept.scores.get("temperature", 1.0))
        fitted_on, examples = str(kept.scores.get("split", "")), int(kept.scores.get("examples", 0))
    elif tier == Tier.FLASH and inputs.flash.space.head_only(best.params):
        probabilities, targets = out_of_fold(best.params)
        temperature = calibration.fit_temperature(probabilities, targets)
        fitted_on, examples = "out-of-fold predictions over train+val", len(targets)
    else:
        probabilities, targets = read_predictions(data.run_dir / PREDICTIONS_FILE, data.labels)
        temperature = calibration.fit_temperature(probabilities, targets, at_least=1.0)
        fitted_on, examples = "the validation split (softening only)", len(targets)
    calibration.write_temperature(best_dir, temperature, fitted_on, examples)
    say(f"calibration: temperature {temperature:.3f}, fitted on {examples} examples of {fitted_on}")


def read_predictions(path: Path, labels: list[str]):
    """(probabilities, true class indices) of a predictions CSV that ``write_predictions`` wrote."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False)
    probabilities = frame[[f"p_{label}" for label in labels]].to_numpy(dtype=np.float64)
    return probabilities, np.array([labels.index(str(value)) for value in frame["true"]])


def save_chosen(
    data: RunData, inputs: FinaliseInputs, tier: Tier, best: StudyResult, template: str | None, best_dir: Path
) -> str:
    """The chosen model's files in best/ (a Flash-tier model refitted on train+val when it can be);
    returns what the refit did, in words."""
    from automl.flash import fit

    assert best.checkpoint is not None and best.best_trial is not None, "a chosen trial has its weights"
    config, datamodule = data.config, data.datamodule
    if tier == Tier.FLASH:
        fit_config = config.fit_config(**best.params)
        try:
            checkpoint, refit_note = refit(data, inputs, best, fit_config)
        except Exception as error:  # a refit that fails costs the refit, never the run
            checkpoint, refit_note = None, f"kept the chosen trial's weights: the refit failed ({error!r})"
        fit.save_best(best_dir, checkpoint or best.checkpoint, fit.data_for(fit_config, datamodule), fit_config)
    else:
        from escalation.train import load_template, preprocessing

        refit_note = "kept the chosen trial's weights: refitting a Lightning-tier trial on train+val is not built yet"
        template_config = inputs.template_config(best.params, best.best_trial, load_template(template))
        best_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(best.checkpoint, best_dir / CHECKPOINT_FILE)
        write_json(best_dir / LABELS_FILE, datamodule.labels)
        write_json(
            best_dir / PREPROCESSING_FILE,
            {**preprocessing(template_config), "task": config.task, "backbone": template_config["backbone"]},
        )
        dump_yaml(template_config, best_dir / TEMPLATE_CONFIG_FILE)
    if data.holdout.source == NONE:
        refit_note = "not done: with no test split, the validation split is all that is left to judge on"
    elif not config.refit:
        refit_note = "off (--no-refit): the chosen trial's own weights"
    return refit_note


def _summary(data: RunData, tier, best, verdict, final, refit_note, ensemble_facts) -> Summary:
    return Summary(
        target=str(data.target),
        verdict=final.verdict,
        outcome=final.outcome,
        tier=tier,
        score=final.score,
        ci_low=final.ci_low,
        ci_high=final.ci_high,
        gap=final.gap,
        best_trial=best.best_trial,
        best_params=best.params,
        labels=data.labels,
        scores=verdict.scores,
        test_scores=final.test_scores,
        judged_on=final.split,
        examples=final.examples,
        interval=final.interval,
        selection_score=verdict.score,
        notes=final.notes,
        holdout=data.holdout.to_json(),
        refit=refit_note,
        ensemble=ensemble_facts,
        calibration=final.calibration,
    )


def build_ensemble(
    data: RunData,
    features: FeatureCache,
    flash_space: SearchSpace,
    best_dir: Path,
    tier: Tier,
    ensembled: EnsembleResult,
) -> None:
    """best/ becomes the ensemble: its own model is the chosen member; each other member goes under
    best/members/ (heads and the TF-IDF model refitted on train+val when the run refits, as the
    chosen one is; their weights stay those chosen on validation); ensemble.json lists them."""
    import torch

    from automl import ensemble as ens
    from automl.flash import fit, heads

    config, datamodule, labels = data.config, data.datamodule, data.labels
    both = config.refit and data.holdout.source != NONE
    entries = []
    for member in ensembled.chosen():
        name, weight = member["name"], member["weight"]
        if member["kind"] == "tfidf":
            samples = datamodule.train_samples + (datamodule.val_samples if both else [])
            folder = best_dir / MEMBERS_DIR / ens.TFIDF_MEMBER
            texts, targets = zip(*samples, strict=True)
            ens.TfidfMember.fit(list(texts), list(targets), labels, config.seed).save(folder)
            entries.append(
                {"name": name, "kind": "tfidf", "folder": str(folder.relative_to(best_dir)), "weight": weight}
            )
            continue
        head_only = tier != Tier.LIGHTNING and flash_space.head_only(member["params"])
        fit_config = config.fit_config(**member["params"])
        shares = frozen_backbone(fit_config) if head_only else None
        if name == CHOSEN:
            entries.append({"name": name, "kind": tier, "folder": ".", "weight": weight, "shares": shares})
            continue
        served = fit.data_for(fit_config, datamodule)
        cached = features.get(fit_config, served)
        x, y = cached.labelled() if both else (cached.train, cached.train_targets)
        head = heads.fit_linear(x, y, len(labels), fit_config.weight_decay, fit_config.label_smoothing)
        torch.manual_seed(fit_config.seed)  # --no-pretrained: the random backbone the features came from
        model = fit.build_model(fit_config, labels)
        model.head.load_state_dict(head.state_dict())
        checkpoint = data.run_dir / "ensemble" / f"trial-{member['trial']}.ckpt"
        fit.save_checkpoint(model, checkpoint, 0)
        folder = best_dir / MEMBERS_DIR / f"trial-{member['trial']}"
        fit.save_best(folder, str(checkpoint), served, fit_config)
        ModelTier(Tier.FLASH, None).write(folder)
        entries.append(
            {
                "name": name,
                "kind": "head",
                "folder": str(folder.relative_to(best_dir)),
                "weight": weight,
                "shares": shares,
            }
        )
    write_json(best_dir / ENSEMBLE_FILE, {"members": entries, "why": ensembled.why})


def frozen_backbone(config: FitConfig) -> str:
    """What makes two heads on cached features share their backbone's forward pass."""
    from automl.backbones import default_backbone

    size = config.image_size if config.task == "image_classification" else config.max_length
    return f"{default_backbone(config)}|{config.weights}|{config.pretrained}|{size}"


def prediction_seconds(data: RunData, best_dir: Path, template: str | None) -> dict:
    """Seconds per example of the ensemble and of its best single member, on up to 32 test (else
    validation) inputs, one batch each after a warm-up."""
    from automl.evaluate import probabilities
    from automl.predict import Predictor

    samples = (data.datamodule.test_samples or data.datamodule.val_samples)[:32]
    inputs = [item for item, _ in samples]
    timings = {}
    for key, members in (("ensemble_seconds_per_example", True), ("single_seconds_per_example", False)):
        predictor = Predictor.load_folder(best_dir, template is not None, template=template, members=members)
        probabilities(predictor, inputs[:2])
        started = time.perf_counter()
        probabilities(predictor, inputs)
        timings[key] = (time.perf_counter() - started) / max(len(inputs), 1)
    return timings


def refit(data: RunData, inputs: FinaliseInputs, best: StudyResult, config: FitConfig) -> tuple[str | None, str]:
    """(checkpoint, what was done): the chosen Flash-tier configuration trained again on train+val,
    so that the judged model has seen all the labelled data the search could use. A head on cached
    features refits in seconds; a fine-tune when its measured time fits in what is left of the budget.
    None: the chosen trial's own weights are kept, and the text says why."""
    from automl.flash import fit

    if not data.config.refit or data.holdout.source == NONE:
        return None, ""
    datamodule, metric = data.datamodule, data.target.metric
    served = fit.data_for(config, datamodule)
    out = data.run_dir / "refit"
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    examples = len(datamodule.train_samples) + len(datamodule.val_samples)
    if inputs.flash.space.head_only(best.params):
        features = inputs.features.get(config, served)  # the study's cache: train and val, never test
        x, y = features.labelled()
        both = dataclasses.replace(features, train=x, train_targets=y)
        trained = fit.train_head(config, served, out, both, metric)
        if trained.checkpoint is None:
            return None, "kept the chosen trial's weights: the refitted head did not train"
        return trained.checkpoint, f"the head retrained on train+val ({examples} examples) in {_secs(started)}"
    assert best.best_trial is not None, "a chosen trial has a number"
    trial = inputs.flash.study.trials[best.best_trial]
    seconds = trial_record.seconds(trial)
    share = examples / max(len(datamodule.train_samples), 1)
    needed = None if seconds is None else seconds * share
    deadline = inputs.deadline
    left = None if deadline is None else deadline - time.time()
    if needed is not None and left is not None and needed > left:
        return None, (
            f"kept the chosen trial's weights: retraining on train+val would take about {minutes(needed)}, "
            f"{minutes(max(left, 0))} of the budget is left"
        )
    epochs = _best_epochs(best.checkpoint) or config.epochs
    refitted = dataclasses.replace(config, epochs=epochs)
    samples = datamodule.train_samples + datamodule.val_samples
    note = ""
    try:
        trained = _refit_once(refitted, served, samples, out, metric, deadline, inputs.progress)
    except Exception as error:  # a refit that fails costs the refit, never the run
        from automl import tuning

        if not tuning.is_out_of_memory(error):
            return None, f"kept the chosen trial's weights: the refit failed ({tuning.describe_error(error)})"
        half = max(1, refitted.batch_size // 2)
        note = f"; out of GPU memory at batch size {refitted.batch_size}, retrained with {half}"
        refitted = dataclasses.replace(refitted, batch_size=half)
        try:
            served = served.with_options(batch_size=half)
            trained = _refit_once(refitted, served, samples, out, metric, deadline, inputs.progress)
        except Exception as again:
            return None, f"kept the chosen trial's weights: the refit failed ({tuning.describe_error(again)})"
    if not trained.checkpoint:
        return None, "kept the chosen trial's weights: the refit wrote no checkpoint"
    return trained.checkpoint, (
        f"fine-tuned again on train+val ({examples} examples, {epochs} epochs) in {_secs(started)}{note}"
    )


def _refit_once(
    config: FitConfig, served, samples: list, out: Path, metric: str, deadline: float | None, progress: bool
):
    """One fine-tune of ``config`` on ``samples`` (train+val); the validation split only feeds the
    checkpoint callback, as every example in it is now a training example. It stops at the budget's
    deadline (a trial sized to a share of each epoch's batches costs more here), its validated epochs kept."""
    from automl.callbacks import Deadline
    from automl.flash import fit

    shutil.rmtree(out, ignore_errors=True)
    both = served.with_options(train_samples=samples)
    callbacks = [Deadline(deadline)] if deadline is not None else []
    return fit.train(config, both, out, metric, callbacks, progress=progress)


def _best_epochs(checkpoint: str | None) -> int | None:
    """Epochs up to and including the chosen trial's best one (its checkpoint's name says which)."""
    import re

    found = re.search(r"best-epoch(\d+)", Path(checkpoint).name) if checkpoint else None
    return int(found.group(1)) + 1 if found else None


def _secs(started: float) -> str:
    return f"{time.monotonic() - started:.0f}s"


def judge_test(
    data: RunData, tier: Tier, best_dir: Path, selection: TierVerdict, refit_note: str, template: str | None = None
) -> TierVerdict:
    """The run's verdict: the model in ``best_dir`` on the test split (the examples no trial saw), the
    same computation as ``automl evaluate`` on those examples; with no test split, the selection
    verdict, saying it was judged on the split that chose the model."""
    from automl.evaluate import judge_inputs
    from automl.predict import Predictor
    from automl.target import describe

    datamodule, target, holdout = data.datamodule, data.target, data.holdout
    notes = [holdout.line()]
    if refit_note:
        notes.append(f"refit: {refit_note}")
    if holdout.source == NONE:
        outcome = (
            f"{selection.verdict} by the {tier} tier on the validation split that chose the model (no test split: "
            f"optimistic): {describe(_verdict_of(selection))}"
        )
        facts = {}
        if not (best_dir / ENSEMBLE_FILE).exists():  # the predictions file is the chosen model's, not an ensemble's
            probabilities, targets = read_predictions(data.run_dir / PREDICTIONS_FILE, data.labels)
            facts = _calibration(best_dir, probabilities, targets, "val (the split the temperature was fitted on)")
        return dataclasses.replace(selection, split="val", outcome=outcome, notes=notes, tier=tier, calibration=facts)
    # this run wrote the checkpoint and already ran the user's edited template (--template): both trusted
    predictor = Predictor.load_folder(best_dir, trust_checkpoint=template is not None, template=template)
    samples = datamodule.test_samples
    inputs, targets = [item for item, _ in samples], [t for _, t in samples]
    scored = judge_inputs(predictor, inputs, targets, [str(item) for item in inputs], target, seed=data.config.seed)
    write_predictions(
        data.run_dir / TEST_PREDICTIONS_FILE,
        scored.inputs,
        scored.targets,
        scored.probabilities,
        datamodule.labels,
        split="test",
    )
    verdict = scored.verdict
    test_scores = {f"test_{name}": value for name, value in scored.scores.items()}
    facts = _calibration(best_dir, scored.probabilities, scored.targets, "test")
    notes += _test_notes(data, predictor, scored, selection)
    story = _story(tier, selection)
    if (best_dir / ENSEMBLE_FILE).exists():
        members = len(read_json(best_dir / ENSEMBLE_FILE)["members"])
        story += f" (an ensemble of {members} models around its chosen one)"
    outcome = f"{verdict.verdict} {story} on {verdict.examples} test examples: {describe(verdict)}"
    return TierVerdict(
        **dataclasses.asdict(verdict),
        scores=selection.scores,
        best_trial=selection.best_trial,
        tier=tier,
        outcome=outcome,
        split="test",
        test_scores=test_scores,
        notes=notes,
        calibration=facts,
    )


def _calibration(best_dir: Path, probabilities, targets, split: str) -> dict:
    """ECE before and after calibration of the final model's ``probabilities`` on ``split`` (and the
    reliability diagrams); {} without calibration.json (``--no-calibrate``) or examples."""
    from automl import calibration

    path = best_dir / calibration.CALIBRATION_FILE
    if not path.exists() or not len(targets):
        return {}
    temperature = calibration.read_temperature(best_dir)
    with_selection = {"fitted_on": read_json(path).get("fitted_on")}
    return {**calibration.measured(probabilities, targets, temperature, split), **with_selection}


def _test_notes(data: RunData, predictor, scored, selection: TierVerdict) -> list[str]:
    """What a reader of the test verdict should know: unreadable test examples, test examples with a
    copy in the training data (scored with and without them), a selection score the test interval
    does not cover."""
    from automl.evaluate import judge_inputs

    target, holdout, samples, verdict = data.target, data.holdout, data.datamodule.test_samples, scored.verdict
    notes = []
    if scored.unreadable:
        notes.append(f"{len(scored.unreadable)} test examples could not be read: {scored.unreadable[0][0]}, ...")
    if holdout.leaked:
        clean = [(item, t) for item, t in samples if str(item) not in set(holdout.leaked)]
        if clean:
            again = judge_inputs(
                predictor, [i for i, _ in clean], [t for _, t in clean], [str(i) for i, _ in clean], target
            )
            notes.append(
                f"{len(holdout.leaked)} of the {len(samples)} test examples have an exact copy in the training data: "
                f"{target.metric.removeprefix('val_')} {verdict.score:.4f} with them, {again.verdict.score:.4f} "
                f"without them ({len(clean)} examples)"
            )
    drop = selection.score - verdict.score if target.maximize else verdict.score - selection.score
    beyond = selection.score > verdict.ci_high if target.maximize else selection.score < verdict.ci_low
    if drop > 0 and beyond:
        notes.append(
            "the search may have overfitted its validation split: the chosen trial scored "
            f"{selection.score:.4f} there, outside the test split's 95% interval "
            f"{verdict.ci_low:.3f}-{verdict.ci_high:.3f}"
        )
    return notes


def _story(tier: Tier, selection: TierVerdict) -> str:
    """Which tier's model was judged, and whether the run escalated to get it (with the reason a
    Lightning tier that did not win was not kept)."""
    if tier == Tier.LIGHTNING:
        return "by the lightning tier, after escalation"
    if "after escalation" in selection.outcome:
        start, end = selection.outcome.find("("), selection.outcome.rfind(")")
        why = f" ({selection.outcome[start + 1 : end]})" if 0 <= start < end else ""
        return f"after escalation{why}: by the flash tier"
    return "by the flash tier"


def _verdict_of(tier_verdict: TierVerdict):
    from automl.target import Verdict

    names = {f.name for f in dataclasses.fields(Verdict)}
    return Verdict(**{k: v for k, v in tier_verdict.to_json().items() if k in names})


def log_model(
    data: RunData, parent: ParentRun, best_dir: Path, template: str | None, verdict: TierVerdict, say: Say
) -> dict:
    """The final model in MLflow (and the registry with ``--register``). The run's files are
    written already: a store that refuses the model costs a warning, not the run."""
    from automl import mlflow_model

    tags = {"verdict": verdict.verdict, "score": f"{verdict.score:.4f}", "run_folder": str(data.run_dir)}
    try:
        logged = mlflow_model.log_model(
            parent.tracker.tracking_uri,
            parent.run_id,
            best_dir,
            input_example(data.datamodule),
            template=template,
            register=data.config.register,
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
