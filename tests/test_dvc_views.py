"""What `dvc metrics show` and `dvc plots show` present: headline numbers, one chart per file."""

from __future__ import annotations

from pathlib import Path

from tests.structure import dvc_stages

STAGES = dvc_stages()
HEADLINE_METRICS = {"train.json", "evaluate.json"}


def test_only_headline_numbers_are_dvc_metrics() -> None:
    """Data statistics (tokenize, featurize) are plain, cached outputs, not metrics columns."""
    metrics = {path for stage in STAGES.values() for path in stage.get("metrics", [])}
    assert metrics and {Path(path).name for path in metrics} == HEADLINE_METRICS
    for name, stage in STAGES.items():
        if name.startswith(("tokenize@", "featurize_")):
            stats = "tokenize.json" if name.startswith("tokenize") else "featurize.json"
            assert [out for out in stage["outs"] if out.endswith(stats)], name
