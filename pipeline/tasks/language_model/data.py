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

from pathlib import Path

import numpy as np
import sentencepiece as spm
import tensorflow as tf

from pipeline.core.corpus import TOKENIZER, check_ids, load_npz, unpack
from pipeline.core.datasets import batches, slices
from pipeline.core.tokens import PAD_ID
from pipeline.params import LanguageModelTrain


def load_tokenizer(directory: Path) -> spm.SentencePieceProcessor:
    """The SentencePiece model stored beside the data or the trained model."""
    return spm.SentencePieceProcessor(model_file=str(directory / TOKENIZER))


def load_streams(data_dir: Path, split: str, newline: int) -> tuple[list[np.ndarray], np.ndarray]:
    """One `<nl> + tokens` stream per play, and the characters per play (for bpc)."""
    path = data_dir / f"{split}.npz"
    data = load_npz(path)
    check_ids(data["tokens_ids"], load_tokenizer(data_dir).get_piece_size(), path)
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
