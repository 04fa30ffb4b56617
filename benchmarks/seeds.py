"""Run a task's real `train` and `evaluate` commands once per training seed; mean ± std.

Shared by the per-task quality scripts: each seed gets the repository's params.yaml with only
`train.<task>.seed` changed, its own output folder and a throwaway MLflow store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def pipeline(args: list[str], env: dict[str, str]) -> None:
    """Run one `python -m pipeline` command from the repository root; stop on failure."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"pipeline {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def run_seed(
    task: str, seed: int, data: Path, raw: Path, work: Path, keys: Sequence[str]
) -> dict[str, float]:
    """Train and evaluate with one training seed; return the metrics named in `keys`."""
    work.mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["train"][task]["seed"] = seed
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    common = ["--params", str(work / "params.yaml")]
    pipeline(
        ["train", task, "--data", str(data), "--out", str(work / "model")]
        + ["--plots", str(work / "plots"), "--metrics", str(work / "train.json")]
        + ["--checkpoints", str(work / "checkpoints"), *common],
        env,
    )
    pipeline(
        ["evaluate", task, "--model", str(work / "model"), "--data", str(data)]
        + ["--raw", str(raw), "--reports", str(work / "reports")]
        + ["--metrics", str(work / "evaluate.json"), *common],
        env,
    )
    results = json.loads((work / "train.json").read_text()) | json.loads(
        (work / "evaluate.json").read_text()
    )
    return {key: float(results[key]) for key in keys}


def summarize(
    rows: dict[int, dict[str, float]], keys: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each metric over the seeds."""
    summary = {}
    for key in keys:
        values = np.asarray([row[key] for row in rows.values()])
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[key] = {"mean": float(values.mean()), "std": std}
    return summary
