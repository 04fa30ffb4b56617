"""What the machine's CPUs deliver together: the same work alone, side by side, and in TensorFlow.

Why: timings on the 2-core reference machine swing by 1.5x between identical runs, and a quick
test sometimes takes 30-50 s instead of a second. This separates the machine from the code:

1. **Side by side.** A fixed chunk of pure-Python work (no I/O, no memory traffic to speak of)
   timed repeatedly in one process alone, then in one process per CPU at once. On dedicated
   cores each process keeps its solo speed (parallel speedup = number of CPUs); virtual CPUs
   that share physical cores, or a host that withholds time, give less, and their chunk times
   spread out.
2. **Stalls.** Chunks that took more than `--stall-factor` times the fastest one.
3. **TensorFlow.** Float32 matmul GFLOP/s (1024^3 products) with 1 intra-op thread and with
   one per CPU, each in a fresh process: what the second thread adds to the kernels that
   training runs.

    python benchmarks/cpu_contention.py --out benchmarks/results/cpu_contention.json
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Annotated

import typer

CHUNK_ITERATIONS = 2_000_000


def chunk() -> int:
    """A fixed amount of interpreter work: the unit every measurement below counts."""
    total = 0
    for i in range(CHUNK_ITERATIONS):
        total += i
    return total


def time_chunks(seconds: float) -> list[float]:
    """Seconds per chunk, for as many chunks as fit in `seconds`."""
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        chunk()
        times.append(time.perf_counter() - started)
    return times


def summary(times: list[float], fastest: float, stall_factor: float) -> dict:
    """Chunk-time percentiles (ms), throughput and the chunks slower than stall_factor x fastest."""
    ordered = sorted(times)
    slow = [t for t in ordered if t > stall_factor * fastest]
    return {
        "chunks": len(ordered),
        "ms_min": 1000 * ordered[0],
        "ms_p50": 1000 * statistics.median(ordered),
        "ms_p90": 1000 * ordered[int(0.9 * (len(ordered) - 1))],
        "ms_max": 1000 * ordered[-1],
        "chunks_per_second": len(ordered) / sum(ordered),
        "stalls": len(slow),
        "stall_seconds": sum(slow),
    }


def matmul_gflops(threads: int, repeats: int = 5, calls: int = 20) -> list[float]:
    """Float32 1024^3 matmul GFLOP/s per burst with `threads` intra-op threads (fresh process)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    a = tf.random.normal((1024, 1024))
    product = tf.function(tf.matmul)
    product(a, a).numpy()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            out = product(a, a)
        out.numpy()
        rates.append(2 * 1024**3 * calls / (time.perf_counter() - started) / 1e9)
    return rates


def main(
    seconds: Annotated[float, typer.Option(help="Seconds of chunks per phase.")] = 30.0,
    stall_factor: Annotated[
        float, typer.Option(help="A chunk this many times the fastest is a stall.")
    ] = 3.0,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Print solo vs side-by-side chunk times, the speedup and TensorFlow's thread scaling."""
    cpus = os.cpu_count() or 1
    ctx = multiprocessing.get_context("spawn")
    solo = time_chunks(seconds)
    with ctx.Pool(cpus) as pool:
        together = pool.map(time_chunks, [seconds] * cpus)
    fastest = min(min(solo), *(min(t) for t in together))
    solo_summary = summary(solo, fastest, stall_factor)
    per_process = [summary(t, fastest, stall_factor) for t in together]
    speedup = sum(p["chunks_per_second"] for p in per_process) / solo_summary["chunks_per_second"]
    tf_rates = {}
    for threads in sorted({1, cpus}):
        with ctx.Pool(1) as pool:
            tf_rates[threads] = pool.apply(matmul_gflops, (threads,))
    tf_median = {threads: statistics.median(rates) for threads, rates in tf_rates.items()}
    results = {
        "machine": {"cpus": cpus, "platform": platform.platform()},
        "seconds_per_phase": seconds,
        "stall_factor": stall_factor,
        "solo": solo_summary,
        "side_by_side": per_process,
        "parallel_speedup": speedup,
        "matmul_gflops": {str(k): v for k, v in tf_rates.items()},
        "matmul_gflops_median": {str(k): v for k, v in tf_median.items()},
        "matmul_thread_speedup": tf_median[cpus] / tf_median[1],
    }
    typer.echo(
        f"solo: p50 {solo_summary['ms_p50']:.0f} ms/chunk (min {solo_summary['ms_min']:.0f})"
    )
    for i, p in enumerate(per_process):
        typer.echo(
            f"side by side #{i}: p50 {p['ms_p50']:.0f} ms (min {p['ms_min']:.0f}, "
            f"max {p['ms_max']:.0f}), {p['stalls']} stalls"
        )
    typer.echo(f"parallel speedup with {cpus} processes: {speedup:.2f} (ideal {cpus})")
    for threads, median in tf_median.items():
        typer.echo(f"matmul float32, {threads} thread(s): {median:.1f} GFLOP/s")
    typer.echo(f"matmul speedup {cpus} threads vs 1: {results['matmul_thread_speedup']:.2f}")
    if out:
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
