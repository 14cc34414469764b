"""``automl export RUN_DIR --format onnx|torchscript``: the final model as a file a runtime loads
without automl, checked against PyTorch on the validation set's first batch before it is kept.

Inputs: images as a float tensor (batch, 3, size, size) already resized, cropped and normalised as
``export.json`` says; texts as ``input_ids`` and ``attention_mask`` from the backbone's tokenizer.
Output: class probabilities, in the order of ``labels``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from automl.calibration import scaled
from automl.errors import AutoMLError, ConfigError
from automl.predict import Predictor
from automl.run_folder import BEST_DIR, EXPORT_FILE, PREDICTIONS_FILE

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
TOLERANCE = 1e-4
CHECK_BATCH = 8


class ExportMismatch(AutoMLError):
    """The exported model disagrees with PyTorch beyond the tolerance."""


class ImageNetwork(nn.Module):
    logits: Callable[..., torch.Tensor]  # the predictor's, set outside the module's submodules

    def __init__(self, predictor: Predictor):
        super().__init__()
        # the network's parts as submodules (their parameters are what the export holds); the
        # LightningModule itself stays out, its Trainer-bound properties break TorchScript tracing
        self.backbone, self.head = predictor.model.backbone, predictor.model.head
        object.__setattr__(self, "logits", predictor.logits_fn)
        self.temperature = predictor.temperature  # best/calibration.json's: calibrated probabilities

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.logits(images) / self.temperature).softmax(dim=-1)


class TextNetwork(nn.Module):
    logits: Callable[..., torch.Tensor]

    def __init__(self, predictor: Predictor):
        super().__init__()
        # the network's parts as submodules (their parameters are what the export holds); the
        # LightningModule itself stays out, its Trainer-bound properties break TorchScript tracing
        self.backbone, self.head = predictor.model.backbone, predictor.model.head
        object.__setattr__(self, "logits", predictor.logits_fn)
        self.temperature = predictor.temperature

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.logits({"input_ids": input_ids, "attention_mask": attention_mask})
        return (logits / self.temperature).softmax(dim=-1)


class EnsembleNetwork(nn.Module):
    """An ensemble's networks in one graph: each member's probabilities, weighted and summed; members
    that share a frozen backbone run it once. Only for members that take the same input."""

    features: list[Callable[..., torch.Tensor]]  # each member's, set outside the module's submodules
    logits: list[Callable[..., torch.Tensor]]

    def __init__(self, predictor):
        super().__init__()
        members = predictor.members
        self.weights = [member.weight for member in members]
        self.shares = [member.shares for member in members]
        # the networks' parts as submodules, as ImageNetwork and TextNetwork hold them
        self.backbones = nn.ModuleList([member.predictor.model.backbone for member in members])
        self.heads = nn.ModuleList([member.predictor.model.head for member in members])
        object.__setattr__(self, "features", [member.predictor.model.features for member in members])
        object.__setattr__(self, "logits", [member.predictor.logits_fn for member in members])
        self.text = predictor.kind == "text"
        self.temperature = predictor.temperature
        # images come in resized and cropped but not normalised: each member normalises as it was trained
        for index, member in enumerate(members):
            p = member.predictor.preprocessing
            shape = (1, -1, 1, 1)
            self.register_buffer(f"mean{index}", torch.tensor(p.get("mean") or [0.0]).view(shape), persistent=False)
            self.register_buffer(f"std{index}", torch.tensor(p.get("std") or [1.0]).view(shape), persistent=False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        shared: dict[str, torch.Tensor] = {}
        total = None
        for index, weight in enumerate(self.weights):
            if self.text:
                batch = {"input_ids": inputs[0], "attention_mask": inputs[1]}
            else:
                batch = (inputs[0] - getattr(self, f"mean{index}")) / getattr(self, f"std{index}")
            share = self.shares[index]
            if share is None:
                logits = self.logits[index](batch)
            else:
                if share not in shared:
                    shared[share] = self.features[index](batch)
                logits = self.heads[index](shared[share])
            part = weight * logits.softmax(dim=-1)
            total = part if total is None else total + part
        assert total is not None, "an ensemble has members"
        return scaled(total, self.temperature)


def one_graph_problem(predictor) -> str | None:
    """Why an ensemble's members cannot be one exported graph (None: they can)."""
    members = getattr(predictor, "members", None)
    if not members:
        return None
    apart = [member.name for member in members if member.predictor is None]
    if apart:
        return f"{', '.join(apart)} is no network (a TF-IDF model)"
    geometry = ("kind", "image_size", "resize", "crop", "color_mode")
    keys = {json.dumps([member.predictor.preprocessing.get(k) for k in geometry]) for member in members}
    keys = keys if predictor.kind == "image" else {predictor._input_key(member.predictor) for member in members}
    if len(keys) > 1:
        return "its members take differently prepared inputs (input size or tokenizer)"
    return None


