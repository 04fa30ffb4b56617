"""Tasks: one package each, plugged into the shared stages through one typed interface.

A task package `pipeline.tasks.<task>` holds its model builder, its data handling and the
modules only it uses, plus two entry modules the stages load by name:

- `train.py` implements `TrainingTask` (what the shared trainer needs, and a post-training hook);
- `evaluate.py` implements `EvaluationTask` (test metrics beside a baseline, and reports);
- `featurize.py`, for tasks whose inputs are numbers rather than text, implements
  `FeaturizeTask` (the featurize stage's work).

The stages import only these entry modules (and what they import), which is how `dvc.yaml`
can list exactly the code each stage depends on (`tests/test_structure.py` checks it).
Adding a task = one package + its params sections + its dvc.yaml stages.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pipeline.core.tracking import StageRun
    from pipeline.core.trainer import TrainingSetup


@runtime_checkable
class TrainingTask(Protocol):
    """What the shared trainer needs from a task (its `train.py` module)."""

    def setup(self, cfg: Any, data_dir: Path) -> TrainingSetup:
        """Build the model, loss, metrics, datasets and gradient-flow probe batch."""
        ...

    def after_training(self, cfg: Any, run: StageRun, model_dir: Path) -> None:
        """Log task-specific artifacts once the model is saved (e.g. a servable model)."""
        ...


@runtime_checkable
class EvaluationTask(Protocol):
    """What the evaluate stage needs from a task (its `evaluate.py` module)."""

    def evaluate(
        self,
        cfg: Any,
        eval_cfg: Any,
        model_dir: Path,
        data_dir: Path,
        raw_dir: Path,
        report_dir: Path,
    ) -> dict[str, float]:
        """Score the trained model and its baseline on the test split; write reports."""
        ...


@runtime_checkable
class FeaturizeTask(Protocol):
    """What the featurize stage needs from a task (its `featurize.py` module)."""

    def featurize(self, cfg: Any, data_dir: Path, out_dir: Path) -> dict[str, float]:
        """Write the task's features of the downloaded splits into `out_dir`; return stats."""
        ...

    def artifacts(self, cfg: Any) -> tuple[str, ...]:
        """File names in `out_dir` to log to the run (e.g. the fitted scaling)."""
        ...


def entry_module(task: str, stage: str) -> str:
    """The module a stage loads for a task: `pipeline.tasks.<task>.<stage>`."""
    return f"{__name__}.{task}.{stage}"


def _load(task: str, stage: str, interface: type) -> Any:
    """Import a task's entry module and check it implements the stage's interface."""
    module = importlib.import_module(entry_module(task, stage))
    if not isinstance(module, interface):
        raise TypeError(f"{module.__name__} does not implement {interface.__name__}")
    return module


def training_task(task: str) -> TrainingTask:
    """The training side of a task."""
    return _load(task, "train", TrainingTask)


def evaluation_task(task: str) -> EvaluationTask:
    """The evaluation side of a task."""
    return _load(task, "evaluate", EvaluationTask)


def featurization_task(task: str) -> FeaturizeTask:
    """The featurize side of a task (tasks whose inputs are not text)."""
    return _load(task, "featurize", FeaturizeTask)
