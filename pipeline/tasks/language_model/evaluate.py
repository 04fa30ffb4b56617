"""Evaluate the language model: perplexity and bits per character beside a Kneser-Ney n-gram.

Every test token is scored once, by model and n-gram baseline alike; the baseline always sees
its full `baseline_order - 1` tokens of history, window boundaries or not. The model reads
windows of `max_len` tokens from a zero state, as in training. By default they do not overlap,
so a window's first tokens have little context; `evaluate.language_model.stride` below
`max_len` starts a window every `stride` tokens and scores only its last `stride` targets, which
then follow at least `max_len - stride` tokens of context (the first window of each play scores
all of its targets).

With `cache_size` > 0 the test tokens are scored a second time through a continuous cache of
the play's recent hidden states (`cache.py`; theta and lambda chosen on validation), and the
n-gram a second time through a unigram cache of the same size: `test.cache_perplexity` and
`baseline.cache_perplexity` beside the plain `test.perplexity` and `baseline.perplexity`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import sentencepiece as spm
import tensorflow as tf

from pipeline.core.tokens import BOS_ID, NEWLINE, PAD_ID
from pipeline.params import LanguageModelEvaluate, LanguageModelTrain
from pipeline.tasks.language_model.cache import (
    THETAS,
    choose,
    interpolate,
    sequence_cache_probs,
)
from pipeline.tasks.language_model.data import load_streams, windows
from pipeline.tasks.language_model.generate import generate, load_generator
from pipeline.tasks.language_model.ngram import fit_kneser_ney

EVAL_BATCH = 128  # windows per forward pass; changes speed only, not the numbers


def token_nll(
    model: keras.Model, rows: np.ndarray, state_layer: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(N, max_len) natural-log loss of every target (NaN at pads), whether it was top-1 and,
    if `state_layer` names the last recurrent layer, its (N, max_len, units) outputs."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    spec = tf.TensorSpec([None, None], tf.int32)
    outputs = [model.output] + ([model.get_layer(state_layer).output] if state_layer else [])
    scorer = keras.Model(model.inputs, outputs)

    @tf.function(input_signature=[spec, spec])
    def score(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, ...]:
        out = scorer(x, training=False)
        out = out if isinstance(out, list | tuple) else [out]
        logits = tf.cast(out[0], tf.float32)
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
        return (nll, hits, *(tf.cast(o, tf.float32) for o in out[1:]))

    parts = [
        score(inputs[i : i + EVAL_BATCH], targets[i : i + EVAL_BATCH])
        for i in range(0, len(rows), EVAL_BATCH)
    ]
    nll = np.concatenate([p[0].numpy() for p in parts]).astype(np.float64)
    hits = np.concatenate([p[1].numpy() for p in parts])
    states = np.concatenate([p[2].numpy() for p in parts]) if state_layer else None
    pad = targets == PAD_ID
    nll[pad] = np.nan
    return nll, hits & ~pad, states


def lm_metrics(nll: np.ndarray, chars: int, prefix: str) -> dict[str, float]:
    """Mean cross-entropy (nats/token), perplexity and bits per character from token losses."""
    total = float(np.sum(nll))
    cross_entropy = total / len(nll)
    return {
        f"{prefix}.cross_entropy": cross_entropy,
        f"{prefix}.perplexity": math.exp(cross_entropy),
        f"{prefix}.bpc": total / math.log(2) / float(chars),
        f"{prefix}.tokens": float(len(nll)),
    }


def scored_windows(
    streams: list[np.ndarray], max_len: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Windows starting every `stride` tokens and, per target, whether it is scored there.

    Each target is scored exactly once: in the first window of its play, or else in the last
    `stride` positions of a later window (the earlier positions were scored before).
    """
    rows, scored = [], []
    for stream in streams:
        part = windows([stream], max_len, stride)
        keep = np.zeros((len(part), max_len), dtype=bool)
        keep[:1] = True
        keep[1:, max_len - stride :] = True
        rows.append(part)
        scored.append(keep & (part[:, 1:] != PAD_ID))
    if not rows:
        return np.zeros((0, max_len + 1), np.int32), np.zeros((0, max_len), bool)
    return np.concatenate(rows), np.concatenate(scored)


@dataclass(frozen=True)
class Scored:
    """One split scored by the model: metrics, every window position's loss, and per scored
    target (in play order) its loss, id and hidden state (None unless asked for)."""

    metrics: dict[str, float]
    window_nll: np.ndarray
    nll: np.ndarray
    targets: np.ndarray
    states: np.ndarray | None
    lengths: list[int]
    chars: int


def score_split(
    model: keras.Model,
    data_dir: Path,
    split: str,
    cfg: LanguageModelTrain,
    newline: int,
    stride: int | None = None,
    states: bool = False,
) -> Scored:
    """Score every token of every play once (and keep the states a cache needs, if asked).

    `stride` None means `max_len`: non-overlapping windows, the ones training validates on.
    """
    streams, chars = load_streams(data_dir, split, newline)
    rows, scored = scored_windows(streams, cfg.max_len, stride or cfg.max_len)
    layer = f"rnn_{cfg.num_layers}" if states else None
    nll, hits, outputs = token_nll(model, rows, layer)
    counted = scored & ~np.isnan(nll)
    expected = sum(len(s) - 1 for s in streams)
    if int(counted.sum()) != expected:
        raise RuntimeError(f"{split}: scored {int(counted.sum())} tokens, expected {expected}")
    metrics = lm_metrics(nll[counted], int(chars.sum()), split)
    metrics[f"{split}.accuracy"] = float(hits[counted].sum()) / max(expected, 1)
    return Scored(
        metrics=metrics,
        window_nll=nll,
        nll=nll[counted],  # row-major: windows in play order, positions in window order
        targets=rows[:, 1:][counted],
        states=None if outputs is None else outputs[counted],
        lengths=[len(s) - 1 for s in streams],
        chars=int(chars.sum()),
    )


