"""Wall time of the DVC pipeline: cold run per stage, no-op rerun, and a one-param change.

It also collects each task's training throughput, FLOP/s and MFU (model FLOP utilisation,
`pipeline/core/flops.py`) from the `train.json` the cold run wrote.

Works on a scratch clone of the current commit (your workspace is untouched) and prints a table;
`--out FILE` also writes JSON. The cold run is timed stage by stage (`dvc repro -s STAGE` in
pipeline order), so each number is that stage alone. `--workspace` instead forces every stage
in this repository (`dvc repro -f -s STAGE`: its outputs and dvc.lock are rewritten, params.yaml
is left alone, so the one-param change is skipped).

    python benchmarks/repro_timing.py --out benchmarks/results/repro_timing.json
    python benchmarks/repro_timing.py --noop-repeats 5 --out benchmarks/results/repro_noop.json

`--noop-repeats N` times N no-op repros of this workspace, each followed by one of a scratch
project holding a single copy stage (the floor DVC itself sets on this machine) and one of a
scratch project of as many trivial stages as this pipeline has, chained, each reading one param
and one file (what DVC charges per stage whatever the stage is).
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


def timed_repro(repo: Path, force: bool) -> dict[str, float]:
    """Seconds of each stage run alone, in pipeline order."""
    flags = ["-f", "-s"] if force else ["-s"]
    return {stage: sh(["dvc", "repro", *flags, stage], repo)[0] for stage in stages(repo)}


def one_param_change(repo: Path) -> dict:
    """Bump one param and time the repro that follows; which stages reran."""
    bump(repo)
    seconds, log = sh(["dvc", "repro"], repo)
    rerun = [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")]
    return {
        "one_param_change": ".".join(CHANGE),
        "one_param_seconds": seconds,
        "one_param_reran": rerun,
    }


def new_dvc_project(folder: Path) -> None:
    """An empty git + DVC project in a new `folder`, analytics off (no network at exit)."""
    folder.mkdir()
    for args in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
    ):
        sh(args, folder)


def one_stage_project(folder: Path) -> Path:
    """A scratch DVC project of one up-to-date copy stage: DVC's own no-op floor."""
    new_dvc_project(folder)
    (folder / "a.txt").write_text("a\n")
    sh(["dvc", "stage", "add", "-q", "-n", "copy", "-d", "a.txt", "-o", "b.txt",
        "cp a.txt b.txt"], folder)  # fmt: skip
    sh(["dvc", "repro", "-q"], folder)
    return folder


def chained_project(folder: Path, count: int) -> Path:
    """A scratch DVC project of `count` up-to-date trivial stages, each one param and one dep."""
    new_dvc_project(folder)
    (folder / "params.yaml").write_text("".join(f"p{i}: {i}\n" for i in range(count)))
    (folder / "s0.txt").write_text("0\n")
    chain = {
        f"s{i + 1}": {
            "cmd": f"cp s{i}.txt s{i + 1}.txt",
            "deps": [f"s{i}.txt"],
            "params": [f"p{i}"],
            "outs": [f"s{i + 1}.txt"],
        }
        for i in range(count)
    }
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": chain}, sort_keys=False))
    sh(["dvc", "repro", "-q"], folder)
    return folder


def noop_only(repo: Path, repeats: int, out: Path | None) -> None:
    """Time `dvc repro` on an up-to-date workspace and on two scratch projects, interleaved."""
    count = len(stages(repo))
    with tempfile.TemporaryDirectory() as tmp:
        floor_repo = one_stage_project(Path(tmp) / "one")
        chain_repo = chained_project(Path(tmp) / "chain", count)
        seconds, floor, chain = [], [], []
        for _ in range(repeats):
            seconds.append(sh(["dvc", "repro"], repo)[0])
            floor.append(sh(["dvc", "repro"], floor_repo)[0])
            chain.append(sh(["dvc", "repro"], chain_repo)[0])
    typer.echo("no-op repro: " + ", ".join(f"{s:.2f} s" for s in seconds))
    typer.echo("one-stage project: " + ", ".join(f"{s:.2f} s" for s in floor))
    typer.echo(f"{count} trivial stages: " + ", ".join(f"{s:.2f} s" for s in chain))
    if out:
        result = {
            "noop_seconds": seconds,
            "one_stage_noop_seconds": floor,
            "trivial_stages_noop_seconds": chain,
            "stages": count,
            "cpus": os.cpu_count(),
        }
        out.write_text(json.dumps(result) + "\n")


def main(
    out: Annotated[Path | None, typer.Option(help="Write results as JSON here.")] = None,
    workspace: Annotated[
        bool, typer.Option(help="Force every stage in this repository instead of a clone.")
    ] = False,
    noop_repeats: Annotated[
        int, typer.Option(help="Only time this many no-op repros of this (up-to-date) workspace.")
    ] = 0,
) -> None:
    """Time a cold `dvc repro` per stage, a no-op repro and a one-param change."""
    root = Path(__file__).resolve().parents[1]
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    if noop_repeats:
        noop_only(root, noop_repeats, out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        repo = root if workspace else Path(tmp) / "repo"
        if not workspace:
            sh(["git", "clone", "-q", str(root), str(repo)], Path(tmp))
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        cold = timed_repro(repo, force=workspace)
        noop, _ = sh(["dvc", "repro"], repo)
        change = {} if workspace else one_param_change(repo)
        trained = utilisation(repo)
    result = {
        "cold_seconds": cold,
        "cold_total": sum(cold.values()),
        "noop_seconds": noop,
        "cpus": os.cpu_count(),
        "load_average_after": os.getloadavg()[0],
        "training": trained,
    } | change
    for stage, seconds in cold.items():
        typer.echo(f"{stage:<28} {seconds:8.1f} s")
    typer.echo(f"{'cold total':<28} {result['cold_total']:8.1f} s")
    typer.echo(f"{'no-op repro':<28} {noop:8.1f} s")
    if change:
        typer.echo(
            f"{'change ' + change['one_param_change']:<28} {change['one_param_seconds']:8.1f} s"
            f"  reran: {', '.join(change['one_param_reran'])}"
        )
    for task, perf in trained.items():
        typer.echo(
            f"{'train ' + task:<28} {perf['samples_per_second']:8.1f} samples/s"
            f"  {perf['flops_per_second'] / 1e9:6.2f} GFLOP/s  MFU {perf['mfu']:.3f}"
        )
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")


PERF_KEYS = ("train_seconds", "samples_per_second", "flops_per_second", "matmul_peak_flops", "mfu")


def utilisation(repo: Path) -> dict[str, dict[str, float]]:
    """Each task's training throughput and MFU from its `metrics/<task>/train.json`."""
    found = {}
    for path in sorted(repo.glob("metrics/*/train.json")):
        metrics = json.loads(path.read_text())
        found[path.parent.name] = {k: metrics[k] for k in PERF_KEYS if k in metrics}
    return found


if __name__ == "__main__":
    typer.run(main)
