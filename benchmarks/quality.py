"""Quality over training seeds: each text task's default model against its baseline.

For each task and seed, runs the real `train` and `evaluate` commands with the repository's
params.yaml (`train.<task>.seed` and any `--set` overrides changed) on the tokenized data of
`dvc repro`, each with its own output folder and a throwaway MLflow store; prints a table and
mean ± std (sample std) of the test metrics, the baseline's, the gradient horizons and the
training time, with the load average around each training (the 2-core reference machine is
often shared, so times are upper bounds).

    dvc repro tokenize@classification tokenize@language_model tokenize@translation
    python benchmarks/quality.py --out benchmarks/results/quality.json
    # one cell of the README's cell comparison
    python benchmarks/quality.py --task classification --seed 42 \
        --set train.classification.cell=lstm --out benchmarks/results/cells/lstm.json

Overrides of `download.<task>.*` or `tokenize.<task>.*` download and tokenize the task again in
the scratch folder (once, shared by the seeds) instead of reading the repository's data.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
import yaml
from seeds import ROOT, pipeline, summarize

from pipeline.params import yaml_value

KEYS = {
    "classification": (
        "test.accuracy",
        "baseline.accuracy",
        "test.roc_auc",
        "baseline.roc_auc",
        "val.accuracy",
        "val.roc_auc",
        "val_accuracy",
        "epochs_run",
        "train_seconds",
        "load_average",
    ),
    "language_model": (
        "test.perplexity",
        "baseline.perplexity",
        "perplexity_ratio",
        "test.bpc",
        "baseline.bpc",
        "val_perplexity",
        "epochs_run",
        "train_seconds",
        "load_average",
    ),
    "translation": (
        "test.bleu_greedy",
        "test.bleu_beam",
        "baseline.bleu",
        "test.chrf_greedy",
        "test.chrf_beam",
        "baseline.chrf",
        "epochs_run",
        "train_seconds",
        "load_average",
    ),
}

# Reported when the run produced them (the language model's continuous cache is a param).
OPTIONAL = {
    "language_model": (
        "test.cache_perplexity",
        "test.cache_bpc",
        "baseline.cache_perplexity",
        "baseline.cache_bpc",
        "cache_ratio",
        "cache_ratio_vs_cached_baseline",
        "cache.theta",
        "cache.lambda",
    ),
}


def scratch(work: Path, params: dict) -> dict[str, str]:
    """Create `work` holding `params` as params.yaml; the environment of its own MLflow store."""
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}


def prepare(task: str, params: dict, work: Path) -> tuple[Path, Path]:
    """Download and tokenize `task` with `params` into `work` (its data was overridden)."""
    env, path = scratch(work, params), work / "params.yaml"
    raw, data = work / "raw", work / "tokenized"
    pipeline(["download", task, "--out", str(raw), "--params", str(path)], env)
    pipeline(
        ["tokenize", task, "--data", str(raw), "--out", str(data)]
        + ["--metrics", str(work / "tokenize.json"), "--params", str(path)],
        env,
    )
    return data, raw


def train_and_evaluate(
    task: str, work: Path, env: dict[str, str], inputs: tuple[Path, Path]
) -> dict[str, float]:
    """Train on `inputs` (tokenized, raw), then evaluate on the test split; both metrics files."""
    data, raw = inputs
    common = ["--params", str(work / "params.yaml")]
    load = os.getloadavg()[0]
    pipeline(
        ["train", task, "--data", str(data), "--out", str(work / "model")]
        + ["--plots", str(work / "plots"), "--metrics", str(work / "train.json")]
        + ["--checkpoints", str(work / "checkpoints"), *common],
        env,
    )
    load = (load + os.getloadavg()[0]) / 2  # 1-minute load before and after training
    pipeline(
        ["evaluate", task, "--model", str(work / "model"), "--data", str(data)]
        + ["--raw", str(raw), "--reports", str(work / "reports")]
        + ["--metrics", str(work / "evaluate.json"), *common],
        env,
    )
    merged = json.loads((work / "train.json").read_text())
    return merged | json.loads((work / "evaluate.json").read_text()) | {"load_average": load}


def overridden(overrides: list[str]) -> dict:
    """params.yaml with `dotted.key=value` overrides applied (values parsed as YAML)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for override in overrides:
        key, _, value = override.partition("=")
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        if leaf not in node:
            sys.exit(f"--set {override}: no such key in params.yaml")
        node[leaf] = yaml_value(value)
    return params


