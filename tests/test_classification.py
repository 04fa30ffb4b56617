"""Classifier builder: masked max+mean pooling over time, embedding dropout, saving."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.core.gradient_flow import GradientFlowProbe
from pipeline.core.recurrent import StackSteps
from pipeline.core.saved import load_model
from pipeline.params import ClassificationTrain
from pipeline.tasks.classification.model import MaskedMaxMeanPooling, build_classifier

POOLED = ClassificationTrain(
    cell="gru", units=6, embedding_dim=5, pooling="max_mean", embedding_dropout=0.3
)


def test_pooling_reads_only_real_timesteps() -> None:
    """Pads enter neither the max nor the mean (GlobalMaxPooling1D would let a 0 pad win)."""
    states = np.array([[[-3.0, 1.0], [-1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]], dtype="float32")
    mask = np.array([[True, True, False, False]])
    pooled = MaskedMaxMeanPooling()(states, mask=mask).numpy()
    np.testing.assert_allclose(pooled, [[-1.0, 2.0, -2.0, 1.5]])
    assert keras.layers.GlobalMaxPooling1D()(states).numpy()[0, 0] == 0.0  # the pitfall


def test_empty_review_pools_to_zeros() -> None:
    states = np.ones((2, 3, 2), dtype="float32")
    mask = np.array([[False, False, False], [True, False, False]])
    pooled = MaskedMaxMeanPooling()(states, mask=mask).numpy()
    np.testing.assert_allclose(pooled, [[0, 0, 0, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_the_prediction(bidirectional: bool) -> None:
    model = build_classifier(POOLED.model_copy(update={"bidirectional": bidirectional}), 30)
    review = np.array([[4, 9, 2, 17, 5]], dtype="int32")
    padded = np.concatenate([review, np.zeros((1, 6), dtype="int32")], axis=1)
    np.testing.assert_allclose(model(padded), model(review), rtol=1e-5)


def test_pooled_head_reads_every_hidden_state() -> None:
    model = build_classifier(POOLED, 30)
    assert model.get_layer("rnn_1").return_sequences
    assert model.get_layer("pooling").output.shape == (None, 2 * POOLED.units)
    last = build_classifier(ClassificationTrain(units=6, pooling="last"), 30)
    assert not last.get_layer("rnn_1").return_sequences


@pytest.mark.parametrize(
    ("name", "whole"),
    [
        # Whole channels: a channel dropped at one position is dropped at every position.
        ("embedding_dropout", 1),
        # Whole tokens: a token's embedding goes entirely or not at all.
        ("word_dropout", 2),
    ],
)
def test_embedding_dropouts_are_active_only_in_training(name: str, whole: int) -> None:
    model = build_classifier(POOLED.model_copy(update={"word_dropout": 0.5}), 30)
    tokens = np.tile(np.arange(1, 21, dtype="int32"), (4, 1))
    layer = model.get_layer(name)
    x = model.get_layer("embedding")(tokens)
    np.testing.assert_array_equal(layer(x, training=False), x)
    dropped = layer(x, training=True).numpy() == 0
    assert dropped.any() and (dropped.all(axis=whole) == dropped.any(axis=whole)).all()


def test_word_dropout_is_absent_when_off() -> None:
    assert "word_dropout" not in [layer.name for layer in build_classifier(POOLED, 30).layers]


def test_pooled_model_saves_and_loads(tmp_path: Path) -> None:
    model = build_classifier(POOLED, 30)
    model.save(tmp_path / "model.keras")
    tokens = np.array([[3, 4, 5, 0], [7, 0, 0, 0]], dtype="int32")
    np.testing.assert_allclose(load_model(tmp_path)(tokens), model(tokens), rtol=1e-6)


def test_predictions_come_back_in_input_order_from_length_sorted_batches() -> None:
    """Batches are grouped by length (little padding); each probability lands on its input."""
    from pipeline.tasks.classification.predict import predict_probabilities

    model = build_classifier(POOLED, 30)
    rng = np.random.default_rng(3)
    seqs = [rng.integers(1, 30, size=n).astype("int32") for n in (9, 1, 30, 4, 0, 17, 2)]
    probs = predict_probabilities(model, seqs, batch=3)
    alone = [float(model(np.asarray([s if len(s) else [0]]))[0, 0]) for s in seqs]
    np.testing.assert_allclose(probs, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_evaluation_reads_whole_reviews(tiny_data) -> None:
    """`max_len` keeps the last tokens of training reviews; None (evaluation) keeps them all."""
    from pipeline.tasks.classification.data import load_split

    _, tok = tiny_data("classification")
    whole, labels = load_split(tok, "test", None)
    cut, same_labels = load_split(tok, "test", 8)
    assert max(map(len, whole)) > 8
    for full, short in zip(whole, cut, strict=True):
        np.testing.assert_array_equal(short, full[-8:])
    np.testing.assert_array_equal(labels, same_labels)


@pytest.mark.slow
def test_head_tokens_keep_a_long_reviews_opening_and_end(tiny_data) -> None:
    """`head_tokens` keeps the first tokens and the last `max_len - head_tokens` of long reviews."""
    from pipeline.tasks.classification.data import load_split

    _, tok = tiny_data("classification")
    whole, _ = load_split(tok, "test", None)
    lengths = sorted(map(len, whole))
    max_len = lengths[len(lengths) // 2]  # about half the reviews are longer
    cut, _ = load_split(tok, "test", max_len, head=3)
    assert lengths[0] <= max_len < lengths[-1]
    for full, short in zip(whole, cut, strict=True):
        expected = full if len(full) <= max_len else np.concatenate([full[:3], full[3 - max_len :]])
        np.testing.assert_array_equal(short, expected)


def test_head_fraction_is_a_share_of_max_len_that_leaves_room_for_the_tail() -> None:
    from pydantic import ValidationError

    assert ClassificationTrain(max_len=400, head_fraction=0.25).head_tokens == 100
    assert ClassificationTrain(max_len=10, head_fraction=0.99).head_tokens == 9
    assert ClassificationTrain(max_len=10).head_tokens == 0
    with pytest.raises(ValidationError, match="head_fraction"):
        ClassificationTrain(max_len=10, head_fraction=1.0)


def test_compiled_batches_are_padded_to_bucket_edges() -> None:
    """Under XLA each batch is padded to its length bucket's edge: one compiled shape per bucket."""
    from pipeline.tasks.classification.data import make_dataset, padded_lengths

    assert padded_lengths(400, 2.0) == [16, 32, 64, 128, 256, 400]
    assert padded_lengths(400, 2**0.5) == [16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 400]
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 50, size=n).astype("int32") for n in rng.integers(1, 101, size=200)]
    labels = rng.integers(0, 2, size=200).astype("float32")
    shapes, kept = set(), {}
    for jit in (True, False):
        cfg = ClassificationTrain(max_len=100, batch_size=16, jit_compile=jit, bucket_ratio=2**0.5)
        batches = list(make_dataset(seqs, labels, cfg, shuffle=True))
        shapes |= {(jit, int(tokens.shape[1])) for tokens, _ in batches}
        kept[jit] = sorted(int(n) for t, _ in batches for n in (t.numpy() != 0).sum(axis=1))
    assert kept[True] == kept[False] == sorted(map(len, seqs))  # padding adds only pads
    assert {n for jit, n in shapes if jit} <= {16, 23, 32, 45, 64, 91, 100}
    assert len({n for jit, n in shapes if not jit}) > 4  # uncompiled: each batch's own longest


