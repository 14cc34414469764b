"""automl.tracking: the thin layer over MLflow's client."""

from __future__ import annotations

from automl.tracking import EXPERIMENT, Tracker


def test_a_worker_that_loses_the_race_to_create_the_experiment_uses_the_winners(tmp_path, monkeypatch):
    """Behind an HTTP tracking server no lock is possible: two workers may both find no experiment
    and both create it. The second's create fails (RESOURCE_ALREADY_EXISTS); it must use the first's."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = Tracker(uri, tmp_path / "artifacts")
    looked_up = []
    original = MlflowClient.get_experiment_by_name

    def not_there_yet(self, name):  # the second worker looked before the first had created it
        looked_up.append(name)
        return None if len(looked_up) == 1 else original(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_there_yet)
    second = Tracker(uri, tmp_path / "artifacts")
    assert second.experiment_id == first.experiment_id
    assert looked_up == [EXPERIMENT, EXPERIMENT]  # created by the first, found after a failed create


def test_parameters_already_on_a_shared_parent_run_keep_their_first_value(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, tmp_path / "artifacts")
    parent = tracker.start_parent("study", {})
    tracker.log_params(parent, {"output": "worker-1", "trials": 6})
    tracker.log_params(parent, {"output": "worker-2", "trials": 6, "seed": 1})  # a second worker's
    assert tracker.client.get_run(parent).data.params == {"output": "worker-1", "trials": "6", "seed": "1"}
