"""The Lightning tier's warm-start trial starts where the Flash tier ended: from the best Flash model's
head (and its backbone when that is not the pretrained one), through the template's ``init_head`` and
``init_backbone`` settings; a head that does not fit the template's model leaves a random one, and says why."""

from __future__ import annotations

import shutil

import pytest
import timm
import torch
from helpers import TINY_IMAGE_BACKBONE, tiny_run_config

from automl.errors import ConfigError
from automl.flash import fit
from automl.flash.features import FeatureCache
from escalation.train import TEMPLATE_DIR, load_template, template_config, warm_start

MONITOR = "val_accuracy"


def flash_and_template(run, out, trained_checkpoint):
    """The Flash tier's model from its checkpoint, the warm-start trial's parameters and its template
    configuration (before the warm start adds to them)."""
    flash = fit.load_classifier(trained_checkpoint).eval()
    params = {"backbone": run.backbone, "image_size": run.image_size, "batch_size": 8}
    return flash, params, template_config(run.to_dict(), params, out, MONITOR)


def template_model(template, config: dict, labels: list[str]):
    built = template.config(config)
    return template.model_class(built)(built, labels).eval()


def validation_batch(template, config: dict, datamodule) -> torch.Tensor:
    """The template's own validation images (its transforms), as the trial's first validation sees them."""
    data = template.datamodule(config, samples=datamodule)
    data.setup("fit")
    images, _ = next(iter(data.val_dataloader()))
    return images


def accuracy(model, template, config: dict, datamodule) -> float:
    data = template.datamodule(config, samples=datamodule)
    data.setup("fit")
    right = total = 0
    with torch.no_grad():
        for images, targets in data.val_dataloader():
            right += int((model(images).argmax(dim=-1) == targets).sum())
            total += len(targets)
    return right / total


def test_a_head_on_cached_features_starts_the_template_model_at_the_flash_score(images, tmp_path):
    """The Flash tier's best was a head on cached features of a pretrained backbone (frozen): the
    template's model, built as the warm-start trial builds it, predicts as the Flash model before any
    training step; a random head does not."""
    weights = tmp_path / "pretrained.pth"  # "pretrained" weights of the tiny backbone, read offline
    torch.manual_seed(0)
    torch.save(timm.create_model(TINY_IMAGE_BACKBONE).state_dict(), weights)
    run = tiny_run_config(
        images, tmp_path / "runs", pretrained=True, weights=str(weights), strategy="freeze", augment=False, epochs=3
    )
    config = run.fit_config()
    datamodule = fit.load_data(config)
    served = fit.data_for(config, datamodule)
    trained = fit.train_head(config, served, tmp_path / "flash", FeatureCache().get(config, served))
    flash, params, warm = flash_and_template(run, tmp_path / "trial", trained.checkpoint)

    template = load_template()
    folder = tmp_path / "warm_start"
    start = warm_start(template, trained.checkpoint, run.to_dict(), params, MONITOR, datamodule.labels, folder, False)
    # the head alone: the backbone is the pretrained one, as the template builds it
    assert start.settings == {"init_head": str(tmp_path / "warm_start" / "head.pt")}
    assert start.note == "the warm-start trial starts from the Flash tier's best head (on the same pretrained backbone)"

    started = template_model(template, {**warm, **start.settings}, datamodule.labels)
    batch = validation_batch(template, warm, datamodule)
    with torch.no_grad():
        torch.testing.assert_close(started(batch), flash(batch))
        assert not torch.allclose(template_model(template, warm, datamodule.labels)(batch), flash(batch))
    # the first validation (before any step) scores what the Flash tier's best head scored
    assert accuracy(started, template, warm, datamodule) == pytest.approx(trained.best_score)


def test_a_fine_tuned_flash_model_starts_the_template_with_its_backbone_too(images, tmp_path):
    """A Flash model whose backbone trained (here also not pretrained) is the start only as a whole:
    its head on another backbone would not predict as it does."""
    run = tiny_run_config(images, tmp_path / "runs", strategy="no_freeze", epochs=1)
    config = run.fit_config()
    datamodule = fit.load_data(config)
    trained = fit.train(config, fit.data_for(config, datamodule), tmp_path / "flash", progress=False)
    flash, params, warm = flash_and_template(run, tmp_path / "trial", trained.checkpoint)

    template = load_template()
    folder = tmp_path / "warm_start"
    start = warm_start(template, trained.checkpoint, run.to_dict(), params, MONITOR, datamodule.labels, folder, True)
    assert set(start.settings) == {"init_head", "init_backbone"}
    assert "best model (head and backbone)" in start.note
    batch = validation_batch(template, warm, datamodule)
    with torch.no_grad():
        started = template_model(template, {**warm, **start.settings}, datamodule.labels)
        torch.testing.assert_close(started(batch), flash(batch))
        head_only = template_model(template, {**warm, "init_head": start.settings["init_head"]}, datamodule.labels)
        assert not torch.allclose(head_only(batch), flash(batch))


@pytest.fixture(scope="module")
def flash_checkpoint(tmp_path_factory, images):
    """A Flash-tier checkpoint of the tiny backbone (no training: the shapes are what matter here)."""
    from automl.flash.tasks import ImageClassifier

    folder = tmp_path_factory.mktemp("flash")
    labels = ["blue things", "green things", "red things"]
    model = ImageClassifier(labels=labels, backbone=TINY_IMAGE_BACKBONE, pretrained=False)
    fit.save_checkpoint(model, folder / "best-epoch0.ckpt", 0)
    return folder / "best-epoch0.ckpt", model.labels


