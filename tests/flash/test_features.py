"""Head-only trials on cached backbone features: they learn, they reload as ordinary classifiers,
and the backbone runs once per (backbone, input size)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY_IMAGE_BACKBONE, make_image_folder

from automl import metrics as m
from automl.config import FitConfig
from automl.flash import fit
from automl.flash.features import FeatureCache, head_only


def head_config(images, **changes) -> FitConfig:
    values = dict(
        task="image_classification",
        data=str(images),
        backbone=TINY_IMAGE_BACKBONE,
        pretrained=False,
        strategy="freeze",
        augment=False,
        epochs=3,
        batch_size=8,
        image_size=32,
        learning_rate=0.05,
        accelerator="cpu",
    )
    return FitConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def colour_images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "imgs", per_class=15)


def test_only_a_frozen_backbone_without_augmentation_trains_on_cached_features():
    assert head_only("freeze", False)
    assert not head_only("freeze", True)
    assert not head_only("freeze_unfreeze:1", False)
    assert not head_only("no_freeze", False)


def test_a_head_on_cached_features_learns_and_reloads_as_the_whole_classifier(colour_images, tmp_path):
    config = head_config(colour_images)
    data = fit.data_for(config, fit.load_data(config))
    features = FeatureCache(tmp_path / "features").get(config, data)
    assert features.train.shape[0] == len(data.train_samples)
    assert features.val.shape[0] == len(data.val_samples)

    trained = fit.train_head(config, data, tmp_path / "trial", features)

    # a random-init tiny ResNet's features still separate dominant colours
    assert trained.best_score >= 0.8
    model = fit.load_classifier(trained.checkpoint)
    assert type(model).__name__ == "ImageClassifier"
    targets, probabilities, _ = fit.predict_validation(model, data, "cpu")
    # the head put back on its backbone scores what it scored on the cached features
    assert float(np.mean(probabilities.argmax(axis=1) == targets)) == pytest.approx(trained.best_score, abs=1e-6)
    assert m.VAL_ACCURACY in m.VALIDATION_METRICS


def test_features_are_computed_once_and_read_back_from_disk(colour_images, tmp_path):
    config = head_config(colour_images)
    data = fit.data_for(config, fit.load_data(config))
    first = FeatureCache(tmp_path / "features").get(config, data)
    assert first.seconds > 0
    assert len(list((tmp_path / "features").glob("*.pt"))) == 1

    again = FeatureCache(tmp_path / "features")  # a resumed run, a worker on the same machine
    assert again.has(config, data)
    second = again.get(config, data)
    assert second.seconds == 0.0
    assert (second.train == first.train).all()
    # another input size is another pass of the backbone
    bigger = head_config(colour_images, image_size=48)
    assert not again.has(bigger, fit.data_for(bigger, fit.load_data(bigger)))
    # what one example costs is known for the size measured, and scaled for another
    assert again.forward_seconds(config) == pytest.approx(first.seconds_per_example)
    assert again.forward_seconds(bigger) == pytest.approx(first.seconds_per_example * (48 / 32) ** 2)


def test_text_features_keep_the_examples_order(text_csv, tiny_bert_dir, tmp_path):
    config = FitConfig(
        task="text_classification",
        data=str(text_csv),
        backbone=str(tiny_bert_dir),
        strategy="freeze",
        epochs=2,
        max_length=32,
        accelerator="cpu",
    )
    data = fit.load_data(config)
    features = FeatureCache().get(config, data)
    # sorted by length to batch, then put back: each row is its own text's embedding
    import torch

    from automl.flash.features import _encoder

    with torch.inference_mode():
        one = _encoder(config, data)(data.train_samples[3:4])
    assert torch.allclose(features.train[3], one[0], atol=1e-5)


def test_a_head_on_cached_features_is_the_logistic_regression_scikit_learn_fits():
    """The head is fitted as a regularised logistic regression on standardised features (L-BFGS, the
    whole set as one batch): its probabilities are scikit-learn's for the same C, and folded back
    onto raw features it predicts the same."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from automl.flash.features import FeatureData, Features, HeadClassifier

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 20)) * 2
    targets = rng.integers(0, 3, size=300)
    raw = (centres[targets] + rng.normal(size=(300, 20))) * rng.uniform(0.1, 10, size=20) + 5  # unscaled
    x = torch.tensor(raw, dtype=torch.float32)
    y = torch.tensor(targets)
    features = Features(x[:200], y[:200], x[200:], y[200:], seconds=0.0, seconds_per_example=0.0)
    weight_decay = 0.05
    head = HeadClassifier(["a", "b", "c"], features, weight_decay=weight_decay, epochs=2)
    data = FeatureData(features, ["a", "b", "c"])
    fit.finetune(head, data, strategy="no_freeze", max_epochs=2, logger=False, enable_progress_bar=False)

    scaler = StandardScaler().fit(raw[:200])
    reference = LogisticRegression(C=1 / (weight_decay * 200), max_iter=5000, tol=1e-8)
    reference.fit(scaler.transform(raw[:200]), targets[:200])
    expected = reference.predict_proba(scaler.transform(raw[200:]))
    head.eval()
    with torch.no_grad():
        ours = head(x[200:]).softmax(dim=-1).numpy()
        folded = head.classifier_head()
        raw_logits = x[200:] @ folded["1.weight"].T + folded["1.bias"]
    # scikit-learn standardises with the population std, automl with the sample one: C differs by n/(n-1)
    np.testing.assert_allclose(ours, expected, atol=0.02)
    assert (ours.argmax(1) == expected.argmax(1)).mean() > 0.98
    np.testing.assert_allclose(raw_logits.softmax(dim=-1).numpy(), ours, atol=1e-4)


def test_a_training_step_is_timed_on_real_batches_and_leaves_the_data_as_it_was(colour_images):
    config = head_config(colour_images, strategy="no_freeze", augment=True, batch_size=4)
    data = fit.load_data(config)
    before = (list(data.train_samples), list(data.val_samples))
    seconds = fit.measure_training_step(config, data)
    assert seconds is not None and 0 < seconds < 5  # per example: a tiny net on 32 px images
    assert (data.train_samples, data.val_samples) == before and data.mean is None
    too_few = data.with_options(train_samples=data.train_samples[:4])  # one batch: nothing left to time
    assert fit.measure_training_step(config, too_few) is None
