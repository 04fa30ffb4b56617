"""Forecasting data: the featurized series, windows gathered by origin, and the probe batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.core.corpus import SPLITS, load_npz
from pipeline.core.datasets import without_autotune
from pipeline.params import ForecastingTrain
from pipeline.tasks.forecasting.series import (
    COVARIATES,
    DAYS_PER_WEEK,
    MINUTES_PER_DAY,
    SCALER,
    SERIES,
    Scaler,
    steps_per,
)

Inputs = tuple[np.ndarray, np.ndarray]  # (history (n, H, F), horizon inputs (n, L, C))


@dataclass(frozen=True)
class Series:
    """The whole featurized series with its forecast origins and train-fitted scaler."""

    features: np.ndarray
    demand: np.ndarray
    timestamps: np.ndarray
    origins: dict[str, np.ndarray]
    scaler: Scaler


def load_series(data_dir: Path) -> Series:
    """Read what `featurize forecasting` wrote."""
    path = data_dir / SERIES
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `featurize forecasting` first")
    data = load_npz(path)
    return Series(
        features=data["features"],
        demand=data["demand"],
        timestamps=data["timestamps"],
        origins={split: data[f"{split}_origins"] for split in SPLITS},
        scaler=Scaler.load(data_dir / SCALER),
    )


def check_history(cfg: ForecastingTrain, scaler: Scaler) -> None:
    """The encoder cannot read more history than featurize kept before each origin."""
    if cfg.max_len > scaler.history:
        raise ValueError(
            f"train.forecasting.max_len ({cfg.max_len}) exceeds featurize.forecasting.history "
            f"({scaler.history})"
        )


def window_rows(origins: np.ndarray, history: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of each origin's history (n, history) and forecast (n, horizon) steps."""
    origins = np.asarray(origins, dtype=np.int64)[:, None]
    return origins + np.arange(-history, 0), origins + np.arange(horizon)


def seasonal_lags(scaler: Scaler, lags: bool) -> tuple[int, ...]:
    """Steps back (a day, a week) whose demand each horizon step also reads, if asked."""
    day = steps_per(MINUTES_PER_DAY, scaler.step_minutes)
    if lags and scaler.horizon > day:
        raise ValueError(
            f"seasonal_inputs needs a horizon of at most a day ({day} steps), got "
            f"{scaler.horizon}: yesterday's value of a later step is not known yet"
        )
    return (day, day * DAYS_PER_WEEK) if lags else ()


def windows(
    series: Series, origins: np.ndarray, history: int, lags: bool
) -> tuple[Inputs, np.ndarray]:
    """Model inputs and scaled targets (n, horizon) of some origins, as numpy arrays."""
    past, ahead = window_rows(origins, history, series.scaler.horizon)
    features = series.features
    lagged = [features[ahead - lag][..., :1] for lag in seasonal_lags(series.scaler, lags)]
    future = np.concatenate([features[ahead][..., 1:], *lagged], axis=-1)
    return (features[past], future), features[ahead][..., 0]


def _gather(features: tf.Tensor, history: int, horizon: int, lags: tuple[int, ...]):
    """A batch function: origins (B,) -> ((history, horizon inputs), targets)."""

    def gather(origins: tf.Tensor):
        origins = origins[:, None]
        past = tf.gather(features, origins + tf.range(-history, 0, dtype=origins.dtype))
        rows = origins + tf.range(horizon, dtype=origins.dtype)
        ahead = tf.gather(features, rows)
        lagged = [tf.gather(features[:, :1], rows - lag) for lag in lags]
        return (past, tf.concat([ahead[..., 1:], *lagged], axis=-1)), ahead[..., 0]

    return gather


def make_dataset(
    series: Series, origins: np.ndarray, cfg: ForecastingTrain, shuffle: bool
) -> tf.data.Dataset:
    """Batches of windows gathered from the series by origin (shuffled, seeded, for training)."""
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(origins, dtype=np.int64))
    if shuffle:
        ds = ds.shuffle(len(origins), seed=cfg.seed, reshuffle_each_iteration=True)
    lags = seasonal_lags(series.scaler, cfg.seasonal_inputs)
    gather = _gather(tf.constant(series.features), cfg.max_len, series.scaler.horizon, lags)
    ds = ds.batch(cfg.batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    count = -(-len(origins) // cfg.batch_size)
    if shuffle and cfg.max_steps_per_epoch:
        count = min(count, cfg.max_steps_per_epoch)
        ds = ds.take(count)
    # A known epoch length (Keras otherwise runs an extra, empty step per epoch).
    ds = ds.apply(tf.data.experimental.assert_cardinality(count)).prefetch(tf.data.AUTOTUNE)
    return without_autotune(ds)


def probe_origins(origins: np.ndarray, size: int) -> np.ndarray:
    """`size` origins spread evenly over a split, so the probe sees every time of day."""
    picks = np.linspace(0, len(origins) - 1, num=min(size, len(origins))).round().astype(int)
    return np.asarray(origins)[np.unique(picks)]


def reads_lags(model: keras.Model) -> bool:
    """Whether a trained forecaster's horizon input has the seasonal-lag columns."""
    return int(model.inputs[1].shape[-1]) > len(COVARIATES)
