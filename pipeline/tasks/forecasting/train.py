"""Demand forecasting, training side: model, windows and probe for the shared trainer."""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from pipeline.core.tracking import StageRun
from pipeline.core.trainer import TrainingSetup
from pipeline.params import ForecastingTrain
from pipeline.tasks.forecasting.data import (
    check_history,
    load_series,
    make_dataset,
    probe_origins,
    windows,
)
from pipeline.tasks.forecasting.model import build_forecaster
from pipeline.tasks.forecasting.series import FEATURES, SCALER

LOSSES = {"mae": keras.losses.MeanAbsoluteError, "mse": keras.losses.MeanSquaredError}


def per_example_loss(kind: str):
    """Each window's loss averaged over its horizon steps (the probe sums these)."""

    def loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        error = tf.cast(y_true, y_pred.dtype) - y_pred
        return tf.reduce_mean(tf.abs(error) if kind == "mae" else tf.square(error), axis=-1)

    return loss


def setup(cfg: ForecastingTrain, data_dir: Path) -> TrainingSetup:
    """Build the forecaster and its windows for the shared trainer."""
    series = load_series(data_dir)
    check_history(cfg, series.scaler)
    probe = probe_origins(series.origins["val"], cfg.probe_batch_size)
    probe_inputs, probe_targets = windows(series, probe, cfg.max_len, cfg.seasonal_inputs)
    future_width = probe_inputs[1].shape[-1]
    return TrainingSetup(
        model=build_forecaster(cfg, len(FEATURES), series.scaler.horizon, future_width),
        loss=LOSSES[cfg.loss](),
        metrics=[keras.metrics.MeanAbsoluteError(name="mae")],
        train=make_dataset(series, series.origins["train"], cfg, shuffle=True),
        val=make_dataset(series, series.origins["val"], cfg, shuffle=False),
        probe_inputs=probe_inputs,
        probe_targets=probe_targets,
        probe_loss=per_example_loss(cfg.loss),
        assets={SCALER: data_dir / SCALER},  # `forecast` unscales with it
    )


def after_training(cfg: ForecastingTrain, run: StageRun, model_dir: Path) -> None:
    """Nothing to add: the logged model directory holds the scaler `forecast` needs."""
