"""Find pauses inside trainings: gaps between logged steps far longer than the run's step pace.

A whole-pipeline timing (`repro_timing.py`) counts everything that happens while a stage
runs, including time in which nothing computes. This reads each task's latest `train` run
from an MLflow store, takes the timestamps of its per-step gradient norms (logged every
`log_every_n_steps`), and reports every interval that took more than `--factor` times the
run's median pace by at least `--min-seconds`, with the seconds beyond that pace and MLflow's
system CPU utilisation sampled just after it (near 0 means the machine sat idle: a wait, not work).

    python benchmarks/step_gaps.py --out benchmarks/results/step_gaps.json
"""

from __future__ import annotations

import json
import statistics
from itertools import pairwise
from pathlib import Path
from typing import Annotated

import typer
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.core.tracking import newest_stage_run
from pipeline.params import Task

STEP_METRIC = "grad_norm/global"  # pipeline.core.gradients.GLOBAL, without importing TensorFlow
CPU_METRIC = "system/cpu_utilization_percentage"


def latest_train_run(client: MlflowClient, task: str) -> Run | None:
    """The newest `train` stage run of a task's experiment, or None."""
    experiment = client.get_experiment_by_name(task)
    return newest_stage_run(client, experiment.experiment_id, "train") if experiment else None


def gaps(client: MlflowClient, run, factor: float, min_seconds: float) -> dict:
    """Intervals between logged steps slower than `factor` x the median pace of the run and
    longer than it by `min_seconds` (an epoch's validation is a short, busy gap)."""
    points = sorted(
        (m.step, m.timestamp) for m in client.get_metric_history(run.info.run_id, STEP_METRIC)
    )
    cpu = sorted(
        (m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, CPU_METRIC)
    )
    start = run.info.start_time
    paces = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in pairwise(points) if s1 > s0]
    pace = statistics.median(paces) if paces else 0.0
    found = []
    for (s0, t0), (s1, t1) in pairwise(points):
        expected = pace * (s1 - s0)
        slow = t1 - t0 > factor * expected and t1 - t0 - expected >= min_seconds * 1000
        if s1 > s0 and slow:
            after = [v for t, v in cpu if t >= t1]
            found.append(
                {
                    "after_step": s0,
                    "at_seconds": (t0 - start) / 1000,
                    "extra_seconds": (t1 - t0 - expected) / 1000,
                    "cpu_percent_next_sample": after[0] if after else None,
                }
            )
    return {
        "run_id": run.info.run_id,
        "run_seconds": ((run.info.end_time or start) - start) / 1000,
        "median_ms_per_step": pace,
        "gaps": found,
        "extra_seconds": sum(g["extra_seconds"] for g in found),
    }


def main(
    tracking_uri: Annotated[
        str, typer.Option(help="MLflow store to read.")
    ] = "sqlite:///mlflow.db",
    factor: Annotated[
        float, typer.Option(help="A gap is an interval this many times the pace.")
    ] = 3.0,
    min_seconds: Annotated[float, typer.Option(help="... and this much longer than it.")] = 5.0,
    out: Annotated[Path | None, typer.Option(help="Write the report as JSON here.")] = None,
) -> None:
    """Print each task's step-timing gaps in its latest training; optionally save them."""
    client = MlflowClient(tracking_uri)
    report = {}
    for task in Task:
        run = latest_train_run(client, task)
        if run is None:
            continue
        report[task] = gaps(client, run, factor, min_seconds)
        row = report[task]
        listed = ", ".join(
            f"{g['extra_seconds']:.1f} s after step {g['after_step']} "
            f"(CPU {g['cpu_percent_next_sample']}%)"
            for g in row["gaps"]
        )
        print(
            f"{task:15s} run {row['run_seconds']:7.1f} s  "
            f"gaps {row['extra_seconds']:5.1f} s  {listed}"
        )
    total = sum(r["extra_seconds"] for r in report.values())
    print(f"{'all':15s} {total:.1f} s beyond the step pace")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "tracking_uri": tracking_uri,
                    "factor": factor,
                    "min_seconds": min_seconds,
                    "tasks": report,
                    "extra_seconds": total,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    typer.run(main)