def test_a_flash_model_of_another_backbone_leaves_a_random_head_and_says_why(images, tmp_path, flash_checkpoint):
    checkpoint, labels = flash_checkpoint
    run = tiny_run_config(images, tmp_path / "runs")
    params = {"backbone": "test_efficientnet"}
    start = warm_start(load_template(), str(checkpoint), run.to_dict(), params, MONITOR, labels, tmp_path / "w", True)
    assert (start.settings, start.params) == ({}, {})
    assert start.note == (
        "the warm-start trial starts from a random head: the Flash tier's best model has the backbone "
        f"{TINY_IMAGE_BACKBONE}, this trial test_efficientnet"
    )
    assert not (tmp_path / "w").exists()


def test_a_head_the_edited_template_cannot_take_leaves_a_random_head_and_says_why(images, tmp_path, flash_checkpoint):
    checkpoint, labels = flash_checkpoint
    package = tmp_path / "mine" / "template"
    shutil.copytree(TEMPLATE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    module = package / "module.py"
    one_layer = "    return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))"
    two_layers = "    return nn.Sequential(nn.Linear(num_features, 16), nn.ReLU(), nn.Linear(16, num_classes))"
    module.write_text(module.read_text().replace(one_layer, two_layers))
    template = load_template(tmp_path / "mine")

    run = tiny_run_config(images, tmp_path / "runs")
    start = warm_start(template, str(checkpoint), run.to_dict(), {}, MONITOR, labels, tmp_path / "warm_start", False)
    assert (start.settings, start.params) == ({}, {})
    assert start.note.startswith(
        "the warm-start trial starts from a random head: the template's model does not take the Flash tier's best one "
        f"(init_head '{tmp_path / 'warm_start' / 'head.pt'}' does not fit this model: 0.weight is missing;"
    )
    assert "\n" not in start.note and not (tmp_path / "warm_start").exists()


def test_init_head_is_a_setting_of_the_template_null_by_default(images, tmp_path, flash_checkpoint):
    """An ejected project keeps it: null trains as before; a file that is not there is an error naming it."""
    template = load_template()
    run = tiny_run_config(images, tmp_path / "runs")
    config = template_config(run.to_dict(), {}, tmp_path / "trial", MONITOR)
    assert config["init_head"] is None and config["init_backbone"] is None
    with pytest.raises(ConfigError, match="init_head is 'nowhere.pt', which does not exist"):
        template_model(template, {**config, "init_head": "nowhere.pt"}, flash_checkpoint[1])


def test_a_text_model_starts_with_the_flash_tiers_pooling(text_csv, tiny_bert_dir, tmp_path):
    """The head reads the pooled encoder output: the warm-start trial pools as the Flash model did (the
    Lightning tier would otherwise draw its pooling at random)."""
    from automl.config import RunConfig

    run = RunConfig(
        task="text_classification",
        data=str(text_csv),
        output=str(tmp_path / "runs"),
        target="accuracy>=0",
        backbone=str(tiny_bert_dir),
        strategy="freeze",
        epochs=1,
        batch_size=8,
        max_length=16,
        accelerator="cpu",
    )
    config = run.fit_config()
    datamodule = fit.load_data(config)
    trained = fit.train(config, fit.data_for(config, datamodule), tmp_path / "flash", progress=False)
    flash = fit.load_classifier(trained.checkpoint).eval()
    template = load_template()
    params = {"max_length": 16, "pooling": "cls"}  # as the Lightning tier might draw it
    warm = template_config(run.to_dict(), params, tmp_path / "trial", MONITOR)

    folder = tmp_path / "warm_start"
    start = warm_start(template, trained.checkpoint, run.to_dict(), params, MONITOR, datamodule.labels, folder, False)
    assert start.params == {"pooling": "mean"} and set(start.settings) == {"init_head"}
    batch = validation_batch(template, warm, datamodule)
    with torch.no_grad():
        started = template_model(template, {**warm, **start.params, **start.settings}, datamodule.labels)
        torch.testing.assert_close(started(batch), flash(batch))
        assert not torch.allclose(
            template_model(template, {**warm, **start.settings}, datamodule.labels)(batch), flash(batch)
        )


@pytest.mark.parametrize("modality", ["image", "text"])
def test_a_warm_start_from_a_fitted_head_takes_the_gentle_recipe_and_the_study_keeps_it(modality):
    import optuna

    from automl.space import FROM_HEAD_RECIPE, IMAGE_ONLY, TemplateSearchSpace, warm_start_params

    space = TemplateSearchSpace(modality, ("tiny",), epochs=3)
    head = {"learning_rate": 0.0089, "backbone": "tiny", "weight_decay": 0.04, "strategy": "freeze", "epochs": 3}

    inherited = warm_start_params(space, head)
    gentle = warm_start_params(space, head, from_head=True)

    assert inherited["learning_rate"] == 0.0089 and "augment" not in inherited
    expected = {k: v for k, v in FROM_HEAD_RECIPE.items() if modality == "image" or k not in IMAGE_ONLY}
    assert {k: gentle[k] for k in expected} == expected and gentle["weight_decay"] == 0.04
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(gentle)
    trial = study.ask()
    assert {k: v for k, v in space.suggest(trial).items() if k in gentle} == gentle  # inside the space, not resampled
