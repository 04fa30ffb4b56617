"""Classification data: tokenized reviews as padded, bucketed batches; the probe batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sentencepiece as spm
import tensorflow as tf

from pipeline.core.corpus import TOKENIZER, load_npz, unpack
from pipeline.core.datasets import batches, pad_batch, ragged, slices, truncate
from pipeline.params import ClassificationTrain


def load_split(data_dir: Path, split: str, max_len: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Token sequences (last `max_len` tokens of each review) and float labels."""
    data = load_npz(data_dir / f"{split}.npz")
    seqs = truncate(unpack(data["tokens_ids"], data["tokens_offsets"]), max_len)
    return seqs, data["labels"].astype(np.float32)


def make_dataset(
    seqs: list[np.ndarray], labels: np.ndarray, cfg: ClassificationTrain, shuffle: bool
) -> tf.data.Dataset:
    """(tokens, label) batches, padded with PAD=0 (masked by the model)."""
    ds = slices(ragged(seqs), labels)
    return batches(ds, cfg, np.fromiter(map(len, seqs), dtype=np.int64), shuffle)


def probe_batch(
    seqs: list[np.ndarray], labels: np.ndarray, size: int, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch of the longest validation reviews, so the probe sees full-length sequences."""
    order = sorted(range(len(seqs)), key=lambda i: (-min(len(seqs[i]), max_len), i))[:size]
    return pad_batch([seqs[i] for i in order]), labels[order].reshape(-1, 1)


def vocab_size(data_dir: Path) -> int:
    """Vocabulary size of the task's SentencePiece model."""
    return spm.SentencePieceProcessor(model_file=str(data_dir / TOKENIZER)).get_piece_size()
