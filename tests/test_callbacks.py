"""The trainer's MLflow callback on a resumed run: a redone epoch is not logged twice."""

from __future__ import annotations

import keras
import numpy as np
from mlflow.tracking import MlflowClient

from pipeline.core.callbacks import Logged, MlflowMetrics
from pipeline.core.gradients import InstrumentedModel
from pipeline.core.tracking import stage_run


def tiny_model() -> InstrumentedModel:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1, name="head")(inputs)
    model = InstrumentedModel(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_redone_epoch_after_a_kill_is_logged_once(mlflow_uri: str) -> None:
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    with stage_run("classification", "train", {}) as run:
        # First attempt: epochs 1 and 2 are logged, then the process dies before the
        # checkpoint of epoch 2, so the rerun restarts after epoch 1.
        tiny_model().fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[MlflowMetrics(run, 1)])
        run.flush()
        logged = Logged.of(run)
        assert logged == Logged(steps=8, epochs=2)
        resumed = tiny_model()
        resumed.optimizer.build(resumed.trainable_variables)
        resumed.optimizer.iterations.assign(4)  # as restored from the epoch-1 checkpoint
        callback = MlflowMetrics(run, 1, logged)
        resumed.fit(x, y, batch_size=8, epochs=3, initial_epoch=1, verbose=0, callbacks=[callback])
    client = MlflowClient(mlflow_uri)
    epochs = [m.step for m in client.get_metric_history(run.run_id, "loss")]
    steps = [m.step for m in client.get_metric_history(run.run_id, "grad_norm/global")]
    assert sorted(epochs) == [1, 2, 3]
    assert sorted(steps) == list(range(1, 13))
    assert [row["epoch"] for row in callback.epoch_rows] == [2, 3]  # plots still get them
