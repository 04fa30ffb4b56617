"""Train-step time of the language model: its token loss and metrics vs Keras's own.

The model and batches come from the task's `setup` (params.yaml, the tokenized data, the
precision `train` resolves `auto` to). Each variant compiles the same fresh model with
`model.compile` (Keras's train step, no instrumentation) and times `train_on_batch` over the
same batches after a warm-up step; variants interleave, `--repeats` times, median reported:

- `keras`: `SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD)` with
  `SparseCategoricalAccuracy` and a perplexity metric written with Keras ops (a second
  cross-entropy over the logits) — what the task used before `pipeline/core/token_loss.py`;
- `keras_no_metrics`: the same loss alone (what the metrics cost);
- `token_loss`: the task's own `TokenCrossEntropy` with `TokenAccuracy` and `Perplexity`;
- `token_loss_no_metrics`: that loss alone.

With `--task translation` the task's own loss is the translator's padding-weighted smoothed
loss over the compiled per-token pass, and one more variant times what it replaced:

- `keras_ops_smoothed`: the same loss written with Keras ops (log-softmax, gather, mean), with
  the task's own metrics.

    python benchmarks/token_loss.py --out benchmarks/results/token_loss.json
    python benchmarks/token_loss.py --task translation --out \
        benchmarks/results/token_loss_translation.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import keras
import tensorflow as tf
import typer
from trainer_overhead import fresh_setup, training_data

from pipeline.core.precision import this_machine
from pipeline.core.tokens import PAD_ID
from pipeline.core.trainer import TrainingSetup, make_optimizer
from pipeline.params import Task, TrainParams, load_params


class KerasOpsPerplexity(keras.metrics.Metric):
    """exp(mean cross-entropy per non-PAD token), written with Keras's loss function."""

    def __init__(self, name: str = "perplexity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        """Add the batch's summed token losses and its number of real targets."""
        valid = tf.cast(tf.not_equal(y_true, PAD_ID), self.dtype)
        losses = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        self.total.assign_add(tf.reduce_sum(tf.cast(losses, self.dtype) * valid))
        self.count.assign_add(tf.reduce_sum(valid))

    def result(self) -> tf.Tensor:
        """Perplexity so far."""
        return tf.exp(tf.math.divide_no_nan(self.total, self.count))


def keras_loss_and_metrics(setup: TrainingSetup, metrics: bool) -> tuple[object, list]:
    """Keras's sparse cross-entropy, its accuracy and a Keras-ops perplexity."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID)
    found = [keras.metrics.SparseCategoricalAccuracy(name="accuracy"), KerasOpsPerplexity()]
    return loss, found if metrics else []


def own_loss_and_metrics(setup: TrainingSetup, metrics: bool) -> tuple[object, list]:
    """The task's own loss and metrics (`pipeline/core/token_loss.py`)."""
    return setup.loss, setup.metrics if metrics else []


class KerasOpsSmoothedLoss(keras.losses.Loss):
    """The translator's padding-weighted smoothed loss as it was written with Keras ops."""

    def __init__(self, smoothing: float, **kwargs):
        super().__init__(name="keras_ops_smoothed", **kwargs)
        self.smoothing = smoothing

    def call(self, y_true, y_pred):
        """Smoothed per-token cross-entropy times positions / real tokens, 0 at PAD."""
        ops = keras.ops
        y_true = ops.cast(y_true, "int32")
        log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        picked = ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1)[..., 0]
        losses = -(1.0 - self.smoothing) * picked - self.smoothing * ops.mean(log_probs, axis=-1)
        valid = ops.cast(ops.not_equal(y_true, PAD_ID), "float32")
        scale = ops.cast(ops.size(valid), "float32") / ops.maximum(ops.sum(valid), 1.0)
        return losses * valid * scale


def keras_ops_smoothed(setup: TrainingSetup, metrics: bool) -> tuple[object, list]:
    """The translator's previous loss (same smoothing) with the task's own metrics."""
    smoothing = float(getattr(setup.loss, "smoothing", 0.0))
    return KerasOpsSmoothedLoss(smoothing), setup.metrics if metrics else []


Variant = tuple[Callable[[TrainingSetup, bool], tuple[object, list]], bool]
VARIANTS: dict[str, Variant] = {
    "keras": (keras_loss_and_metrics, True),
    "keras_no_metrics": (keras_loss_and_metrics, False),
    "token_loss": (own_loss_and_metrics, True),
    "token_loss_no_metrics": (own_loss_and_metrics, False),
}
TASK_VARIANTS: dict[Task, dict[str, Variant]] = {
    Task.translation: {"keras_ops_smoothed": (keras_ops_smoothed, True)},
}


def step_seconds(task: Task, cfg: TrainParams, data: Path, variant: Variant, steps: int) -> dict:
    """Median seconds per `train_on_batch` over `steps` batches, and the last step's loss."""
    setup = fresh_setup(task, cfg, data)
    pick, metrics = variant
    loss, found = pick(setup, metrics)
    setup.model.compile(optimizer=make_optimizer(cfg), loss=loss, metrics=found)
    batches = list(setup.train.take(steps + 1))
    setup.model.train_on_batch(*batches[0])  # tracing
    times = []
    for x, y in batches[1:]:
        started = time.perf_counter()
        setup.model.train_on_batch(x, y)
        times.append(time.perf_counter() - started)
    return {"median": statistics.median(times), "mean": statistics.fmean(times)}


def main(
    task: Annotated[Task, typer.Option(help="A task with token targets.")] = Task.language_model,
    steps: Annotated[int, typer.Option(min=1, help="Timed steps per run.")] = 30,
    repeats: Annotated[int, typer.Option(min=1, help="Runs per variant (interleaved).")] = 3,
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Print ms per train step of each loss/metrics variant, and the ratios to Keras's own."""
    cfg = load_params(params).train.section(task)
    cfg = cfg.model_copy(update={"precision": this_machine(cfg.precision)})
    data = training_data(task)
    keras.utils.disable_interactive_logging()
    variants = VARIANTS | TASK_VARIANTS.get(task, {})
    runs: dict[str, list[float]] = {name: [] for name in variants}
    load_before = os.getloadavg()[0]
    for _ in range(repeats):
        for name, variant in variants.items():
            runs[name].append(step_seconds(task, cfg, data, variant, steps)["median"])
    median = {name: statistics.median(values) for name, values in runs.items()}
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
        },
        "task": task.value,
        "precision": cfg.precision,
        "batch_size": cfg.batch_size,
        "steps": steps,
        "seconds_per_step": runs,
        "median_seconds_per_step": median,
        "keras_vs_token_loss": median["keras"] / median["token_loss"],
        **{
            f"{name}_vs_token_loss": median[name] / median["token_loss"]
            for name in TASK_VARIANTS.get(task, {})
        },
        "metrics_seconds": {
            "keras": median["keras"] - median["keras_no_metrics"],
            "token_loss": median["token_loss"] - median["token_loss_no_metrics"],
        },
    }
    for name, seconds in median.items():
        typer.echo(f"{name:<22} {1000 * seconds:7.1f} ms/step")
    for name in ("keras", *TASK_VARIANTS.get(task, {})):
        ratio = results[f"{name}_vs_token_loss"]
        typer.echo(f"{name} / token_loss: {ratio:.2f}x faster step")
    if out:
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
