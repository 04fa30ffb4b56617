"""Keras callbacks of the shared trainer: MLflow logging, progress, NaN guard, gradient flow."""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import keras
import numpy as np
from tqdm import tqdm

from pipeline.core.corpus import write_json
from pipeline.core.gradients import BATCH_LOSS, is_epoch_metric
from pipeline.core.gradients import GLOBAL as GLOBAL_NORM
from pipeline.core.gradients import PREFIX as GRAD_PREFIX
from pipeline.core.metric_names import STEP_LOSS, epoch_key
from pipeline.core.tracking import StageRun

log = logging.getLogger(__name__)


def current_step(model: keras.Model) -> int:
    """Optimizer steps taken so far (restored with checkpoints, so it survives resumes)."""
    return int(model.optimizer.iterations.numpy())


@dataclass(frozen=True)
class Logged:
    """How far a resumed run's metrics already go, so a redone epoch is not logged twice.

    (A kill between an epoch's flush and its checkpoint makes the rerun repeat that epoch.)
    """

    steps: int = 0
    epochs: int = 0

    @classmethod
    def of(cls, run: StageRun) -> Logged:
        """Read the run's last logged optimizer step and epoch."""
        return cls(steps=run.last_step(GLOBAL_NORM), epochs=run.last_step(epoch_key("loss")))


@dataclass
class TrainingRecord:
    """What the stage's output files are made of, kept across resumes.

    It is saved beside the checkpoint at the end of every epoch (after MLflow has the epoch's
    metrics, before Keras saves the weights), so a killed and resumed training writes the same
    plots and metrics as an uninterrupted one. Rows of an epoch whose checkpoint never got
    written are dropped on load: that epoch is trained again.
    """

    epoch_rows: list[dict[str, float]] = field(default_factory=list)
    step_rows: list[dict[str, float]] = field(default_factory=list)
    flow: list[dict[str, list[float | None]]] = field(default_factory=list)
    epoch_steps: list[int] = field(default_factory=list)  # optimizer step at each epoch end
    seconds: float = 0.0
    samples: int = 0

    def save(self, path: Path) -> None:
        """Write the record atomically (JSON)."""
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path, finished_epochs: int) -> TrainingRecord:
        """The record of the first `finished_epochs` epochs (empty without a file)."""
        if not path.is_file() or finished_epochs == 0:
            return cls()
        record = cls(**json.loads(path.read_text(encoding="utf-8")))
        if len(record.epoch_steps) < finished_epochs:  # not written by this version: no rows
            return cls()
        last_step = record.epoch_steps[finished_epochs - 1]
        return cls(
            epoch_rows=record.epoch_rows[:finished_epochs],
            step_rows=[row for row in record.step_rows if row["step"] <= last_step],
            flow=record.flow[:finished_epochs],
            epoch_steps=record.epoch_steps[:finished_epochs],
            seconds=record.seconds,
            samples=record.samples,
        )

    def flow_curves(self) -> list[dict[str, np.ndarray]]:
        """Per-epoch gradient-flow curves as arrays (null, i.e. no valid step, as NaN)."""
        return [
            {k: np.asarray([np.nan if v is None else v for v in curve]) for k, curve in e.items()}
            for e in self.flow
        ]


class StepCallback(keras.callbacks.Callback):
    """A callback whose batch hook may run on Keras's callback threads (`async_safe`).

    With only async-safe batch hooks, Keras does not wait for each step's results before
    starting the next step. A hook then runs later, possibly beside another: it takes its
    step from the epoch's first step plus the batch index (not from the optimizer, which has
    moved on) and holds `lock` while it updates shared state. Keras waits for all of them
    before `on_epoch_end`.
    """

    async_safe = True

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.epoch_start = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch_start = current_step(self.model)

    def step_of(self, batch: int) -> int:
        """Optimizer step (1-based) that produced the results of `batch` in this epoch."""
        return self.epoch_start + batch + 1


