"""Throughput of the instrumented trainer vs plain `model.fit`, per task, same model and data.

For each task the model and data come from the task's own `setup` (params.yaml, DVC's
tokenized data). The plain variant is that model compiled with Keras's own train step and no
callbacks; the instrumented one is what `train` runs: the project's train step (global and
per-layer gradient norms, global-norm clipping) plus the MLflow metrics and gradient-flow
callbacks, logging to a throwaway local store. Both train on the same cached batches; epochs
are interleaved, so machine noise hits both alike, and the best epoch of each is compared
(noise only ever slows an epoch down; the medians are printed and saved too).

    python benchmarks/trainer_overhead.py --steps 40 --repeats 5 --out overhead.json
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import keras
import tensorflow as tf
import typer
import yaml

from pipeline.core.callbacks import GradientFlowLogger, MlflowMetrics
from pipeline.core.gradient_flow import GradientFlowProbe
from pipeline.core.tracking import StageRun, stage_run
from pipeline.core.trainer import TrainingSetup, compile_model, make_optimizer, set_seed
from pipeline.params import Task, TrainParams, load_params
from pipeline.tasks import training_task


def fresh_setup(task: Task, cfg: TrainParams, data: Path) -> TrainingSetup:
    """The task's model and data exactly as `train` builds them."""
    set_seed(cfg.seed)
    return training_task(task.value).setup(cfg, data)


def plain(setup: TrainingSetup, cfg: TrainParams) -> tuple[keras.Model, list]:
    """The task model with Keras's own train step and no callbacks."""
    setup.model.compile(optimizer=make_optimizer(cfg), loss=setup.loss, metrics=setup.metrics)
    return setup.model, []


def instrumented(
    setup: TrainingSetup, cfg: TrainParams, run: StageRun, work: Path
) -> tuple[keras.Model, list]:
    """The same model under the project's train step and callbacks."""
    probe = GradientFlowProbe(
        setup.model, setup.probe_inputs, setup.probe_targets, setup.probe_loss
    )
    callbacks = [MlflowMetrics(run, cfg.log_every_n_steps), GradientFlowLogger(probe, run, work)]
    return compile_model(setup, cfg), callbacks


def time_epoch(model: keras.Model, callbacks: list, ds: tf.data.Dataset, samples: int) -> float:
    """Samples per second of one epoch."""
    started = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0, callbacks=callbacks)
    return samples / (time.perf_counter() - started)


def measure(task: Task, cfg: TrainParams, data: Path, steps: int, repeats: int, tmp: Path) -> dict:
    """Median samples/s of both variants of one task, epochs interleaved."""
    base = fresh_setup(task, cfg, data)
    batches = base.train.take(steps).cache()
    samples = sum(int(tf.shape(tf.nest.flatten(x)[0])[0]) for x, _ in batches)
    with stage_run(task.value, "benchmark", {}) as run:
        variants = {
            "plain": plain(base, cfg),
            "instrumented": instrumented(fresh_setup(task, cfg, data), cfg, run, tmp / task.value),
        }
        for model, callbacks in variants.values():  # warm-up: tracing and compilation
            model.fit(batches, epochs=1, verbose=0, callbacks=callbacks)
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, (model, callbacks) in variants.items():
                rates[name].append(time_epoch(model, callbacks, batches, samples))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    best = {name: max(values) for name, values in rates.items()}
    return {
        "cell": cfg.cell,
        "units": cfg.units,
        "batch_size": cfg.batch_size,
        "steps": steps,
        "samples_per_s": rates,
        "median_samples_per_s": medians,
        "best_samples_per_s": best,
        "ratio": best["instrumented"] / best["plain"],
        "ratio_of_medians": medians["instrumented"] / medians["plain"],
    }


def training_data(task: Task, dvc_yaml: Path = Path("dvc.yaml")) -> Path:
    """The `--data` directory of the task's train stage in dvc.yaml (tokenized or featurized)."""
    cmd = yaml.safe_load(dvc_yaml.read_text())["stages"][f"train_{task.value}"]["cmd"].split()
    return Path(cmd[cmd.index("--data") + 1])


def main(
    tasks: Annotated[
        list[Task] | None, typer.Option("--task", help="Tasks (default: all).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Batches per timed epoch.")] = 40,
    repeats: Annotated[int, typer.Option(help="Timed epochs per variant (interleaved).")] = 5,
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Print the instrumented/plain throughput ratio of each task (target >= 0.90)."""
    config = load_params(params)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        for task in tasks or list(Task):
            cfg = config.train.section(task)
            result = measure(task, cfg, training_data(task), steps, repeats, Path(tmp))
            results[task.value] = result
            best = result["best_samples_per_s"]
            typer.echo(
                f"{task.value:<15} {cfg.cell}({cfg.units})  plain {best['plain']:7.1f}  "
                f"instrumented {best['instrumented']:7.1f} samples/s (best epochs)  "
                f"ratio {result['ratio']:.3f}  (of medians {result['ratio_of_medians']:.3f})"
            )
    if out:
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    typer.run(main)
