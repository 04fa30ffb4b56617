"""Matrix-product throughput in float32 vs bfloat16 on this machine's CPU threads.

Why `precision: auto` picks bfloat16 where the CPU has native bfloat16 instructions: the same
products at both dtypes, interleaved, at three shapes — a square one, a recurrent step of the
language model (batch 64 x 4 LSTM gates of 256 units, inputs of 256) and its output layer
(64 x 64 positions x 2,000 subwords, hidden 256). Median GFLOP/s over the repeats.

    python benchmarks/matmul_peak.py --out benchmarks/results/matmul_peak.json
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

from pipeline.core.precision import NATIVE_BF16_FLAGS, cpu_flags, resolve_precision

SHAPES = {
    "square 1024": (1024, 1024, 1024),
    "lstm step": (64, 1024, 256),
    "lm softmax": (4096, 2000, 256),
}
DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16}


def gflops(m: int, n: int, k: int, dtype: tf.DType, calls: int) -> float:
    """GFLOP/s of `calls` back-to-back (m, k) @ (k, n) products, after one warm-up call."""
    a = tf.cast(tf.random.normal((m, k)), dtype)
    b = tf.cast(tf.random.normal((k, n)), dtype)
    product = tf.function(tf.matmul)
    product(a, b).numpy()
    started = time.perf_counter()
    for _ in range(calls):
        out = product(a, b)
    out.numpy()  # wait for the last product
    return 2 * m * n * k * calls / (time.perf_counter() - started) / 1e9


def main(
    repeats: Annotated[int, typer.Option(help="Timed bursts per shape and dtype.")] = 5,
    calls: Annotated[int, typer.Option(help="Products per burst.")] = 20,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Print float32 and bfloat16 GFLOP/s per shape and their ratio."""
    flags = cpu_flags()
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "native_bfloat16": sorted(NATIVE_BF16_FLAGS & flags),
        "auto_resolves_to": resolve_precision("auto", flags, 0),
        "shapes": {},
    }
    for name, (m, n, k) in SHAPES.items():
        rates: dict[str, list[float]] = {dtype: [] for dtype in DTYPES}
        for _ in range(repeats):
            for dtype, tf_dtype in DTYPES.items():
                rates[dtype].append(gflops(m, n, k, tf_dtype, calls))
        median = {dtype: statistics.median(values) for dtype, values in rates.items()}
        ratio = median["bfloat16"] / median["float32"]
        results["shapes"][name] = {"mnk": [m, n, k], "gflops": rates, "median": median}
        results["shapes"][name]["bfloat16_vs_float32"] = ratio
        typer.echo(
            f"{name:<12} {m}x{n}x{k}: float32 {median['float32']:6.1f}  "
            f"bfloat16 {median['bfloat16']:6.1f} GFLOP/s  ratio {ratio:.2f}"
        )
    if out:
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
