"""Forecast the day after a given time with a trained model: the `forecast` command.

The history and the horizon's covariates (temperature, working day, calendar) come from the
featurized series, so `start` must leave a full history before it and a full horizon of
covariates after it; the actual demand of those steps is printed beside the forecast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.saved import load_model
from pipeline.tasks.forecasting.data import Series, load_series, reads_lags, windows


def find_origin(series: Series, start: str, history: int) -> int:
    """The row of `start`, checked to have the history and horizon a forecast needs."""
    wanted = np.datetime64(start.strip().replace(" ", "T"), "m")
    rows = np.flatnonzero(series.timestamps == wanted)
    first, last = series.timestamps[0], series.timestamps[-1]
    if not len(rows):
        raise ValueError(f"{start} is not a step of the series ({first} .. {last})")
    origin, horizon = int(rows[0]), series.scaler.horizon
    if origin < history:
        raise ValueError(f"{start} has fewer than {history} steps of history before it")
    if origin + horizon > len(series.demand):
        raise ValueError(f"the {horizon} steps from {start} run past the series' end ({last})")
    return origin


def forecast_from(model_dir: Path, data_dir: Path, start: str) -> list[tuple[str, float, float]]:
    """(time, forecast GW, actual GW) for each horizon step from `start`."""
    model, series = load_model(model_dir, compile=False), load_series(data_dir)
    history = int(model.inputs[0].shape[1])
    origin = find_origin(series, start, history)
    inputs, _ = windows(series, np.asarray([origin]), history, reads_lags(model))
    forecast = series.scaler.unscale_demand(model.predict_on_batch(inputs))[0]
    steps = range(origin, origin + series.scaler.horizon)
    return [
        (str(series.timestamps[row]), float(value), float(series.demand[row]))
        for row, value in zip(steps, forecast, strict=True)
    ]
