"""Gradient-norm instrumentation: correct norms (IndexedSlices), clipping, per-layer keys."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.gradient_flow import GradientFlowProbe
from pipeline.core.gradients import BATCH_LOSS, CLIPPED, GLOBAL, InstrumentedModel, squared_norm
from pipeline.core.trainer import TrainingSetup, compile_model
from pipeline.params import ClassificationTrain, LanguageModelTrain, TrainParams
from pipeline.reference.numpy_rnn import NumpyRNN, hidden_gradient_norms
from pipeline.tasks.classification.model import build_classifier
from pipeline.tasks.language_model.model import build_language_model

TINY = ClassificationTrain(units=8, embedding_dim=6, cell="gru")


def test_indexed_slices_norm_sums_repeated_rows() -> None:
    values = tf.constant([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    grad = tf.IndexedSlices(values, tf.constant([4, 1, 4]), tf.constant([6, 2]))
    dense = tf.convert_to_tensor(grad)
    expected = float(tf.reduce_sum(tf.square(dense)))
    assert float(squared_norm(grad)) == pytest.approx(expected)
    # The pitfall this guards against: squaring repeats separately gives another number.
    assert float(tf.linalg.global_norm([grad])) ** 2 != pytest.approx(expected)


def tiny_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 20, size=(8, 12)).astype("int32")
    tokens[:3, 8:] = 0  # post-padding
    return tokens, rng.integers(0, 2, size=(8, 1)).astype("float32")


def reference_norms(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Norms from an independent tape over densified gradients."""
    loss_fn = keras.losses.BinaryCrossentropy()
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    by_var = {
        id(v): float(tf.reduce_sum(tf.square(tf.convert_to_tensor(g))))
        for v, g in zip(model.trainable_variables, grads, strict=True)
    }
    norms = {
        f"grad_norm/{layer.name}": np.sqrt(sum(by_var[id(v)] for v in layer.trainable_variables))
        for layer in model.layers
        if layer.trainable_variables
    }
    norms[GLOBAL] = np.sqrt(sum(by_var.values()))
    return norms


def test_train_step_reports_the_true_norms_per_layer() -> None:
    keras.utils.set_random_seed(1)
    plain = build_classifier(TINY, vocab_size=20)
    x, y = tiny_batch()
    expected = reference_norms(plain, x, y)
    model = InstrumentedModel(plain.inputs, plain.outputs, clip_norm=None)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="binary_crossentropy")
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(expected) == {k for k in logs if k.startswith("grad_norm/")}
    assert {"grad_norm/embedding", "grad_norm/rnn_1", "grad_norm/head"} <= set(logs)
    for key, value in expected.items():
        assert float(logs[key]) == pytest.approx(value, rel=1e-4), key


def update_size(model: keras.Model, before: list[np.ndarray]) -> float:
    """L2 norm of the change of all trainable weights since `before`."""
    changes = zip(model.trainable_variables, before, strict=True)
    return float(np.sqrt(sum(np.sum((v.numpy() - b) ** 2) for v, b in changes)))


def test_clipping_scales_the_update_to_the_global_norm() -> None:
    keras.utils.set_random_seed(2)
    plain = build_classifier(TINY, vocab_size=20)
    x, y = tiny_batch(1)
    norm = reference_norms(plain, x, y)[GLOBAL]
    before = [v.numpy().copy() for v in plain.trainable_variables]
    model = InstrumentedModel(plain.inputs, plain.outputs, clip_norm=norm / 10)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="binary_crossentropy")
    logs = model.train_on_batch(x, y, return_dict=True)
    assert float(logs[GLOBAL]) == pytest.approx(norm, rel=1e-4)
    assert float(logs[CLIPPED]) == pytest.approx(norm / 10, rel=1e-4)
    step = update_size(plain, before)
    assert step == pytest.approx(norm / 10, rel=1e-3)  # SGD(1): the update is the clipped grad


def test_clipping_leaves_a_gradient_below_the_threshold_alone() -> None:
    """Below `clip_norm` the update is the raw gradient (a mutant that always rescales fails)."""
    keras.utils.set_random_seed(2)
    plain = build_classifier(TINY, vocab_size=20)
    x, y = tiny_batch(1)
    norm = reference_norms(plain, x, y)[GLOBAL]
    before = [v.numpy().copy() for v in plain.trainable_variables]
    model = InstrumentedModel(plain.inputs, plain.outputs, clip_norm=norm * 3)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="binary_crossentropy")
    logs = model.train_on_batch(x, y, return_dict=True)
    assert float(logs[CLIPPED]) == pytest.approx(norm, rel=1e-4)
    step = update_size(plain, before)
    assert step == pytest.approx(norm, rel=1e-3)


