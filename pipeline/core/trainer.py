"""The shared trainer: one training loop and its instrumentation for every task.

Tasks differ only by what their `setup` returns (model, loss, metrics, data,
probe batch, extra epoch callbacks). The trainer adds gradient-norm instrumentation, gradient
flow through time, MLflow logging, early stopping, a NaN guard and a checkpoint every epoch:
re-running after a kill resumes from the last finished epoch and continues the same MLflow run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.core.callbacks import (
    ABSURD_LOSS,
    EpochCommit,
    EpochReports,
    GradientFlowLogger,
    Logged,
    MlflowMetrics,
    NanGuard,
    Progress,
    Reporter,
    ResumableSwapEMAWeights,
    TrainingRecord,
    current_step,
)
from pipeline.core.corpus import MODEL_FILE, RUN_FILE, write_json
from pipeline.core.flops import matmul_peak, mean_timesteps, training_flops
from pipeline.core.gradients import InstrumentedModel
from pipeline.core.metric_names import train_summary
from pipeline.core.tracking import StageRun
from pipeline.params import TrainParams

log = logging.getLogger(__name__)
# TensorFlow's message when a graph holds an op with no XLA kernel ("... on XLA_CPU_JIT: PyFunc").
UNSUPPORTED_BY_XLA = re.compile(
    r"Detected unsupported operations when trying to compile graph .*? on XLA_\w+: (\w+)", re.S
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no model is written."""


@dataclass
class TrainingSetup:
    """Everything task-specific the shared trainer needs."""

    model: keras.Model
    loss: keras.losses.Loss
    metrics: list[Any]
    train: tf.data.Dataset
    val: tf.data.Dataset
    probe_inputs: Any
    probe_targets: Any
    probe_loss: Callable[[Any, Any], tf.Tensor]
    assets: dict[str, Path] = field(default_factory=dict)
    reporters: list[Reporter] = field(default_factory=list)


@dataclass(frozen=True)
class TrainPaths:
    """Where one training reads and writes; `scratch` is set for a non-chief worker."""

    data: Path
    out: Path
    plots: Path
    metrics: Path
    checkpoints: Path
    scratch: Path | None = None

    def under(self, scratch: Path) -> TrainPaths:
        """The same outputs inside `scratch`, seeded with the chief's checkpoint (same resume)."""
        checkpoints = scratch / "checkpoints"
        if self.checkpoints.is_dir():
            shutil.copytree(self.checkpoints, checkpoints)
        return TrainPaths(
            self.data,
            scratch / "model",
            scratch / "plots",
            scratch / "metrics.json",
            checkpoints,
            scratch,
        )


@dataclass(frozen=True)
class TrainResult:
    """Final metrics and where the model went."""

    metrics: dict[str, float]
    model_dir: Path
    run_id: str


def set_seed(seed: int) -> None:
    """Seed Python, numpy and TensorFlow once per stage."""
    keras.utils.set_random_seed(seed)


