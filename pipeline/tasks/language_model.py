"""Language modeling: windows of each play's token stream, the model, probe and evaluation.

Every play becomes one stream `<nl> + tokens` (the leading `<nl>` stands for "a line just
ended", so the play's first token is predicted too and bits per character cover all of its
text). A window is `max_len + 1` consecutive stream tokens: inputs are its first `max_len`,
targets its last `max_len`, starting every `stride` tokens (default `max_len`: each target
exactly once). The last window of a play is post-padded with PAD=0, which the loss, metrics
and RNN ignore. Each window starts from a zero state, so its early targets see little context
(the first sees one token); `reports/loss_by_position.png` shows the cost. Evaluation uses
stride `max_len`, so model and n-gram baseline score exactly the same tokens; the baseline
always sees its full `baseline_order - 1` tokens of history, window boundaries or not.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import sentencepiece as spm
import tensorflow as tf

from pipeline.corpus import load_npz, unpack
from pipeline.datasets import batches, slices
from pipeline.generate import generate
from pipeline.models.language_model import build_language_model
from pipeline.params import LanguageModelTrain
from pipeline.tokenize import NEWLINE, PAD_ID
from pipeline.train import TrainingSetup

TOKENIZER = "spm.model"


def load_tokenizer(directory: Path) -> spm.SentencePieceProcessor:
    """The SentencePiece model stored beside the data or the trained model."""
    return spm.SentencePieceProcessor(model_file=str(directory / TOKENIZER))


def load_streams(data_dir: Path, split: str, newline: int) -> tuple[list[np.ndarray], np.ndarray]:
    """One `<nl> + tokens` stream per play, and the characters per play (for bpc)."""
    data = load_npz(data_dir / f"{split}.npz")
    plays = unpack(data["tokens_ids"], data["tokens_offsets"])
    streams = [np.concatenate([[newline], play]).astype(np.int32) for play in plays]
    return streams, data["chars"].astype(np.int64)


def windows(streams: list[np.ndarray], max_len: int, stride: int) -> np.ndarray:
    """(N, max_len + 1) windows starting every `stride` tokens, post-padded with PAD."""
    rows = []
    for stream in streams:
        for start in range(0, len(stream) - 1, stride):
            rows.append(stream[start : start + max_len + 1])
    out = np.full((len(rows), max_len + 1), PAD_ID, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def make_dataset(rows: np.ndarray, cfg: LanguageModelTrain, shuffle: bool) -> tf.data.Dataset:
    """(inputs, next tokens) batches: a window without its last / first token."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    lengths = np.count_nonzero(targets != PAD_ID, axis=1)
    return batches(slices(inputs, targets), cfg, lengths, shuffle)


def probe_windows(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-length validation windows spread evenly over the split (fixed across epochs)."""
    full = rows[rows[:, -1] != PAD_ID]
    full = full if len(full) else rows  # a tiny split may have no full-length window
    pick = np.linspace(0, len(full) - 1, num=min(size, len(full))).round().astype(int)
    return full[pick, :-1], full[pick, 1:]


def last_token_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Per-example loss of the last prediction: how far back does its gradient reach?"""
    return keras.losses.sparse_categorical_crossentropy(
        y_true[:, -1], y_pred[:, -1, :], from_logits=True
    )


class Perplexity(keras.metrics.Metric):
    """exp(mean cross-entropy per non-pad target token), accumulated over the epoch."""

    def __init__(self, name: str = "perplexity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        """Add the batch's summed token losses and its number of real targets."""
        valid = tf.cast(tf.not_equal(y_true, PAD_ID), self.dtype)
        losses = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        self.total.assign_add(tf.reduce_sum(tf.cast(losses, self.dtype) * valid))
        self.count.assign_add(tf.reduce_sum(valid))

    def result(self) -> tf.Tensor:
        """Perplexity so far (1.0 before any token)."""
        return tf.exp(tf.math.divide_no_nan(self.total, self.count))


def sample_reporter(cfg: LanguageModelTrain, sp: spm.SentencePieceProcessor):
    """A per-epoch reporter writing one seeded sample, so MLflow shows the model learning."""

    def report(model: keras.Model, epoch: int, folder: Path) -> list[Path]:
        text = generate(
            model,
            sp,
            cfg.sample_prompt,
            cfg.sample_tokens,
            cfg.sample_temperature,
            seed=cfg.seed,
            context=cfg.max_len,
        )
        path = folder / "sample.txt"
        path.write_text(f"epoch {epoch}, temperature {cfg.sample_temperature}\n\n{text}\n")
        return [path]

    return report


def setup(cfg: LanguageModelTrain, data_dir: Path) -> TrainingSetup:
    """Build the language model and its windows for the shared trainer."""
    sp = load_tokenizer(data_dir)
    newline = sp.piece_to_id(NEWLINE)
    train_rows = windows(
        load_streams(data_dir, "train", newline)[0], cfg.max_len, cfg.stride or cfg.max_len
    )
    val_rows = windows(load_streams(data_dir, "val", newline)[0], cfg.max_len, cfg.max_len)
    probe_x, probe_y = probe_windows(val_rows, cfg.probe_batch_size)
    return TrainingSetup(
        model=build_language_model(cfg, sp.get_piece_size()),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), Perplexity()],
        train=make_dataset(train_rows, cfg, shuffle=True),
        val=make_dataset(val_rows, cfg, shuffle=False),
        probe_inputs=probe_x,
        probe_targets=probe_y,
        probe_loss=last_token_loss,
        assets={TOKENIZER: data_dir / TOKENIZER},
        reporters=[sample_reporter(cfg, sp)],
    )


