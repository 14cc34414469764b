"""Steps/second of the Flash tier's fit against a hand-written loop: same backbone and weights,
batch size, input size, optimiser, data, number of steps and workers."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn

from bench.common import Clock, Result, ag_news, digits_folder, median_of

LR = 1e-3


class StepClock(pl.Callback):
    def __init__(self, clock: Clock):
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.clock.step_started(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.clock.step_ended(trainer.global_step - 1)


def flash_rate(model_factory, datamodule, steps: int, skip: int) -> float:
    from automl.flash import finetune

    clock = Clock(skip)
    model = model_factory()
    finetune(
        model,
        datamodule,
        strategy="no_freeze",
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        callbacks=[StepClock(clock)],
    )
    return clock.rate


def hand_rate(forward_loss, parameters, loader, steps: int, skip: int) -> float:
    """The loop a person writes: forward, loss, backward, AdamW step."""
    clock = Clock(skip)
    optimizer = torch.optim.AdamW(parameters, lr=LR)
    step = 0
    while step < steps:
        for batch in loader:
            clock.step_started(step)
            loss = forward_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clock.step_ended(step)
            step += 1
            if step >= steps:
                break
    return clock.rate


def image_overhead(quick: bool) -> Result:
    from automl.backbones import create_image_backbone
    from automl.data import ImageClassificationData
    from automl.flash import ImageClassifier
    from automl.flash.tasks import make_head

    size, batch, steps, skip = 64, 16, (12 if quick else 30), 3
    data = ImageClassificationData.from_folders(
        digits_folder(), image_size=size, batch_size=batch, backbone="tf_efficientnet_lite0"
    )
    loader = data.train_dataloader()  # the same data and transforms for the hand-written loop

    def flash() -> float:
        torch.manual_seed(0)
        return flash_rate(lambda: ImageClassifier(data.labels, learning_rate=LR), data, steps, skip)

    def hand() -> float:
        torch.manual_seed(0)
        backbone = create_image_backbone("tf_efficientnet_lite0").model.train()
        head = make_head(backbone.num_features, len(data.labels))
        loss_fn = nn.CrossEntropyLoss()

        def forward_loss(batch):
            images, targets = batch
            return loss_fn(head(backbone(images)), targets)

        return hand_rate(forward_loss, [*backbone.parameters(), *head.parameters()], loader, steps, skip)

    return _compare(
        "training overhead: ImageClassifier vs hand-written loop",
        flash,
        hand,
        quick,
        {
            "backbone": "tf_efficientnet_lite0",
            "image_size": size,
            "batch_size": batch,
            "steps": steps,
            "timed_steps": steps - skip,
            "num_workers": 0,
        },
    )


def text_overhead(quick: bool) -> Result:
    from automl.backbones import create_text_backbone
    from automl.data import TextClassificationData
    from automl.flash import TextClassifier
    from automl.flash.tasks import make_head

    batch, steps, skip, max_length = 16, (10 if quick else 25), 3, 64
    frame = ag_news(limit=800)
    if frame is None:
        from bench.common import SHARED

        return Result(
            "training overhead: TextClassifier vs transformers loop",
            None,
            "ratio",
            {},
            ">= 0.95",
            None,
            {"skipped": f"{SHARED / 'ag_news_test.csv'} is absent"},
        )
    data = TextClassificationData.from_frame(
        frame, "AG News", "text", "label", batch_size=batch, max_length=max_length, backbone="all-MiniLM-L6-v2"
    )
    loader = data.train_dataloader()

    def flash() -> float:
        torch.manual_seed(0)
        return flash_rate(
            lambda: TextClassifier(data.labels, learning_rate=LR, max_length=max_length, dropout=0.0), data, steps, skip
        )

    def hand() -> float:
        torch.manual_seed(0)
        encoder = create_text_backbone("all-MiniLM-L6-v2").model.train()
        head = make_head(encoder.config.hidden_size, len(data.labels))
        loss_fn = nn.CrossEntropyLoss()

        def forward_loss(batch):
            encoded, targets = batch
            hidden = encoder(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            return loss_fn(head((hidden * mask).sum(1) / mask.sum(1)), targets)

        return hand_rate(forward_loss, [*encoder.parameters(), *head.parameters()], loader, steps, skip)

    return _compare(
        "training overhead: TextClassifier vs transformers loop",
        flash,
        hand,
        quick,
        {
            "backbone": "all-MiniLM-L6-v2",
            "max_length": max_length,
            "batch_size": batch,
            "steps": steps,
            "timed_steps": steps - skip,
            "num_workers": 0,
            "data": "AG News, 800 rows",
        },
    )


def _compare(name: str, flash, hand, quick: bool, details: dict) -> Result:
    repeats = 1 if quick else 3
    flash_rates, hand_rates = [], []
    for _ in range(repeats):  # interleaved, so drifts in machine speed hit both alike
        hand_rates.append(hand())
        flash_rates.append(flash())
    import statistics

    flash_median, hand_median = statistics.median(flash_rates), statistics.median(hand_rates)
    ratio = flash_median / hand_median
    return Result(
        name,
        round(ratio, 3),
        "ratio",
        {"hand_written_steps_per_s": round(hand_median, 3), "hand_written_repeats": [round(r, 3) for r in hand_rates]},
        ">= 0.95",
        ratio >= 0.95,
        {**details, "flash_steps_per_s": round(flash_median, 3), "flash_repeats": [round(r, 3) for r in flash_rates]},
    )


__all__ = ["image_overhead", "text_overhead", "median_of"]
