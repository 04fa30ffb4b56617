"""What the length buckets' spacing costs: padded timesteps per example, and classifier epochs.

A batch is padded to its longest member and a recurrent step costs the same for a pad as for a
token, so the padding a bucketing leaves is training time. For each bucketed task's training
split (this checkout's `data/`, params.yaml's settings) this prints the mean real and padded
timesteps per example of one epoch through the pipeline's own `batches`, with bucket edges a
factor of 2 apart and of sqrt(2) (`bucket_ratio`). It then times epochs of plain
`model.fit` of the default classifier on the two, interleaved, median of `--repeats`.

    python benchmarks/bucket_padding.py --out benchmarks/results/bucket_padding.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import keras
import numpy as np
import tensorflow as tf
import typer

from pipeline.core.datasets import BUCKET_RATIO, batches, ragged, slices
from pipeline.params import Task, TrainParams, load_params
from pipeline.tasks.classification.data import load_split, vocab_size
from pipeline.tasks.classification.model import build_classifier
from pipeline.tasks.translation.data import load_pairs

ROOT = Path(__file__).resolve().parents[1]
RATIOS = {"doubling": 2.0, "sqrt2": BUCKET_RATIO}


def example_lengths(task: Task, cfg: TrainParams) -> np.ndarray:
    """Timesteps of each training example as the task's data loader truncates them."""
    if task is Task.classification:
        seqs, _ = load_split(ROOT / "data/tokenized/classification", "train", cfg.max_len)
        return np.fromiter(map(len, seqs), dtype=np.int64)
    if task is Task.translation:
        source, target = load_pairs(ROOT / "data/tokenized/translation", "train", cfg.max_len)
        return np.asarray([max(len(s), len(t) + 1) for s, t in zip(source, target, strict=True)])
    frames = np.load(ROOT / "data/features/speech/train.npz")["features_offsets"]
    return np.minimum(np.diff(frames), cfg.max_len)


def padding(lengths: np.ndarray, cfg: TrainParams, ratio: float) -> dict[str, float]:
    """Mean real and padded timesteps per example over one shuffled, bucketed epoch."""
    rows = [np.ones(int(n), dtype=np.int32) for n in lengths]
    labels = np.zeros(len(rows), dtype=np.float32)
    padded = real = count = 0
    spaced = cfg.model_copy(update={"bucket_ratio": ratio})
    for tokens, _ in batches(slices(ragged(rows), labels), spaced, lengths, True):
        padded += int(tokens.shape[0]) * int(tokens.shape[1])
        real += int(tf.reduce_sum(tokens))
        count += 1
    return {"real": real / len(rows), "padded": padded / len(rows), "batches": count}


def classifier_epochs(cfg: TrainParams, repeats: int) -> dict[str, list[float]]:
    """Seconds of one plain `model.fit` epoch per spacing, interleaved (tracing warmed up)."""
    data = ROOT / "data/tokenized/classification"
    seqs, labels = load_split(data, "train", cfg.max_len)
    lengths = np.fromiter(map(len, seqs), dtype=np.int64)
    models, datasets = {}, {}
    for name, ratio in RATIOS.items():
        keras.utils.set_random_seed(cfg.seed)
        models[name] = build_classifier(cfg, vocab_size(data))
        models[name].compile(keras.optimizers.Adam(cfg.learning_rate), "binary_crossentropy")
        spaced = cfg.model_copy(update={"bucket_ratio": ratio})
        datasets[name] = batches(slices(ragged(seqs), labels), spaced, lengths, True)
        models[name].fit(datasets[name].take(20), verbose=0)  # trace the bucket shapes' steps
    seconds: dict[str, list[float]] = {name: [] for name in RATIOS}
    for _ in range(repeats):
        for name in RATIOS:
            started = time.perf_counter()
            models[name].fit(datasets[name], epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - started)
            typer.echo(f"classification epoch, {name:<8} {seconds[name][-1]:6.1f} s")
    return seconds


def report(task: Task, stats: dict[str, dict[str, float]]) -> None:
    """One line per task: real and padded timesteps under each spacing."""
    cells = "  ".join(f"{k} {v['padded']:6.1f} ({v['batches']} batches)" for k, v in stats.items())
    typer.echo(f"{task.value:<15} real {stats['sqrt2']['real']:6.1f}  padded: {cells}")


def main(
    tasks: Annotated[
        list[Task] | None, typer.Option("--task", help="Bucketed tasks (default: all three).")
    ] = None,
    repeats: Annotated[
        int, typer.Option(help="Timed classifier epochs per spacing (0: none).")
    ] = 2,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Print padded timesteps per example under both spacings, then time classifier epochs."""
    chosen: Sequence[Task] = tasks or [Task.classification, Task.translation, Task.speech]
    params = load_params(ROOT / "params.yaml").train
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "ratios": RATIOS,
        "padding": {},
    }
    for task in chosen:
        cfg = params.section(task)
        lengths = example_lengths(task, cfg)
        stats = {name: padding(lengths, cfg, ratio) for name, ratio in RATIOS.items()}
        results["padding"][task.value] = stats
        report(task, stats)
    if repeats and Task.classification in chosen:
        results["load_average_before"] = os.getloadavg()
        seconds = classifier_epochs(params.section(Task.classification), repeats)
        results["classification_epoch_seconds"] = seconds
        results["classification_epoch_median"] = {
            k: statistics.median(v) for k, v in seconds.items()
        }
        results["load_average_after"] = os.getloadavg()
        median = results["classification_epoch_median"]
        typer.echo(
            f"classification epoch sqrt2 / doubling: {median['sqrt2'] / median['doubling']:.3f}"
        )
    if out:
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
