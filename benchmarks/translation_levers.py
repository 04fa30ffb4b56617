"""One translation setting, judged on validation: train with overrides, decode val, score.

Runs the real `train` command with the repository's params.yaml and `--set` overrides (in a
scratch folder with a throwaway MLflow store; `download.*` or `tokenize.*` overrides download
and tokenize again there), then decodes the validation split greedily, with beam 4 at two
length penalties, and with the params' own `evaluate.translation` beam (its size, length and
EOS penalties), and scores it with sacreBLEU beside the word-for-word dictionary baseline
learned from the same train split. Settings are chosen on validation; `--test` adds the test
split for reporting only.

    python benchmarks/translation_levers.py --set train.translation.label_smoothing=0.1 \
        --out benchmarks/results/translation_levers/smoothing0.1.json
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from quality import overridden, prepare, scratch
from seeds import ROOT, pipeline
from translation_beam import score

DECODES = ((1, 0.0, 0.0), (4, 1.0, 0.0), (4, 2.0, 0.0))  # (beam, GNMT alpha, EOS penalty)


def decode_split(
    model: Path, data: Path, raw: Path, split: str, lengths: tuple[int, int], own: tuple
) -> dict:
    """Scores of each decoding setting on one split, and the dictionary baseline's.

    `lengths`: the training `max_len` (source tokens kept) and evaluate's `decode_max_len`;
    `own`: evaluate's (beam size, length penalty, EOS penalty), decoded after `DECODES`.
    """
    from pipeline.core.corpus import read_jsonl
    from pipeline.tasks.translation.data import load_pairs
    from pipeline.tasks.translation.evaluate import baseline_scores
    from pipeline.tasks.translation.translate import load_translator

    translator = load_translator(model)
    max_len, decode_max_len = lengths
    sources, _ = load_pairs(data, split, max_len)
    rows = read_jsonl(raw / f"{split}.jsonl")
    references = [row["tgt"] for row in rows]
    result: dict = {"sentences": len(rows), "settings": []}
    for beam, alpha, eos in (*DECODES, own):
        hypotheses = translator.detokenize(
            translator.decode_ids(sources, beam, decode_max_len, alpha, eos_penalty=eos)
        )
        scores = score(hypotheses, references)
        setting = {"beam_size": beam, "length_penalty": alpha, "eos_penalty": eos}
        result["settings"].append(setting | scores)
        print(
            f"{split} beam {beam} alpha {alpha} eos {eos}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
        )
        if beam == 1:
            result["examples"] = [
                {"source": row["src"], "reference": row["tgt"], "greedy": text}
                for row, text in zip(rows[:10], hypotheses[:10], strict=True)
            ]
    result["dictionary"] = baseline_scores(raw, [row["src"] for row in rows], references)
    return result


def main(
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a param, e.g. train.translation.units=256."),
    ] = None,
    test: Annotated[bool, typer.Option(help="Also decode and score the test split.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write results as JSON here.")] = None,
) -> None:
    """Train the translator with `--set` overrides and score it on validation."""
    params = overridden(overrides or [])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, raw = ROOT / "data/tokenized/translation", ROOT / "data/raw/translation"
        if any(o.startswith(("download.", "tokenize.")) for o in overrides or []):
            data, raw = prepare("translation", params, work / "data")
        env = scratch(work / "run", params)
        started, load = time.monotonic(), os.getloadavg()[0]
        pipeline(
            ["train", "translation", "--data", str(data), "--out", str(work / "model")]
            + ["--plots", str(work / "plots"), "--metrics", str(work / "train.json")]
            + ["--checkpoints", str(work / "ckpt"), "--params", str(work / "run/params.yaml")],
            env,
        )
        trained = json.loads((work / "train.json").read_text())
        result: dict = {
            "overrides": overrides or [],
            "train_params": params["train"]["translation"],
            "download_params": params["download"]["translation"],
            "tokenize_params": params["tokenize"]["translation"],
            "train_seconds": trained["train_seconds"],
            "epochs_run": trained["epochs_run"],
            "wall_seconds": time.monotonic() - started,
            "load_average": (load + os.getloadavg()[0]) / 2,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        }
        decoding = params["evaluate"]["translation"]
        lengths = (params["train"]["translation"]["max_len"], decoding["decode_max_len"])
        own = (decoding["beam_size"], decoding["length_penalty"], decoding["eos_penalty"])
        for split in ("val", "test") if test else ("val",):
            result[split] = decode_split(work / "model", data, raw, split, lengths, own)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
