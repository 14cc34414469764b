from __future__ import annotations

import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from helpers import TINY_IMAGE_BACKBONE, fast_trainer_kwargs, make_image_folder

from automl import metrics as m
from automl.data import ImageClassificationData, TextClassificationData
from automl.errors import ConfigError, DataError
from automl.flash import ImageClassifier, TextClassifier, finetune
from automl.flash.finetuning import Strategy, backbone_layers, parse_strategy


def tiny_image_data(folder, **kwargs):
    return ImageClassificationData.from_folders(folder, image_size=32, batch_size=8, seed=0, **kwargs)


def test_tiny_image_model_learns_a_separable_task(tmp_path):
    pl.seed_everything(0, verbose=False)
    data = tiny_image_data(make_image_folder(tmp_path, per_class=24))
    model = ImageClassifier(labels=data.labels, backbone=TINY_IMAGE_BACKBONE, pretrained=False, learning_rate=1e-2)
    trainer = finetune(model, data, strategy="no_freeze", **fast_trainer_kwargs(max_epochs=8))
    assert trainer.callback_metrics[m.VAL_ACCURACY] >= 0.9
    for name in m.VALIDATION_METRICS:  # every metric the target, pruning and reports rely on is logged
        assert name in trainer.callback_metrics


def test_tiny_text_model_learns_a_separable_task(text_csv, tiny_bert_dir):
    pl.seed_everything(0, verbose=False)
    data = TextClassificationData.from_csv(text_csv, batch_size=16, seed=0)
    model = TextClassifier(labels=data.labels, backbone=str(tiny_bert_dir), learning_rate=3e-3, max_length=32)
    trainer = finetune(model, data, strategy="no_freeze", **fast_trainer_kwargs(max_epochs=6))
    assert trainer.callback_metrics[m.VAL_ACCURACY] >= 0.9
    assert data.tokenizer is not None and data.max_length == 32  # taken from the model when fitting started


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def test_freeze_leaves_every_backbone_parameter_unchanged(image_folder):
    data = tiny_image_data(image_folder)
    model = ImageClassifier(labels=data.labels, backbone=TINY_IMAGE_BACKBONE, pretrained=False, learning_rate=1e-2)
    backbone_before, head_before = snapshot(model.backbone), snapshot(model.head)
    finetune(model, data, strategy="freeze", **fast_trainer_kwargs(max_epochs=1))
    after = model.backbone.state_dict()
    # parameters and BatchNorm running statistics alike
    assert all(torch.equal(backbone_before[name], after[name]) for name in backbone_before)
    assert not all(torch.equal(head_before[name], t) for name, t in model.head.state_dict().items())


def test_freeze_unfreeze_trains_the_backbone_from_its_epoch(image_folder):
    data = tiny_image_data(image_folder)
    model = ImageClassifier(labels=data.labels, backbone=TINY_IMAGE_BACKBONE, pretrained=False)
    before = snapshot(model.backbone)
    trainer = finetune(model, data, strategy=("freeze_unfreeze", 1), **fast_trainer_kwargs(max_epochs=2))
    first = next(iter(before))  # the stem's weight
    assert not torch.equal(before[first], model.backbone.state_dict()[first])
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)


@pytest.mark.parametrize("pretrained", [True, False])
def test_a_pretrained_backbone_keeps_its_batchnorm_statistics_while_it_fine_tunes(image_folder, pretrained):
    """Batch statistics of small batches far from the pretraining data wreck a short fine-tune: a
    pretrained backbone normalises with its own running statistics (its BatchNorm scale and shift still
    train); a randomly initialised one has none worth keeping and learns them."""
    data = tiny_image_data(image_folder)
    model = ImageClassifier(labels=data.labels, backbone=TINY_IMAGE_BACKBONE, pretrained=False)
    model.hparams["pretrained"] = pretrained  # the tiny test model has no weights to load
    norms = [mod for mod in model.backbone.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    before = [(mod.running_mean.clone(), mod.weight.detach().clone()) for mod in norms]
    finetune(model, data, strategy="no_freeze", **fast_trainer_kwargs(max_epochs=1))
    kept = [torch.equal(mean, mod.running_mean) for (mean, _), mod in zip(before, norms, strict=True)]
    trained = [not torch.equal(weight, mod.weight) for (_, weight), mod in zip(before, norms, strict=True)]
    assert all(kept) if pretrained else not any(kept)
    assert any(trained)


def test_unfreeze_milestones_unfreeze_the_last_layers_first(image_folder):
    data = tiny_image_data(image_folder)
    model = ImageClassifier(labels=data.labels, backbone=TINY_IMAGE_BACKBONE, pretrained=False)
    before = snapshot(model.backbone)
    finetune(model, data, strategy=("unfreeze_milestones", ((1, 5), 2)), **fast_trainer_kwargs(max_epochs=2))
    layers = backbone_layers(model.backbone)
    last = {id(p) for layer in layers[-2:] for p in layer.parameters()}
    for name, param in model.backbone.named_parameters():
        assert param.requires_grad == (id(param) in last), name
    first = next(iter(before))
    assert torch.equal(before[first], model.backbone.state_dict()[first])  # the stem is still frozen


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("freeze", Strategy("freeze")),
        ("freeze_unfreeze:3", Strategy("freeze_unfreeze", unfreeze_epoch=3)),
        (("freeze_unfreeze", 2), Strategy("freeze_unfreeze", unfreeze_epoch=2)),
        ("unfreeze_milestones:1,4,2", Strategy("unfreeze_milestones", milestones=(1, 4), num_layers=2)),
        (("unfreeze_milestones", ((0, 2), 1)), Strategy("unfreeze_milestones", milestones=(0, 2), num_layers=1)),
    ],
)
def test_strategies_parse_from_flash_and_cli_forms(given, expected):
    assert parse_strategy(given) == expected
    assert parse_strategy(str(expected)) == expected


