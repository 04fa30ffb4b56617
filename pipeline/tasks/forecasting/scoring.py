"""Forecast errors per horizon step (MAE, RMSE, sMAPE, MASE) and the baselines they are set against.

MASE divides by the train span's in-sample MAE of the lag-one-week seasonal naive forecast
(`Scaler.mase_scale`), so MASE 1 means as good, on the test windows, as last week was for the
train span. sMAPE is 200 |y - f| / (|y| + |f|), in percent (0 where both are 0).
"""

from __future__ import annotations

import numpy as np

from pipeline.params import ForecastingEvaluate


def smape(actual: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """Symmetric absolute percentage error of each value, in percent."""
    total = np.abs(actual) + np.abs(forecast)
    error = 200.0 * np.abs(actual - forecast)
    return np.divide(error, total, out=np.zeros_like(error, dtype=np.float64), where=total > 0)


def horizon_curves(
    actual: np.ndarray, forecast: np.ndarray, mase_scale: float
) -> dict[str, np.ndarray]:
    """Each metric per horizon step, over the windows (axis 0) of (n, horizon) arrays."""
    error = np.asarray(forecast, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    mae = np.abs(error).mean(axis=0)
    return {
        "mae": mae,
        "rmse": np.sqrt(np.square(error).mean(axis=0)),
        "smape": smape(actual, forecast).mean(axis=0),
        "mase": mae / mase_scale,
    }


def summary(prefix: str, curves: dict[str, np.ndarray]) -> dict[str, float]:
    """Average each curve over the horizon (RMSE: the root of the mean squared error)."""
    out = {f"{prefix}.{name}": float(curve.mean()) for name, curve in curves.items()}
    out[f"{prefix}.rmse"] = float(np.sqrt(np.mean(np.square(curves["rmse"]))))
    return out


def seasonal_naive(demand: np.ndarray, origins: np.ndarray, horizon: int, lag: int) -> np.ndarray:
    """(n, horizon) forecasts repeating the value `lag` steps earlier (known at the origin)."""
    if lag < horizon:
        raise ValueError(f"a lag-{lag} naive forecast of {horizon} steps would read the future")
    rows = np.asarray(origins)[:, None] + np.arange(horizon) - lag
    return np.asarray(demand, dtype=np.float64)[rows]


def ridge_features(
    demand: np.ndarray, covariates: np.ndarray, origins: np.ndarray, horizon: int, week: int
) -> np.ndarray:
    """Per window: the last day of demand, the same hours last week, and the horizon covariates.

    Covariates (temperature, working day, calendar) enter as given and temperature also
    squared, since demand rises both when it is cold and when it is hot.
    """
    origins = np.asarray(origins)[:, None]
    recent = demand[origins + np.arange(-week // 7, 0)]
    last_week = demand[origins + np.arange(horizon) - week]
    ahead = covariates[origins + np.arange(horizon)]  # (n, horizon, C)
    temperature = ahead[..., :1]
    parts = [recent, last_week, ahead.reshape(len(origins), -1)]
    return np.column_stack([*parts, np.square(temperature).reshape(len(origins), -1)])


def ridge_forecast(
    train: tuple[np.ndarray, np.ndarray], test: np.ndarray, cfg: ForecastingEvaluate
) -> np.ndarray:
    """Multi-output ridge regression (standardised inputs) fitted on the train windows."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), Ridge(alpha=cfg.ridge_alpha))
    model.fit(*train)
    return model.predict(test)
