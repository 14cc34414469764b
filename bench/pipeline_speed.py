"""Images/second of the image datamodule's training loader against torchvision's ImageFolder with
the same transforms, batch size and workers; and the CLI's start-up time."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Result, digits_folder


def _images_per_second(loader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # the first batch pays for worker and cache start-up
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        images, _ = next(iterator)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def data_pipeline(quick: bool) -> Result:
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from automl.data import ImageClassificationData

    folder, batch = digits_folder(size=64), 32
    data = ImageClassificationData.from_folders(
        folder, image_size=96, batch_size=batch, val_split=0.01, backbone="tf_efficientnet_lite0"
    )
    reference = ImageFolder(str(folder), transform=data.train_transform())
    batches, repeats = (10, 1) if quick else (30, 3)
    ours, theirs = [], []
    for _ in range(repeats):
        theirs.append(_images_per_second(DataLoader(reference, batch_size=batch, shuffle=True), batches))
        ours.append(_images_per_second(data.train_dataloader(), batches))
    ratio = statistics.median(ours) / statistics.median(theirs)
    return Result(
        "data pipeline: ImageClassificationData vs ImageFolder",
        round(ratio, 3),
        "ratio",
        {"imagefolder_images_per_s": round(statistics.median(theirs), 1), "repeats": [round(v, 1) for v in theirs]},
        ">= 0.95",
        ratio >= 0.95,
        {
            "automl_images_per_s": round(statistics.median(ours), 1),
            "repeats": [round(v, 1) for v in ours],
            "batch_size": batch,
            "image_size": 96,
            "batches": batches,
            "num_workers": 0,
        },
    )


def cli_latency(quick: bool) -> Result:
    automl = Path(sys.executable).parent / "automl"
    repeats = 3 if quick else 7

    def timed(command: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - start

    timed([str(automl), "--help"])  # warm the file cache
    help_times = [timed([str(automl), "--help"]) for _ in range(repeats)]
    python_times = [timed([sys.executable, "-c", "pass"]) for _ in range(repeats)]
    seconds = statistics.median(help_times)
    return Result(
        "CLI latency: automl --help",
        round(seconds, 3),
        "seconds",
        {"python_startup_s": round(statistics.median(python_times), 3)},
        "< 0.5 s",
        seconds < 0.5,
        {
            "repeats": [round(t, 3) for t in help_times],
            "over_python_startup_s": round(seconds - statistics.median(python_times), 3),
        },
    )
