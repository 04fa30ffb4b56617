"""Evaluate the language model: perplexity and bits per character beside a Kneser-Ney n-gram.

Every test token is scored once, by model and n-gram baseline alike; the baseline always sees
its full `baseline_order - 1` tokens of history, window boundaries or not. The model reads
windows of `max_len` tokens from a zero state, as in training. By default they do not overlap,
so a window's first tokens have little context; `evaluate.language_model.stride` below
`max_len` starts a window every `stride` tokens and scores only its last `stride` targets, which
then follow at least `max_len - stride` tokens of context (the first window of each play scores
all of its targets).
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import sentencepiece as spm
import tensorflow as tf

from pipeline.core.tokens import BOS_ID, NEWLINE, PAD_ID
from pipeline.params import LanguageModelEvaluate, LanguageModelTrain
from pipeline.tasks.language_model.data import load_streams, windows
from pipeline.tasks.language_model.generate import generate, load_generator
from pipeline.tasks.language_model.ngram import fit_kneser_ney

EVAL_BATCH = 128  # windows per forward pass; changes speed only, not the numbers


def token_nll(model: keras.Model, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, max_len) natural-log loss of every target (NaN at pads) and whether it was top-1."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec, spec])
    def score(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        logits = tf.cast(model(x, training=False), tf.float32)
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        return nll, tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)

    parts = [
        score(inputs[i : i + EVAL_BATCH], targets[i : i + EVAL_BATCH])
        for i in range(0, len(rows), EVAL_BATCH)
    ]
    nll = np.concatenate([p[0].numpy() for p in parts]).astype(np.float64)
    hits = np.concatenate([p[1].numpy() for p in parts])
    pad = targets == PAD_ID
    nll[pad] = np.nan
    return nll, hits & ~pad


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


def score_split(
    model: keras.Model,
    data_dir: Path,
    split: str,
    cfg: LanguageModelTrain,
    newline: int,
    stride: int | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Score every token of every play once; also return every window position's loss.

    `stride` None means `max_len`: non-overlapping windows, the ones training validates on.
    """
    streams, chars = load_streams(data_dir, split, newline)
    rows, scored = scored_windows(streams, cfg.max_len, stride or cfg.max_len)
    nll, hits = token_nll(model, rows)
    counted = scored & ~np.isnan(nll)
    expected = sum(len(s) - 1 for s in streams)
    if int(counted.sum()) != expected:
        raise RuntimeError(f"{split}: scored {int(counted.sum())} tokens, expected {expected}")
    metrics = lm_metrics(nll[counted], int(chars.sum()), split)
    metrics[f"{split}.accuracy"] = float(hits[counted].sum()) / max(expected, 1)
    return metrics, nll


def baseline_metrics(order: int, data_dir: Path, vocab_size: int, newline: int) -> dict[str, float]:
    """Kneser-Ney n-gram fitted on train, scored on exactly the test tokens the model scores."""
    train, _ = load_streams(data_dir, "train", newline)
    ngram = fit_kneser_ney(train, order, vocab_size, start_id=BOS_ID)
    test, chars = load_streams(data_dir, "test", newline)
    # Position 0 is the `<nl>` stand-in the model never predicts either.
    log_probs = np.concatenate([ngram.log_probs(stream)[1:] for stream in test])
    return lm_metrics(-log_probs, int(chars.sum()), "baseline")


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
    metrics, _ = score_split(model, data_dir, "val", cfg, newline, eval_cfg.stride)
    test, test_nll = score_split(model, data_dir, "test", cfg, newline, eval_cfg.stride)
    metrics |= test | baseline_metrics(
        eval_cfg.baseline_order, data_dir, sp.get_piece_size(), newline
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    write_samples(model, sp, cfg, eval_cfg, report_dir / "samples.txt")
    plot_loss_by_position(test_nll, report_dir / "loss_by_position.png")
    return metrics