@pytest.mark.parametrize("bad", ["freze", "freeze_unfreeze:x", ("unfreeze_milestones", ((3, 1), 1)), ("freeze", 1, 2)])
def test_unknown_strategies_say_which_exist(bad):
    with pytest.raises(ConfigError, match=r"Use 'no_freeze', 'freeze'"):
        parse_strategy(bad)


def test_predictions_are_probabilities(image_folder):
    data = tiny_image_data(image_folder)
    model = ImageClassifier(labels=data.labels, backbone=TINY_IMAGE_BACKBONE, pretrained=False)
    trainer = finetune(model, data, strategy="freeze", **fast_trainer_kwargs(max_epochs=1))
    predict = ImageClassificationData.from_files(
        [p for p, _ in data.val_samples], labels=data.labels, image_size=32, batch_size=8
    )
    batches = trainer.predict(model, datamodule=predict)
    probabilities = torch.cat(batches)
    assert probabilities.shape == (len(data.val_samples), 3)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(len(data.val_samples)))


def test_labels_that_differ_from_the_data_are_an_error(image_folder):
    data = tiny_image_data(image_folder)
    model = ImageClassifier(labels=["x", "y", "z"], backbone=TINY_IMAGE_BACKBONE, pretrained=False)
    with pytest.raises(DataError, match=r"Build the model with labels=data.labels"):
        finetune(model, data, **fast_trainer_kwargs(max_epochs=1))


@pytest.mark.slow
def test_a_fit_never_imports_pytorch_lightning(tmp_path):
    """In a fresh interpreter: the two Lightning namespaces must never mix."""
    make_image_folder(tmp_path / "imgs", per_class=4)
    script = f"""
import sys
from automl.data import ImageClassificationData
from automl.flash import ImageClassifier, finetune
data = ImageClassificationData.from_folders({str(tmp_path / "imgs")!r}, image_size=32, batch_size=4)
model = ImageClassifier(labels=data.labels, backbone={TINY_IMAGE_BACKBONE!r}, pretrained=False)
finetune(model, data, max_epochs=1, accelerator="cpu", enable_progress_bar=False)
assert "lightning.pytorch" in sys.modules
print("pytorch_lightning" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_an_efficientnet_lite0_checkpoint_from_before_reloads_with_its_tensors_and_normalisation(tmp_path):
    import lightning

    from automl.flash.fit import load_classifier

    trained = ImageClassifier(labels=["a", "b"], backbone="efficientnet_lite0", pretrained=False)
    with torch.no_grad():
        trained.backbone.conv_stem.weight.add_(1.0)  # tensors no initialisation gives
    # as automl wrote checkpoints before they held their normalisation ("efficientnet_lite0" then got the
    # TensorFlow weights, scaled to [-1, 1])
    checkpoint = {
        "state_dict": trained.state_dict(),
        "hyper_parameters": dict(trained.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    torch.save(checkpoint, tmp_path / "old.ckpt")
    reloaded = load_classifier(tmp_path / "old.ckpt")
    assert type(reloaded.backbone).__name__ == "EfficientNet"
    assert all(torch.equal(t, trained.state_dict()[k]) for k, t in reloaded.state_dict().items())
    assert reloaded.normalization == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    # checkpoints written now keep the model's own normalisation (timm's Lite0: ImageNet mean/std)
    trained.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "new.ckpt")
    assert load_classifier(tmp_path / "new.ckpt").normalization == trained.normalization != reloaded.normalization