def run_seed(
    task: str, seed: int, params: dict, work: Path, inputs: tuple[Path, Path]
) -> dict[str, float]:
    """Train and evaluate one task with one training seed; return the metrics of interest."""
    params = {**params, "train": {**params["train"], task: {**params["train"][task], "seed": seed}}}
    env = scratch(work, params)
    results = train_and_evaluate(task, work, env, inputs)
    if task == "language_model":
        results["perplexity_ratio"] = results["test.perplexity"] / results["baseline.perplexity"]
        if "test.cache_perplexity" in results:  # evaluate.language_model.cache_size > 0
            cached = results["test.cache_perplexity"]
            results["cache_ratio"] = cached / results["baseline.perplexity"]
            results["cache_ratio_vs_cached_baseline"] = (
                cached / results["baseline.cache_perplexity"]
            )
    summaries = ("grad_flow/horizon/", "grad_flow/log_ratio/")
    flow = sorted(k for k in results if k.startswith(summaries))
    present = [key for key in OPTIONAL.get(task, ()) if key in results]
    return {key: float(results[key]) for key in (*KEYS[task], *present, *flow)}


def run_seeds(
    task: str, seeds: list[int], params: dict, work: Path, inputs: tuple[Path, Path], jobs: int
) -> dict[int, dict[str, float]]:
    """`run_seed` for every seed, `jobs` of them at a time (each a chain of subprocesses)."""
    if jobs > 1:
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        os.environ |= {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        done = pool.map(lambda s: run_seed(task, s, params, work / str(s), inputs), seeds)
        return dict(zip(seeds, done, strict=True))


def show(task: str, rows: dict[int, dict[str, float]], summary: dict) -> None:
    """Print one row per seed and the mean ± std row."""
    keys = list(next(iter(rows.values())))
    typer.echo(f"\n{task}\n{'seed':>6} " + " ".join(f"{key:>20}" for key in keys))
    for seed, row in rows.items():
        typer.echo(f"{seed:>6} " + " ".join(f"{row[key]:>20.4f}" for key in keys))
    typer.echo(
        f"{'mean':>6} "
        + " ".join(f"{summary[k]['mean']:>11.4f} ± {summary[k]['std']:<6.4f}" for k in keys)
    )


def main(
    tasks: Annotated[
        list[str] | None,
        typer.Option("--task", help="classification, language_model, translation (repeatable)."),
    ] = None,
    seeds: Annotated[
        list[int] | None, typer.Option("--seed", help="A training seed (repeatable; 42 43 44).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a param, e.g. train.classification.cell=lstm."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write results as JSON here.")] = None,
    jobs: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seeds trained at once, each on cpus/jobs TensorFlow threads (quality is the "
            "same; train_seconds then measure a shared machine).",
        ),
    ] = 1,
) -> None:
    """Train and evaluate each task's default model once per seed; print and save mean ± std."""
    tasks = tasks or list(KEYS)
    for task in tasks:
        if task not in KEYS:
            sys.exit(f"unknown task {task!r}: expected one of {', '.join(KEYS)}")
        if not (ROOT / "data/tokenized" / task / "train.npz").is_file():
            sys.exit(f"no tokenized {task} data: run `dvc repro tokenize@{task}` first")
    params = overridden(overrides or [])
    result: dict = {"cpus": os.cpu_count(), "overrides": overrides or [], "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            work = Path(tmp) / task
            inputs = (ROOT / "data/tokenized" / task, ROOT / "data/raw" / task)
            prefixes = (f"download.{task}.", f"tokenize.{task}.")
            if any(o.startswith(prefixes) for o in overrides or []):
                inputs = prepare(task, params, work / "data")
            rows = run_seeds(task, seeds or [42, 43, 44], params, work, inputs, jobs)
            summary = summarize(rows, list(next(iter(rows.values()))))
            show(task, rows, summary)
            used = {section: params[section].get(task) for section in ("download", "tokenize")}
            train = params["train"][task]
            result["tasks"][task] = {"train_params": train, "seeds": rows, "summary": summary}
            result["tasks"][task] |= {f"{k}_params": v for k, v in used.items() if v is not None}
            if out:  # after every task, so a long run keeps what it finished
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
