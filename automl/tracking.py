"""MLflow tracking: one parent run per ``automl run``, one nested child run per trial.

The only module that imports mlflow. The default store is a SQLite file under the output folder;
``--tracking-uri http://server:5000`` (or ``MLFLOW_TRACKING_URI``) shares runs between machines.
Open the default store with ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from automl.errors import StoreUnavailable
from automl.storage import schema_lock

EXPERIMENT = "automl"
PARENT_TAG = "mlflow.parentRunId"


def default_tracking_uri(output: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(output) / 'mlflow.db').resolve()}"


@contextmanager
def own_tracking_uri():
    """Lightning's MLFlowLogger calls ``mlflow.set_tracking_uri``, which also sets the
    ``MLFLOW_TRACKING_URI`` environment variable: a later run in the same process (a notebook, the
    Python API) would log into this run's store instead of its own. Put it back as it was."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        import mlflow

        mlflow.set_tracking_uri(before)  # None unsets the variable


class Tracker:
    """Thin layer over ``MlflowClient``: runs are addressed by id so a resumed run can continue."""

    def __init__(self, tracking_uri: str, artifact_root: Path, experiment: str = EXPERIMENT):
        # A remote server that is down must fail fast with its URL, not after minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        try:
            # A new PostgreSQL database: one worker at a time creates its tables and the experiment.
            with schema_lock(tracking_uri):
                self.client = MlflowClient(tracking_uri)
                self.experiment_id = self._experiment(experiment, tracking_uri, artifact_root)
        except Exception as exc:  # mlflow raises many types for a bad or unreachable store
            raise StoreUnavailable(
                f"Cannot use the MLflow tracking store '{tracking_uri}': {_first_line(exc)}. "
                "Check the URL (or leave --tracking-uri out for a local SQLite file)."
            ) from exc

    def _experiment(self, name: str, tracking_uri: str, artifact_root: Path) -> str:
        """The experiment's id, created if missing. Behind an HTTP server no lock is possible:
        two workers starting together may both try to create it, and the loser finds the winner's."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None if tracking_uri.startswith("http") else Path(artifact_root).resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # ------------------------------------------------------------------ runs
    def start_parent(self, name: str, tags: dict[str, str], resume_run_id: str | None = None) -> str:
        """A new parent run, or the given one continued (a re-run after an interruption)."""
        if resume_run_id:
            try:
                self.client.get_run(resume_run_id)
                self.client.update_run(resume_run_id, status="RUNNING")
                return resume_run_id
            except Exception:  # deleted or from another store: start afresh
                pass
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    def start_child(self, parent_id: str, name: str, params: dict, tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={PARENT_TAG: parent_id, **(tags or {})})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def lightning_logger(self, run_id: str):
        """Lightning's ``MLFlowLogger`` writing per-epoch metrics into an existing run."""
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(tracking_uri=self.tracking_uri, run_id=run_id)

    # ------------------------------------------------------------------ values
    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        # Workers of one study share a parent run: the first value of a key stays (MLflow refuses to
        # change one), and a worker that loses the race to insert the same key reads them again.
        for attempt in range(3):
            existing = self.client.get_run(run_id).data.params
            fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
            if not fresh:
                return
            try:
                self.client.log_batch(run_id, params=fresh)
                return
            except Exception:
                if attempt == 2:
                    raise

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if values:
            self.client.log_batch(run_id, metrics=values)

    def set_tags(self, run_id: str, tags: dict[str, object]) -> None:
        """Each value as its text (MLflow tags are strings)."""
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path=artifact_path or path.name)
        elif path.exists():
            self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)

    # ------------------------------------------------------------------ reading back
    def runs(self, parent_id: str | None = None) -> list:
        """Runs of the experiment, or the children of ``parent_id``."""
        query = f"tags.`{PARENT_TAG}` = '{parent_id}'" if parent_id else ""
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=10_000)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def trial_history(tracking_uri: str, parent_id: str, tier: str, number: int | None, keys: list[str]) -> dict[str, list]:
    """Per-step values of ``keys`` logged by one trial's child run: {key: [(step, value), ...]}; empty
    for no trial (``number`` None: a run whose model no trial made)."""
    from mlflow.tracking import MlflowClient

    if number is None:
        return {}

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_id)
    query = f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.trial = '{number}' and tags.tier = '{tier}'"
    runs = client.search_runs([parent.info.experiment_id], filter_string=query, max_results=1)
    if not runs:
        return {}
    run_id = runs[0].info.run_id
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}
