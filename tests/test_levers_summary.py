"""benchmarks/levers_summary.py: mean ± sample std per decoding setting over a lever's seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from benchmarks.levers_summary import main


def lever_run(seed: int, greedy: float, beam: float, baseline: float, seconds: float) -> dict:
    """One `translation_levers.py` result with the fields the summary reads."""

    def setting(beam_size: int, alpha: float, bleu: float) -> dict:
        return {"beam_size": beam_size, "length_penalty": alpha, "eos_penalty": 0.0} | {
            "bleu": bleu,
            "chrf": bleu * 3,
        }

    split = {
        "settings": [setting(1, 0.0, greedy), setting(4, 1.0, beam)],
        "dictionary": {"baseline.bleu": baseline, "baseline.chrf": 28.0},
    }
    return {
        "overrides": [f"train.translation.seed={seed}"],
        "train_params": {"seed": seed},
        "train_seconds": seconds,
        "val": split,
    }


def test_means_and_sample_stds_per_setting(tmp_path: Path) -> None:
    files = []
    for seed, greedy, beam, seconds in ((42, 7.0, 8.0, 300.0), (43, 9.0, 8.0, 320.0)):
        path = tmp_path / f"lever_seed{seed}.json"
        path.write_text(json.dumps(lever_run(seed, greedy, beam, 5.0, seconds)))
        files.append(path)

    main(files, tmp_path / "summary.json")

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seeds"] == [42, 43]
    greedy = summary["val"]["beam 1, alpha 0.0, eos 0.0"]
    assert greedy["bleu"]["mean"] == pytest.approx(8.0)
    assert greedy["bleu"]["std"] == pytest.approx(2**0.5)  # sample std of 7 and 9
    assert greedy["chrf"]["values"] == [21.0, 27.0]
    assert summary["val"]["beam 4, alpha 1.0, eos 0.0"]["bleu"]["std"] == 0.0
    assert summary["val"]["dictionary"]["bleu"]["mean"] == 5.0
    assert summary["train_seconds"]["mean"] == 310.0
    assert "test" not in summary


def test_runs_that_decoded_different_settings_are_refused(tmp_path: Path) -> None:
    runs = [lever_run(42, 7.0, 8.0, 5.0, 1.0), lever_run(43, 7.0, 8.0, 5.0, 1.0)]
    runs[1]["val"]["settings"].reverse()
    files = []
    for index, run in enumerate(runs):
        files.append(tmp_path / f"{index}.json")
        files[-1].write_text(json.dumps(run))
    with pytest.raises(typer.BadParameter, match="different settings"):
        main(files, tmp_path / "summary.json")
    assert not (tmp_path / "summary.json").exists()
