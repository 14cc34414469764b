"""The run's data, read once, as every stage and trial of one process sees it (``automl.search``
builds it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl.config import RunConfig
from automl.data.holdout import HoldOut
from automl.target import Target


@dataclass(frozen=True)
class RunData:
    """The run's data, read once, and what it is judged by: the configuration fitted to the data (the
    text length), the datamodule (train, val, and the test split no trial sees), where that test split
    came from, the target, and the run folder the stages write to."""

    config: RunConfig
    datamodule: Any
    holdout: HoldOut
    target: Target
    run_dir: Path

    @property
    def labels(self) -> list[str]:
        return self.datamodule.labels
