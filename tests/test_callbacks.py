"""The trainer's callbacks: MLflow logging of a resumed run, console progress."""

from __future__ import annotations

import io
import logging

import keras
import numpy as np
from mlflow.tracking import MlflowClient

from pipeline.core import callbacks
from pipeline.core.callbacks import Logged, MlflowMetrics, Progress
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
    epochs = [m.step for m in client.get_metric_history(run.run_id, "train/loss")]
    steps = [m.step for m in client.get_metric_history(run.run_id, "grad_norm/global")]
    assert sorted(epochs) == [1, 2, 3]
    assert sorted(steps) == list(range(1, 13))
    assert [row["epoch"] for row in callback.epoch_rows] == [2, 3]  # plots still get them


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def fit_with_progress(stream: io.StringIO) -> None:
    """Two epochs of 8 steps each, reported by `Progress` on `stream`."""
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    tiny_model().fit(
        x, x.sum(axis=1), batch_size=8, epochs=2, verbose=0, callbacks=[Progress(1, 8, 2, stream)]
    )


def test_progress_draws_a_bar_per_epoch_on_a_terminal(monkeypatch, caplog) -> None:
    monkeypatch.setattr(callbacks, "BAR_REFRESH_S", 0)  # draw every step
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger=callbacks.__name__):
        fit_with_progress(terminal)
    screen = terminal.getvalue()
    for epoch in (1, 2):
        assert f"epoch {epoch}/2: 100%" in screen and "8/8 [" in screen
    assert "<00:00" in screen  # elapsed<remaining
    assert "loss " in screen and "grad_norm " in screen
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[:2] for line in lines] == [["epoch", "1/2"], ["epoch", "2/2"]]


def test_progress_logs_lines_and_draws_no_bar_elsewhere(caplog) -> None:
    plain = io.StringIO()  # a file or pipe: CI, DVC's logs
    with caplog.at_level(logging.INFO, logger=callbacks.__name__):
        fit_with_progress(plain)
    assert plain.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    steps = [line for line in lines if line.lstrip().startswith("step")]
    assert len(steps) == 2 and all("loss" in line and "grad_norm" in line for line in steps)
    assert sum(line.startswith("epoch ") for line in lines) == 2


class Killed(Exception):
    """Stands in for a kill after an epoch's checkpoint."""


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch:
            raise Killed


def ema_fit(backup: str, epochs: int, kill_after: int | None = None) -> list[np.ndarray]:
    """Adam with weight averaging, the trainer's swap callback, then Keras's per-epoch backup."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.9), loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    stack = [callbacks.ResumableSwapEMAWeights()]
    stack += [keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)]
    stack += [KillAfterEpoch(kill_after)] if kill_after is not None else []  # after the backup
    model.fit(
        x, x.sum(axis=1), batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=stack
    )
    return model.get_weights()


def test_weight_averaging_resumes_where_it_stopped(tmp_path) -> None:
    """A run killed after epoch 2's checkpoint and resumed ends with the uninterrupted weights:
    the checkpoint holds the average in the model, and the first resumed epoch swaps it back."""
    whole = ema_fit(str(tmp_path / "whole"), epochs=4)
    try:
        ema_fit(str(tmp_path / "killed"), epochs=4, kill_after=1)
    except Killed:
        pass
    resumed = ema_fit(str(tmp_path / "killed"), epochs=4)
    for got, want in zip(resumed, whole, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
