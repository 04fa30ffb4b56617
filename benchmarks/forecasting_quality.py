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
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from seeds import ROOT, run_seed, summarize

FORECASTERS = ("test", "baseline.naive_day", "baseline.naive_week", "baseline.ridge")
KEYS = (
    *(f"{name}.{metric}" for name in FORECASTERS for metric in ("mase", "mae", "rmse", "smape")),
    "test.grad_flow.last_week_vs_yesterday",
    "test.grad_flow.six_days_ago_vs_yesterday",
    "val_loss",
    "epochs_run",
    "train_seconds",
)


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
        rows = {
            s: run_seed("forecasting", s, features, Path(tmp), Path(tmp) / str(s), KEYS)
            for s in seeds or [42, 43, 44]
        }
    summary = summarize(rows, KEYS)
    for key in KEYS:
        values = " ".join(f"{rows[seed][key]:>9.4f}" for seed in rows)
        typer.echo(f"{key:<44} {values}   {summary[key]['mean']:.4f} ± {summary[key]['std']:.4f}")
    if out:
        result = {"seeds": rows, "summary": summary, "cpus": os.cpu_count(), "split": "default"}
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
