"""Peak memory (max RSS, the process's VmHWM) of a Flash-tier fit against the hand-written loop, each
in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.common import Result

SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from bench.common import digits_folder
from bench import training
import torch
from automl.data import ImageClassificationData
data = ImageClassificationData.from_folders(
    digits_folder(), image_size=64, batch_size=16, backbone="tf_efficientnet_lite0"
)
steps = {steps}
def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
before = status_mb("VmRSS")
if {flash}:
    from automl.flash import ImageClassifier
    training.flash_rate(lambda: ImageClassifier(data.labels, learning_rate=training.LR), data, steps, 1)
else:
    from torch import nn
    from automl.backbones import create_image_backbone
    from automl.flash.tasks import make_head
    backbone = create_image_backbone("tf_efficientnet_lite0").model.train()
    head = make_head(backbone.num_features, len(data.labels))
    loss = nn.CrossEntropyLoss()
    training.hand_rate(lambda b: loss(head(backbone(b[0])), b[1]), [*backbone.parameters(), *head.parameters()],
                       data.train_dataloader(), steps, 1)
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
print(json.dumps([status_mb("VmHWM"), before]))
"""


def _peak_mb(flash: bool, steps: int) -> float:
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(root=root, steps=steps, flash=flash)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_memory(quick: bool) -> Result:
    steps = 5 if quick else 15
    (hand, hand_before), (flash, flash_before) = _peak_mb(False, steps), _peak_mb(True, steps)
    ratio = flash / hand
    return Result(
        "peak memory: Flash-tier fit vs hand-written loop",
        round(ratio, 3),
        "ratio",
        {"hand_written_max_rss_mb": round(hand, 1)},
        "<= 1.2",
        ratio <= 1.2,
        {
            "flash_max_rss_mb": round(flash, 1),
            "steps": steps,
            "image_size": 64,
            "batch_size": 16,
            # most of the peak is the libraries; what training adds shows against this
            "rss_before_training_mb": {"hand_written": round(hand_before, 1), "flash": round(flash_before, 1)},
        },
    )
