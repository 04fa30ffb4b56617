"""The real `dvc repro` of the forecasting stages (download, featurize, train, evaluate) on the
first six weeks of the pinned series, then `forecast` and `compare`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.test_pipeline import make_project, ran, run

pytestmark = pytest.mark.slow
STAGES = [
    "download@forecasting",
    "featurize_forecasting",
    "train_forecasting",
    "evaluate_forecasting",
]
TINY_FORECASTING = {
    "download.forecasting.val_start": "2014-01-29",
    "download.forecasting.test_start": "2014-02-05",
    "download.forecasting.end": "2014-02-12",
    "featurize.forecasting.stride": 4,
    "featurize.forecasting.eval_stride": 8,
    "train.forecasting.units": 8,
    "train.forecasting.head_units": 8,
    "train.forecasting.batch_size": 32,
    "train.forecasting.epochs": 2,
    "train.forecasting.jit_compile": False,
    "train.forecasting.max_steps_per_epoch": None,
    "train.forecasting.log_every_n_steps": 2,
    "train.forecasting.probe_batch_size": 8,
    "train.forecasting.early_stopping_patience": None,
}


def test_repro_forecasting_end_to_end_then_forecast_and_compare(tmp_path: Path) -> None:
    repo, env = make_project(tmp_path, TINY_FORECASTING)
    assert ran(run(["dvc", "repro", "evaluate_forecasting"], repo, env)) == STAGES
    featurized = json.loads((repo / "metrics/forecasting/featurize.json").read_text())
    # 28 train days (1,344 half-hours): origins every 4 steps from 336 to 1,296.
    assert featurized["train.steps"] == 1344 and featurized["train.windows"] == 241
    assert featurized["test.windows"] == 37  # 336 test steps, origins every 8 up to 288
    trained = json.loads((repo / "metrics/forecasting/train.json").read_text())
    assert math.isfinite(trained["loss"]) and trained["epochs_run"] == 2
    assert 1 <= trained["grad_flow/horizon/rnn_1"] <= 336
    results = json.loads((repo / "metrics/forecasting/evaluate.json").read_text())
    for name in ("test", "baseline.naive_day", "baseline.naive_week", "baseline.ridge"):
        assert {f"{name}.{m}" for m in ("mae", "rmse", "smape", "mase")} <= set(results)
        assert all(math.isfinite(results[f"{name}.{m}"]) for m in ("mae", "rmse", "smape"))
    assert 0 < results["baseline.naive_week.mase"] < 3
    assert {p.name for p in (repo / "reports/forecasting").iterdir()} == {
        "horizon_errors.json",
        "horizon_error.png",
        "test_week.json",
        "test_week.png",
        "gradient_flow.json",
        "gradient_flow.png",
    }
    assert len(json.loads((repo / "reports/forecasting/gradient_flow.json").read_text())) == 336
    assert (repo / "models/forecasting/scaler.json").is_file()

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("forecasting").experiment_id
    stages = sorted(r.data.tags["pipeline.stage"] for r in client.search_runs([experiment]))
    assert stages == ["download", "evaluate", "featurize", "pipeline", "train"]
    assert ran(run(["dvc", "repro", "evaluate_forecasting"], repo, env)) == []

    cli = [sys.executable, "-m", "pipeline"]
    done = subprocess.run(
        [*cli, "forecast", "--start", "2014-02-06 00:00"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "time\tforecast_gw\tactual_gw" and len(lines) == 49
    time, predicted, actual = lines[1].split("\t")
    assert time == "2014-02-06T00:00" and 1 < float(predicted) < 12 and 2 < float(actual) < 10
    done = subprocess.run(
        [*cli, "forecast", "--start", "2014-01-02 00:00"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "fewer than 336 steps of history" in done.stderr

    done = subprocess.run(
        [*cli, "compare", "forecasting"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test/mase" in done.stdout
