"""The featurized series: its on-disk layout, calendar features and train-fitted scaling.

`featurize` writes, beside the download's `manifest.json`:

- `series.npz`: `features` float32 (N, 7), one row per step of the whole series (train, val
  and test back to back) with the columns of `FEATURES`; `demand` float64 (N,) in GW, unscaled
  (metrics are in GW); `timestamps` datetime64[m] (N,); `{split}_origins` int64: the forecast
  origins of each split. A window at origin o reads history rows [o - history, o) and forecasts
  rows [o, o + horizon); every forecast row lies in the origin's split (history may reach back
  into an earlier split: it is the past, known at forecast time).
- `scaler.json` (`SCALER`): the train span's mean and std of demand and temperature, the window
  geometry, the split ends and the MASE scale. Training copies it beside the model; `forecast`
  reads it.

Windows are not materialised (17,000 x 384 x 7 float32 would be ~190 MB, 200x the series):
the data pipeline gathers them from the series by origin, in batches.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SCALER = "scaler.json"
SERIES = "series.npz"
FEATURES = ("demand", "temperature", "workday", "tod_sin", "tod_cos", "dow_sin", "dow_cos")
COVARIATES = FEATURES[1:]  # known for the horizon too: all but demand
MINUTES_PER_DAY, DAYS_PER_WEEK = 1440, 7


@dataclass(frozen=True)
class Scaler:
    """Standardisation fitted on the train span, the window geometry and the MASE scale."""

    demand_mean: float
    demand_std: float
    temperature_mean: float
    temperature_std: float
    history: int
    horizon: int
    step_minutes: int
    split_ends: dict[str, int]
    mase_scale: float  # in-sample MAE (GW) of the lag-`week` seasonal naive on the train span

    def scale_demand(self, demand: np.ndarray) -> np.ndarray:
        """GW to the model's units."""
        return (demand - self.demand_mean) / self.demand_std

    def unscale_demand(self, scaled: np.ndarray) -> np.ndarray:
        """The model's units back to GW."""
        return np.asarray(scaled, dtype=np.float64) * self.demand_std + self.demand_mean

    def save(self, path: Path) -> None:
        """Write as JSON."""
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", "utf-8")

    @classmethod
    def load(cls, path: Path) -> Scaler:
        """Read a scaler written by `save`."""
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def steps_per(minutes: int, step_minutes: int) -> int:
    """Steps in a period (48 half-hours a day, 336 a week)."""
    return minutes // step_minutes


def read_split_csv(path: Path) -> dict[str, np.ndarray]:
    """Columns of one `{split}.csv` written by `download` (timestamps as datetime64[m])."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `download forecasting` first")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        "timestamps": np.asarray([r["timestamp"] for r in rows], dtype="datetime64[m]"),
        "demand": np.asarray([float(r["demand"]) for r in rows]),
        "temperature": np.asarray([float(r["temperature"]) for r in rows]),
        "workday": np.asarray([float(r["workday"]) for r in rows]),
    }


def calendar(timestamps: np.ndarray) -> np.ndarray:
    """(N, 4) time of day and day of week as points on circles (midnight next to 23:30)."""
    minutes = timestamps.astype("datetime64[m]").astype(np.int64)
    day = (minutes % MINUTES_PER_DAY) / MINUTES_PER_DAY
    week = ((minutes // MINUTES_PER_DAY + 3) % DAYS_PER_WEEK) / DAYS_PER_WEEK  # 1970-01-01: Thu
    angles = 2 * np.pi * np.stack([day, week], axis=1)
    return np.stack(
        [np.sin(angles[:, 0]), np.cos(angles[:, 0]), np.sin(angles[:, 1]), np.cos(angles[:, 1])],
        axis=1,
    )


def feature_matrix(columns: dict[str, np.ndarray], scaler: Scaler) -> np.ndarray:
    """(N, len(FEATURES)) float32 model inputs: scaled demand and temperature, flags, calendar."""
    temperature = (columns["temperature"] - scaler.temperature_mean) / scaler.temperature_std
    parts = [scaler.scale_demand(columns["demand"]), temperature, columns["workday"]]
    return np.column_stack([*parts, calendar(columns["timestamps"])]).astype(np.float32)


def origins(first: int, end: int, past: int, horizon: int, stride: int) -> np.ndarray:
    """Origins o of a split [first, end) with `past` rows before them and the forecast inside."""
    return np.arange(max(first, past), end - horizon + 1, stride, dtype=np.int64)


def seasonal_naive_mae(demand: np.ndarray, lag: int) -> float:
    """In-sample MAE of predicting each value by the one `lag` steps earlier."""
    if len(demand) <= lag:
        raise ValueError(f"need more than {lag} steps to measure a lag-{lag} naive forecast")
    return float(np.mean(np.abs(demand[lag:] - demand[:-lag])))