# --------------------------------------------------------------------------- evaluation

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


def score_split(
    model: keras.Model, data_dir: Path, split: str, cfg: LanguageModelTrain, newline: int
) -> tuple[dict[str, float], np.ndarray]:
    """Score every token of every play once (non-overlapping windows); also return the losses."""
    streams, chars = load_streams(data_dir, split, newline)
    nll, hits = token_nll(model, windows(streams, cfg.max_len, cfg.max_len))
    scored = ~np.isnan(nll)
    expected = sum(len(s) - 1 for s in streams)
    if int(scored.sum()) != expected:
        raise RuntimeError(f"{split}: scored {int(scored.sum())} tokens, expected {expected}")
    metrics = lm_metrics(nll[scored], int(chars.sum()), split)
    metrics[f"{split}.accuracy"] = float(hits.sum()) / max(expected, 1)
    return metrics, nll


def baseline_metrics(
    cfg: LanguageModelTrain, data_dir: Path, vocab_size: int, newline: int
) -> dict[str, float]:
    """Kneser-Ney n-gram fitted on train, scored on exactly the test tokens the model scores."""
    from pipeline.ngram import fit_kneser_ney
    from pipeline.tokenize import BOS_ID

    train, _ = load_streams(data_dir, "train", newline)
    ngram = fit_kneser_ney(train, cfg.baseline_order, vocab_size, start_id=BOS_ID)
    test, chars = load_streams(data_dir, "test", newline)
    # Position 0 is the `<nl>` stand-in the model never predicts either.
    log_probs = np.concatenate([ngram.log_probs(stream)[1:] for stream in test])
    return lm_metrics(-log_probs, int(chars.sum()), "baseline")


def write_samples(
    model: keras.Model, sp: spm.SentencePieceProcessor, cfg: LanguageModelTrain, path: Path
) -> Path:
    """Seeded samples at a few temperatures: low is safe and repetitive, high is inventive."""
    temperatures = sorted({0.5, cfg.sample_temperature, 1.0})
    blocks = [
        f"=== temperature {t} ===\n"
        + generate(
            model, sp, cfg.sample_prompt, cfg.sample_tokens, t, seed=cfg.seed, context=cfg.max_len
        )
        for t in temperatures
    ]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def plot_loss_by_position(nll: np.ndarray, path: Path) -> Path:
    """Mean test loss per window position: how much the model gains from more context."""
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
    cfg: LanguageModelTrain, model_dir: Path, data_dir: Path, raw_dir: Path, report_dir: Path
) -> dict[str, float]:
    """Perplexity and bpc on val and test beside the n-gram baseline; write samples and plots.

    `raw_dir` is unused: the baseline works on the same token ids as the model.
    """
    from pipeline.generate import load_generator

    model, sp = load_generator(model_dir)
    newline = sp.piece_to_id(NEWLINE)
    metrics, _ = score_split(model, data_dir, "val", cfg, newline)
    test, test_nll = score_split(model, data_dir, "test", cfg, newline)
    metrics |= test | baseline_metrics(cfg, data_dir, sp.get_piece_size(), newline)
    report_dir.mkdir(parents=True, exist_ok=True)
    write_samples(model, sp, cfg, report_dir / "samples.txt")
    plot_loss_by_position(test_nll, report_dir / "loss_by_position.png")
    return metrics
