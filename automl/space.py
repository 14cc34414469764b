"""Where a trial's parameters are chosen: both tiers' search spaces (:class:`SearchSpace`,
:class:`TemplateSearchSpace`) and the rules that derive the first candidates from them (the Flash
baseline, the heads on cached features that probe every backbone and penalty, the cheaper trials a
tight budget turns to, the warm start that seeds the Lightning tier).

>>> space = search_space(config, Tier.FLASH)      # the run's config, fitted to its data (fit_to_data)
>>> space.suggest(trial)                     # one Optuna trial's parameters
>>> probe_params(config, space, baseline)    # the heads enqueued after the baseline
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from automl import shaping
from automl.config import FitConfig, RunConfig
from automl.trial_record import Tier

#: AdamW's decoupled decay for fine-tuning, and the L2 penalty of a head on cached features, which
#: needs up to ~0.5 (scikit-learn's cross-validated C was 0.001 on 2,400 sentence embeddings)
WEIGHT_DECAY_RANGE = (1e-6, 1.0)


@dataclass(frozen=True)
class SearchSpace:
    """The Flash tier's knobs. Every baseline value lies inside the space, so the baseline can be
    enqueued as trial 0 and TPE learns from it."""

    tier: ClassVar[Tier] = Tier.FLASH
    modality: str  # "image" or "text"
    backbones: tuple[str, ...]
    epochs: int
    image_size: int = 224
    max_length: int = 128
    batch_size: int = 32
    strategy: str = "freeze_unfreeze:1"

    augment: bool = True
    #: more image sizes to offer (each backbone's native one), besides ``image_size`` and a smaller one
    image_sizes: tuple[int, ...] = ()
    #: the user's ``search_space:`` for this tier (``automl.shaping``): knob -> (FIXED, v) | (RANGE, lo, hi)
    #: | (CHOICES, values), as pairs so the space stays hashable
    shape: tuple[tuple[str, tuple], ...] = ()

    def suggest(self, trial) -> dict:
        params = self.shared(trial)
        params["strategy"] = self.pick(trial, "strategy", ("freeze", "freeze_unfreeze:1", "no_freeze"), self.strategy)
        if self.modality == "image":
            if params["strategy"] == "freeze":
                # a frozen backbone trains its head on cached features of the un-augmented images
                params["augment"] = False
            else:  # flips and crops help photos and hurt e.g. digits: the study decides
                params["augment"] = self.pick(trial, "augment", (True, False))
        return params

    # ------------------------------------------------------------------ the user's shape
    def pick_float(self, trial, name: str, low: float, high: float, log: bool = False) -> float:
        """A float knob: the built-in range, or the user's range or value."""
        spec = dict(self.shape).get(name)
        if spec is not None and spec[0] == shaping.FIXED:
            return trial.suggest_categorical(name, [spec[1]])
        if spec is not None:
            low, high = spec[1], spec[2]
        return trial.suggest_float(name, low, high, log=log)

    def pick_int(self, trial, name: str, low: int, high: int) -> int:
        spec = dict(self.shape).get(name)
        if spec is not None and spec[0] == shaping.FIXED:
            return trial.suggest_categorical(name, [spec[1]])
        if spec is not None:
            low, high = int(spec[1]), int(spec[2])
        return trial.suggest_int(name, low, high)

    def pick(self, trial, name: str, choices, default=None):
        """A choice knob: the built-in choices (with ``default``), or the user's list or value."""
        return trial.suggest_categorical(name, self.choices(name, choices, default))

    def choices(self, name: str, choices, default=None) -> list:
        spec = dict(self.shape).get(name)
        if spec is None:
            return self._choices(default, choices) if default is not None else list(choices)
        return [spec[1]] if spec[0] == shaping.FIXED else list(spec[1])

    def allows(self, name: str, value) -> bool:
        """Whether the user's shape leaves ``value`` of knob ``name`` to try (a head: strategy freeze)."""
        spec = dict(self.shape).get(name)
        if spec is None:
            return True
        if spec[0] == shaping.RANGE:
            return spec[1] <= value <= spec[2]
        return value in ([spec[1]] if spec[0] == shaping.FIXED else spec[1])

    def within(self, params: dict) -> dict:
        """``params`` (an enqueued trial: the baseline, a probe, the warm start) moved inside the
        user's shape: a fixed knob to its value, a range's end, a choice list's first choice."""
        moved = dict(params)
        for name, spec in self.shape:
            if name not in moved or self.allows(name, moved[name]):
                continue
            if spec[0] == shaping.RANGE:
                moved[name] = min(max(moved[name], spec[1]), spec[2])
            else:
                moved[name] = spec[1] if spec[0] == shaping.FIXED else spec[1][0]
        if self.tier == Tier.FLASH and moved.get("strategy") == "freeze" and moved.get("augment"):
            moved["augment"] = False  # as suggest does: a frozen backbone's head trains on cached features
        return moved

    def described(self) -> dict:
        """The space searched, for people (``--print-config``, search_space.yaml, the report): each
        knob's ``[low, high]`` or list of choices, as ``suggest`` samples them (a fixed knob: its value)."""
        recorder = _Recorder()
        self.suggest(recorder)
        return recorder.knobs

    @staticmethod
    def head_only(params: dict) -> bool:
        """A trial that trains only its head on cached backbone features: seconds, not minutes."""
        from automl.flash.features import head_only

        return head_only(params.get("strategy", ""), params.get("augment", False))

    def shared(self, trial) -> dict:
        """The knobs both tiers have, with the same ranges, so a Flash-tier trial can seed the
        Lightning tier's study."""
        params = {
            "learning_rate": self.pick_float(trial, "learning_rate", 1e-4, 3e-2, log=True),
            "batch_size": self.pick(trial, "batch_size", (16, 32, 64), self.batch_size),
            "backbone": self.pick(trial, "backbone", self.backbones),
            "weight_decay": self.pick_float(trial, "weight_decay", *WEIGHT_DECAY_RANGE, log=True),
            "dropout": self.pick_float(trial, "dropout", 0.0, 0.5),
            "epochs": self.pick_int(trial, "epochs", max(1, self.epochs - 2), self.epochs + 2),
            "label_smoothing": self.pick_float(trial, "label_smoothing", 0.0, 0.2),
        }
        if self.modality == "image":
            # below 64 px an ImageNet backbone's last feature map is 1x1 and learns little
            smaller = max(min(64, self.image_size), int(round(self.image_size * 0.75 / 8)) * 8)
            params["image_size"] = self.pick(trial, "image_size", (smaller, *self.image_sizes), self.image_size)
        else:
            shorter = max(16, self.max_length // 2)
            params["max_length"] = self.pick(trial, "max_length", (shorter,), self.max_length)
        return params

    @staticmethod
    def _choices(value, others):
        return sorted({value, *others}, key=str)


class _Recorder:
    """A stand-in Optuna trial that writes down each knob ``suggest`` asks for (the last choice taken,
    so a Flash trial records the knobs of fine-tuning too)."""

    def __init__(self) -> None:
        self.knobs: dict = {}

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        self.knobs[name] = [low, high]
        return low

    def suggest_int(self, name: str, low: int, high: int) -> int:
        self.knobs[name] = [low, high]
        return low

    def suggest_categorical(self, name: str, choices):
        choices = list(choices)
        self.knobs[name] = choices[0] if len(choices) == 1 else choices
        return choices[-1]


@dataclass(frozen=True)
class TemplateSearchSpace(SearchSpace):
    """The Lightning tier's knobs: the shared ones plus the template's recipe (escalation/template)."""

    tier: ClassVar[Tier] = Tier.LIGHTNING

    def suggest(self, trial) -> dict:
        params = self.shared(trial)
        params["backbone_lr_ratio"] = self.pick_float(trial, "backbone_lr_ratio", 0.01, 1.0, log=True)
        params["warmup_epochs"] = self.pick_int(trial, "warmup_epochs", 0, 1)
        params["gradient_clip"] = self.pick(trial, "gradient_clip", (0.0, 1.0))
        params["weight_averaging"] = self.pick(trial, "weight_averaging", ("none", "ema", "swa"))
        params["class_weighted"] = self.pick(trial, "class_weighted", (True, False))
        if self.modality == "image":
            params["augment"] = self.pick(trial, "augment", ("none", "trivialaugment", "randaugment"))
            params["mix"] = self.pick(trial, "mix", ("none", "mixup", "cutmix"))
            params["tta"] = self.pick(trial, "tta", (True, False))
        else:
            params["pooling"] = self.pick(trial, "pooling", ("mean", "cls"))
            params["layer_decay"] = self.pick_float(trial, "layer_decay", 0.6, 1.0)
        return params


#: the warm-start trial's recipe when it starts from a head fitted on cached features (L-BFGS: that
#: trial's learning rate was never used): LP-FT's (Kumar et al., 2022, "Fine-tuning can distort
#: pretrained features"), a small step for the fitted head, a tenth of it for the backbone, no
#: augmentation, mixing or test-time flip the head was never fitted or judged with (with the flip, the
#: untouched start already scores one photo below the head). Replayed on the garment photos (Lite0 at
#: 260 px; the head scores 0.875 on 160 validation and 0.8035 on 341 test photos), one epoch scored
#: 0.8688 and 0.8094; the head's inherited learning rate (8.9e-4) with sampled augmentation 0.844 on
#: validation; 3e-5 kept 0.875 on validation and lost two test photos (0.7977).
FROM_HEAD_RECIPE = {
    "learning_rate": 1e-4,
    "backbone_lr_ratio": 0.1,
    "gradient_clip": 1.0,
    "weight_averaging": "none",
    "augment": "none",
    "mix": "none",
    "tta": False,
}
#: the recipe's knobs that only the image template has
IMAGE_ONLY = ("augment", "mix", "tta")


def warm_start_params(space: SearchSpace, flash_params: dict, from_head: bool = False) -> dict:
    """The best Flash-tier trial's values of the knobs the Lightning tier shares with it; with
    ``from_head`` (that trial is a head fitted on cached features, which the warm-start trial starts
    from), :data:`FROM_HEAD_RECIPE` for the recipe."""
    shared = {
        "learning_rate",
        "batch_size",
        "backbone",
        "weight_decay",
        "dropout",
        "epochs",
        "label_smoothing",
        "image_size" if space.modality == "image" else "max_length",
    }
    params = {key: value for key, value in flash_params.items() if key in shared}
    if from_head:
        params.update({k: v for k, v in FROM_HEAD_RECIPE.items() if space.modality == "image" or k not in IMAGE_ONLY})
    return params


def baseline_params(
    space: SearchSpace, learning_rate: float, weight_decay: float, dropout: float, label_smoothing: float
) -> dict:
    """The Flash-tier defaults, expressed as a point of ``space``."""
    params = {
        "learning_rate": learning_rate,
        "batch_size": space.batch_size,
        "backbone": space.backbones[0],
        "strategy": space.strategy,
        # log-uniform parameters cannot be 0: their smallest value stands for "none"
        "weight_decay": max(weight_decay, 1e-6),
        "dropout": dropout,
        "epochs": space.epochs,
        "label_smoothing": label_smoothing,
    }
    if space.modality == "image":
        params["augment"] = space.augment
    params["image_size" if space.modality == "image" else "max_length"] = (
        space.image_size if space.modality == "image" else space.max_length
    )
    return params


def search_space(config: RunConfig, tier: str):
    from automl import backbones as bb

    modality = config.modality
    default = bb.DEFAULT_IMAGE_BACKBONE if modality == "image" else bb.DEFAULT_TEXT_BACKBONE
    shape = shaping.check(config.search_space, modality).of(str(tier))
    if "backbone" in shape:  # the user's shape names them
        spec = shape["backbone"]
        backbones = (spec[1],) if spec[0] == shaping.FIXED else tuple(spec[1])
    elif config.backbones:
        backbones = tuple(config.backbones)
    elif config.backbone:
        backbones = (config.backbone,)
    elif not config.pretrained:
        backbones = (default,)
    else:
        # the default first (the baseline), then any other whose weights are here already
        others = [n for n in bb.available_backbones(modality) if n != default and weights_here(bb, n, modality)]
        backbones = (default, *others)
    fields = (
        modality,
        backbones,
        config.epochs,
        config.image_size,
        config.max_length,
        config.batch_size,
        config.strategy,
    )
    sizes = tuple(sorted(set(native_sizes(config, backbones).values())))
    shaped = tuple(shape.items())
    if tier == Tier.FLASH:
        return SearchSpace(*fields, augment=config.augment, image_sizes=sizes, shape=shaped)
    return TemplateSearchSpace(*fields, image_sizes=sizes, shape=shaped)


def resolved_config(config: RunConfig) -> dict:
    """``config`` as ``automl run --print-config`` shows it: every option (the preset's values with the
    explicit ones over them), then ``searched``: each tier's knobs with the ranges or choices its study
    samples (before the data is read: a text run's ``max_length`` may still be fitted to the texts)."""
    searched = {str(tier): search_space(config, tier).described() for tier in (Tier.FLASH, Tier.LIGHTNING)}
    return {**config.to_dict(), "searched": searched}


DEFAULT_STRATEGY = FitConfig.__dataclass_fields__["strategy"].default
_DEFAULT_IMAGE_SIZE = FitConfig.__dataclass_fields__["image_size"].default
_DEFAULT_MAX_LENGTH = FitConfig.__dataclass_fields__["max_length"].default
_DEFAULT_WEIGHT_DECAY = FitConfig.__dataclass_fields__["weight_decay"].default


def fit_to_data(config: RunConfig, datamodule) -> RunConfig:
    """Text left at the default ``--max-length``: the longest 1% of the training texts set it (in
    tokens, rounded up to 8), so short sentences are not padded and attended to 128 tokens deep."""
    if config.modality != "text" or config.max_length != _DEFAULT_MAX_LENGTH or not datamodule.train_samples:
        return config
    from automl import backbones as bb
    from automl.backbones import default_backbone

    tokenizer = bb.load_tokenizer(default_backbone(config), config.weights)
    lengths = sorted(len(ids) for ids in tokenizer([text for text, _ in datamodule.train_samples])["input_ids"])
    longest = lengths[min(len(lengths) - 1, int(0.99 * len(lengths)))]
    fitted = min(config.max_length, max(16, -(-longest // 8) * 8))
    return dataclasses.replace(config, max_length=fitted)


def native_sizes(config: RunConfig, backbones: tuple[str, ...]) -> dict[str, int]:
    """Each backbone's native input size, offered to the search when ``--image-size`` was left at
    its default (an explicit size is the user's choice for every backbone)."""
    if config.modality != "image" or config.image_size != _DEFAULT_IMAGE_SIZE:
        return {}
    from automl import backbones as bb

    return {name: size for name in backbones if (size := bb.native_image_size(name))}


def probe_weight_decay(config: RunConfig) -> float:
    """A head on cached features is a logistic regression: unpenalised, it overfits. The user's
    ``--weight-decay``, else a first guess the search goes on from."""
    from automl.flash.features import PROBE_WEIGHT_DECAY

    return config.weight_decay if config.weight_decay != _DEFAULT_WEIGHT_DECAY else PROBE_WEIGHT_DECAY


def head_penalty(trials: list, search_space: SearchSpace, config: FitConfig, run: RunConfig, maximize: bool) -> float:
    """The L2 penalty of the best head among ``trials`` (finished Optuna trials) on cached features of
    ``config``'s backbone and input size (else the run's ``--weight-decay`` or the probes' first guess):
    a fine-tune starts from the head a linear probe would keep, not from an unpenalised one that fits
    every training example and leaves the backbone a near-zero loss to learn from."""
    size = "image_size" if run.modality == "image" else "max_length"
    heads = [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        and t.value is not None
        and search_space.head_only(t.params)
        and t.params.get("backbone") == config.backbone
        and t.params.get(size) == getattr(config, size)
    ]
    if not heads:
        return probe_weight_decay(run)
    best = (max if maximize else min)(heads, key=lambda t: t.value)
    return float(best.params["weight_decay"])


def as_head(params: dict, config: RunConfig) -> dict:
    """``params`` as a head on cached features: frozen backbone, no augmentation, a penalty."""
    head = {**params, "strategy": "freeze", "weight_decay": probe_weight_decay(config)}
    if "augment" in head:
        head["augment"] = False
    return head


def probe_params(config: RunConfig, space, baseline: dict, penalties: bool = True) -> list[dict]:
    """Heads on cached features to run after the baseline: every other backbone of the search (at
    its native size), then, when ``penalties``, each backbone's head with a few stronger penalties
    (unless ``--weight-decay`` was given), the baseline's backbone first: a second each once the
    features exist, and what a cross-validated logistic regression would choose among per backbone."""
    from automl.flash.features import PROBE_WEIGHT_DECAYS

    sizes = native_sizes(config, space.backbones)
    first = as_head(baseline, config)
    heads = [first]
    for name in space.backbones:
        if name != baseline["backbone"]:
            heads.append({**first, "backbone": name})
            if "image_size" in first:
                heads[-1]["image_size"] = sizes.get(name, baseline["image_size"])
    probes = heads[1:]
    if penalties and config.weight_decay == _DEFAULT_WEIGHT_DECAY:
        probes += [{**head, "weight_decay": penalty} for head in heads for penalty in PROBE_WEIGHT_DECAYS]
    return probes


def cheaper(tuner) -> dict | None:
    """When a fine-tuning trial no longer fits the budget: heads on the cached features of the best
    trial's backbone and input size, their other knobs left to the search."""
    best = tuner.best_trial()
    if best is None or not tuner.space.allows("strategy", "freeze"):
        return None
    fixed = {"strategy": "freeze"}
    for key in ("backbone", "image_size", "max_length"):
        if key in best.params:
            fixed[key] = best.params[key]
    return fixed


def weights_here(bb, name: str, modality: str) -> bool:
    """The backbone's weights are on this machine (a file, a package or a cache), not only on the hub."""
    source = bb.weights_status(name, modality)
    return source is not None and source.kind != "hub"
