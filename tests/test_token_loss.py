"""Token cross-entropy, perplexity and accuracy: PAD never counts, masks or not, and saving."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.token_loss import Perplexity, TokenAccuracy, TokenCrossEntropy
from pipeline.core.tokens import PAD_ID


def example(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(3, 5) targets, two of them padded, and (3, 5, 11) logits."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(1, 11, size=(3, 5)).astype(np.int32)
    targets[0, 3:] = PAD_ID
    targets[2, 1:] = PAD_ID
    return targets, rng.normal(size=(3, 5, 11)).astype(np.float32)


def numpy_log_probs(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def numpy_nll(targets: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """-log p(target) per position."""
    return -np.take_along_axis(numpy_log_probs(logits), targets[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_is_the_mean_over_real_tokens(smoothing: float) -> None:
    """Label-smoothed cross-entropy averaged over non-PAD targets; a pad's logits do not matter."""
    targets, logits = example()
    real = targets != PAD_ID
    expected = (1 - smoothing) * numpy_nll(targets, logits) - smoothing * numpy_log_probs(
        logits
    ).mean(axis=-1)
    scrambled = logits.copy()
    scrambled[2, 3] = 40.0  # a pad position
    for values in (logits, scrambled):
        loss = float(TokenCrossEntropy(smoothing)(targets, values))
        assert loss == pytest.approx(expected[real].mean(), rel=1e-5)


def test_loss_agrees_with_keras_through_a_masked_model() -> None:
    """Logits carrying a Keras mask (PAD inputs) give Keras's own masked mean and gradients."""
    targets, _ = example(1)
    tokens = keras.Input(shape=(None,), dtype="int32")
    hidden = keras.layers.Embedding(11, 6, mask_zero=True)(tokens)
    model = keras.Model(tokens, keras.layers.Dense(11)(hidden))
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID)
    found = {}
    for name, loss_fn in (("ours", TokenCrossEntropy()), ("keras", keras_loss)):
        with tf.GradientTape() as tape:
            loss = loss_fn(targets, model(targets))
        found[name] = (float(loss), tape.gradient(loss, model.trainable_weights))
    assert found["ours"][0] == pytest.approx(found["keras"][0], rel=1e-5)
    for ours, theirs in zip(found["ours"][1], found["keras"][1], strict=True):
        np.testing.assert_allclose(
            tf.convert_to_tensor(ours), tf.convert_to_tensor(theirs), rtol=1e-4, atol=1e-6
        )


def test_metrics_count_real_tokens_over_batches_and_weights() -> None:
    """Perplexity = exp(mean NLL), accuracy = mean hit rate, over every real token seen."""
    (t1, l1), (t2, l2) = example(2), example(3)
    perplexity, accuracy = Perplexity(), TokenAccuracy()
    for metric in (perplexity, accuracy):
        metric.update_state(t1, l1)
        metric.update_state(t2, l2)
    targets, logits = np.concatenate([t1, t2]), np.concatenate([l1, l2])
    real = targets != PAD_ID
    nll = numpy_nll(targets, logits)[real]
    hits = (logits.argmax(axis=-1) == targets)[real]
    assert float(perplexity.result()) == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    assert float(accuracy.result()) == pytest.approx(hits.mean(), rel=1e-6)
    keep = (t1 != PAD_ID) & (np.arange(3) != 1)[:, None]
    for weights in (np.asarray([1.0, 0.0, 1.0], np.float32), keep.astype(np.float32)):
        weighted = TokenAccuracy()
        weighted.update_state(t1, l1, sample_weight=weights)
        expected = (l1.argmax(-1) == t1)[keep].mean()
        assert float(weighted.result()) == pytest.approx(expected, rel=1e-6)
    assert float(Perplexity().result()) == 1.0  # nothing seen yet


def test_a_compiled_model_saves_and_reloads_with_its_loss_and_metrics(tmp_path: Path) -> None:
    """The loss (with its smoothing) and metrics deserialize, so `load_model` compiles."""
    targets, _ = example(4)
    tokens = keras.Input(shape=(None,), dtype="int32")
    model = keras.Model(tokens, keras.layers.Dense(11)(keras.layers.Embedding(11, 4)(tokens)))
    model.compile(
        optimizer="adam", loss=TokenCrossEntropy(0.2), metrics=[TokenAccuracy(), Perplexity()]
    )
    model.train_on_batch(targets, targets)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert again.loss.smoothing == pytest.approx(0.2)
    first = model.evaluate(targets, targets, verbose=0, return_dict=True)
    second = again.evaluate(targets, targets, verbose=0, return_dict=True)
    assert second == pytest.approx(first, rel=1e-5)
