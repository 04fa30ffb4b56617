"""Evaluate the forecaster beside seasonal-naive (a day, a week) and ridge-regression baselines.

All forecasts cover the same test windows and are scored in GW. Reports: `horizon_errors.json`
(each metric per horizon step for every forecaster; a DVC plot), `test_week.json` and
`test_week.png` (day-ahead forecasts from successive midnights vs the actual demand),
`horizon_error.png` (MASE by horizon step), and `gradient_flow.json` / `gradient_flow.png`:
‖∂L/∂h_t‖ over the history steps, measured on test windows, with last week's and yesterday's
hours marked, to show which past the forecast draws on.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from pipeline.core.corpus import write_json
from pipeline.core.gradient_flow import GradientFlowProbe
from pipeline.core.saved import load_model
from pipeline.params import ForecastingEvaluate, ForecastingTrain
from pipeline.tasks.forecasting.data import (
    Series,
    load_series,
    probe_origins,
    reads_lags,
    windows,
)
from pipeline.tasks.forecasting.plots import plot_flow_over_history, plot_horizon, plot_week
from pipeline.tasks.forecasting.scoring import (
    horizon_curves,
    ridge_features,
    ridge_forecast,
    seasonal_naive,
    summary,
)
from pipeline.tasks.forecasting.series import DAYS_PER_WEEK, MINUTES_PER_DAY, steps_per
from pipeline.tasks.forecasting.train import per_example_loss

FLOW_PROBE_SIZE = 64  # test windows spread over the test span


def predict(model: keras.Model, series: Series, origins: np.ndarray, batch: int) -> np.ndarray:
    """(n, horizon) model forecasts in GW for some origins."""
    history, lags = int(model.inputs[0].shape[1]), reads_lags(model)
    out = []
    for i in range(0, len(origins), batch):
        inputs, _ = windows(series, origins[i : i + batch], history, lags)
        out.append(model.predict_on_batch(inputs))
    return series.scaler.unscale_demand(np.concatenate(out))


def baselines(series: Series, eval_cfg: ForecastingEvaluate) -> dict[str, np.ndarray]:
    """Every baseline's (n, horizon) test forecasts in GW."""
    scaler, test = series.scaler, series.origins["test"]
    day = steps_per(MINUTES_PER_DAY, scaler.step_minutes)
    week = day * DAYS_PER_WEEK
    covariates = series.features[:, 1:]

    def features(origins: np.ndarray) -> np.ndarray:
        return ridge_features(series.demand, covariates, origins, scaler.horizon, week)

    train = series.origins["train"]
    targets = series.demand[train[:, None] + np.arange(scaler.horizon)]
    return {
        "naive_day": seasonal_naive(series.demand, test, scaler.horizon, day),
        "naive_week": seasonal_naive(series.demand, test, scaler.horizon, week),
        "ridge": ridge_forecast((features(train), targets), features(test), eval_cfg),
    }


def flow_over_history(model: keras.Model, series: Series, cfg: ForecastingTrain) -> np.ndarray:
    """Mean ‖∂L/∂h_t‖ of the first encoder layer over the history, on test windows."""
    origins = probe_origins(series.origins["test"], FLOW_PROBE_SIZE)
    inputs, targets = windows(series, origins, cfg.max_len, reads_lags(model))
    curves = GradientFlowProbe(model, inputs, targets, per_example_loss(cfg.loss)).measure()
    key = next(k for k in curves if k.startswith("rnn_1"))  # `rnn_1` or `rnn_1/forward`
    return curves[key]


def flow_metrics(curve: np.ndarray, day: int) -> dict[str, float]:
    """Gradient at last week's forecast hours and six days back, relative to yesterday's."""
    if len(curve) < 2 * day:
        return {}  # a history shorter than two days has no such hours
    yesterday = float(np.mean(curve[-day:]))
    return {
        "test.grad_flow.last_week_vs_yesterday": float(np.mean(curve[:day])) / yesterday,
        "test.grad_flow.six_days_ago_vs_yesterday": float(np.mean(curve[day : 2 * day]))
        / yesterday,
    }


