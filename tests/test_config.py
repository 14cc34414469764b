"""automl.config: defaults in one place, unknown keys rejected with the valid ones listed, bad values
named before anything runs."""

from __future__ import annotations

import pytest

from automl.config import FitConfig, RunConfig, device_count, dump_yaml, load_yaml, parse_duration
from automl.errors import ConfigError, UnknownTask


def test_a_yaml_round_trip_keeps_every_value_and_tuples(tmp_path):
    config = RunConfig(
        task="image_classification", data="imgs", target="accuracy>=0.9", backbones=("a", "b"), register="m"
    )
    dump_yaml({k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}, tmp_path / "c.yaml")
    again = RunConfig.from_dict(load_yaml(tmp_path / "c.yaml"))
    assert again == config and again.backbones == ("a", "b")  # YAML lists become the field's tuple


def test_an_unknown_key_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict({"task": "text_classification", "data": "t.csv", "target": "accuracy>=0.8", "epoch": 3})
    assert "Unknown configuration key(s): epoch" in str(error.value)
    assert "Valid keys:" in str(error.value) and "epochs" in str(error.value) and "register" in str(error.value)


def test_missing_task_and_data_say_where_to_give_them():
    with pytest.raises(ConfigError, match=r"task and data must be given: --task \.\.\. --data \.\.\."):
        FitConfig.from_dict({})


def test_an_unknown_task_suggests_the_close_one():
    with pytest.raises(UnknownTask, match="Did you mean: image_classification"):
        FitConfig(task="image_clasification", data="imgs")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"learning_rate": 0}, "learning_rate must be positive"),
        ({"dropout": 1.0}, "dropout and label_smoothing lie in"),
        ({"weights": "w.pth", "pretrained": False}, "contradict"),
    ],
)
def test_bad_fit_values_are_refused_with_the_rule(changes, message):
    with pytest.raises(ConfigError, match=message):
        FitConfig(task="image_classification", data="imgs", **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target": None}, "needs a target"),
        ({"trials": 0}, "trials must be at least 1"),
        ({"pruner": "asha"}, "Unknown pruner 'asha'"),
        ({"max_bad_share": 1.5}, "max_bad_share is a share between 0 and 1"),
        ({"num_nodes": 2}, "--num-nodes 1"),
        ({"time_budget": "ten minutes"}, "Cannot read the time budget"),
    ],
)
def test_bad_run_values_are_refused_with_the_rule(changes, message):
    values = {"task": "image_classification", "data": "imgs", "target": "accuracy>=0.9", **changes}
    with pytest.raises(ConfigError, match=message):
        RunConfig(**values)


def test_a_run_config_gives_each_trial_its_fit_config():
    run = RunConfig(task="text_classification", data="t.csv", target="f1_macro>=0.7", epochs=3, trials=5)
    fit = run.fit_config(learning_rate=1e-4)
    assert isinstance(fit, FitConfig) and (fit.epochs, fit.learning_rate, fit.task) == (3, 1e-4, "text_classification")
    assert run.budget_seconds is None and run.trial_strategy == "auto"


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("20m", 1200), ("1h30m", 5400), ("45", 45), (2.5, 2.5)])
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("devices", "count"), [("2", 2), ("0,1", 2), ("[0, 1, 2]", 3), ("auto", 1), ("1", 1)])
def test_device_counts_on_the_cpu(devices, count):
    assert device_count("cpu", devices) == count
