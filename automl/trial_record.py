"""What a trial is, once it leaves Optuna: :class:`TrialRecord`, built in one place
(:meth:`TrialRecord.of`) from Optuna's ``FrozenTrial``, and the names of every fact a trial carries in
Optuna's ``user_attrs``.

Optuna stores a trial's own facts (its worker, its role, why it failed, its cross-validated score) as
string-keyed user attributes, shared by every worker of a study through its storage. Each key is a
constant here and nowhere else; the modules that read them (the study loop, the shared-study rules,
the stages) import these names.

>>> record = TrialRecord.of(Tier.FLASH, study.best_trial)
>>> record.role, record.score, record.row()["value"]

:class:`Tier` and :class:`Role` are string-valued enums: ``json.dumps``, YAML, MLflow tags and
``study.csv`` see the same strings as before they were enums ("flash", "warm start").
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass, field

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10

    class StrEnum(str, enum.Enum):
        def __str__(self) -> str:
            return str(self.value)


class Tier(StrEnum):
    """The tier that ran a trial."""

    FLASH = "flash"  # a backbone and a head (automl.flash)
    LIGHTNING = "lightning"  # the full template (escalation/template)


class Role(StrEnum):
    """Why a trial ran."""

    BASELINE = "baseline"  # the study's first trial: the pretrained default
    PROBE = "probe"  # a head on cached features of one more backbone, right after the baseline
    TUNING = "tuning"  # chosen by the sampler (or the cheaper kind, when a trial did not fit)
    WARM_START = "warm start"  # the Lightning tier's first trial, from the Flash tier's best parameters

    @classmethod
    def of(cls, value: str | None) -> Role:
        """The role a stored attribute names; a trial without one (an older study) was a tuning trial."""
        return cls.TUNING if value is None else cls(value)


# ---------------------------------------------------------------------- user attribute keys
ROLE = "role"  # a Role's value, set when the trial is enqueued
PROBE_INDEX = "probe"  # which probe: tells a probe enqueued twice (two workers) from its sibling
WORKER = "worker"  # the worker that started the trial (automl.shared_study.WORKER)
SURPLUS = "surplus"  # closed unused: another worker made it unnecessary, or it did not fit the time left
RETRY_OF = "retry_of"  # the number of the dead trial this one runs again
RETRY_REASON = "retry_reason"  # why that trial was retried (its worker stopped sending heartbeats)
STARTED_AT = "started_at"  # time.time() when training began
SECONDS = "seconds"  # how long training took, on the same clock as the budget's deadline
FAIL_REASON = "fail_reason"  # the error that failed it, in words
PRUNED_REASON = "pruned_reason"  # why the pruner stopped it
CHECKPOINT = "checkpoint"  # the best epoch's weights
BEST_EPOCH = "best_epoch"
STOPPED_AT_DEADLINE = "stopped_at_deadline"  # the trial's deadline ended its training early
#: a head's score over k folds of train+val, their spread and their number
#: (automl.trainers.Trainers.cross_validate): heads are chosen on it (automl.tuning.chosen)
CV_MEAN, CV_STD, CV_FOLDS = "cv_mean", "cv_std", "cv_folds"

FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


def role(trial) -> Role:
    """A trial's :class:`Role` (a ``FrozenTrial`` or a running ``Trial``)."""
    return Role.of(trial.user_attrs.get(ROLE))


def closed_unused(trial) -> bool:
    """Whether the trial was closed unused (:data:`SURPLUS`): it counts for nothing and is shown nowhere."""
    return bool(trial.user_attrs.get(SURPLUS))


def seconds(trial) -> float | None:
    """How long the trial trained, else Optuna's own duration (a trial from before it was measured)."""
    measured = trial.user_attrs.get(SECONDS)
    if measured is not None:
        return measured
    duration = getattr(trial, "duration", None)
    return None if duration is None else duration.total_seconds()


def reason(trial) -> str | None:
    """Why the trial failed or was pruned, in words (None when it completed)."""
    return trial.user_attrs.get(FAIL_REASON) or trial.user_attrs.get(PRUNED_REASON)


@dataclass(frozen=True)
class TrialRecord:
    """One trial of either tier, finished or running, as the run's stages, files and reports see it."""

    tier: Tier
    number: int
    role: Role
    state: str  # Optuna's TrialState name: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    score: float | None  # the best value of the monitored metric on the selection split
    params: dict = field(default_factory=dict)
    seconds: float | None = None
    reason: str | None = None  # why it failed, was pruned or was run again
    cv_mean: float | None = None  # a head's cross-validated score and spread (None for other trials)
    cv_std: float | None = None

    @classmethod
    def of(cls, tier: Tier | str, trial, retry_reason: str | None = None) -> TrialRecord:
        """The record of an Optuna trial; ``retry_reason``: why another trial runs it again."""
        attrs = trial.user_attrs
        return cls(
            tier=Tier(tier),
            number=trial.number,
            role=role(trial),
            state=trial.state.name,
            score=trial.value,
            params=dict(trial.params),
            seconds=attrs.get(SECONDS),
            reason=reason(trial) or retry_reason,
            cv_mean=attrs.get(CV_MEAN),
            cv_std=attrs.get(CV_STD),
        )

    @classmethod
    def of_study(cls, tier: Tier | str, trials: list) -> list[TrialRecord]:
        """Every trial of a study that counts (not those closed unused), each with why it was retried."""
        retried = {t.user_attrs[RETRY_OF]: t.user_attrs.get(RETRY_REASON) for t in trials if RETRY_OF in t.user_attrs}
        return [cls.of(tier, t, retried.get(t.number)) for t in trials if not closed_unused(t)]

    @property
    def ranking_score(self) -> float | None:
        """What the trial is ranked by: a head's cross-validated mean, else its score."""
        return self.cv_mean if self.cv_mean is not None else self.score

    def row(self) -> dict:
        """The record as a row of ``study.csv`` and the run's journal (the keys automl 0.1 wrote)."""
        return {
            "number": self.number,
            "state": self.state,
            "value": self.score,
            "seconds": self.seconds,
            "role": str(self.role),
            "reason": self.reason,
            "params": self.params,
            CV_MEAN: self.cv_mean,
            CV_STD: self.cv_std,
        }
