"""The language model's continuous cache: test perplexity and bits per character by cache size.

Scores the validation and test plays of `dvc repro` with the trained language model
(`models/language_model`) once, then, for each cache size, chooses theta and lambda on
validation and scores test with the cache (`evaluate.language_model.cache_size`), beside the
Kneser-Ney baseline alone and with a unigram cache of the same size. Seconds are the cache's
own work for that size (fitting on validation and scoring test), on top of the plain scoring.

    dvc repro train_language_model
    python benchmarks/lm_cache.py --size 0 --size 500 --size 2000 --size 5000 \
        --out benchmarks/results/lm_cache.json
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Annotated

import typer

ROOT = Path(__file__).resolve().parents[1]


def main(
    sizes: Annotated[
        list[int] | None, typer.Option("--size", help="Cache sizes, 0 = none (repeatable).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write results as JSON here.")] = None,
) -> None:
    """Score test with each cache size; print a table."""
    from pipeline.core.tokens import NEWLINE
    from pipeline.params import load_params
    from pipeline.tasks.language_model import evaluate as lm_eval
    from pipeline.tasks.language_model.generate import load_generator

    params = load_params(ROOT / "params.yaml")
    cfg, eval_cfg = params.train.language_model, params.evaluate.language_model
    model, sp = load_generator(ROOT / "models/language_model")
    newline, data = sp.piece_to_id(NEWLINE), ROOT / "data/tokenized/language_model"
    start = time.perf_counter()
    val = lm_eval.score_split(model, data, "val", cfg, newline, eval_cfg.stride, states=True)
    test = lm_eval.score_split(model, data, "test", cfg, newline, eval_cfg.stride, states=True)
    scoring = time.perf_counter() - start
    baseline = lm_eval.baseline_nll(
        eval_cfg.baseline_order, data, sp.get_piece_size(), newline, ("val", "test")
    )
    kneser_ney = lm_eval.lm_metrics(baseline["test"], test.chars, "baseline")
    rows = []
    for size in sizes or [0, 2000]:
        start = time.perf_counter()
        if size:
            row = lm_eval.cache_metrics(val, test, baseline, size)
        else:
            row = {
                "test.cache_perplexity": test.metrics["test.perplexity"],
                "test.cache_bpc": test.metrics["test.bpc"],
            }
        row |= {"size": size, "seconds": time.perf_counter() - start}
        row["ratio_to_kneser_ney"] = (
            row["test.cache_perplexity"] / kneser_ney["baseline.perplexity"]
        )
        rows.append(row)
        typer.echo(
            f"cache {size:>6}: test perplexity {row['test.cache_perplexity']:.2f} "
            f"({row['ratio_to_kneser_ney']:.3f}x Kneser-Ney), "
            f"{row['test.cache_bpc']:.3f} bits/char, {row['seconds']:.1f} s"
        )
    result = {
        "command": "python benchmarks/lm_cache.py "
        + " ".join(f"--size {s}" for s in sizes or [0, 2000]),
        "model": {"val": val.metrics, "test": test.metrics, "scoring_seconds": scoring},
        "kneser_ney": kneser_ney,
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
