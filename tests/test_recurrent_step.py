"""benchmarks/recurrent_step.py: the default classifier and its variants, timed per step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer

from benchmarks.recurrent_step import VARIANTS, batch, default_params, main


def test_batch_pads_only_the_last_rows() -> None:
    """The synthetic batch keeps most rows whole and pads the rest at the end, never the start."""
    tokens, labels = batch(20, 40)
    lengths = (tokens != 0).sum(axis=1)
    assert tokens.shape == (20, 40) and labels.shape == (20, 1)
    assert (lengths[:17] == 40).all() and (lengths[17:] < 40).all()
    assert (tokens[:, 0] != 0).all()
    assert set(np.unique(labels)) <= {0.0, 1.0}


def test_variants_are_valid_params() -> None:
    """Every variant's overrides name real `train.classification` fields."""
    fields = set(type(default_params()).model_fields)
    for overrides, _ in VARIANTS.values():
        assert set(overrides) <= fields


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    """A misspelt variant fails before anything trains, naming the choices."""
    with pytest.raises(typer.BadParameter, match="unknown variant"):
        main(length=8, steps=1, repeats=1, variant=["batch 33"], out=tmp_path / "r.json")


@pytest.mark.slow
def test_times_the_real_classifier(tmp_path: Path) -> None:
    """Two variants on a tiny batch: one timing per repeat, reviews/s = batch / median."""
    out = tmp_path / "r.json"
    main(length=8, steps=1, repeats=2, variant=["default", "batch 32"], out=out)
    result = json.loads(out.read_text())
    assert list(result["variants"]) == ["default", "batch 32"]
    for entry in result["variants"].values():
        assert len(entry["seconds_per_step"]) == 2 and min(entry["seconds_per_step"]) > 0
        median = entry["median_ms_per_step"] / 1000
        assert entry["reviews_per_second"] == pytest.approx(entry["batch_size"] / median)
    assert result["variants"]["batch 32"]["batch_size"] == 32
