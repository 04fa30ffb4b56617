"""Beam size, length penalty and EOS penalty of the translator, chosen on validation BLEU.

Decodes the validation and test splits of `dvc repro` with the trained translator
(`models/translation`) greedily and with each beam size, GNMT length-penalty alpha and EOS
penalty (`evaluate.translation.beam_size`, `length_penalty`, `eos_penalty`), and writes
sacreBLEU, chrF and the hypothesis/reference length ratio of each setting. Greedy runs once per
EOS penalty. Pick the setting on validation; the test column is for reporting only.

    dvc repro train_translation
    python benchmarks/translation_beam.py --out benchmarks/results/translation_beam.json
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Annotated

import sacrebleu
import typer

ROOT = Path(__file__).resolve().parents[1]


def repeats_a_bigram(text: str) -> bool:
    """Whether a word bigram occurs twice in `text` (BLEU's 13a tokens, lowercased)."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    words = Tokenizer13a()(text.lower()).split()
    bigrams = list(zip(words, words[1:], strict=False))
    return len(bigrams) != len(set(bigrams))


def score(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU, chrF, the length ratio (sacreBLEU's own tokenization), and how many
    hypotheses (and references) repeat a word bigram."""
    bleu = sacrebleu.corpus_bleu(hypotheses, [references])
    chrf = sacrebleu.corpus_chrf(hypotheses, [references])
    return {
        "bleu": bleu.score,
        "chrf": chrf.score,
        "length_ratio": bleu.sys_len / bleu.ref_len,
        "repeated_bigram_outputs": sum(map(repeats_a_bigram, hypotheses)),
        "repeated_bigram_references": sum(map(repeats_a_bigram, references)),
    }


def main(
    beams: Annotated[
        list[int] | None, typer.Option("--beam", help="Beam sizes (repeatable).")
    ] = None,
    alphas: Annotated[
        list[float] | None, typer.Option("--alpha", help="Length-penalty alphas (repeatable).")
    ] = None,
    eos_penalties: Annotated[
        list[float] | None, typer.Option("--eos-penalty", help="EOS penalties (repeatable).")
    ] = None,
    coverages: Annotated[
        list[float] | None,
        typer.Option("--coverage", help="Coverage penalties beta, beam only (repeatable)."),
    ] = None,
    repeats: Annotated[
        list[int] | None,
        typer.Option(
            "--no-repeat-ngram", help="Blocked repeated n-gram sizes, 0 off (repeatable)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write results as JSON here.")] = None,
) -> None:
    """Score greedy and beam decoding of validation and test for each setting."""
    from pipeline.core.corpus import read_jsonl
    from pipeline.params import Task, load_params
    from pipeline.tasks.translation.data import load_pairs
    from pipeline.tasks.translation.translate import load_translator

    params = load_params(ROOT / "params.yaml")
    train, evaluate = params.train.section(Task.translation), params.evaluate.translation
    translator = load_translator(ROOT / "models/translation")
    settings = [
        (b, a, e, c, n)
        for n in repeats or [0]
        for e in eos_penalties or [0.0]
        for b, a, c in [(1, 0.0, 0.0)]
        + [
            (b, a, c)
            for b in beams or [2, 4]
            for a in alphas or [0.6, 1, 2, 3]
            for c in coverages or [0.0]
        ]
    ]
    result: dict = {"model": "models/translation", "decode_max_len": evaluate.decode_max_len}
    for split in ("val", "test"):
        sources, _ = load_pairs(ROOT / "data/tokenized/translation", split, train.max_len)
        references = [r["tgt"] for r in read_jsonl(ROOT / f"data/raw/translation/{split}.jsonl")]
        rows = result.setdefault(split, {"sentences": len(references), "settings": []})
        for beam, alpha, eos, beta, ngram in settings:
            ids = translator.decode_ids(
                sources,
                beam,
                evaluate.decode_max_len,
                alpha,
                eos_penalty=eos,
                coverage_penalty=beta,
                no_repeat_ngram=ngram,
            )
            row = {"beam_size": beam, "length_penalty": alpha, "eos_penalty": eos}
            row |= {"coverage_penalty": beta, "no_repeat_ngram": ngram}
            row |= score(translator.detokenize(ids), references)
            rows["settings"].append(row)
            print(
                f"{split:<5} beam {beam} alpha {alpha:<4} eos {eos:<4} beta {beta:<4} n {ngram} "
                + " ".join(f"{k} {row[k]:.3f}" for k in ("bleu", "chrf", "length_ratio")),
                flush=True,
            )
    best = max(
        (r for r in result["val"]["settings"] if r["beam_size"] > 1), key=lambda r: r["bleu"]
    )
    result["best_beam_on_val"] = {
        key: best[key]
        for key in (
            "beam_size",
            "length_penalty",
            "eos_penalty",
            "coverage_penalty",
            "no_repeat_ngram",
        )
    }
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
