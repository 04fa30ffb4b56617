"""Featurize stage: numbers for tasks whose inputs are not text (speech, forecasting).

The stage loads the task's entry module `pipeline.tasks.<task>.featurize` by name (see
`pipeline.tasks.FeaturizeTask`), so each featurize stage depends on its own task's code only.
The task writes its files into a staging directory swapped in as `out_dir` when complete;
`manifest.json` is copied from the download, so later stages tag their runs with the source.
What each task writes is described in its module: `pipeline/tasks/speech/featurize.py`
(standardised MFCC frames), `pipeline/tasks/forecasting/featurize.py` (the scaled series with
calendar features and the forecast origins of each split).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.corpus import MANIFEST, staged_directory
from pipeline.params import Task
from pipeline.tasks import featurization_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeaturizeResult:
    """What the stage wrote and measured; `artifacts` are file names in `out_dir` to log."""

    out_dir: Path
    stats: dict[str, float]
    artifacts: tuple[str, ...]


def run_featurize(task: Task, cfg: Any, data_dir: Path, out_dir: Path) -> FeaturizeResult:
    """Featurize one task's downloaded splits into `out_dir`, replacing it atomically."""
    adapter = featurization_task(task.value)
    with staged_directory(out_dir) as staging:
        stats = adapter.featurize(cfg, data_dir, staging)
        if (data_dir / MANIFEST).is_file():  # later stages tag runs with the source
            shutil.copyfile(data_dir / MANIFEST, staging / MANIFEST)
    log.info("featurized %s into %s", task, out_dir)
    return FeaturizeResult(out_dir=out_dir, stats=stats, artifacts=adapter.artifacts(cfg))
