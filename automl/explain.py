"""Why the model answered as it did, with captum: for an image, a class-activation map (Grad-CAM on
the backbone's last spatial feature map) of the class it is asked about; for a text, how much each
token pushed that class (integrated gradients on the token embeddings, from an all-padding baseline).

Explanations are time-boxed: they stop at ``deadline`` and return what they have (``None`` for the
rest). An ensemble is explained through its best single member, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from automl.errors import DataError

#: integrated-gradient steps of a text's explanation (captum's default is 50; 20 is within 1% here)
STEPS = 20


@dataclass
class ImageExplanation:
    heat: np.ndarray  # the input's height x width, 0..1: where the class's evidence was
    target: int  # the class explained
    image: torch.Tensor  # the network's input (resized, cropped, normalised) the map lies over


@dataclass
class TextExplanation:
    tokens: list[tuple[str, float]]  # each token and its share of the push towards ``target`` (-1..1)
    target: int


def network(predictor):
    """The predictor whose network is explained: itself, or an ensemble's best single member."""
    members = getattr(predictor, "members", None)
    if not members:
        return predictor
    return next(member.predictor for member in members if member.predictor is not None and member.name == "chosen")


def explain_images(predictor, sources: Sequence, targets: Sequence[int | None], deadline: float) -> list:
    """Grad-CAM maps of ``sources`` (paths, bytes or PIL images) for ``targets`` (None: the predicted
    class); ``None`` for an unreadable input or once ``deadline`` (``time.time()``) has passed."""
    from captum.attr import LayerAttribution, LayerGradCam

    single = network(predictor)
    model = single.model
    layer = last_spatial_layer(model, single)
    cam = LayerGradCam(lambda x: model(x), layer)
    found: list[ImageExplanation | None] = []
    for source, target in zip(sources, targets, strict=True):
        if time.time() > deadline:
            found.append(None)
            continue
        try:
            x = single.image_tensor(source).unsqueeze(0)
        except DataError:
            found.append(None)
            continue
        with torch.no_grad():
            chosen = int(model(x).argmax(dim=-1)) if target is None else int(target)
        with torch.enable_grad():
            maps = cam.attribute(x.requires_grad_(), target=chosen, relu_attributions=True)
        heat = LayerAttribution.interpolate(maps, tuple(x.shape[-2:]), interpolate_mode="bilinear")[0, 0]
        heat = heat.detach().numpy()
        found.append(ImageExplanation(heat / heat.max() if heat.max() > 0 else heat, chosen, x[0].detach()))
    return found


def last_spatial_layer(model, single) -> torch.nn.Module:
    """The backbone's module whose output is the last 4-D feature map of at least 2 x 2 (where a
    convolutional network still knows *where*): found by running one blank input through it."""
    size = int(single.preprocessing.get("image_size") or 224)
    seen: list[torch.nn.Module] = []
    hooks = []
    for module in model.backbone.modules():
        if module is model.backbone or list(module.children()):
            continue

        def remember(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[-2:]) >= 2:
                seen.append(module)

        hooks.append(module.register_forward_hook(remember))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    if not seen:
        raise DataError("This backbone keeps no spatial feature map to explain (not a convolutional network).")
    return seen[-1]


def explain_texts(predictor, texts: Sequence[str], targets: Sequence[int | None], deadline: float) -> list:
    """Each token's push towards ``targets`` (None: the predicted class), by integrated gradients on
    the token embeddings; ``None`` once ``deadline`` has passed."""
    from captum.attr import LayerIntegratedGradients

    single = network(predictor)
    model = single.model
    embeddings = model.backbone.get_input_embeddings()

    def forward(input_ids, attention_mask):
        return single.logits_fn({"input_ids": input_ids, "attention_mask": attention_mask})

    integrated = LayerIntegratedGradients(forward, embeddings)
    pad = single.tokenizer.pad_token_id or 0
    found: list[TextExplanation | None] = []
    for text, target in zip(texts, targets, strict=True):
        if time.time() > deadline:
            found.append(None)
            continue
        encoded = single.encode([text])
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        with torch.no_grad():
            chosen = int(forward(ids, mask).argmax(dim=-1)) if target is None else int(target)
        baseline = torch.full_like(ids, pad)
        with torch.enable_grad():
            scores = integrated.attribute(
                ids, baselines=baseline, target=chosen, additional_forward_args=(mask,), n_steps=STEPS
            )
        per_token = scores.sum(dim=-1)[0].detach().numpy()
        per_token = per_token / (np.abs(per_token).max() or 1.0)
        tokens = single.tokenizer.convert_ids_to_tokens(ids[0].tolist())
        special = set(single.tokenizer.all_special_tokens)
        pairs = [(tok, float(s)) for tok, s in zip(tokens, per_token, strict=True) if tok not in special]
        found.append(TextExplanation(pairs, chosen))
    return found


def overlay(single, found: ImageExplanation, path) -> None:
    """The network's view of the image (resized, cropped) with its heat map over it, as a PNG at ``path``."""
    from matplotlib import colormaps
    from PIL import Image

    x, heat = found.image, found.heat
    p = single.preprocessing
    mean, std = torch.tensor(p["mean"]).view(3, 1, 1), torch.tensor(p["std"]).view(3, 1, 1)
    image = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    coloured = colormaps["jet"](heat)[..., :3]
    mixed = (0.55 * image + 0.45 * coloured).clip(0, 1)
    Image.fromarray((mixed * 255).astype(np.uint8)).save(path)


def explained_rows(predictor, inputs: Sequence, targets: Sequence[int | None], folder, deadline: float) -> list[dict]:
    """Explanations of ``inputs`` as rows for a JSON file: images as overlays written into ``folder``
    (``file``), texts as their tokens' scores; a row without either ran out of time or was unreadable."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    single = network(predictor)
    labels = predictor.labels
    rows: list[dict] = []
    if predictor.kind == "image":
        for index, (source, found) in enumerate(
            zip(inputs, explain_images(predictor, inputs, targets, deadline), strict=True)
        ):
            row: dict = {"input": str(source)}
            if found is not None:
                file = folder / f"{index:04d}-{Path(str(source)).stem[:40]}.png"
                overlay(single, found, file)
                row.update(explained=labels[found.target], file=str(file))
            rows.append(row)
    else:
        for text, found in zip(inputs, explain_texts(predictor, inputs, targets, deadline), strict=True):
            row = {"input": str(text)}
            if found is not None:
                row.update(explained=labels[found.target], tokens=found.tokens)
            rows.append(row)
    if single is not predictor:
        for row in rows:
            row["through"] = "the ensemble's best single member"
    return rows
