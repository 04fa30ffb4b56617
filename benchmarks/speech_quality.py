"""Speech quality over training seeds: the default model on the default (speaker-dependent) split.

For each seed, runs the real `train` and `evaluate` commands with the repository's params.yaml
(only `train.speech.seed` changed) on the featurized data of `dvc repro featurize_speech`, each
with its own output folder and a throwaway MLflow store; prints a table and mean ± std (sample
std) of the test metrics, the baseline's and the training time. `--out FILE` also writes JSON.

    dvc repro featurize_speech
    python benchmarks/speech_quality.py --out benchmarks/results/speech_quality.json
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
KEYS = (
    "test.accuracy",
    "test.macro_f1",
    "baseline.accuracy",
    "baseline.macro_f1",
    "val_accuracy",
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


def run_seed(seed: int, features: Path, raw: Path, work: Path) -> dict[str, float]:
    """Train and evaluate with one training seed; return the metrics of interest."""
    work.mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["speech"]["seed"] = seed
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    common = ["--params", str(work / "params.yaml")]
    pipeline(
        ["train", "speech", "--data", str(features), "--out", str(work / "model")]
        + ["--plots", str(work / "plots"), "--metrics", str(work / "train.json")]
        + ["--checkpoints", str(work / "checkpoints"), *common],
        env,
    )
    pipeline(
        ["evaluate", "speech", "--model", str(work / "model"), "--data", str(features)]
        + ["--raw", str(raw), "--reports", str(work / "reports")]
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
    features: Annotated[Path, typer.Option(help="Featurized data.")] = ROOT
    / "data/features/speech",
    raw: Annotated[Path, typer.Option(help="Downloaded data.")] = ROOT / "data/raw/speech",
    out: Annotated[Path | None, typer.Option(help="Write results as JSON here.")] = None,
) -> None:
    """Train and evaluate the speech model once per seed; print and save mean ± std."""
    if not (features / "train.npz").is_file():
        sys.exit(f"{features} has no train.npz: run `dvc repro featurize_speech` first")
    with tempfile.TemporaryDirectory() as tmp:
        rows = {s: run_seed(s, features, raw, Path(tmp) / str(s)) for s in seeds or [42, 43, 44]}
    summary = summarize(rows)
    typer.echo(f"{'seed':>6} " + " ".join(f"{key:>18}" for key in KEYS))
    for seed, row in rows.items():
        typer.echo(f"{seed:>6} " + " ".join(f"{row[key]:>18.4f}" for key in KEYS))
    typer.echo(
        f"{'mean':>6} "
        + " ".join(f"{summary[k]['mean']:>10.4f} ± {summary[k]['std']:<6.4f}" for k in KEYS)
    )
    if out:
        result = {"seeds": rows, "summary": summary, "cpus": os.cpu_count(), "split": "default"}
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
