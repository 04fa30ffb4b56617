"""Forecasting quality over training seeds: the default model against its baselines.

For each seed, runs the real `train` and `evaluate` commands with the repository's params.yaml
(only `train.forecasting.seed` changed) on the featurized series of
`dvc repro featurize_forecasting`, each with its own output folder and a throwaway MLflow store;
prints a table and mean ± std (sample std) of the test metrics, the baselines' (the same for
every seed) and the training time. `--out FILE` also writes JSON.

    dvc repro featurize_forecasting
    python benchmarks/forecasting_quality.py --out benchmarks/results/forecasting_quality.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
FORECASTERS = ("test", "baseline.naive_day", "baseline.naive_week", "baseline.ridge")
KEYS = (
    *(f"{name}.{metric}" for name in FORECASTERS for metric in ("mase", "mae", "rmse", "smape")),
    "test.grad_flow.last_week_vs_yesterday",
    "test.grad_flow.six_days_ago_vs_yesterday",
    "val_loss",
    "epochs_run",
    "train_seconds",
)


def pipeline(args: list[str], env: dict[str, str]) -> None:
    """Run one `python -m pipeline` command from the repository root; stop on failure."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"pipeline {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def run_seed(seed: int, features: Path, work: Path) -> dict[str, float]:
    """Train and evaluate with one training seed; return the metrics of interest."""
    work.mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["forecasting"]["seed"] = seed
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    common = ["--params", str(work / "params.yaml")]
    pipeline(
        ["train", "forecasting", "--data", str(features), "--out", str(work / "model")]
        + ["--plots", str(work / "plots"), "--metrics", str(work / "train.json")]
        + ["--checkpoints", str(work / "checkpoints"), *common],
        env,
    )
    pipeline(
        ["evaluate", "forecasting", "--model", str(work / "model"), "--data", str(features)]
        + ["--raw", str(work), "--reports", str(work / "reports")]
        + ["--metrics", str(work / "evaluate.json"), *common],
        env,
    )
    results = json.loads((work / "train.json").read_text()) | json.loads(
        (work / "evaluate.json").read_text()
    )
    return {key: float(results[key]) for key in KEYS}


def summarize(rows: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each metric over the seeds."""
    summary = {}
    for key in KEYS:
        values = np.asarray([row[key] for row in rows.values()])
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[key] = {"mean": float(values.mean()), "std": std}
    return summary


def main(
    seeds: Annotated[
        list[int] | None, typer.Option("--seed", help="A training seed (repeatable; 42 43 44).")
    ] = None,
    features: Annotated[Path, typer.Option(help="Featurized series.")] = ROOT
    / "data/features/forecasting",
    out: Annotated[Path | None, typer.Option(help="Write results as JSON here.")] = None,
) -> None:
    """Train and evaluate the forecaster once per seed; print and save mean ± std."""
    if not (features / "series.npz").is_file():
        sys.exit(f"{features} has no series.npz: run `dvc repro featurize_forecasting` first")
    with tempfile.TemporaryDirectory() as tmp:
        rows = {s: run_seed(s, features, Path(tmp) / str(s)) for s in seeds or [42, 43, 44]}
    summary = summarize(rows)
    for key in KEYS:
        values = " ".join(f"{rows[seed][key]:>9.4f}" for seed in rows)
        typer.echo(f"{key:<44} {values}   {summary[key]['mean']:.4f} ± {summary[key]['std']:.4f}")
    if out:
        result = {"seeds": rows, "summary": summary, "cpus": os.cpu_count(), "split": "default"}
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
