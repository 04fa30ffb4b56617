"""Forecasting task: chronological splits, train-only scaling and windows that never cross a
split boundary, the error metrics by hand, seasonal naive on periodic series, the model heads
and the gradient-flow probe over the history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.gradient_flow import GradientFlowProbe
from pipeline.download import run_download
from pipeline.featurize import run_featurize
from pipeline.params import (
    ForecastingDownload,
    ForecastingFeaturize,
    ForecastingTrain,
    ParamsError,
    Task,
    load_params,
)
from pipeline.tasks.forecasting.data import load_series, make_dataset, window_rows, windows
from pipeline.tasks.forecasting.model import build_forecaster
from pipeline.tasks.forecasting.scoring import horizon_curves, seasonal_naive, smape, summary
from pipeline.tasks.forecasting.series import FEATURES
from pipeline.tasks.forecasting.train import per_example_loss

ROOT = Path(__file__).resolve().parents[1]
SMALL = ForecastingFeaturize(history=12, horizon=4, stride=1, eval_stride=1)


def write_split(path: Path, start: str, demand: np.ndarray, temperature: np.ndarray) -> None:
    """A `{split}.csv` as `download` writes it, half-hourly from `start`."""
    times = np.datetime64(start, "m") + np.arange(len(demand)) * np.timedelta64(30, "m")
    lines = ["timestamp,demand,temperature,workday"]
    lines += [f"{t},{d},{c},1" for t, d, c in zip(times, demand, temperature, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def leaky_series(raw: Path) -> None:
    """Train demand 1-2 GW and 10-20 °C; validation and test 100x larger: any leak shows."""
    raw.mkdir()
    rng = np.random.default_rng(0)
    spans = {"train": ("2014-01-01T00:00", 400, 1.0), "val": ("2014-01-09T08:00", 20, 100.0)}
    spans["test"] = ("2014-01-09T18:00", 20, 100.0)
    for split, (start, n, size) in spans.items():
        write_split(
            raw / f"{split}.csv",
            start,
            size * (1 + rng.random(n)),
            size * (10 + 10 * rng.random(n)),
        )


def test_featurize_scales_with_the_train_span_and_keeps_forecasts_inside_their_split(
    tmp_path: Path,
) -> None:
    leaky_series(tmp_path / "raw")
    run_featurize(Task.forecasting, SMALL, tmp_path / "raw", tmp_path / "features")
    series = load_series(tmp_path / "features")
    train = series.demand[:400]
    # Fitted on the train rows only: with the others the mean would be ~10 GW, not ~1.5.
    assert series.scaler.demand_mean == pytest.approx(train.mean())
    assert series.scaler.demand_std == pytest.approx(train.std())
    assert series.scaler.split_ends == {"train": 400, "val": 420, "test": 440}
    assert series.scaler.mase_scale == pytest.approx(np.abs(train[336:] - train[:-336]).mean())
    bounds = {"train": (0, 400), "val": (400, 420), "test": (420, 440)}
    for split, (first, end) in bounds.items():
        past, ahead = window_rows(series.origins[split], 12, 4)
        assert ahead.min() >= first and ahead.max() < end, split  # targets stay in the split
        assert past.min() >= 0 and (past < ahead[:, :1]).all()  # history is the past only
    # Origins start a week in (the seasonal lags); val history may reach back into train.
    assert len(series.origins["train"]) == 400 - 336 - 4 + 1
    assert len(series.origins["val"]) == 20 - 4 + 1
    (_, future), targets = windows(series, series.origins["train"], 12, lags=False)
    assert np.abs(series.scaler.unscale_demand(targets)).max() < 2.5  # no 100 GW val rows
    # Keras iterates it anew each epoch: no autotune thread for the old iterator to wait on.
    cfg = ForecastingTrain(max_len=12, batch_size=16)
    ds = make_dataset(series, series.origins["train"], cfg, shuffle=True)
    assert ds.options().autotune.enabled is False


def test_featurize_writes_calendar_features(tmp_path: Path) -> None:
    leaky_series(tmp_path / "raw")
    run_featurize(Task.forecasting, SMALL, tmp_path / "raw", tmp_path / "features")
    series = load_series(tmp_path / "features")
    tod_sin, tod_cos = (series.features[:, FEATURES.index(k)] for k in ("tod_sin", "tod_cos"))
    np.testing.assert_allclose([tod_sin[0], tod_cos[0]], [0.0, 1.0], atol=1e-6)  # midnight
    np.testing.assert_allclose([tod_sin[12], tod_cos[12]], [1.0, 0.0], atol=1e-6)  # 06:00
    dow = series.features[:, FEATURES.index("dow_sin")]
    assert dow[0] == dow[47] != dow[48]  # 2014-01-01 (a Wednesday) ends after 48 half-hours


def test_mase_and_smape_match_hand_computed_values() -> None:
    actual = np.array([[1.0, 2.0], [3.0, 4.0]])
    forecast = np.array([[2.0, 2.0], [3.0, 2.0]])
    curves = horizon_curves(actual, forecast, mase_scale=0.5)
    # errors [[1, 0], [0, 2]]: MAE per step [0.5, 1.0]; over the scale 0.5: [1, 2].
    np.testing.assert_allclose(curves["mae"], [0.5, 1.0])
    np.testing.assert_allclose(curves["mase"], [1.0, 2.0])
    # sMAPE: 200*1/(1+2) = 66.67 and 0 at step 1; 0 and 200*2/(4+2) = 66.67 at step 2.
    np.testing.assert_allclose(curves["smape"], [100 / 3, 100 / 3])
    np.testing.assert_allclose(curves["rmse"], [np.sqrt(0.5), np.sqrt(2.0)])
    averaged = summary("test", curves)
    assert averaged["test.mase"] == pytest.approx(1.5)
    assert averaged["test.rmse"] == pytest.approx(np.sqrt(1.25))  # all four squared errors
    assert smape(np.zeros(1), np.zeros(1))[0] == 0.0


def test_seasonal_naive_is_exact_on_a_periodic_series() -> None:
    day, week, horizon = 48, 336, 48
    t = np.arange(4 * week)
    daily = 5 + np.sin(2 * np.pi * t / day)
    weekly = daily + 0.5 * (t // day % 7 >= 5)  # weekends lower... by a constant
    origins = np.arange(week, 3 * week, 7)
    for demand, lag in ((daily, day), (daily, week), (weekly, week)):
        forecast = seasonal_naive(demand, origins, horizon, lag)
        actual = demand[origins[:, None] + np.arange(horizon)]
        assert summary("x", horizon_curves(actual, forecast, 0.3))["x.mase"] == pytest.approx(0)
    forecast = seasonal_naive(weekly, origins, horizon, day)  # yesterday misses weekends
    actual = weekly[origins[:, None] + np.arange(horizon)]
    assert summary("x", horizon_curves(actual, forecast, 0.3))["x.mase"] > 0.1
    with pytest.raises(ValueError, match="would read the future"):
        seasonal_naive(daily, origins, horizon, lag=24)


@pytest.mark.parametrize("head", ["direct", "decoder"])
def test_both_heads_forecast_the_horizon_and_the_probe_sees_the_whole_history(head: str) -> None:
    cfg = ForecastingTrain(units=4, head=head, head_units=6, max_len=20)
    model = build_forecaster(cfg, len(FEATURES), horizon=5, future_features=6)
    rng = np.random.default_rng(1)
    inputs = (
        rng.normal(size=(3, 20, 7)).astype("float32"),
        rng.normal(size=(3, 5, 6)).astype("float32"),
    )
    assert model.predict_on_batch(inputs).shape == (3, 5)
    probe = GradientFlowProbe(model, inputs, rng.normal(size=(3, 5)), per_example_loss("mae"))
    curves = probe.measure()
    assert curves["rnn_1"].shape == (20,) and np.isfinite(curves["rnn_1"]).all()
    assert (curves["rnn_1"] > 0).all()
    if head == "decoder":
        assert curves["decoder_1"].shape == (5,)


def test_params_refuse_splits_out_of_order(write_params) -> None:
    with pytest.raises(ParamsError, match="start < val_start < test_start"):
        load_params(write_params({"download.forecasting.test_start": "2014-08-01"}))
    with pytest.raises(ParamsError, match="download.forecasting.val_start"):
        load_params(write_params({"download.forecasting.val_start": "September"}))
    assert load_params(ROOT / "params.yaml").train.forecasting.max_len == 336


@pytest.mark.slow
def test_download_splits_the_real_series_by_time(tmp_path: Path) -> None:
    from pipeline.download import default_cache_dir

    cfg = load_params(ROOT / "params.yaml").download.forecasting
    assert isinstance(cfg, ForecastingDownload)
    result = run_download(Task.forecasting, cfg, tmp_path / "raw", default_cache_dir())
    assert result.counts == {"train": 11664, "val": 2928, "test": 2928}  # 243/61/61 days
    assert result.manifest["spans"]["val"] == ["2014-09-01T00:00", "2014-10-31T23:30"]
    head = (tmp_path / "raw/train.csv").read_text().splitlines()[:2]
    assert head == ["timestamp,demand,temperature,workday", "2014-01-01T00:00,3.91464713,18.2,0"]
