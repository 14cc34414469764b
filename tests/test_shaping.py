"""A search space the user shapes (``search_space:``), presets, and ``automl run --print-config``."""

from __future__ import annotations

import optuna
import pytest
import yaml
from click.testing import CliRunner

from automl import shaping
from automl.cli import cli
from automl.config import RunConfig
from automl.errors import ConfigError
from automl.space import SearchSpace, search_space
from automl.trial_record import Tier


def config(**values) -> RunConfig:
    return RunConfig.from_dict({"task": "image_classification", "data": "imgs", "target": "accuracy>=0.9", **values})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"learnin_rate": 0.01}, "search_space: unknown knob 'learnin_rate' for this task. Knobs: augment, backbone"),
        (
            {"learning_rate": [1e-5, 1e-3]},
            r"search_space.learning_rate: 1e-05 is outside .* floats from 0.0001 to 0.03",
        ),
        (
            {"strategy": ["freeze", "thaw"]},
            "search_space.strategy: 'thaw' is outside .* freeze, freeze_unfreeze:1, no_freeze",
        ),
        ({"epochs": "many"}, "search_space.epochs: 'many' is not a int"),
        ({"max_length": 64}, "unknown knob 'max_length'"),  # a text knob, on images
        ({"dropout": [0.3, 0.1]}, r"the range \[0.3, 0.1\] is upside down"),
        (
            {"lightning": {"mix": ["none", "blend"]}},
            "search_space.lightning.mix: 'blend' is outside .* none, mixup, cutmix",
        ),
        ({"batch_size": []}, "an empty list leaves nothing to try"),
    ],
)
def test_a_bad_shape_names_the_knob_and_what_it_allows(section, message):
    with pytest.raises(ConfigError, match=message):
        config(search_space=section)


def test_a_shaped_space_samples_inside_the_shape_and_moves_enqueued_trials_into_it():
    shaped = config(
        backbones=["tf_efficientnet_lite0", "tf_efficientnet_lite1"],
        search_space={
            "backbone": "tf_efficientnet_lite1",
            "learning_rate": ["1e-3", 2e-3],  # YAML reads 1e-3 as text: converted
            "strategy": ["freeze", "no_freeze"],
            "lightning": {"weight_averaging": ["ema"]},
        },
    )
    flash = search_space(shaped, Tier.FLASH)
    assert flash.backbones == ("tf_efficientnet_lite1",)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = flash.suggest(study.ask())
        assert params["backbone"] == "tf_efficientnet_lite1" and 1e-3 <= params["learning_rate"] <= 2e-3
        assert params["strategy"] in ("freeze", "no_freeze")
    moved = flash.within({"backbone": "tf_efficientnet_lite0", "learning_rate": 0.02, "strategy": "freeze_unfreeze:1"})
    assert moved == {"backbone": "tf_efficientnet_lite1", "learning_rate": 2e-3, "strategy": "freeze"}
    lightning = search_space(shaped, Tier.LIGHTNING).described()
    assert lightning["weight_averaging"] == "ema" and lightning["learning_rate"] == [1e-3, 2e-3]
    assert "strategy" not in lightning  # the Flash tier's own knob


def test_without_a_shape_the_space_is_the_built_in_one():
    plain = search_space(config(backbones=["tf_efficientnet_lite0"]), Tier.FLASH)
    assert plain.shape == () and plain.within({"learning_rate": 0.5}) == {"learning_rate": 0.5}
    described = plain.described()
    assert described["learning_rate"] == [1e-4, 3e-2] and described["strategy"] == [
        "freeze",
        "freeze_unfreeze:1",
        "no_freeze",
    ]
    assert isinstance(SearchSpace.head_only({"strategy": "freeze", "augment": False}), bool)


def test_a_preset_is_laid_under_the_explicit_options_and_recorded():
    fast = config(preset="fast")
    assert (fast.preset, fast.time_budget, fast.escalate, fast.ensemble) == ("fast", "1m", False, False)
    assert fast.backbones == ("tf_efficientnet_lite0",) and fast.search_space == {"strategy": ["freeze"]}
    assert fast.image_size == 128 and config(preset="fast", task="text_classification").image_size == 224
    mine = config(preset="fast", trials=5, escalate=True)
    assert (mine.trials, mine.escalate, mine.time_budget) == (5, True, "1m")
    assert config().preset == "balanced" and config().trials == 10
    shaped = config(preset="fast", search_space={"backbone": "tf_efficientnet_lite1"})  # laid over the preset's
    assert shaped.search_space == {"strategy": ["freeze"], "backbone": "tf_efficientnet_lite1"}
    assert config().to_dict()["preset"] == "balanced"
    with pytest.raises(ConfigError, match="Unknown preset 'quick'. Presets: fast, balanced, best"):
        config(preset="quick")


def test_print_config_shows_the_resolved_options_and_each_tiers_space_and_runs_nothing(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"search_space": {"dropout": [0.0, 0.2]}}))
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--task",
            "image_classification",
            "--data",
            str(tmp_path / "not-read"),
            "--target",
            "accuracy>=0.9",
            "--preset",
            "best",
            "--trials",
            "7",
            "--config",
            str(tmp_path / "run.yaml"),
            "--output",
            str(tmp_path / "runs"),
            "--print-config",
        ],
    )
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert (shown["preset"], shown["trials"], shown["time_budget"], shown["epochs"]) == ("best", 7, "20m", 8)
    assert shown["searched"]["flash"]["dropout"] == [0.0, 0.2] and shown["searched"]["lightning"]["dropout"] == [
        0.0,
        0.2,
    ]
    assert "tta" in shown["searched"]["lightning"]
    assert not (tmp_path / "runs").exists()


def test_the_shape_of_the_yaml_section_is_checked_too():
    with pytest.raises(ConfigError, match="search_space must map knob names"):
        shaping.check(["backbone"], "image")
    assert not shaping.check(None, "text")


def test_a_time_budget_without_trials_is_the_only_limit_and_given_trials_still_cap():
    from automl.config import BUDGETED_TRIALS

    assert config(time_budget="3m").trials == BUDGETED_TRIALS
    assert config(time_budget="3m", trials=12).trials == 12
    assert config().trials == 10  # no budget: the default number of trials
    assert config(preset="fast").trials == BUDGETED_TRIALS  # its 1m budget decides
