"""Evaluate stage: score the trained model on the test split beside a simple baseline.

The task adapters (`pipeline.tasks.<task>.evaluate`) compute the numbers and write reports;
this module resolves the training run the results belong to.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from pipeline.params import Task, TrainParams
from pipeline.train import RUN_FILE


def training_run_id(model_dir: Path) -> str:
    """The MLflow run that trained the model in `model_dir`."""
    path = model_dir / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m pipeline train` first")
    return json.loads(path.read_text(encoding="utf-8"))["run_id"]


def run_evaluate(
    task: Task, cfg: TrainParams, model_dir: Path, data_dir: Path, raw_dir: Path, report_dir: Path
) -> dict[str, Any]:
    """Compute the task's test metrics (and baseline) and write its reports."""
    adapter = importlib.import_module(f"pipeline.tasks.{task.value}")
    return adapter.evaluate(cfg, model_dir, data_dir, raw_dir, report_dir)
