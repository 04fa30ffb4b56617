"""What a new epoch's tf.data iterator costs, with tf.data's autotuning on and off.

Keras's `fit` makes a new iterator over the training set at every epoch, and the previous
one is destroyed then. With autotuning on, that destructor waits for the iterator's autotune
thread (tf.data's `Model::OptimizeLoop`) to finish its current optimisation period: the main
thread sits in `RootDataset::Iterator::~Iterator`, CPU idle. In long trainings this showed as
17-37 s pauses at epoch starts (caught with `py-spy dump --native`). The pipeline's datasets
turn autotuning off (`pipeline.core.datasets.without_autotune`); this measures both on the
classifier's real training split through the pipeline's own `make_dataset`: seconds to replace
the iterator at each epoch start and seconds to read the epoch, interleaved, `--repeats` runs.

    python benchmarks/iterator_teardown.py --out benchmarks/results/iterator_teardown.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Annotated

import tensorflow as tf
import typer

from pipeline.core.datasets import with_autotune
from pipeline.params import Task, load_params
from pipeline.tasks.classification.data import load_split, make_dataset

ROOT = Path(__file__).resolve().parents[1]


def epochs(ds: tf.data.Dataset, count: int, delay_s: float = 0.0) -> list[dict[str, float]]:
    """Iterate `count` epochs as Keras does, one new iterator each, the last one dropped then.

    `delay_s` per batch stands in for a training step (a sleep: it leaves the CPU to tf.data).
    """
    timings, iterator = [], None
    for _ in range(count):
        started = time.perf_counter()
        iterator = iter(ds)  # the previous epoch's iterator is destroyed here
        opened = time.perf_counter()
        batches = 0
        for _batch in iterator:
            batches += 1
            if delay_s:
                time.sleep(delay_s)
        done = time.perf_counter()
        timings.append(
            {"new_iterator_s": opened - started, "epoch_s": done - opened, "batches": batches}
        )
    del iterator
    return timings


def summary(runs: list[list[dict[str, float]]]) -> dict:
    """Epoch starts after the first (the first has no iterator to destroy): median and max."""
    starts = [epoch["new_iterator_s"] for run in runs for epoch in run[1:]]
    reads = [epoch["epoch_s"] for run in runs for epoch in run]
    return {
        "new_iterator_s_median": statistics.median(starts),
        "new_iterator_s_max": max(starts),
        "epoch_s_median": statistics.median(reads),
        "runs": runs,
    }


def main(
    epoch_count: Annotated[int, typer.Option("--epochs", help="Epochs per run.")] = 4,
    repeats: Annotated[int, typer.Option(help="Interleaved runs per setting.")] = 3,
    delay_ms: Annotated[float, typer.Option(help="Sleep per batch, standing in for a step.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Print the median and worst epoch-start seconds with autotuning on and off."""
    cfg = load_params(ROOT / "params.yaml").train.section(Task.classification)
    seqs, labels = load_split(ROOT / "data/tokenized/classification", "train", cfg.max_len)
    pipeline_ds = make_dataset(seqs, labels, cfg, shuffle=True)
    settings = {"autotune on (tf.data default)": True, "autotune off (the pipeline's)": False}
    runs: dict[str, list] = {name: [] for name in settings}
    for _ in range(repeats):
        for name, enabled in settings.items():
            runs[name].append(
                epochs(with_autotune(pipeline_ds, enabled), epoch_count, delay_ms / 1e3)
            )
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "epochs": epoch_count,
        "repeats": repeats,
        "delay_ms": delay_ms,
        "settings": {name: summary(runs[name]) for name in settings},
    }
    for name, found in results["settings"].items():
        typer.echo(
            f"{name:<30} new iterator: median {found['new_iterator_s_median']:.2f} s, "
            f"worst {found['new_iterator_s_max']:.2f} s; epoch read {found['epoch_s_median']:.2f} s"
        )
    if out:
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
