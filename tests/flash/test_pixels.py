"""Images decoded once per run for every backbone's pass over the data (``automl.flash.pixels``), and
every backbone of the search looked at within the budget, or said to be skipped and why."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import TINY_IMAGE_BACKBONE
from PIL import Image

from automl.budget import Budget
from automl.config import FitConfig
from automl.data import image as image_data
from automl.data.image import eval_pixels, load_rgb
from automl.flash import fit
from automl.flash.features import FeatureCache, extract
from automl.flash.pixels import PixelCache
from automl.predict import Predictor

OTHER_BACKBONE = "test_efficientnet"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three classes of photos of other sizes than the input's, wide and tall, JPEG and PNG: each is
    resized and centre-cropped for the network."""
    root = tmp_path_factory.mktemp("data") / "photos"
    rng = random.Random(0)
    for channel, name in enumerate(("red", "green", "blue")):
        for index in range(6):
            width, height = rng.choice([(61, 45), (44, 70), (53, 53)])
            pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 90, (height, width, 3), dtype=np.uint8)
            pixels[..., channel] = rng.randrange(170, 256)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name / f"{index}.{'jpg' if index % 2 else 'png'}")
    return root


def config_for(photos, backbone: str, image_size: int) -> FitConfig:
    return FitConfig(
        task="image_classification",
        data=str(photos),
        backbone=backbone,
        pretrained=False,
        strategy="freeze",
        augment=False,
        image_size=image_size,
        accelerator="cpu",
    )


@pytest.fixture
def opened(monkeypatch):
    """The image files decoded from now on (every reader goes through ``load_rgb``)."""
    paths = []
    real = image_data.load_rgb

    def counting(path):
        paths.append(path)
        return real(path)

    monkeypatch.setattr(image_data, "load_rgb", counting)
    return paths


def test_a_second_backbone_runs_on_the_images_the_first_decoded_and_gets_the_features_files_give(photos, opened):
    first, second = config_for(photos, TINY_IMAGE_BACKBONE, 32), config_for(photos, OTHER_BACKBONE, 40)
    data = fit.load_data(first)
    examples = len(data.train_samples) + len(data.val_samples)
    cache = FeatureCache()
    cache.plan_images({32, 40})

    cache.get(first, fit.data_for(first, data))
    assert len(opened) == examples  # each file decoded once, and cropped for both sizes
    opened.clear()
    features = cache.get(second, fit.data_for(second, data))
    assert opened == []  # the second backbone's pass read no file

    from_files = extract(second, fit.data_for(second, data))  # the pass as it was: each file read again
    assert len(opened) == examples
    assert torch.allclose(features.train, from_files.train, rtol=0, atol=1e-6)
    assert torch.allclose(features.val, from_files.val, rtol=0, atol=1e-6)
    assert cache.pixels.bytes == examples * 3 * (32 * 32 + 40 * 40)


@pytest.mark.parametrize("image_size", [32, 40])
def test_the_kept_pixels_are_what_the_datamodule_and_the_predictor_make_of_the_file(photos, image_size):
    """A head trained on features of the kept pixels serves on files: the datamodule's eval transform
    and ``Predictor.image_transform`` give the same network input, to the bit."""
    config = config_for(photos, OTHER_BACKBONE, image_size)
    served = fit.data_for(config, fit.load_data(config))
    predictor = Predictor(None, None, served.labels, served.preprocessing(), "flash")
    for path, _ in served.train_samples + served.val_samples:
        kept = served.normalise(eval_pixels(image_size)(load_rgb(path)))
        assert torch.equal(kept, served.eval_transform()(load_rgb(path)))
        assert torch.equal(kept, predictor.image_transform()(load_rgb(path)))


