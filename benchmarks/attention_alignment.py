"""How well the translator's attention agrees with the IBM Model 1 alignment of its lexicon.

Runs the trained translator (`models/translation`, which must have `lexicon_bias`) teacher-forced
over the validation split of `dvc repro` and compares, for every real target token y_t, the
attention weights a_t of the decoder position that predicts it with the table's posterior
q_ts = p(y_t | x_s) / sum_s' p(y_t | x_s'): how often both peak at the same source position, and
the attention mass on the table's peak where the table is sure (q > 0.8). This is what
`train.translation.alignment_weight` trains: the lexicon bias can only add the right word's
translation where the attention looks at it.

    dvc repro train_translation
    python benchmarks/attention_alignment.py --out benchmarks/results/attention_alignment.json
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

ROOT = Path(__file__).resolve().parents[1]
SURE = 0.8  # the table's posterior above which a token counts as confidently aligned


def agreement(weights: np.ndarray, posterior: np.ndarray) -> dict[str, float]:
    """Agreement of (N, S) attention rows with (N, S) posterior rows (real tokens only)."""
    peaks = posterior.argmax(axis=1)
    same = weights.argmax(axis=1) == peaks
    sure = posterior.max(axis=1) > SURE
    mass = weights[np.arange(len(peaks)), peaks]
    return {
        "tokens": int(len(peaks)),
        "argmax_agreement": float(same.mean()),
        "sure_tokens": int(sure.sum()),
        "sure_argmax_agreement": float(same[sure].mean()),
        "sure_attention_mass": float(mass[sure].mean()),
    }


def collect(model_dir: Path, data_dir: Path, max_len: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Attention rows and table posteriors of every validation token the table can explain,
    and the model's guided-alignment weight (0 without)."""
    import keras

    from pipeline.core.saved import load_model
    from pipeline.core.tokens import PAD_ID
    from pipeline.tasks.translation.data import load_pairs, model_inputs
    from pipeline.tasks.translation.model import (
        SOURCE,
        TARGET_IN,
        decode,
        encode,
        layers_from_model,
        token_input,
    )

    layers = layers_from_model(load_model(model_dir, compile=False))
    if layers.lexicon_table is None:
        raise typer.BadParameter(f"{model_dir} has no lexicon table (lexicon_bias: false)")
    source, target_in = token_input(SOURCE), token_input(TARGET_IN)
    encoded, states = encode(layers, source)
    _, _, weights = decode(layers, target_in, encoded, states)
    probe = keras.Model({SOURCE: source, TARGET_IN: target_in}, [weights, encoded.lexicon])
    sources, targets = load_pairs(data_dir, "val", max_len)
    rows_out, posteriors = [], []
    for start in range(0, len(sources), 64):
        inputs, _ = model_inputs(sources[start : start + 64], targets[start : start + 64])
        attention, table_rows = (np.asarray(x, np.float32) for x in probe.predict_on_batch(inputs))
        real = inputs[SOURCE] != PAD_ID
        following = np.pad(inputs[TARGET_IN][:, 1:], ((0, 0), (0, 1)))  # y_t; EOS slot -> PAD
        for b, t in zip(*np.nonzero(following != PAD_ID), strict=True):
            joint = table_rows[b, :, following[b, t]] * real[b]
            if joint.sum() > 0:
                rows_out.append(attention[b, t] * real[b])
                posteriors.append(joint / joint.sum())
    width = max(len(r) for r in rows_out)
    weight = float(layers.alignment.weight) if layers.alignment is not None else 0.0
    return _stack(rows_out, width), _stack(posteriors, width), weight


def _stack(rows: list[np.ndarray], width: int) -> np.ndarray:
    """Rows of different source lengths, zero-padded to one width."""
    return np.stack([np.pad(r, (0, width - len(r))) for r in rows])


def main(
    model: Annotated[Path, typer.Option(help="Trained translator directory.")] = ROOT
    / "models/translation",
    out: Annotated[Path | None, typer.Option(help="Write results as JSON here.")] = None,
) -> None:
    """Print and optionally write the attention's agreement with the table's alignment."""
    from pipeline.params import Task, load_params

    max_len = load_params(ROOT / "params.yaml").train.section(Task.translation).max_len
    data = ROOT / "data/tokenized/translation"
    weights, posterior, alignment_weight = collect(model, data, max_len)
    shown = model.resolve().relative_to(ROOT) if model.resolve().is_relative_to(ROOT) else model
    result = {"model": str(shown), "alignment_weight": alignment_weight}
    result["val"] = agreement(weights, posterior)
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    print(json.dumps(result["val"], indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