def evaluate(
    cfg: ForecastingTrain,
    eval_cfg: ForecastingEvaluate,
    model_dir: Path,
    data_dir: Path,
    raw_dir: Path,
    report_dir: Path,
) -> dict[str, float]:
    """Score the forecaster and the baselines on the test windows; write the reports.

    Everything reads the featurized series (`data_dir`); `raw_dir` is not needed.
    """
    model, series = load_model(model_dir, compile=False), load_series(data_dir)
    test, scaler = series.origins["test"], series.scaler
    actual = series.demand[test[:, None] + np.arange(scaler.horizon)]
    forecasts = {"model": predict(model, series, test, cfg.batch_size)}
    forecasts |= baselines(series, eval_cfg)
    curves = {name: horizon_curves(actual, f, scaler.mase_scale) for name, f in forecasts.items()}
    results = summary("test", curves["model"])
    for name in sorted(forecasts.keys() - {"model"}):
        results |= summary(f"baseline.{name}", curves[name])
    write_reports(series, forecasts, curves, eval_cfg, report_dir)
    return results | write_flow(model, series, cfg, report_dir)


def write_flow(
    model: keras.Model, series: Series, cfg: ForecastingTrain, report_dir: Path
) -> dict[str, float]:
    """Measure, save and draw the gradient flow over the history; return its summary."""
    day = steps_per(MINUTES_PER_DAY, series.scaler.step_minutes)
    flow = flow_over_history(model, series, cfg)
    rows = [{"t": float(t), "rnn_1": float(v)} for t, v in enumerate(flow)]
    write_json(report_dir / "gradient_flow.json", rows)
    plot_flow_over_history(flow, day, report_dir / "gradient_flow.png")
    return flow_metrics(flow, day)


def write_reports(
    series: Series,
    forecasts: dict[str, np.ndarray],
    curves: dict[str, dict[str, np.ndarray]],
    eval_cfg: ForecastingEvaluate,
    report_dir: Path,
) -> None:
    """Per-step errors (JSON + PNG) and a test stretch of forecasts vs actuals (JSON + PNG)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json(report_dir / "horizon_errors.json", horizon_rows(curves))
    plot_horizon(curves, "mase", report_dir / "horizon_error.png")
    rows = week_rows(series, forecasts, eval_cfg.plot_days)
    write_json(report_dir / "test_week.json", rows)
    plot_week(rows, report_dir / "test_week.png")


def week_rows(
    series: Series, forecasts: dict[str, np.ndarray], days: int
) -> list[dict[str, float | str]]:
    """Day-ahead forecasts from the first `days` midnight origins of the test span, in a row."""
    test, scaler = series.origins["test"], series.scaler
    day = steps_per(MINUTES_PER_DAY, scaler.step_minutes)
    minutes = series.timestamps[test].astype(np.int64)
    picks = np.flatnonzero(minutes % MINUTES_PER_DAY == 0)[:days]
    rows: list[dict[str, float | str]] = []
    for i in picks:
        for k in range(min(day, scaler.horizon)):
            row: dict[str, float | str] = {"timestamp": str(series.timestamps[test[i] + k])}
            row["actual"] = float(series.demand[test[i] + k])
            rows.append(row | {name: float(f[i, k]) for name, f in forecasts.items()})
    return rows


def horizon_rows(curves: dict[str, dict[str, np.ndarray]]) -> list[dict[str, float]]:
    """One row per horizon step: `<forecaster>.<metric>` columns (DVC plots' table format)."""
    steps = len(next(iter(curves.values()))["mae"])
    return [
        {"step": float(k + 1)}
        | {f"{name}.{metric}": float(c[metric][k]) for name, c in curves.items() for metric in c}
        for k in range(steps)
    ]