class MlflowMetrics(StepCallback):
    """Buffer gradient norms every `every` steps and epoch metrics (`EpochCommit` flushes)."""

    def __init__(
        self,
        run: StageRun,
        every: int,
        logged: Logged = Logged(),
        record: TrainingRecord | None = None,
    ):
        super().__init__()
        self.run = run
        self.every = every
        self.logged = logged
        self.record = record or TrainingRecord()
        self.flushed = time.monotonic()

    @property
    def step_rows(self) -> list[dict[str, float]]:
        return self.record.step_rows

    @property
    def epoch_rows(self) -> list[dict[str, float]]:
        return self.record.epoch_rows

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        step = self.step_of(batch)
        if step % self.every and step != 1:
            return
        norms = {k: float(v) for k, v in (logs or {}).items() if k.startswith(GRAD_PREFIX)}
        norms[STEP_LOSS] = float(logs[BATCH_LOSS]) if logs and BATCH_LOSS in logs else math.nan
        with self.lock:
            if step > self.logged.steps:
                self.run.log_metrics(norms, step=step)
            self.step_rows.append({"step": step, **norms})
            if time.monotonic() - self.flushed >= FLUSH_EVERY_S:
                self.run.flush()
                self.flushed = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values = {k: float(v) for k, v in (logs or {}).items() if is_epoch_metric(k)}
        if epoch + 1 > self.logged.epochs:
            self.run.log_metrics({epoch_key(k): v for k, v in values.items()}, step=epoch + 1)
        self.epoch_rows.append({"epoch": epoch + 1, **values})
        self.step_rows.sort(key=lambda row: row["step"])  # hooks may finish out of order


class Progress(StepCallback):
    """Training progress on the console: loss, gradient norm, throughput.

    On a terminal, a bar per epoch (step/total, elapsed<remaining, loss, gradient norm) on
    `stream` (stderr by default); elsewhere (CI, DVC logs) a log line every `5 * every` steps.
    Both end each epoch with one log line of its metrics.
    """

    def __init__(self, every: int, batch_size: int, epochs: int, stream: TextIO | None = None):
        super().__init__()
        self.every, self.batch_size, self.epochs = every, batch_size, epochs
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()
        self.samples = 0
        self.bar: tqdm | None = None
        self.steps: int | None = None  # per epoch: from Keras, else counted in the first epoch

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_begin(epoch, logs)
        self.epoch_started = time.perf_counter()
        self.steps = self.params.get("steps") or self.steps
        if self.stream.isatty():
            self.bar = tqdm(
                total=self.steps,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                unit="step",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
                mininterval=BAR_REFRESH_S,
            )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        loss, norm = float(logs.get("loss", math.nan)), float(logs.get(GLOBAL_NORM, math.nan))
        with self.lock:
            self.samples += self.batch_size  # upper bound: a partial last batch counts in full
            if self.bar is not None:
                self.bar.set_postfix_str(f"loss {loss:.4f}  grad_norm {norm:.3g}", refresh=False)
                self.bar.update(1)
                return
        if (batch + 1) % (self.every * 5) == 0 and logs:
            rate = self.samples / max(time.perf_counter() - self.started, 1e-9)
            log.info(
                "  step %d  loss %.4f  grad_norm %.3g  %.0f samples/s", batch + 1, loss, norm, rate
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.steps = self.steps or self.bar.n
            self.bar.close()
            self.bar = None
        shown = {k: v for k, v in (logs or {}).items() if not k.startswith(GRAD_PREFIX)}
        text = "  ".join(f"{k} {float(v):.4f}" for k, v in shown.items())
        seconds = time.perf_counter() - self.epoch_started
        log.info("epoch %d/%d  %s  (%.1f s)", epoch + 1, self.epochs, text, seconds)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:  # training stopped mid-epoch (NaN guard)
            self.bar.close()
            self.bar = None


BAR_REFRESH_S = 0.5  # the bar redraws at most twice a second
FLUSH_EVERY_S = 5.0  # metrics reach the tracking store while an epoch runs, not only after it
ABSURD_LOSS = 1e6  # no task's loss gets near this unless training has blown up


class NanGuard(StepCallback):
    """Stop at the first non-finite or absurd loss; the trainer then fails the run."""

    def __init__(self) -> None:
        super().__init__()
        self.diverged_at: int | None = None

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss) or abs(loss) > ABSURD_LOSS:
            with self.lock:
                step = self.step_of(batch)
                self.diverged_at = min(step, self.diverged_at or step)
            self.model.stop_training = True


