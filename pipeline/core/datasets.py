"""tf.data input pipelines shared by the tasks: shuffle, bucket by length, pad, prefetch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from pipeline.core.corpus import pack
from pipeline.params import TrainParams


def ragged(seqs: Sequence[np.ndarray]) -> tf.RaggedTensor:
    """Build a ragged int32 tensor quickly from numpy sequences."""
    ids, offsets = pack(seqs)
    return tf.RaggedTensor.from_row_splits(ids, offsets)


def _densify(*element):
    """Ragged rows become plain 1-D tensors (padded_batch accepts only dense elements)."""
    dense = [t.to_tensor() if isinstance(t, tf.RaggedTensor) else t for t in element]
    return tuple(dense) if len(dense) > 1 else dense[0]


def with_autotune(ds: tf.data.Dataset, enabled: bool) -> tf.data.Dataset:
    """The same pipeline with tf.data's autotuning set as asked (the latest setting wins)."""
    options = tf.data.Options()
    options.autotune.enabled = enabled
    return ds.with_options(options)


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Turn off tf.data's autotuning thread for a pipeline that Keras iterates once per epoch.

    Keras makes a new iterator every epoch and the old one's destructor waits for its autotune
    thread, which finishes its current optimisation period before it notices: 1.2 s on a quick
    epoch here, 17-37 s of idle CPU at epoch starts in long trainings
    (`benchmarks/iterator_teardown.py`). Parallel maps and prefetching keep their defaults.
    """
    return with_autotune(ds, enabled=False)


def slices(*columns) -> tf.data.Dataset:
    """A dataset of examples from ragged and dense columns of equal length."""
    ds = tf.data.Dataset.from_tensor_slices(tuple(columns))
    return ds.map(_densify, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def truncate(
    seqs: Sequence[np.ndarray], max_len: int, keep: str = "last", head: int = 0
) -> list[np.ndarray]:
    """Cut sequences to `max_len` tokens; reviews keep their end, where verdicts usually are.

    With `keep="last"` and `head` > 0 a long sequence keeps its first `head` tokens and its
    last `max_len - head` (head + tail truncation: a review's opening often states the verdict
    too); sequences within `max_len` are left whole.
    """
    if keep != "last":
        return [s[:max_len] for s in seqs]
    if not head:
        return [s[-max_len:] for s in seqs]
    tail = max_len - head
    return [s if len(s) <= max_len else np.concatenate([s[:head], s[-tail:]]) for s in seqs]


def element_length(*element) -> tf.Tensor:
    """Length (first axis) of the longest sequence in a (nested) dataset element.

    Sequences are token ids (T,) or frames of features (T, F); scalars (labels) are skipped.
    """
    sizes = [tf.shape(t)[0] for t in tf.nest.flatten(element) if t.shape.rank]
    return tf.reduce_max(tf.stack(sizes))


BUCKET_RATIO = 2**0.5


def bucket_boundaries(max_len: int, smallest: int = 16, ratio: float = BUCKET_RATIO) -> list[int]:
    """Length boundaries below `max_len`, each `ratio` times the last (16, 23, 32, 45, 64, ...).

    A batch is padded to its longest member, so a bucket wastes up to its width in pads, and a
    recurrent step costs the same for a pad as for a token. Edges a factor of sqrt(2) apart
    instead of 2 cut the padded timesteps of an epoch by 7% for the classifier (305 -> 283 per
    review of 258 subwords on average) and by 12% for the translator and the speech recognizer
    (`benchmarks/bucket_padding.py`), for one more bucket per doubling. Each task's
    `bucket_ratio` param chooses (README "Benchmarks").
    """
    bounds: list[int] = []
    step = 0
    while (edge := round(smallest * ratio**step)) < max_len:
        if not bounds or edge > bounds[-1]:
            bounds.append(edge)
        step += 1
    return bounds


def batch_count(lengths: np.ndarray, cfg: TrainParams, bucketed: bool) -> int:
    """Exact number of batches per epoch (bucket membership depends on length, not order)."""
    if not bucketed:
        return -(-len(lengths) // cfg.batch_size)
    bounds = bucket_boundaries(cfg.max_len, ratio=cfg.bucket_ratio)
    bucket = np.searchsorted(bounds, lengths, side="right")
    return int(sum(-(-int(n) // cfg.batch_size) for n in np.bincount(bucket) if n))


def batches(
    ds: tf.data.Dataset, cfg: TrainParams, lengths: np.ndarray, shuffle: bool
) -> tf.data.Dataset:
    """Shuffle (seeded), batch with padding (bucketed by length if asked) and prefetch.

    The batch count is asserted so Keras knows the epoch length (with an unknown one it runs
    an extra, empty step per epoch that still advances the optimizer's step counter).
    """
    bucketed = cfg.bucket_by_length and shuffle
    if shuffle:
        ds = ds.shuffle(min(len(lengths), 50_000), seed=cfg.seed, reshuffle_each_iteration=True)
    if bucketed:
        bounds = bucket_boundaries(cfg.max_len, ratio=cfg.bucket_ratio)
        ds = ds.bucket_by_sequence_length(
            element_length, bounds, [cfg.batch_size] * (len(bounds) + 1)
        )
    else:
        ds = ds.padded_batch(cfg.batch_size)
    count = batch_count(lengths, cfg, bucketed)
    if shuffle and cfg.max_steps_per_epoch:
        count = min(count, cfg.max_steps_per_epoch)
        ds = ds.take(count)
    ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    return without_autotune(ds.prefetch(tf.data.AUTOTUNE))


def pad_batch(seqs: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
    """Post-pad sequences with PAD=0 into one int32 matrix."""
    width = length or max((len(s) for s in seqs), default=1) or 1
    out = np.zeros((len(seqs), width), dtype=np.int32)
    for row, seq in enumerate(seqs):
        out[row, : min(len(seq), width)] = seq[:width]
    return out