def baseline_nll(
    order: int, data_dir: Path, vocab_size: int, newline: int, splits: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Kneser-Ney n-gram fitted on train: the loss of every target the model scores, per split."""
    train, _ = load_streams(data_dir, "train", newline)
    ngram = fit_kneser_ney(train, order, vocab_size, start_id=BOS_ID)
    # Position 0 of each stream is the `<nl>` stand-in the model never predicts either.
    return {
        split: -np.concatenate(
            [ngram.log_probs(s)[1:] for s in load_streams(data_dir, split, newline)[0]]
        )
        for split in splits
    }


def cache_metrics(
    val: Scored, test: Scored, baseline: dict[str, np.ndarray], size: int
) -> dict[str, float]:
    """Test scores with a continuous cache of `size` positions (theta and lambda chosen on
    validation), and the Kneser-Ney baseline's with a unigram cache of the same size."""
    if val.states is None or test.states is None:
        raise ValueError("the continuous cache needs both splits scored with states=True")
    val_cache = sequence_cache_probs(val.states, val.targets, val.lengths, size, THETAS)
    fit = choose(val.nll, val_cache, THETAS)
    test_cache = sequence_cache_probs(test.states, test.targets, test.lengths, size, [fit.theta])
    model = lm_metrics(interpolate(test.nll, test_cache[0], fit.lam), test.chars, "test")
    # Equal footing: the n-gram gets a cache too, of the tokens themselves (theta = 0).
    base_val = sequence_cache_probs(None, val.targets, val.lengths, size, [0.0])
    base_fit = choose(baseline["val"], base_val, [0.0])
    base_test = sequence_cache_probs(None, test.targets, test.lengths, size, [0.0])
    base = lm_metrics(
        interpolate(baseline["test"], base_test[0], base_fit.lam), test.chars, "baseline"
    )
    return {
        "test.cache_perplexity": model["test.perplexity"],
        "test.cache_bpc": model["test.bpc"],
        "val.cache_perplexity": math.exp(fit.cross_entropy),
        "baseline.cache_perplexity": base["baseline.perplexity"],
        "baseline.cache_bpc": base["baseline.bpc"],
        "cache.theta": fit.theta,
        "cache.lambda": fit.lam,
        "cache.baseline_lambda": base_fit.lam,
    }


def write_samples(
    model: keras.Model,
    sp: spm.SentencePieceProcessor,
    cfg: LanguageModelTrain,
    eval_cfg: LanguageModelEvaluate,
    path: Path,
) -> Path:
    """Seeded samples at a few temperatures: low is safe and repetitive, high is inventive."""
    temperatures = sorted({0.5, eval_cfg.sample_temperature, 1.0})
    blocks = [
        f"=== temperature {t} ===\n"
        + generate(
            model,
            sp,
            eval_cfg.sample_prompt,
            eval_cfg.sample_tokens,
            t,
            seed=cfg.seed,
            context=cfg.max_len,
        )
        for t in temperatures
    ]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def plot_loss_by_position(nll: np.ndarray, path: Path) -> Path:
    """Mean test loss per window position (every window, scored there or not): how much the
    model gains from more context."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    mean = np.nanmean(nll, axis=0)
    positions = np.arange(1, len(mean) + 1)
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    axes.plot(positions, mean)
    axes.set_xlabel("tokens of context (position in window)")
    axes.set_ylabel("mean cross-entropy (nats)")
    axes.set_title("Test loss by context length")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    rows = "\n".join(f"{p},{v:.6f}" for p, v in zip(positions, mean, strict=True))
    path.with_suffix(".csv").write_text(f"position,cross_entropy\n{rows}\n", encoding="utf-8")
    return path


def evaluate(
    cfg: LanguageModelTrain,
    eval_cfg: LanguageModelEvaluate,
    model_dir: Path,
    data_dir: Path,
    raw_dir: Path,
    report_dir: Path,
) -> dict[str, float]:
    """Perplexity and bpc on val and test beside the n-gram baseline; write samples and plots.

    `raw_dir` is unused: the baseline works on the same token ids as the model.
    """
    model, sp = load_generator(model_dir)
    newline = sp.piece_to_id(NEWLINE)
    cache = eval_cfg.cache_size > 0
    val = score_split(model, data_dir, "val", cfg, newline, eval_cfg.stride, states=cache)
    test = score_split(model, data_dir, "test", cfg, newline, eval_cfg.stride, states=cache)
    splits = ("val", "test") if cache else ("test",)
    baseline = baseline_nll(eval_cfg.baseline_order, data_dir, sp.get_piece_size(), newline, splits)
    metrics = val.metrics | test.metrics | lm_metrics(baseline["test"], test.chars, "baseline")
    if cache:
        metrics |= cache_metrics(val, test, baseline, eval_cfg.cache_size)
    report_dir.mkdir(parents=True, exist_ok=True)
    write_samples(model, sp, cfg, eval_cfg, report_dir / "samples.txt")
    plot_loss_by_position(test.window_nll, report_dir / "loss_by_position.png")
    return metrics
