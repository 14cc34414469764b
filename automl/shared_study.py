"""A study shared by several processes or machines: which of its trials count, which a worker must
close unused (two workers starting together), and which died with their process and must run again.

A SQLite file is one machine's: a dead trial is found there by its process id. A shared database
(PostgreSQL) gets Optuna's heartbeat: a trial silent for three heartbeats is failed by any other
worker and enqueued again. Every function takes the ``optuna.Study`` it reads or changes.
"""

from __future__ import annotations

import os
import socket
import time
import warnings

import optuna

from automl import trial_record
from automl.storage import schema_lock
from automl.trial_record import (
    FAIL_REASON,
    FINISHED_STATES,
    PROBE_INDEX,
    RETRY_OF,
    RETRY_REASON,
    ROLE,
    Role,
    role,
)

#: this process, as its trials name it (``trial_record.WORKER``): lets others tell a dead trial from a running one
WORKER = f"{socket.gethostname()}:{os.getpid()}"
# A live worker names its new trial with its first write, milliseconds after creating it: a RUNNING
# trial still unnamed after this long was left by a process killed in between.
UNNAMED_TRIAL_SECONDS = 10
HEARTBEAT_SECONDS = 30  # a shared database's running trials say they are alive this often


def open_storage(url: str, heartbeat: int | None):
    """The storage of ``url``: a SQLite URL as it is; a shared database with Optuna's heartbeat each
    ``heartbeat`` seconds (a trial silent for three times that is failed and run again, see
    :func:`retry_stale`), its tables created by one worker at a time."""
    if url.startswith("sqlite"):
        return url
    if heartbeat is None:
        with schema_lock(url):
            return optuna.storages.RDBStorage(url)
    with warnings.catch_warnings(), schema_lock(url):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True},  # a server restart or an idle timeout reconnects
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=retry_stale,
        )


def retry_stale(study, trial) -> None:
    """Optuna failed ``trial`` (no heartbeat within the grace period): run its parameters again."""
    worker = trial.user_attrs.get(trial_record.WORKER, "unknown worker")
    attrs = {
        ROLE: str(role(trial)),
        RETRY_OF: trial.number,
        RETRY_REASON: f"its worker ({worker}) stopped sending heartbeats",
    }
    study.enqueue_trial(trial.params, user_attrs=attrs)


def counted_trials(trials: list) -> list:
    """Finished trials that count towards a study's total: a trial whose process died is replaced by
    its retry and does not count itself, nor does a surplus trial closed unused."""
    retried = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    finished = [t for t in trials if t.state.name in FINISHED_STATES and not trial_record.closed_unused(t)]
    return [t for t in finished if t.number not in retried]


def running(trials: list) -> list:
    """Trials being trained now (a surplus one is about to be closed unused)."""
    return [t for t in trials if t.state.name == "RUNNING" and not trial_record.closed_unused(t)]


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def duplicate_start(study, trial) -> bool:
    """Two workers starting a new study together may both enqueue its first trials (the baseline,
    each probe): the lower number runs, the other is closed unused."""
    first = role(trial)
    if first == Role.TUNING or RETRY_OF in trial.user_attrs:
        return False
    probe = trial.user_attrs.get(PROBE_INDEX)
    return any(
        t.number < trial.number
        and role(t) == first
        and t.user_attrs.get(PROBE_INDEX) == probe
        and RETRY_OF not in t.user_attrs
        for t in study.get_trials(deepcopy=False)
    )


def surplus(study, trial, total_trials: int) -> bool:
    """Workers sharing a study may start trials at the same moment: the lower-numbered ones run,
    and a trial past the requested total is closed unused, so the total is exact.

    Finished and running trials come from one snapshot: read one after the other, a trial that
    finishes in between would be in neither list, and a second worker would start one too many.
    """
    trials = study.get_trials(deepcopy=False)
    ahead = [t for t in running(trials) if t.number < trial.number]
    return len(counted_trials(trials)) + len(ahead) >= total_trials


def recover_dead_trials(study) -> list[int]:
    """Trials left RUNNING by a process of this machine that is gone (killed, crashed): marked failed
    with the reason, and enqueued again with the same parameters. Returns their numbers."""
    from optuna.trial import TrialState

    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(trial_record.WORKER)
        if worker is None:
            # a worker names itself the moment its trial starts: one that never did died at once
            started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
            if time.time() - started < UNNAMED_TRIAL_SECONDS:
                continue
            reason = "its process died as the trial started"
        else:
            host, _, pid = str(worker).rpartition(":")
            if host != socket.gethostname() or not pid.isdigit() or alive(int(pid)):
                continue  # another machine's worker (its heartbeat tells), or still running
            reason = f"its process ({host}:{pid}) died"
        storage = study._storage
        try:  # two workers starting together may both find it: the one that fails it retries it
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        attrs = {ROLE: str(role(trial)), RETRY_OF: trial.number}
        study.enqueue_trial(trial.params, user_attrs=attrs)
        recovered.append(trial.number)
    return recovered


def wait_for_others(study, seconds: float) -> None:
    """One pause while other workers run the last trials; a trial whose process or machine died
    meanwhile is failed and enqueued again, which the next round picks up."""
    time.sleep(seconds)
    recover_dead_trials(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeat storages only; otherwise a no-op
