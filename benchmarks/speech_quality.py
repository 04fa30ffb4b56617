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
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from seeds import ROOT, run_seed, summarize

KEYS = (
    "test.accuracy",
    "test.macro_f1",
    "baseline.accuracy",
    "baseline.macro_f1",
    "val_accuracy",
    "epochs_run",
    "train_seconds",
)


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
        rows = {
            s: run_seed("speech", s, features, raw, Path(tmp) / str(s), KEYS)
            for s in seeds or [42, 43, 44]
        }
    summary = summarize(rows, KEYS)
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