def unnormalised(preprocessing: dict) -> dict:
    """An image model's preprocessing without the normalisation (which an ensemble's graph does per member)."""
    if preprocessing.get("kind") != "image":
        return preprocessing
    return {**preprocessing, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


@dataclass
class Exported:
    path: Path
    max_abs_diff: float
    checked: int  # examples compared
    warning: str | None = None  # what was exported instead of the final model, and why


def check_inputs(predictor: Predictor, run_dir: Path) -> tuple:
    """The first validation batch, as the exported network takes it."""
    import pandas as pd

    frame = pd.read_csv(run_dir / PREDICTIONS_FILE, keep_default_na=False).head(CHECK_BATCH)
    import dataclasses

    members = getattr(predictor, "members", None)
    single = members[0].predictor if members else predictor  # an exportable ensemble's inputs are one kind
    if members:
        single = dataclasses.replace(single, preprocessing=unnormalised(single.preprocessing))
    if predictor.kind == "image":
        return (torch.stack([single.image_tensor(path) for path in frame["id"]]),)
    encoded = single.encode(list(frame["text"]))
    return encoded["input_ids"], encoded["attention_mask"]


def export(run_dir: str | Path, fmt: str, trust_checkpoint: bool = False) -> Exported:
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format '{fmt}'. Choose one of: {', '.join(FORMATS)}.")
    run_dir = Path(run_dir)
    predictor = Predictor.load(run_dir, trust_checkpoint=trust_checkpoint)
    warning = one_graph_problem(predictor)
    if warning:
        warning = (
            f"the final model is an ensemble that cannot be one {fmt} graph ({warning}); exported its best "
            "single member instead: its probabilities (not calibrated) differ from `automl predict`'s"
        )
        predictor = Predictor.load_folder(run_dir / BEST_DIR, trust_checkpoint, members=False)
    members = getattr(predictor, "members", None)
    network: nn.Module
    if members:
        network = EnsembleNetwork(predictor).eval()
    else:
        network = (ImageNetwork if predictor.kind == "image" else TextNetwork)(predictor).eval()
    inputs = check_inputs(predictor, run_dir)
    names = ["images"] if predictor.kind == "image" else ["input_ids", "attention_mask"]
    path = run_dir / BEST_DIR / FORMATS[fmt]
    with torch.no_grad():
        expected = network(*inputs).numpy()
        if fmt == "torchscript":
            traced = torch.jit.trace(network, inputs, check_trace=False)
            traced.save(str(path))
            got = torch.jit.load(str(path))(*inputs).numpy()
        else:
            got = _onnx(network, inputs, names, path)
    difference = float(abs(got - expected).max())
    if difference > TOLERANCE:
        path.unlink(missing_ok=True)
        raise ExportMismatch(
            f"The {fmt} export differs from PyTorch by {difference:.2e} (> {TOLERANCE:g}) on the validation "
            "set's first batch; it was not kept."
        )
    (run_dir / BEST_DIR / EXPORT_FILE).write_text(
        json.dumps(
            {
                "format": fmt,
                "file": path.name,
                "inputs": names,
                "output": "probabilities",
                "labels": predictor.labels,
                "preprocessing": unnormalised(predictor.preprocessing) if members else predictor.preprocessing,
                "checked_examples": len(expected),
                "max_abs_diff": difference,
                "tolerance": TOLERANCE,
                "ensemble": [
                    {"name": member.name, "weight": member.weight} for member in getattr(predictor, "members", [])
                ],
                "warning": warning,
            },
            indent=2,
        )
        + "\n"
    )
    return Exported(path, difference, len(expected), warning)


def _onnx(network: nn.Module, inputs: tuple, names: list[str], path: Path):
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError("ONNX export needs the export extras: pip install 'automl[export]'.") from exc
    axes = {name: {0: "batch"} for name in names}
    if len(names) == 2:  # texts: the sequence length varies too
        axes = {name: {0: "batch", 1: "tokens"} for name in names}
    axes["probabilities"] = {0: "batch"}
    torch.onnx.export(
        network,
        inputs,
        str(path),
        input_names=names,
        output_names=["probabilities"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs, strict=True)})[0]
