"""Where the classifier's training step goes on this CPU: step time by batch, width, compile.

The default classifier (`pipeline.tasks.classification.model.build_classifier` with params.yaml's
`train.classification`) and variants of it, each trained on the same synthetic batch of review
tokens (`--length` subwords, the last 15% of rows padded away, as a length bucket would leave
them): milliseconds per `train_on_batch` step and reviews per second, the variants interleaved
and the median over `--repeats` bursts. A step whose time barely grows with the batch is bound
by the per-timestep latency of the recurrent loop, not by arithmetic.

    python benchmarks/recurrent_step.py --out benchmarks/results/recurrent_step.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Annotated

import keras
import numpy as np
import typer

from pipeline.params import ClassificationTrain, Task, load_params
from pipeline.tasks.classification.model import build_classifier

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 8000
# name -> (overrides of train.classification, batch size or None for the default's)
VARIANTS: dict[str, tuple[dict, int | None]] = {
    "default": ({}, None),
    "batch 32": ({}, 32),
    "batch 128": ({}, 128),
    "64 units": ({"units": 64}, None),
    "bidirectional, 64 units a direction": ({"bidirectional": True, "units": 64}, None),
    "XLA (jit_compile)": ({"jit_compile": True}, None),
    "2 tokens a step": ({"tokens_per_step": 2}, None),
    "2 tokens a step, bidirectional 64": (
        {"tokens_per_step": 2, "bidirectional": True, "units": 64},
        None,
    ),
    "2 tokens a step, bidirectional 96": (
        {"tokens_per_step": 2, "bidirectional": True, "units": 96},
        None,
    ),
    "3 tokens a step, bidirectional 96": (
        {"tokens_per_step": 3, "bidirectional": True, "units": 96},
        None,
    ),
    "3 tokens a step, bidirectional 128": (
        {"tokens_per_step": 3, "bidirectional": True, "units": 128},
        None,
    ),
}


def default_params() -> ClassificationTrain:
    """The repository's `train.classification`, validated like the pipeline's."""
    return load_params(ROOT / "params.yaml").train.section(Task.classification)


def batch(size: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens, the last 15% of rows cut short by up to 15% of the length, and labels."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, size=(size, length)).astype("int32")
    for row in range(size - max(1, size * 15 // 100), size):
        tokens[row, length - rng.integers(1, max(2, length * 15 // 100)) :] = 0
    return tokens, rng.integers(0, 2, size=(size, 1)).astype("float32")


def stepper(
    cfg: ClassificationTrain, size: int, length: int
) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """A compiled model and its batch, warmed up (tracing and compiling are not timed)."""
    keras.utils.set_random_seed(cfg.seed)
    model = build_classifier(cfg, VOCAB)
    model.compile(
        keras.optimizers.Adam(cfg.learning_rate), "binary_crossentropy", jit_compile=cfg.jit_compile
    )
    x, y = batch(size, length)
    for _ in range(2):
        model.train_on_batch(x, y)
    return model, x, y


def timed(model: keras.Model, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    """Seconds per step over `steps` back-to-back steps."""
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - started) / steps


def summary(name: str, size: int, seconds: list[float]) -> dict:
    """One variant's timings, median step and throughput; printed as one line."""
    median = statistics.median(seconds)
    typer.echo(f"{name:<38} batch {size:>3}: {median * 1000:7.1f} ms/step, {size / median:5.0f}/s")
    return {
        "overrides": VARIANTS[name][0],
        "batch_size": size,
        "seconds_per_step": seconds,
        "median_ms_per_step": median * 1000,
        "reviews_per_second": size / median,
    }


def main(
    length: Annotated[int, typer.Option(help="Subwords per review in the timed batch.")] = 256,
    steps: Annotated[int, typer.Option(help="Training steps per timed burst.")] = 10,
    repeats: Annotated[int, typer.Option(help="Interleaved bursts per variant.")] = 3,
    variant: Annotated[
        list[str] | None, typer.Option(help="Variants to time (repeatable); default: all.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Print each variant's median milliseconds per step and reviews per second."""
    chosen = variant or list(VARIANTS)
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        raise typer.BadParameter(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    base = default_params()
    models = {}
    for name in chosen:
        overrides, size = VARIANTS[name]
        cfg = base.model_copy(update=overrides)
        models[name] = stepper(cfg, size or cfg.batch_size, length)
    seconds: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(repeats):
        for name in chosen:
            seconds[name].append(timed(*models[name], steps))
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
        "length": length,
        "steps": steps,
        "repeats": repeats,
        "variants": {},
    }
    for name in chosen:
        results["variants"][name] = summary(name, len(models[name][1]), seconds[name])
    if out:
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
