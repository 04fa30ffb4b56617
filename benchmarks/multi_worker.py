"""Training throughput with 1 local worker vs N local workers (MultiWorkerMirroredStrategy).

Runs the real `train` command twice on the same tokenized data and params (a few capped
epochs, against a throwaway MLflow store): once with `distribute: none`, once with
`distribute: multi_worker` and `--workers N`. The global batch is the same in both, so each
of the N workers computes 1/N of it and they all-reduce gradients every step. On one machine
the workers share its cores, so expect no speed-up; the number shows the cost of the
collectives, and the path to real clusters is the same command with one worker per host.

    python benchmarks/multi_worker.py --task classification --workers 2 --out mw.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
import yaml

from pipeline.params import Task


def run_training(task: Task, data: Path, params: Path, work: Path, workers: int) -> dict:
    """Run `train` as a child process; return its final metrics."""
    command = [sys.executable, "-m", "pipeline", "train", task.value, "--data", str(data)]
    command += ["--out", str(work / "model"), "--plots", str(work / "plots")]
    command += ["--metrics", str(work / "metrics.json"), "--checkpoints", str(work / "ckpt")]
    command += ["--params", str(params)] + (["--workers", str(workers)] if workers > 1 else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"training with {workers} worker(s) failed:\n{done.stderr[-3000:]}")
    return json.loads((work / "metrics.json").read_text())


def variant(base: dict, task: Task, distribute: str, steps: int, epochs: int) -> dict:
    """params.yaml with the task's training capped and its strategy set."""
    params = json.loads(json.dumps(base))
    section = params["train"][task.value]
    section |= {"distribute": distribute, "max_steps_per_epoch": steps, "epochs": epochs}
    section["early_stopping_patience"] = None
    return params


def main(
    task: Annotated[Task, typer.Option(help="Which task's model to train.")] = Task.classification,
    workers: Annotated[int, typer.Option(min=2, help="Workers in the multi-worker run.")] = 2,
    steps: Annotated[int, typer.Option(help="Steps per epoch.")] = 40,
    epochs: Annotated[int, typer.Option(help="Epochs (the first includes tracing).")] = 2,
    data: Annotated[Path | None, typer.Option(help="Tokenized data (default: DVC's).")] = None,
    params: Annotated[Path, typer.Option(help="params.yaml to start from.")] = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Print samples/s of 1 vs N local workers on the same global batch."""
    data = data or Path("data/tokenized") / task.value
    if not data.is_dir():
        sys.exit(f"{data} not found: run `dvc repro tokenize@{task.value}` first")
    base = yaml.safe_load(params.read_text())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        for count, kind in ((1, "none"), (workers, "multi_worker")):
            path = Path(tmp) / f"params-{count}.yaml"
            path.write_text(yaml.safe_dump(variant(base, task, kind, steps, epochs)))
            metrics = run_training(task, data, path, Path(tmp) / f"w{count}", count)
            results[count] = {
                "samples_per_second": metrics["samples_per_second"],
                "train_seconds": metrics["train_seconds"],
                "loss": metrics["loss"],
            }
            typer.echo(
                f"{count} worker(s): {metrics['samples_per_second']:8.1f} samples/s  "
                f"({metrics['train_seconds']:.1f} s, final loss {metrics['loss']:.4f})"
            )
    ratio = results[workers]["samples_per_second"] / results[1]["samples_per_second"]
    typer.echo(f"speed-up {workers} workers / 1 worker: {ratio:.2f}  (cpus here: {os.cpu_count()})")
    if out:
        summary = {"task": task.value, "steps": steps, "epochs": epochs, "ratio": ratio}
        out.write_text(json.dumps(summary | {"workers": results}, indent=2))


if __name__ == "__main__":
    typer.run(main)
