"""Seq2seq builder: one training graph, inference models on the same layers, masking."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.params import TranslationTrain
from pipeline.tasks.translation.decoding import KerasStepModel
from pipeline.tasks.translation.model import Seq2Seq, build_seq2seq, seq2seq_from_model

SRC_VOCAB, TGT_VOCAB = 30, 25
CONFIGS = {
    "gru-luong": {"cell": "gru", "attention": "luong"},
    "lstm-bidirectional-luong-2-layers": {
        "cell": "lstm",
        "attention": "luong",
        "bidirectional": True,
        "num_layers": 2,
    },
    "lstm-bahdanau": {"cell": "lstm", "attention": "bahdanau"},
    "simple_rnn-bidirectional-none": {
        "cell": "simple_rnn",
        "attention": "none",
        "bidirectional": True,
    },
    "gru-bidirectional-bahdanau-2-layers": {
        "cell": "gru",
        "attention": "bahdanau",
        "bidirectional": True,
        "num_layers": 2,
    },
    "gru-luong-lexical-tied-word-dropout": {
        "cell": "gru",
        "attention": "luong",
        "lexical_attention": True,
        "tie_embeddings": True,
        "word_dropout": 0.2,
    },
    "lstm-none-tied": {"cell": "lstm", "attention": "none", "tie_embeddings": True},
    "gru-bahdanau-lexicon-bias": {"cell": "gru", "attention": "bahdanau", "lexicon_bias": True},
    "gru-bidirectional-bahdanau-lexical-lexicon-alignment": {  # the translator's default
        "cell": "gru",
        "attention": "bahdanau",
        "bidirectional": True,
        "lexical_attention": True,
        "lexicon_bias": True,
        "alignment_weight": 1.0,
    },
    "lstm-bidirectional-luong-lexicon-bias": {
        "cell": "lstm",
        "attention": "luong",
        "bidirectional": True,
        "lexicon_bias": True,
    },
}


def tiny_cfg(**overrides) -> TranslationTrain:
    """Small widths so every test builds in well under a second."""
    return TranslationTrain(**({"units": 8, "embedding_dim": 6, "dropout": 0.1} | overrides))


def build(name: str) -> Seq2Seq:
    """A CONFIGS model; a lexicon table gets random rows, so its bias differs per token."""
    seq2seq = build_seq2seq(tiny_cfg(**CONFIGS[name]), SRC_VOCAB, TGT_VOCAB)
    if seq2seq.layers.lexicon_table is not None:
        rng = np.random.default_rng(1)
        seq2seq.layers.lexicon_table.set_table(rng.dirichlet(np.ones(TGT_VOCAB), SRC_VOCAB))
    return seq2seq


def batch() -> dict[str, np.ndarray]:
    """Three pairs of different lengths, post-padded with PAD=0 on both sides."""
    rng = np.random.default_rng(0)
    source = rng.integers(4, SRC_VOCAB, (3, 7)).astype(np.int32)
    source[0, 4:], source[1, 6:] = 0, 0
    target_in = rng.integers(4, TGT_VOCAB, (3, 5)).astype(np.int32)
    target_in[:, 0], target_in[2, 3:] = 2, 0
    return {"source": source, "target_in": target_in}


def step_through(model: KerasStepModel, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Feed the teacher-forcing inputs one step at a time; (B, T, V) log-probabilities."""
    context, states = model.encode(inputs["source"])
    steps = []
    for t in range(inputs["target_in"].shape[1]):
        log_probs, states, _ = model.step(inputs["target_in"][:, t], context, states)
        steps.append(log_probs)
    return np.stack(steps, axis=1)


@pytest.mark.parametrize("name", CONFIGS)
def test_training_model_shapes_and_names(name: str) -> None:
    """Logits are (B, T, tgt_vocab); layers carry the stable names the rebuild looks up."""
    seq2seq = build(name)
    logits = seq2seq.model(batch())
    assert tuple(logits.shape) == (3, 5, TGT_VOCAB)
    names = {layer.name for layer in seq2seq.model.layers}
    layers = CONFIGS[name].get("num_layers", 1)
    assert {f"encoder_{layers}", f"decoder_{layers}", "logits", "source_embedding"} <= names
    assert ("attention" in names) == (CONFIGS[name]["attention"] != "none")
    assert [t.name for t in seq2seq.model.inputs] == ["source", "target_in"]


