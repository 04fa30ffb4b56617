"""Length buckets: their edges, the batch count Keras is told, and the padding they leave."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from benchmarks.bucket_padding import RATIOS, padding
from pipeline.core.datasets import batch_count, batches, bucket_boundaries, ragged, slices
from pipeline.params import ClassificationTrain


def test_bucket_edges_grow_by_sqrt2_below_max_len() -> None:
    assert bucket_boundaries(400) == [16, 23, 32, 45, 64, 91, 128, 181, 256, 362]
    assert bucket_boundaries(400, ratio=2.0) == [16, 32, 64, 128, 256]
    assert bucket_boundaries(32) == [16, 23]
    assert bucket_boundaries(16) == []
    fine = bucket_boundaries(20, smallest=2, ratio=1.1)  # rounding repeats an edge: kept once
    assert fine == sorted(set(fine)) and fine[0] == 2 and fine[-1] < 20


@pytest.mark.parametrize("ratio", [1.0, 0.5, 5.0])
def test_bucket_ratio_out_of_range_names_the_key(ratio: float) -> None:
    with pytest.raises(ValidationError, match="bucket_ratio"):
        ClassificationTrain(bucket_ratio=ratio)


@pytest.mark.parametrize("ratio", list(RATIOS.values()))
def test_batch_count_is_the_number_of_batches(ratio: float) -> None:
    """Keras is told the epoch's length up front; a wrong count would add or drop steps."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 120, size=300)
    seqs = [np.ones(n, dtype=np.int32) for n in lengths]
    cfg = ClassificationTrain(max_len=100, batch_size=16, bucket_ratio=ratio)
    ds = batches(slices(ragged(seqs), np.zeros(len(seqs), np.float32)), cfg, lengths, True)
    rows = [tokens.numpy().sum(axis=1) for tokens, _ in ds]
    assert len(rows) == batch_count(lengths, cfg, True)
    edges = bucket_boundaries(100, ratio=ratio)
    for batch in rows:  # every batch holds one bucket's lengths only
        assert len(set(np.searchsorted(edges, batch, side="right"))) == 1


def test_finer_buckets_leave_fewer_pads() -> None:
    """The benchmark's count: real timesteps are the lengths', and sqrt(2) edges pad less."""
    rng = np.random.default_rng(1)
    lengths = np.minimum(rng.lognormal(5.3, 0.7, size=2000).astype(np.int64) + 1, 400)
    cfg = ClassificationTrain(max_len=400, batch_size=32)
    stats = {name: padding(lengths, cfg, ratio) for name, ratio in RATIOS.items()}
    for one in stats.values():
        assert one["real"] == pytest.approx(lengths.mean())
        assert one["padded"] >= one["real"]
    assert stats["sqrt2"]["padded"] < stats["doubling"]["padded"]
