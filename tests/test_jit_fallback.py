"""`jit_compile: true` on a model XLA cannot compile: one log line, then uncompiled training."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from pipeline.core.tracking import stage_run
from pipeline.core.trainer import Checkpoint, TrainingSetup, fit, xla_unsupported
from pipeline.params import TrainParams

pytestmark = pytest.mark.slow


class HostIdentity(keras.layers.Layer):
    """An identity computed in Python (`tf.py_function`, differentiable): no XLA kernel."""

    def call(self, x):
        return tf.ensure_shape(tf.py_function(lambda a: a, [x], tf.float32), x.shape)


def host_op_setup() -> TrainingSetup:
    """A tiny recurrent regressor with a host-side op between its RNN and its head."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 2))
    hidden = HostIdentity()(keras.layers.SimpleRNN(4, name="rnn_1")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6, 2)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    mse = keras.losses.MeanSquaredError()
    return TrainingSetup(model, mse, [], data, data, x[:4], y[:4], mse)


def test_a_model_xla_cannot_compile_trains_uncompiled_and_says_why(
    mlflow_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = TrainParams(jit_compile=True, epochs=2, log_every_n_steps=1, probe_batch_size=4)
    setup = host_op_setup()
    with caplog.at_level(logging.WARNING), stage_run("classification", "train", {}) as run:
        final, record = fit(setup, cfg, run, Checkpoint(tmp_path / "ckpt", "key"))
    warnings = [r.getMessage() for r in caplog.records if "jit_compile" in r.getMessage()]
    assert warnings == ["jit_compile: XLA cannot compile EagerPyFunc; training without XLA"]
    assert final["steps"] == 2 * 4 and np.isfinite(final["loss"]) and len(record.epoch_rows) == 2
    tags = MlflowClient(mlflow_uri).get_run(run.run_id).data.tags
    assert tags["pipeline.jit_compile"] == "off: XLA cannot compile EagerPyFunc"


def test_other_errors_are_not_mistaken_for_xla() -> None:
    other = tf.errors.InvalidArgumentError(None, None, "indices[3] = 40 is not in [0, 30)")
    assert xla_unsupported(other) is None