def test_past_the_memory_limit_the_rest_are_read_from_their_files_and_that_is_said_once(photos, opened):
    first, second = config_for(photos, TINY_IMAGE_BACKBONE, 32), config_for(photos, OTHER_BACKBONE, 32)
    data = fit.load_data(first)
    samples = data.train_samples + data.val_samples
    lines = []
    cache = FeatureCache(pixels=PixelCache(limit=5 * 3 * 32 * 32, say=lines.append))  # room for five images

    cache.get(first, fit.data_for(first, data))
    opened.clear()
    features = cache.get(second, fit.data_for(second, data))

    assert len(opened) == len(samples) - 5
    assert len(lines) == 1 and "holds about 5 of them at 32 px; the others are read from their files" in lines[0]
    from_files = extract(second, fit.data_for(second, data))
    assert torch.allclose(features.train, from_files.train, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- every backbone looked at
class SlowPasses(FeatureCache):
    """A feature cache whose backbones measure ``seconds`` for a whole pass over the data."""

    def __init__(self, seconds: dict[str, float]):
        super().__init__()
        self.seconds = seconds

    def has(self, config, datamodule) -> bool:
        return False

    def measure(self, config, datamodule) -> float:
        return self.seconds[config.backbone] / (len(datamodule.train_samples) + len(datamodule.val_samples))


def trainers(seconds: dict[str, float], finished: list[str], tuning_left: float = 360.0):
    """``Trainers`` of a run with a 10m budget just started, ``tuning_left`` seconds of tuning left,
    a finished trial of each backbone in ``finished``; and the lines it says."""
    from automl.trainers import Trainers

    lines = []
    trials = [SimpleNamespace(state=SimpleNamespace(name="COMPLETE"), params={"backbone": b}) for b in finished]
    tuner = SimpleNamespace(
        study=SimpleNamespace(get_trials=lambda deepcopy=False: trials),
        best_trial=lambda: trials[0],
        space=SimpleNamespace(image_sizes=(224, 240, 260)),
    )
    budget = Budget(time.time(), 600)
    # the budget's plan: tuning_left seconds of tuning, nothing kept back for the run's end
    plan = SimpleNamespace(budget=budget, deadline=budget.deadline, tuning_deadline=lambda: time.time() + tuning_left)
    data = SimpleNamespace(config=SimpleNamespace(modality="image", image_size=224), datamodule=None)
    trainers = Trainers(data, SlowPasses(seconds), tuner, plan, say=lines.append, progress=False)
    return trainers, lines


def check(trainers, backbone: str, image_size: int):
    config = SimpleNamespace(backbone=backbone, image_size=image_size)
    served = SimpleNamespace(train_samples=[None] * 80, val_samples=[None] * 20)
    return trainers._check_time_for_features(config, served)


def test_a_backbone_first_looked_at_may_take_all_the_tuning_time_left_not_half():
    from automl import tuning

    # 4m of the 6m left: more than the half a trial may take, but every backbone is looked at first
    run, lines = trainers({"tf_efficientnet_lite1": 240.0}, finished=["tf_efficientnet_lite0"])
    check(run, "tf_efficientnet_lite1", 240)
    assert lines == []
    # the input sizes of the search are the ones each image file is cropped for when it is decoded
    assert run.features.pixels.sizes == {224, 240, 260}

    # another size of a backbone already looked at keeps the old rule: at most half the time left
    run, lines = trainers({"tf_efficientnet_lite1": 240.0}, finished=["tf_efficientnet_lite0", "tf_efficientnet_lite1"])
    with pytest.raises(tuning.NoTimeForTrial, match="more than the 3m a trial may take now"):
        check(run, "tf_efficientnet_lite1", 224)
    assert lines == []


def test_a_backbone_whose_pass_does_not_fit_the_time_left_is_skipped_and_said():
    from automl import tuning

    run, lines = trainers({"tf_efficientnet_lite2": 120.0}, finished=["tf_efficientnet_lite0"], tuning_left=60.0)
    with pytest.raises(tuning.NoTimeForTrial) as refused:
        check(run, "tf_efficientnet_lite2", 260)
    expected = "tf_efficientnet_lite2 skipped: its pass over the data at 260 px would take about 2m, 60s is left"
    assert lines == [expected]
    assert str(refused.value) == expected
