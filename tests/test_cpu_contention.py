"""benchmarks/cpu_contention.py: chunk-time summaries and a real (short) side-by-side run."""

from __future__ import annotations

import pytest

from benchmarks.cpu_contention import summary, time_chunks


def test_summary_counts_the_chunks_slower_than_the_stall_factor() -> None:
    times = [0.05, 0.05, 0.06, 0.05, 0.2, 0.05]  # one chunk took 4x the fastest
    found = summary(times, fastest=0.05, stall_factor=3.0)
    assert found["chunks"] == 6
    assert found["ms_min"] == pytest.approx(50) and found["ms_max"] == pytest.approx(200)
    assert found["ms_p50"] == pytest.approx(50)
    assert found["stalls"] == 1 and found["stall_seconds"] == pytest.approx(0.2)
    assert found["chunks_per_second"] == pytest.approx(6 / 0.46)


def test_time_chunks_runs_whole_chunks_for_about_the_given_time() -> None:
    times = time_chunks(0.3)
    assert times and all(t > 0 for t in times)
    assert sum(times) >= 0.3 - max(times)  # stops at the first chunk that ends past the deadline
