"""The Lightning-tier template as code a person edits: one typed configuration, and a package that
loads from any folder without meeting another template."""

from __future__ import annotations

import multiprocessing
import pickle
import shutil

import pytest

from automl.errors import ConfigError
from escalation.template import TemplateConfig
from escalation.train import TEMPLATE_DIR, load_template


def test_a_setting_the_configuration_does_not_have_is_named_with_the_file_and_the_valid_keys(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("task: text_classification\ndata: reviews.csv\nlearnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match=f"Unknown configuration key 'learnin_rate' in {path}") as error:
        TemplateConfig.load(path)
    assert "learning_rate" in str(error.value) and "layer_decay" in str(error.value)
    path.write_text("task: text_classification\ndata: reviews.csv\n")
    with pytest.raises(ConfigError, match="Unknown configuration key 'epoch' in --set"):
        TemplateConfig.load(path, ["epoch=3"])


def test_set_values_take_the_type_of_their_setting_and_choices_are_checked(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("task: text_classification\ndata: reviews.csv\n")
    config = TemplateConfig.load(path, ["learning_rate=3e-4", "epochs=2", "pooling=cls"])
    assert config.learning_rate == 3e-4 and isinstance(config.learning_rate, float)  # YAML reads 3e-4 as text
    assert config.epochs == 2 and config.pooling == "cls"
    assert config.backbone == "all-MiniLM-L6-v2" and not config.is_image  # the task's default backbone
    with pytest.raises(ConfigError, match="augment is 'sharpen'; it takes one of none, trivialaugment, randaugment"):
        TemplateConfig.load(path, ["augment=sharpen"])
    with pytest.raises(ConfigError, match="epochs must be a number, got 'many'"):
        TemplateConfig.load(path, ["epochs=many"])
    with pytest.raises(ConfigError, match="--set takes KEY=VALUE"):
        TemplateConfig.load(path, ["epochs"])


def test_a_template_in_the_old_three_file_layout_is_refused_with_the_way_to_move_it(tmp_path):
    for name in ("datamodule.py", "module.py", "train.py"):
        (tmp_path / name).write_text("raise SystemExit('imported')\n")
    with pytest.raises(ConfigError, match="automl 0.1's layout") as error:
        load_template(tmp_path)
    assert "automl eject RUN --to DIR" in str(error.value)
    with pytest.raises(ConfigError, match="holds no template package"):
        load_template(tmp_path / "nothing")


def copy_of_the_template(folder, head: str | None = None):
    """An ejected-style project in ``folder`` (``folder/template``), its head edited to ``head``."""
    package = folder / "template"
    shutil.copytree(TEMPLATE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    if head:
        module = package / "module.py"
        original = "    return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))"
        module.write_text(module.read_text().replace(original, f"    return {head}"))
    return folder


def head_of(template) -> str:
    return str(template.package.module.make_head(8, 2, 0.0))


def test_two_edited_templates_and_the_built_in_one_load_side_by_side(tmp_path):
    first = load_template(copy_of_the_template(tmp_path / "a", "nn.Linear(num_features, num_classes)"))
    second = load_template(copy_of_the_template(tmp_path / "b", "nn.Sequential(nn.Linear(num_features, 3))"))
    built_in = load_template()
    assert head_of(first).startswith("Linear(in_features=8, out_features=2")
    assert "out_features=3" in head_of(second) and "Dropout" in head_of(built_in)
    assert first.package.TemplateConfig is not built_in.package.TemplateConfig  # each its own modules

    # edited again in the same process: loading it again runs the new code, not the first one's
    module = tmp_path / "a" / "template" / "module.py"
    module.write_text(module.read_text().replace("nn.Linear(num_features, num_classes)", "nn.Identity()"))
    assert head_of(load_template(tmp_path / "a")) == "Identity()"
    # the package folder itself, not only the project holding it, can be named
    assert head_of(load_template(tmp_path / "b" / "template")) == head_of(second)


def _class_name(payload: bytes, answer) -> None:
    answer.put(pickle.loads(payload).__name__)


@pytest.mark.slow
def test_a_spawned_process_imports_an_edited_templates_classes_by_their_name(tmp_path):
    """What ``ddp_spawn`` does with a trial's model: pickle it here, unpickle it in a new process."""
    template = load_template(copy_of_the_template(tmp_path / "mine", "nn.Linear(num_features, num_classes)"))
    model = template.model_class({"task": "image_classification"})
    context = multiprocessing.get_context("spawn")
    answer = context.Queue()
    process = context.Process(target=_class_name, args=(pickle.dumps(model), answer))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == 0 and answer.get(timeout=5) == "ImageClassifier"


def test_a_run_that_never_escalated_ejects_the_template_with_its_best_flash_settings(image_run, tmp_path):
    """No Lightning-tier trial to reproduce: config.yaml starts from the best Flash-tier values the
    template shares, and loads as the template's configuration."""
    import json

    from escalation.eject import eject

    summary = json.loads((image_run / "metrics.json").read_text())
    assert summary["tier"] == "flash"
    project = eject(image_run, tmp_path / "project")
    assert (
        project.expected is None
        and "config.yaml starts from the Flash tier's" in (project.folder / "README.md").read_text()
    )
    template = load_template(project.folder)
    config = template.package.TemplateConfig.load(project.folder / "config.yaml")
    best = summary["best_params"]
    assert config.learning_rate == pytest.approx(best["learning_rate"]) and config.batch_size == best["batch_size"]
    assert config.backbone == best.get("backbone", config.backbone) and config.task == "image_classification"
    assert config.augment == TemplateConfig().augment  # a setting the Flash tier has not: the template's default


def test_a_template_ejected_when_fit_returned_a_dict_is_read_as_a_fit_result(tmp_path):
    """Templates ejected before fit() returned a FitResult return the same facts as a dict."""
    import types

    from escalation.template.train import FitResult
    from escalation.train import Template

    old = {"monitor": "val_accuracy", "best_score": 0.9, "checkpoint": "c.ckpt", "best_epoch": 1, "epochs_run": 2}
    result = Template(tmp_path, types.SimpleNamespace(fit=lambda config, **kwargs: old)).fit({})
    assert result == FitResult("val_accuracy", 0.9, "c.ckpt", 1, 2)