def test_batch_loss_is_the_steps_own_loss_not_the_running_mean() -> None:
    keras.utils.set_random_seed(3)
    plain = build_classifier(TINY, vocab_size=20)
    model = InstrumentedModel(plain.inputs, plain.outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="binary_crossentropy")
    (x1, y1), (x2, y2) = tiny_batch(4), tiny_batch(5)
    expected = [
        float(keras.losses.BinaryCrossentropy()(y, plain(x))) for x, y in ((x1, y1), (x2, y2))
    ]
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((float(logs[BATCH_LOSS]), float(logs["loss"])))

    data = tf.data.Dataset.from_tensor_slices((np.concatenate([x1, x2]), np.concatenate([y1, y2])))
    model.fit(data.batch(8), epochs=1, verbose=0, callbacks=[Record()])
    assert [b for b, _ in seen] == pytest.approx(expected, rel=1e-4)
    assert seen[1][1] == pytest.approx(sum(expected) / 2, rel=1e-4)  # Keras's running mean


def test_keras_private_hooks_are_still_there() -> None:
    """InstrumentedModel relies on two Keras internals; a Keras upgrade that changes them
    must fail here, not deep inside a multi-worker run."""
    assert keras.__version__.startswith("3."), keras.__version__
    params = inspect.signature(keras.Model._maybe_symbolic_build).parameters
    assert {"iterator", "data_batch"} <= set(params)
    plain = build_classifier(TINY, vocab_size=20)
    model = InstrumentedModel(plain.inputs, plain.outputs)
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    assert isinstance(model._loss_tracker, keras.metrics.Mean)
    assert model._loss_tracker in model.metrics  # reset and reported by Keras each epoch


def test_probe_matches_numpy_bptt_on_a_keras_simple_rnn() -> None:
    """The instrumentation agrees with first principles (the reference numpy RNN)."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape=(15, 4))
    rnn = keras.layers.SimpleRNN(6, name="rnn_1")
    head = keras.layers.Dense(3, name="head")
    model = keras.Model(inputs, head(rnn(inputs)))
    xs = np.random.default_rng(0).normal(size=(1, 15, 4)).astype("float32")

    def loss(_, y_pred):
        return tf.reduce_sum(tf.square(y_pred), axis=-1)

    curve = GradientFlowProbe(model, xs, None, loss).measure()["rnn_1"]
    reference = NumpyRNN.from_keras(rnn, head)
    y = reference.forward(xs[0].astype(np.float64))
    expected = hidden_gradient_norms(reference.backward(2 * y).dL_dh)
    np.testing.assert_allclose(curve, expected, rtol=1e-4)


def one_step(build, batch: tuple[np.ndarray, np.ndarray], loss, jit: bool) -> dict:
    """Logs and weights after one clipped SGD step of the trainer's model, with or without XLA."""
    keras.utils.set_random_seed(7)
    plain = build()
    setup = TrainingSetup(plain, loss, [], None, None, None, None, None)
    cfg = TrainParams(optimizer="sgd", learning_rate=0.5, clip_norm=0.05, jit_compile=jit)
    model = compile_model(setup, cfg)
    assert model.jit_compile is jit
    logs = model.train_on_batch(*batch, return_dict=True)
    return {"logs": logs, "weights": [v.numpy() for v in plain.trainable_variables]}


def lm_batch() -> tuple[np.ndarray, np.ndarray]:
    tokens = np.random.default_rng(2).integers(1, 30, size=(4, 11)).astype("int32")
    tokens[0, 8:] = 0
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "language_model"])
def test_xla_step_agrees_with_the_plain_step(task: str) -> None:
    """`jit_compile: true` changes speed, not the step: XLA fuses and reorders float32 arithmetic,
    so loss, gradient norms and updated weights agree to float32 rounding (measured: 2e-7
    relative, 2e-9 absolute; asserted: rel 1e-5, atol 1e-7), not bit for bit. Padded, masked
    batches and the clipped, instrumented step included."""
    if task == "classification":
        cfg = ClassificationTrain(units=8, embedding_dim=6, cell="gru", pooling="max_mean")
        args = (lambda: build_classifier(cfg, 20), tiny_batch(), "binary_crossentropy")
    else:
        cfg = LanguageModelTrain(units=8, embedding_dim=6, cell="lstm", tie_embeddings=True)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
        args = (lambda: build_language_model(cfg, 30), lm_batch(), loss)
    plain, xla = (one_step(*args, jit=jit) for jit in (False, True))
    assert set(plain["logs"]) == set(xla["logs"]) and CLIPPED in xla["logs"]
    for key, value in plain["logs"].items():
        assert float(xla["logs"][key]) == pytest.approx(float(value), rel=1e-5), key
    for before, after in zip(plain["weights"], xla["weights"], strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-7)


def test_cosine_schedule_decays_to_zero_at_the_last_step() -> None:
    plain = build_classifier(TINY, vocab_size=20)
    train = tf.data.Dataset.from_tensor_slices(tiny_batch()).batch(2)  # 4 steps per epoch
    setup = TrainingSetup(plain, "binary_crossentropy", [], train, None, None, None, None)
    cfg = TrainParams(learning_rate=0.01, epochs=3, lr_schedule="cosine")
    optimizer = compile_model(setup, cfg).optimizer
    rates = []
    for step in (0, 6, 12):
        optimizer.iterations.assign(step)
        rates.append(float(optimizer.learning_rate))
    assert rates == pytest.approx([0.01, 0.005, 0.0], abs=1e-7)
    constant = compile_model(setup, cfg.model_copy(update={"lr_schedule": "constant"}))
    assert float(constant.optimizer.learning_rate) == pytest.approx(0.01)