@pytest.mark.parametrize(
    ("attention", "kind"),
    [("luong", keras.layers.Attention), ("bahdanau", keras.layers.AdditiveAttention)],
)
def test_attention_kind(attention: str, kind: type) -> None:
    """Luong uses dot-product Attention, Bahdanau AdditiveAttention on projected q and k."""
    seq2seq = build_seq2seq(tiny_cfg(attention=attention), SRC_VOCAB, TGT_VOCAB)
    assert type(seq2seq.model.get_layer("attention")) is kind
    names = {layer.name for layer in seq2seq.model.layers}
    assert ("attention_query" in names) == (attention == "bahdanau")


@pytest.mark.parametrize(("cell", "states"), [("lstm", {"h", "c"}), ("gru", {"h"})])
def test_encoder_hands_over_every_state(cell: str, states: set[str]) -> None:
    """LSTM passes h and c to the decoder, GRU only h; a bidirectional encoder is bridged."""
    seq2seq = build_seq2seq(tiny_cfg(cell=cell, bidirectional=True), SRC_VOCAB, TGT_VOCAB)
    outputs = seq2seq.encoder({"source": batch()["source"]})
    assert {k.rsplit("_", 1)[1] for k in outputs if k.startswith("state_")} == states
    assert all(outputs[f"state_1_{s}"].shape == (3, 8) for s in states)
    assert outputs["memory"].shape == (3, 7, 16)  # forward + backward outputs


@pytest.mark.parametrize("name", CONFIGS)
def test_step_decoder_reproduces_teacher_forcing(name: str) -> None:
    """Encoder + one-step decoder compute exactly what the training graph computes."""
    seq2seq = build(name)
    inputs = batch()
    expected = keras.ops.log_softmax(seq2seq.model(inputs), axis=-1).numpy()
    stepped = step_through(KerasStepModel(seq2seq), inputs)
    real = inputs["target_in"] != 0
    np.testing.assert_allclose(stepped[real], expected[real], atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_padding_is_masked(name: str) -> None:
    """Extra source and target padding changes no real position's logits."""
    seq2seq = build(name)
    inputs = batch()
    padded = {key: np.pad(value, ((0, 0), (0, 4))) for key, value in inputs.items()}
    before = seq2seq.model(inputs).numpy()
    after = seq2seq.model(padded).numpy()[:, : before.shape[1]]
    real = inputs["target_in"] != 0
    np.testing.assert_allclose(after[real], before[real], atol=1e-6)


def test_inference_models_share_weights() -> None:
    """A weight changed through the training model changes the inference models, and back."""
    seq2seq = build_seq2seq(tiny_cfg(), SRC_VOCAB, TGT_VOCAB)
    assert seq2seq.decoder.get_layer("logits") is seq2seq.model.get_layer("logits")
    step = KerasStepModel(seq2seq)
    inputs = batch()
    bias = np.zeros(TGT_VOCAB, dtype=np.float32)
    bias[7] = 100.0
    seq2seq.model.get_layer("logits").bias.assign(bias)
    assert (step_through(step, inputs).argmax(axis=-1) == 7).all()
    before = seq2seq.model(inputs).numpy()
    embedding = seq2seq.encoder.get_layer("source_embedding")
    embedding.embeddings.assign(embedding.embeddings.numpy() + 1.0)
    assert not np.allclose(seq2seq.model(inputs).numpy(), before)


@pytest.mark.parametrize(
    "name",
    [
        "lstm-bidirectional-luong-2-layers",
        "lstm-bahdanau",
        "gru-bahdanau-lexicon-bias",
        "gru-bidirectional-bahdanau-lexical-lexicon-alignment",
    ],
)
def test_rebuild_after_save_and_load(tmp_path: Path, name: str) -> None:
    """Inference models rebuilt by layer name around a loaded model match the originals."""
    seq2seq = build(name)
    seq2seq.model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    rebuilt = seq2seq_from_model(loaded)
    inputs = batch()
    original = step_through(KerasStepModel(seq2seq), inputs)
    np.testing.assert_allclose(step_through(KerasStepModel(rebuilt), inputs), original, atol=1e-6)
    assert rebuilt.decoder.get_layer("decoder_1") is loaded.get_layer("decoder_1")
    assert rebuilt.layers.attention is loaded.get_layer("attention")
