"""Classification data: tokenized reviews as padded, bucketed batches; the probe batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import sentencepiece as spm
import tensorflow as tf

from pipeline.core.corpus import TOKENIZER, CorruptInput, check_ids, load_npz, unpack
from pipeline.core.datasets import batches, bucket_boundaries, pad_batch, ragged, slices, truncate
from pipeline.params import ClassificationTrain


def load_split(
    data_dir: Path, split: str, max_len: int | None, head: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """Token sequences (at most `max_len` tokens: the first `head` and the last ones; None:
    whole reviews) and float labels."""
    path = data_dir / f"{split}.npz"
    data = load_npz(path)
    check_ids(data["tokens_ids"], vocab_size(data_dir), path)
    if not np.isin(data["labels"], (0, 1)).all():
        raise CorruptInput(f"{path}: labels must be 0 or 1; re-run download and tokenize")
    seqs = unpack(data["tokens_ids"], data["tokens_offsets"])
    seqs = truncate(seqs, max_len, head=head) if max_len else list(seqs)
    return seqs, data["labels"].astype(np.float32)


def padded_lengths(max_len: int, ratio: float) -> list[int]:
    """The time lengths batches are padded to under XLA: the bucket edges, then `max_len`.

    XLA compiles once per distinct batch shape (2-3 s each for the pooled GRU on CPU); a batch
    from a length bucket is nearly as long as the bucket's edge anyway, so padding it there
    costs little compute and leaves one shape per bucket.
    """
    return [*bucket_boundaries(max_len, ratio=ratio), max_len]


def pad_to_edge(edges: list[int]) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """A batch map padding the time axis to the first edge that holds it (extra pads are masked)."""
    bounds = tf.constant(edges, dtype=tf.int32)

    def pad(tokens: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        length = tf.shape(tokens)[1]
        edge = bounds[tf.minimum(tf.searchsorted(bounds, [length])[0], len(edges) - 1)]
        return tf.pad(tokens, [[0, 0], [0, tf.maximum(edge - length, 0)]]), labels

    return pad


def make_dataset(
    seqs: list[np.ndarray], labels: np.ndarray, cfg: ClassificationTrain, shuffle: bool
) -> tf.data.Dataset:
    """(tokens, label) batches, padded with PAD=0 (masked by the model)."""
    ds = slices(ragged(seqs), labels)
    ds = batches(ds, cfg, np.fromiter(map(len, seqs), dtype=np.int64), shuffle)
    if not cfg.jit_compile:
        return ds
    return ds.map(
        pad_to_edge(padded_lengths(cfg.max_len, cfg.bucket_ratio)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def probe_batch(
    seqs: list[np.ndarray], labels: np.ndarray, size: int, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch of the longest validation reviews, so the probe sees full-length sequences."""
    order = sorted(range(len(seqs)), key=lambda i: (-min(len(seqs[i]), max_len), i))[:size]
    return pad_batch([seqs[i] for i in order]), labels[order].reshape(-1, 1)


def vocab_size(data_dir: Path) -> int:
    """Vocabulary size of the task's SentencePiece model."""
    return spm.SentencePieceProcessor(model_file=str(data_dir / TOKENIZER)).get_piece_size()
