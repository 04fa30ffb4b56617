"""Wall time of the DVC pipeline: cold run per stage, no-op rerun, and a one-param change.

Works on a scratch clone of the current commit (your workspace is untouched) and prints a table;
`--out FILE` also writes JSON. The cold run is timed stage by stage (`dvc repro -s STAGE` in
pipeline order), so each number is that stage alone.

    python benchmarks/repro_timing.py --out repro_timing.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

CHANGE = ("tokenize", "translation", "vocab_size")  # touches only translation's tail


def sh(args: list[str], cwd: Path) -> tuple[float, str]:
    """Run a command; return (seconds, combined output); stop on failure."""
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - started, done.stdout + done.stderr


def stages(repo: Path) -> list[str]:
    """Stage names in dvc.yaml order, which is dependency order (a misordered stage fails)."""
    _, out = sh(["dvc", "stage", "list", "--name-only"], repo)
    return out.split()


def bump(repo: Path) -> None:
    """Change one param of one task, as a user editing params.yaml would."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    section, task, key = CHANGE
    params[section][task][key] = int(params[section][task][key]) + 8
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def main(
    out: Annotated[Path | None, typer.Option(help="Write results as JSON here.")] = None,
) -> None:
    """Time a cold `dvc repro` per stage, a no-op repro and a one-param change."""
    root = Path(__file__).resolve().parents[1]
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        sh(["git", "clone", "-q", str(root), str(repo)], Path(tmp))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        cold = {stage: sh(["dvc", "repro", "-s", stage], repo)[0] for stage in stages(repo)}
        noop, _ = sh(["dvc", "repro"], repo)
        bump(repo)
        changed_s, log = sh(["dvc", "repro"], repo)
    rerun = [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")]
    result = {
        "cold_seconds": cold,
        "cold_total": sum(cold.values()),
        "noop_seconds": noop,
        "one_param_change": ".".join(CHANGE),
        "one_param_seconds": changed_s,
        "one_param_reran": rerun,
    }
    for stage, seconds in cold.items():
        typer.echo(f"{stage:<28} {seconds:8.1f} s")
    typer.echo(f"{'cold total':<28} {result['cold_total']:8.1f} s")
    typer.echo(f"{'no-op repro':<28} {noop:8.1f} s")
    typer.echo(f"{'change ' + '.'.join(CHANGE):<28} {changed_s:8.1f} s  reran: {', '.join(rerun)}")
    if out:
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
