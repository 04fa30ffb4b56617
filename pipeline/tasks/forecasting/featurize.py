"""Forecasting featurization: the scaled series with calendar features and each split's origins.

Scaling (mean and std of demand and temperature) and the MASE scale are fitted on the train
span only; the layout is described in `pipeline/tasks/forecasting/series.py`. Origins start
where both the history and a week of past (the seasonal lags) exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.corpus import SPLITS, save_npz
from pipeline.params import ForecastingFeaturize
from pipeline.tasks.forecasting.series import (
    DAYS_PER_WEEK,
    FEATURES,
    MINUTES_PER_DAY,
    SCALER,
    SERIES,
    Scaler,
    feature_matrix,
    origins,
    read_split_csv,
    seasonal_naive_mae,
    steps_per,
)


def read_series(data_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The three splits back to back, and the row where each split ends."""
    parts = {split: read_split_csv(data_dir / f"{split}.csv") for split in SPLITS}
    columns = {key: np.concatenate([p[key] for p in parts.values()]) for key in parts["train"]}
    step = np.diff(columns["timestamps"]).astype(np.int64)
    if len(step) and (step != step[0]).any():
        raise ValueError(f"{data_dir}: the splits are not one regular series: re-run download")
    ends = np.cumsum([len(p["demand"]) for p in parts.values()]).tolist()
    return columns, dict(zip(SPLITS, ends, strict=True))


def fit_scaler(
    columns: dict[str, np.ndarray], ends: dict[str, int], cfg: ForecastingFeaturize, step: int
) -> Scaler:
    """Statistics of the train span only (the rows before `ends["train"]`)."""
    train = slice(0, ends["train"])
    demand, temperature = columns["demand"][train], columns["temperature"][train]
    week = steps_per(MINUTES_PER_DAY * DAYS_PER_WEEK, step)
    return Scaler(
        demand_mean=float(demand.mean()),
        demand_std=float(demand.std() or 1.0),
        temperature_mean=float(temperature.mean()),
        temperature_std=float(temperature.std() or 1.0),
        history=cfg.history,
        horizon=cfg.horizon,
        step_minutes=step,
        split_ends=ends,
        mase_scale=seasonal_naive_mae(demand, week),
    )


def featurize(cfg: ForecastingFeaturize, data_dir: Path, out_dir: Path) -> dict[str, float]:
    """Write `series.npz` and `scaler.json`; return counts of rows and origins per split."""
    columns, ends = read_series(data_dir)
    step = int(np.diff(columns["timestamps"][:2]).astype(np.int64)[0])
    scaler = fit_scaler(columns, ends, cfg, step)
    week = steps_per(MINUTES_PER_DAY * DAYS_PER_WEEK, step)
    arrays = {
        "features": feature_matrix(columns, scaler),
        "demand": columns["demand"],
        "timestamps": columns["timestamps"],
    }
    stats = {"num_features": float(len(FEATURES)), "mase_scale": scaler.mase_scale}
    first = 0
    for split, end in ends.items():
        stride = cfg.stride if split == "train" else cfg.eval_stride
        past = max(cfg.history, week)  # the seasonal lags read up to a week back
        arrays[f"{split}_origins"] = origins(first, end, past, cfg.horizon, stride)
        if not len(arrays[f"{split}_origins"]):
            raise ValueError(f"{split}: too short for a {cfg.history}+{cfg.horizon} step window")
        stats[f"{split}.steps"] = float(end - first)
        stats[f"{split}.windows"] = float(len(arrays[f"{split}_origins"]))
        first = end
    save_npz(out_dir / SERIES, arrays)
    scaler.save(out_dir / SCALER)
    return stats


def artifacts(cfg: ForecastingFeaturize) -> tuple[str, ...]:
    """The scaler (train statistics, window geometry, MASE scale) is logged to the run."""
    return (SCALER,)