def make_optimizer(cfg: TrainParams) -> keras.optimizers.Optimizer:
    """The configured optimizer; clipping is done by the instrumented train step."""
    kinds = {
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    ema = {"use_ema": True, "ema_momentum": cfg.ema_momentum} if cfg.ema_momentum else {}
    return kinds[cfg.optimizer](learning_rate=cfg.learning_rate, **ema)


def fingerprint(cfg: TrainParams, data_dir: Path) -> str:
    """Identify a training configuration so a checkpoint is only resumed by the same one."""
    digest = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    for path in sorted(data_dir.glob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class CheckpointBusy(RuntimeError):
    """Another live process is training into the same checkpoint directory."""


@contextmanager
def owned(directory: Path) -> Iterator[None]:
    """Hold an OS lock on `directory`'s checkpoint for the life of this process's training.

    The lock (`flock` on `<directory>.lock`, beside the directory so clearing the checkpoint
    keeps it) dies with its process, so a checkpoint whose owner was killed resumes, while a
    second training of the same task while the first is alive fails at once, naming it.
    """
    path = directory.with_name(directory.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise CheckpointBusy(
                f"{directory} is in use by {owner}: wait for it, or stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


class Checkpoint:
    """A checkpoint directory tied to one configuration and one MLflow run."""

    def __init__(self, directory: Path, key: str):
        self.directory, self.key = directory, key
        self.meta = directory / "checkpoint.json"
        self.record = directory / "record.json"  # see TrainingRecord
        self.work = directory / "epochs"  # per-epoch files, copied to the outputs at the end

    def finished_epochs(self) -> int:
        """Epochs whose weights the Keras backup holds (0 without one)."""
        path = self.directory / "keras" / "training_metadata.json"
        return int(json.loads(path.read_text())["epoch"]) if path.is_file() else 0

    def load_record(self) -> TrainingRecord:
        """The outputs-to-be of the finished epochs, so a resume writes them all."""
        return TrainingRecord.load(self.record, self.finished_epochs())

    def resumable_run_id(self) -> str | None:
        """The MLflow run to continue, or None (a stale checkpoint is discarded)."""
        if not self.meta.is_file():
            return None
        meta = json.loads(self.meta.read_text())
        if meta.get("key") != self.key:
            log.info("discarding checkpoint %s: made with other params or data", self.directory)
            self.clear()
            return None
        log.info("resuming from checkpoint %s (MLflow run %s)", self.directory, meta["run_id"])
        return meta["run_id"]

    def bind(self, run_id: str) -> keras.callbacks.Callback:
        """Record the run and return Keras's per-epoch backup-and-restore callback."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json(self.meta, {"key": self.key, "run_id": run_id})
        backup = keras.callbacks.BackupAndRestore(
            str(self.directory / "keras"), double_checkpoint=True, delete_checkpoint=False
        )
        backup.async_safe = True  # it saves per epoch; its batch hook does nothing
        return backup

    def clear(self) -> None:
        """Remove the checkpoint after success (or divergence: resuming would diverge again)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def compile_model(
    setup: TrainingSetup, cfg: TrainParams, jit_compile: bool | str | None = None
) -> InstrumentedModel:
    """Wrap the task model for instrumented training (shares all layers) and compile it.

    `jit_compile` overrides `cfg.jit_compile` (the uncompiled fallback passes False).
    """
    model = InstrumentedModel(
        setup.model.inputs, setup.model.outputs, clip_norm=cfg.clip_norm, name=setup.model.name
    )
    optimizer = make_optimizer(cfg)
    if cfg.lr_schedule == "cosine":  # from learning_rate down to 0 at the last step of training
        steps = max(int(setup.train.cardinality()), 1) * cfg.epochs
        optimizer.learning_rate = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps)
    model.compile(
        optimizer=optimizer,
        loss=setup.loss,
        metrics=setup.metrics,
        jit_compile=cfg.jit_compile if jit_compile is None else jit_compile,
    )
    return model


def xla_unsupported(error: tf.errors.OpError) -> str | None:
    """The op XLA could not compile, if that is what `error` says (else None)."""
    found = UNSUPPORTED_BY_XLA.search(str(error))
    return found.group(1) if found else None


def callbacks_for(
    setup: TrainingSetup, cfg: TrainParams, run: StageRun, checkpoint: Checkpoint
) -> tuple[list[keras.callbacks.Callback], TrainingRecord, NanGuard]:
    """Assemble the trainer's callbacks (order matters: the commit, then the checkpoint)."""
    from pipeline.core.gradient_flow import GradientFlowProbe

    probe = GradientFlowProbe(
        setup.model, setup.probe_inputs, setup.probe_targets, setup.probe_loss
    )
    logged = Logged.of(run)  # nothing for a new run; a resumed one continues after it
    record, work = checkpoint.load_record(), checkpoint.work
    metrics, guard = MlflowMetrics(run, cfg.log_every_n_steps, logged, record), NanGuard()
    flow = GradientFlowLogger(probe, run, work / "grad_flow", logged, record)
    stack: list[keras.callbacks.Callback] = [*ema_swap(cfg), guard, metrics, flow]
    if setup.reporters:
        stack.append(EpochReports(setup.reporters, run, work / "reports", setup.model))
    progress = Progress(cfg.log_every_n_steps, cfg.batch_size, cfg.epochs)
    stack.append(progress)
    if cfg.early_stopping_patience:
        stack.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.early_stopping_patience, restore_best_weights=True
            )
        )
    stack.append(EpochCommit(run, record, checkpoint.record, progress))
    stack.append(checkpoint.bind(run.run_id))
    return stack, record, guard


def ema_swap(cfg: TrainParams) -> list[keras.callbacks.Callback]:
    """With weight averaging, validation and every epoch-end callback (reports, the probe,
    early stopping's best weights, checkpoints) see the averaged weights; training the raw ones.

    Keras restores early stopping's best weights after it finalizes the average, so without
    this the average would be thrown away.
    """
    if not cfg.ema_momentum:
        return []
    return [ResumableSwapEMAWeights()]


def fit(
    setup: TrainingSetup, cfg: TrainParams, run: StageRun, checkpoint: Checkpoint
) -> tuple[dict[str, float], TrainingRecord]:
    """Run `model.fit` with instrumentation; raise TrainingDiverged on a non-finite loss."""
    model = compile_model(setup, cfg)
    stack, record, guard = callbacks_for(setup, cfg, run, checkpoint)
    # This machine's limit now, in the dtype the layers compute in, for MFU (about a second).
    peak = matmul_peak(dtype=setup.model.dtype_policy.compute_dtype)
    fit_args = {"validation_data": setup.val, "epochs": cfg.epochs, "callbacks": stack}
    try:
        model.fit(setup.train, verbose=0, shuffle=False, **fit_args)
    except tf.errors.InvalidArgumentError as error:
        op = xla_unsupported(error)
        if op is None or current_step(model) > 0:
            raise
        # Nothing was trained (XLA fails before the first step): the same weights, uncompiled.
        log.warning("jit_compile: XLA cannot compile %s; training without XLA", op)
        run.set_tags({"pipeline.jit_compile": f"off: XLA cannot compile {op}"})
        model = compile_model(setup, cfg, jit_compile=False)
        model.fit(setup.train, verbose=0, shuffle=False, **fit_args)
    if guard.diverged_at is not None:
        checkpoint.clear()
        raise TrainingDiverged(
            f"loss became non-finite (or above {ABSURD_LOSS:g}) at step {guard.diverged_at}; "
            "lower train.*.learning_rate or set clip_norm"
        )
    final = {k: v for k, v in record.epoch_rows[-1].items() if k != "epoch"}
    final |= {  # over every session of a resumed training
        "train_seconds": record.seconds,
        "steps": float(current_step(model)),
        "samples_per_second": record.samples / max(record.seconds, 1e-9),
        "epochs_run": float(len(record.epoch_rows)),
    }
    return final | utilisation(setup.model, setup.train, final["samples_per_second"], peak), record


def utilisation(
    model: keras.Model, train: tf.data.Dataset, samples_per_second: float, peak: float
) -> dict[str, float]:
    """Training FLOPs per example and per second of the whole run, and MFU against `peak`.

    The run's seconds include validation, the probe and logging, so this is what the stage
    achieves, not a kernel's best.
    """
    per_example = training_flops(model, mean_timesteps(train))
    achieved = per_example * samples_per_second
    return {
        "flops_per_example": per_example,
        "flops_per_second": achieved,
        "matmul_peak_flops": peak,
        "mfu": achieved / peak,
    }


def save_outputs(
    setup: TrainingSetup,
    run: StageRun,
    paths: tuple[Path, Path, Path],
    record: TrainingRecord,
    checkpoint: Checkpoint,
) -> None:
    """Write the model, its tokenizer(s), the run id, the DVC plot files and per-epoch files."""
    out_dir, plots_dir, work_dir = paths
    out_dir.mkdir(parents=True, exist_ok=True)
    setup.model.save(out_dir / MODEL_FILE)
    for name, asset in setup.assets.items():
        shutil.copyfile(asset, out_dir / name)
    write_json(out_dir / RUN_FILE, {"run_id": run.run_id, "experiment_id": run.experiment_id})
    write_json(plots_dir / "loss.json", record.epoch_rows)
    write_json(plots_dir / "grad_norm.json", record.step_rows)
    if checkpoint.work.is_dir():
        shutil.rmtree(work_dir, ignore_errors=True)
        shutil.copytree(checkpoint.work, work_dir)
    final_flow = record.flow_curves()[-1] if record.flow else {}
    write_json(plots_dir / "grad_flow.json", flow_rows(final_flow))
    for key, curve in final_flow.items():
        for t, value in enumerate(np.asarray(curve, dtype=float)):
            if np.isfinite(value):
                run.log_metrics({f"grad_flow/{key}": float(value)}, step=t)
    run.log_artifact(out_dir, "model")


def flow_rows(curves: dict[str, np.ndarray]) -> list[dict[str, float | None]]:
    """One row per timestep with a column per layer (DVC plots' table format)."""
    length = max((len(c) for c in curves.values()), default=0)
    rows = []
    for t in range(length):
        row: dict[str, float | None] = {"t": float(t)}
        for key, curve in curves.items():
            value = float(curve[t]) if t < len(curve) else float("nan")
            row[key] = value if np.isfinite(value) else None
        rows.append(row)
    return rows


def run_train(
    setup: TrainingSetup,
    cfg: TrainParams,
    run: StageRun,
    checkpoint: Checkpoint,
    out_dir: Path,
    plots_dir: Path,
    work_dir: Path,
) -> TrainResult:
    """Train, then write outputs only if training finished with a finite loss."""
    final, record = fit(setup, cfg, run, checkpoint)
    if record.flow:
        from pipeline.core.gradient_flow import summarize_flow

        final |= summarize_flow(record.flow_curves()[-1])
    save_outputs(setup, run, (out_dir, plots_dir, work_dir), record, checkpoint)
    run.log_metrics(train_summary(final))
    checkpoint.clear()
    return TrainResult(metrics=final, model_dir=out_dir, run_id=run.run_id)
