"""Train stage: run the shared trainer on one task under the worker's strategy."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import TYPE_CHECKING

from mlflow.tracking import MlflowClient

from pipeline.core.corpus import write_json
from pipeline.core.distribute import Worker
from pipeline.core.precision import compute_precision, this_machine
from pipeline.core.registry import (
    keras_format,
    log_model,
    register_model,
    registered_name,
    registers_by_default,
)
from pipeline.core.tracking import StageRun, stage_run, system_metrics
from pipeline.core.trainer import (
    Checkpoint,
    TrainPaths,
    TrainResult,
    fingerprint,
    owned,
    run_train,
    set_seed,
)
from pipeline.params import TrainParams
from pipeline.tasks import training_task

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


def train_task(
    task: str, cfg: TrainParams, paths: TrainPaths, worker: Worker, manifest: dict | None
) -> TrainResult:
    """Train one task under the worker's strategy; only the chief's run and files are kept.

    A non-chief worker logs to a throwaway MLflow store in its scratch directory: it must run
    the same callbacks as the chief (they may read mirrored weights), but nothing of it is kept.
    """
    set_seed(cfg.seed)
    with owned(paths.checkpoints):
        return _train_owned(task, cfg, paths, worker, manifest)


def _train_owned(
    task: str, cfg: TrainParams, paths: TrainPaths, worker: Worker, manifest: dict | None
) -> TrainResult:
    """`train_task` once this process owns the checkpoint directory."""
    checkpoint = Checkpoint(paths.checkpoints, fingerprint(cfg, paths.data))
    resume = checkpoint.resumable_run_id()
    scratch_client = MlflowClient(f"sqlite:///{paths.scratch}/mlflow.db") if paths.scratch else None
    with stage_run(
        task,
        "train",
        cfg.model_dump(mode="json"),
        manifest=manifest,
        resume_run_id=resume if worker.is_chief else None,
        client=scratch_client,
    ) as run:
        precision = this_machine(cfg.precision)
        run.set_tags(
            {
                "pipeline.workers": str(worker.count),
                "pipeline.replicas": str(worker.replicas),
                "pipeline.precision": precision,
            }
        )
        monitored = (
            system_metrics(run, resumed=resume is not None) if worker.is_chief else nullcontext()
        )
        with monitored, worker.strategy.scope():
            adapter = training_task(task)
            with compute_precision(precision):
                setup = adapter.setup(cfg, paths.data)
            result = run_train(
                setup, cfg, run, checkpoint, paths.out, paths.plots, paths.plots / "epochs"
            )
        write_json(paths.metrics, result.metrics)
        run.log_artifact(paths.metrics)
        if worker.is_chief:
            adapter.after_training(cfg, run, paths.out)
            publish_model(task, cfg, run, setup.model)
    return result


def publish_model(task: str, cfg: TrainParams, run: StageRun, model: keras.Model) -> None:
    """Log the Keras flavour unless the task logged its own model; register it as rnn-<task>.

    Models are registered on a local store only, unless `train.<task>.register` says otherwise.
    """
    model_id = run.models[-1] if run.models else log_model(run, keras_format(model))
    chosen = cfg.register_model
    if chosen if chosen is not None else registers_by_default(run.client):
        name = registered_name(task)
        version = register_model(run, model_id, name)
        log.info(
            "registered the model as %s version %s (models:/%s/%s)", name, version, name, version
        )
