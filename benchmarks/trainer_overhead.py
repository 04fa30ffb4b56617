"""Whole training epochs: the real `train` stage vs plain Keras `model.fit`, per task.

For each task the model and data come from the task's own `setup` (params.yaml, DVC's
tokenized or featurized data: the whole training split). Each timed epoch builds a fresh
model (same seed), so every variant pays its tracing and compilation, as a user's run does:

- `stage`: what `train` runs for one epoch (`pipeline.core.trainer.fit`): the instrumented
  train step (gradient norms, clipping), the task's `jit_compile` setting, validation, the
  gradient-flow probe, MLflow logging (a throwaway local store), the epoch checkpoint and
  reports;
- `plain`: the same model compiled with Keras's defaults (float32, its own train step,
  `jit_compile="auto"`) and `model.fit` with the same validation data and no callbacks;
- `uninstrumented`: like `plain` but at the stage's compile and precision settings — only when
  they differ from Keras's defaults, since otherwise it is `plain` again.

Variants are interleaved within each repeat, so machine noise hits all alike; the median and
the best epoch of each are reported, with the ratios stage/plain and stage/uninstrumented.

    python benchmarks/trainer_overhead.py --repeats 3 --out benchmarks/results/trainer_overhead.json

`--epochs N` times runs of N epochs instead of one, so a task whose epoch lasts seconds
(speech) is measured with its tracing spread over several epochs, as in its real training.
The stage also measures this machine's matmul peak once per run (for MFU, `matmul_peak`): the
burst is timed on its own too, and `stage_without_peak_vs_same_compile` takes it out.
`hook_seconds` is where the rest goes: one more stage run with every callback hook timed.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import keras
import tensorflow as tf
import typer
import yaml

import pipeline.core.trainer as trainer
from pipeline.core.flops import matmul_peak
from pipeline.core.precision import compute_precision, this_machine
from pipeline.core.tracking import stage_run
from pipeline.core.trainer import Checkpoint, TrainingSetup, fit, make_optimizer, set_seed
from pipeline.params import Task, TrainParams, load_params
from pipeline.tasks import training_task


def fresh_setup(
    task: Task, cfg: TrainParams, data: Path, precision: str | None = None
) -> TrainingSetup:
    """The task's model and data as `train` builds them (at `precision`: default the cfg's)."""
    set_seed(cfg.seed)
    with compute_precision(precision or cfg.precision):
        return training_task(task.value).setup(cfg, data)


def count_samples(dataset: tf.data.Dataset) -> int:
    """Examples in one pass of a batched dataset."""
    return sum(int(tf.shape(tf.nest.flatten(x)[0])[0]) for x, _ in dataset)


def stage_epoch(task: Task, cfg: TrainParams, data: Path, work: Path) -> float:
    """Seconds of one epoch of the real trainer, callbacks, validation and MLflow included."""
    setup = fresh_setup(task, cfg, data)
    checkpoint = Checkpoint(work / "ckpt", f"benchmark-{time.time_ns()}")
    with stage_run(task.value, "benchmark", {}) as run:
        started = time.perf_counter()
        fit(setup, cfg, run, checkpoint)
        seconds = time.perf_counter() - started
    checkpoint.clear()
    return seconds


HOOKS = ("on_train_begin", "on_epoch_begin", "on_epoch_end", "on_train_end")


def hook_seconds(task: Task, cfg: TrainParams, data: Path, work: Path) -> dict[str, float]:
    """Seconds in each callback's epoch and train hooks over one stage run, largest first."""
    spent: collections.Counter[str] = collections.Counter()
    build = trainer.callbacks_for

    def timed_callbacks(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        stack, *rest = build(*args, **kwargs)
        for callback in stack:
            for hook in HOOKS:
                name, call = f"{type(callback).__name__}.{hook}", getattr(callback, hook)

                def timed(*a, _call=call, _name=name, **k):  # noqa: ANN002, ANN003, ANN202
                    started = time.perf_counter()
                    _call(*a, **k)
                    spent[_name] += time.perf_counter() - started

                setattr(callback, hook, timed)
        return (stack, *rest)

    trainer.callbacks_for = timed_callbacks
    try:
        stage_epoch(task, cfg, data, work)
    finally:
        trainer.callbacks_for = build
    return {name: round(seconds, 4) for name, seconds in spent.most_common() if seconds >= 1e-3}


def keras_epoch(
    task: Task, cfg: TrainParams, data: Path, jit_compile: bool | str, precision: str
) -> float:
    """Seconds of one plain `model.fit` epoch (Keras's train step, no callbacks)."""
    setup = fresh_setup(task, cfg, data, precision)
    model = setup.model
    model.compile(
        optimizer=make_optimizer(cfg), loss=setup.loss, metrics=setup.metrics,
        jit_compile=jit_compile,
    )  # fmt: skip
    started = time.perf_counter()
    model.fit(setup.train, validation_data=setup.val, epochs=cfg.epochs, verbose=0)
    return time.perf_counter() - started


def resolved_auto(task: Task, cfg: TrainParams, data: Path) -> bool:
    """Whether Keras's `jit_compile="auto"` compiles this task's model."""
    setup = fresh_setup(task, cfg, data, "float32")
    setup.model.compile(optimizer=make_optimizer(cfg), loss=setup.loss, jit_compile="auto")
    return bool(setup.model.jit_compile)


def measure(
    task: Task, cfg: TrainParams, data: Path, repeats: int, work: Path, epochs: int = 1
) -> dict:
    """Samples/s of each variant's runs of `epochs` whole epochs, interleaved `repeats` times."""
    precision = this_machine(cfg.precision)  # what `train` resolves `auto` to here
    cfg = cfg.model_copy(
        update={"epochs": epochs, "early_stopping_patience": None, "precision": precision}
    )
    samples = epochs * count_samples(fresh_setup(task, cfg, data).train)
    auto = resolved_auto(task, cfg, data)
    variants = {
        "stage": lambda: stage_epoch(task, cfg, data, work),
        "plain": lambda: keras_epoch(task, cfg, data, "auto", "float32"),
    }
    same_jit = cfg.jit_compile == "auto" or bool(cfg.jit_compile) == auto
    if not same_jit or cfg.precision != "float32":
        variants["uninstrumented"] = lambda: keras_epoch(
            task, cfg, data, cfg.jit_compile, cfg.precision
        )
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, epoch in variants.items():
            rates[name].append(samples / epoch())
    median = {name: statistics.median(values) for name, values in rates.items()}
    best = {name: max(values) for name, values in rates.items()}
    same_compile = "uninstrumented" if "uninstrumented" in variants else "plain"
    peak = statistics.median(peak_burst_seconds(precision) for _ in range(repeats))
    without_peak = samples / (samples / median["stage"] - peak)
    return {
        "cell": cfg.cell,
        "units": cfg.units,
        "batch_size": cfg.batch_size,
        "jit_compile": cfg.jit_compile,
        "precision": cfg.precision,
        "keras_auto_compiles": auto,
        "epochs": epochs,
        "samples_per_epoch": samples // epochs,
        "samples_per_s": rates,
        "median_samples_per_s": median,
        "best_samples_per_s": best,
        "stage_vs_plain": {"median": median["stage"] / median["plain"]}
        | {"best": best["stage"] / best["plain"]},
        "stage_vs_same_compile": {"median": median["stage"] / median[same_compile]}
        | {"best": best["stage"] / best[same_compile]},
        "peak_burst_seconds": peak,
        "stage_without_peak_vs_same_compile": without_peak / median[same_compile],
        "hook_seconds": hook_seconds(task, cfg, data, work),
    }


def peak_burst_seconds(precision: str) -> float:
    """Wall seconds of the matmul-peak measurement `fit` makes once per run."""
    with compute_precision(precision):
        dtype = keras.config.dtype_policy().compute_dtype
    started = time.perf_counter()
    matmul_peak(dtype=dtype)
    return time.perf_counter() - started


def training_data(task: Task, dvc_yaml: Path = Path("dvc.yaml")) -> Path:
    """The `--data` directory of the task's train stage in dvc.yaml (tokenized or featurized)."""
    cmd = yaml.safe_load(dvc_yaml.read_text())["stages"][f"train_{task.value}"]["cmd"].split()
    return Path(cmd[cmd.index("--data") + 1])


def main(
    tasks: Annotated[
        list[Task] | None, typer.Option("--task", help="Tasks (default: all).")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed runs per variant (interleaved).")] = 3,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs in each timed run.")] = 1,
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Print each task's whole-epoch throughput: train stage vs plain Keras."""
    config = load_params(params)
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    results["machine"]["load_average_before"] = os.getloadavg()[0]
    keras.utils.disable_interactive_logging()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        for task in tasks or list(Task):
            cfg = config.train.section(task)
            result = measure(task, cfg, training_data(task), repeats, Path(tmp), epochs)
            results[task.value] = result
            median = result["median_samples_per_s"]
            typer.echo(
                f"{task.value:<15} {cfg.cell}({cfg.units}) jit={cfg.jit_compile} "
                f"{result['precision']}  "
                + "  ".join(f"{name} {rate:7.1f}" for name, rate in median.items())
                + f" samples/s (median)  stage/plain {result['stage_vs_plain']['median']:.3f}"
                f"  stage/same-compile {result['stage_vs_same_compile']['median']:.3f}"
                f"  without the {result['peak_burst_seconds']:.2f}-s peak burst"
                f" {result['stage_without_peak_vs_same_compile']:.3f}"
            )
    results["machine"]["load_average_after"] = os.getloadavg()[0]
    if out:
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