def test_stacked_steps_fold_consecutive_tokens_and_keep_the_mask() -> None:
    """Two tokens a step: features concatenate in order, an odd tail gets a zero partner, and a
    step is masked out only when its first token is a pad."""
    x = np.arange(1, 11, dtype="float32").reshape(1, 5, 2)  # 5 timesteps of 2 features
    mask = np.array([[True, True, True, False, False]])
    layer = StackSteps(2)
    np.testing.assert_array_equal(layer(x).numpy(), [[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]])
    np.testing.assert_array_equal(layer.compute_mask(x, mask), [[True, True, False]])
    assert layer.compute_output_shape((None, 5, 2)) == (None, 3, 4)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_classifier_ignores_padding_and_runs_fewer_steps(bidirectional: bool) -> None:
    cfg = POOLED.model_copy(update={"tokens_per_step": 3, "bidirectional": bidirectional})
    model = build_classifier(cfg, 30)
    review = np.array([[4, 9, 2, 17, 5]], dtype="int32")  # 2 steps: (4 9 2) (17 5 pad)
    padded = np.concatenate([review, np.zeros((1, 7), dtype="int32")], axis=1)
    np.testing.assert_allclose(model(padded), model(review), rtol=1e-5)
    assert model.get_layer("stack_steps").output.shape == (None, None, 3 * cfg.embedding_dim)
    probe = GradientFlowProbe(
        model, padded, np.ones((1, 1), "float32"), keras.losses.BinaryCrossentropy()
    )
    curves = probe.measure()
    key = "rnn_1/forward" if bidirectional else "rnn_1"
    assert curves[key].shape == (4,)  # ceil(12 / 3) recurrent steps, not 12 tokens
    assert np.all(curves[key][:2] > 0) and np.isnan(curves[key][2:]).all()


def test_stacked_model_saves_and_loads(tmp_path: Path) -> None:
    model = build_classifier(POOLED.model_copy(update={"tokens_per_step": 2}), 30)
    model.save(tmp_path / "model.keras")
    tokens = np.array([[3, 4, 5, 0, 0], [7, 0, 0, 0, 0]], dtype="int32")
    np.testing.assert_allclose(load_model(tmp_path)(tokens), model(tokens), rtol=1e-6)


@pytest.mark.parametrize("value", [0, 9])
def test_tokens_per_step_out_of_range_names_the_key(value: int) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="tokens_per_step"):
        ClassificationTrain(tokens_per_step=value)
