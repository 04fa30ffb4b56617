"""benchmarks/iterator_teardown.py and the pipeline's datasets: no autotune thread to wait for."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from benchmarks.iterator_teardown import epochs, summary
from pipeline.core.datasets import batches, ragged, slices, with_autotune
from pipeline.params import ClassificationTrain


def tiny_batches() -> tf.data.Dataset:
    """The pipeline's own shuffled, bucketed batches over 40 short sequences."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, size=40)
    seqs = [np.ones(int(n), dtype=np.int32) for n in lengths]
    cfg = ClassificationTrain(max_len=32, batch_size=8)
    return batches(slices(ragged(seqs), np.zeros(40, np.float32)), cfg, lengths, shuffle=True)


def test_pipeline_batches_turn_autotuning_off() -> None:
    """Keras replaces the iterator each epoch; without autotuning none waits for its thread."""
    ds = tiny_batches()
    assert ds.options().autotune.enabled is False
    assert with_autotune(ds, True).options().autotune.enabled is True  # the benchmark's "on"


def test_epochs_read_every_batch_with_a_new_iterator_each() -> None:
    ds = tiny_batches()
    expected = sum(1 for _ in ds)
    runs = [epochs(ds, 3), epochs(with_autotune(ds, True), 3)]
    for run in runs:
        assert [epoch["batches"] for epoch in run] == [expected] * 3
        assert all(epoch["new_iterator_s"] >= 0 and epoch["epoch_s"] > 0 for epoch in run)
    found = summary(runs)
    starts = [epoch["new_iterator_s"] for run in runs for epoch in run[1:]]
    assert found["new_iterator_s_max"] == max(starts)  # the first epoch destroys nothing
    assert found["runs"] == runs