class GradientFlowLogger(keras.callbacks.Callback):
    """Measure ‖∂L/∂h_t‖ on the probe batch after every epoch; log curve and horizon.

    The PNG of all epochs' curves is drawn once, when training ends (also after early
    stopping or divergence): redrawing it every epoch cost more than the probe itself.
    """

    def __init__(
        self,
        probe,
        run: StageRun,
        out_dir: Path,
        logged: Logged = Logged(),
        record: TrainingRecord | None = None,
    ):
        super().__init__()
        self.probe, self.run, self.out_dir, self.logged = probe, run, out_dir, logged
        self.record = record or TrainingRecord()

    @property
    def history(self) -> list[dict[str, np.ndarray]]:
        """Every epoch's curves so far, resumed epochs included."""
        return self.record.flow_curves()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from pipeline.core.gradient_flow import summarize_flow

        curves = self.probe.measure()
        finite = {k: _finite(v) for k, v in curves.items()}
        self.record.flow.append(finite)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"epoch_{epoch + 1:03d}.json"
        path.write_text(json.dumps(finite))
        self.run.log_artifact(path, "grad_flow")
        if epoch + 1 > self.logged.epochs:
            self.run.log_metrics(summarize_flow(curves), step=epoch + 1)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        from pipeline.core.gradient_flow import plot_flow

        if self.record.flow:
            self.run.log_artifact(
                plot_flow(self.history, self.out_dir / "grad_flow.png"), "grad_flow"
            )


class ResumableSwapEMAWeights(keras.callbacks.SwapEMAWeights):
    """Keras's `SwapEMAWeights(swap_on_epoch=True)` that also resumes from a checkpoint.

    Checkpoints are written at epoch end, after the swap: the model holds the average and the
    optimizer's average slots the raw weights. Keras's callback starts every run believing the
    raw weights are in the model, so a resumed run trained on from the average (and averaged
    the raw weights) in its first epoch, and ended elsewhere than an uninterrupted run.
    """

    def __init__(self) -> None:
        super().__init__(swap_on_epoch=True)
        self._first_epoch = True

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._first_epoch = True

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._first_epoch and epoch > 0:  # restored from an epoch-end checkpoint
            self._ema_weights_in_model = True
        self._first_epoch = False
        super().on_epoch_begin(epoch, logs)


class EpochCommit(keras.callbacks.Callback):
    """Close an epoch: send its buffered metrics to MLflow, then save the training record.

    Runs after every other epoch-end hook and before the checkpoint, so a kill at any point
    leaves MLflow with all or none of an epoch's metrics (a resume skips what it holds) and
    a record that never runs ahead of the checkpoint by more than the epoch being redone.
    """

    def __init__(self, run: StageRun, record: TrainingRecord, path: Path, progress: Progress):
        super().__init__()
        self.run, self.record, self.path, self.progress = run, record, path, progress

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started, self.samples_before = time.perf_counter(), self.progress.samples

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.record.epoch_steps.append(current_step(self.model))
        self.record.seconds += time.perf_counter() - self.started
        self.record.samples += self.progress.samples - self.samples_before
        self.run.flush()
        self.record.save(self.path)


Reporter = Callable[[keras.Model, int, Path], list[Path]]


class EpochReports(keras.callbacks.Callback):
    """Run task reporters (samples, example tables, attention maps) after every epoch.

    A reporter gets the plain model, the 1-based epoch and a directory, writes files there and
    returns their paths; they are logged as MLflow artifacts under `epoch_<n>/`.
    """

    def __init__(self, reporters: list[Reporter], run: StageRun, out_dir: Path, model: keras.Model):
        super().__init__()
        self.reporters, self.run, self.out_dir, self.plain = reporters, run, out_dir, model

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        folder = self.out_dir / f"epoch_{epoch + 1:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for report in self.reporters:
            for path in report(self.plain, epoch + 1, folder):
                self.run.log_artifact(path, f"reports/{folder.name}")


def _finite(curve: np.ndarray) -> list[float | None]:
    """JSON has no NaN: steps with no valid example become null."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(curve, dtype=float)]
