"""Translation task: loss and metrics, BLEU, the dictionary baseline, and (slow) the real
pipeline on a few hundred real Ding sentence pairs: train, evaluate, save/load, translate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.corpus import read_jsonl
from pipeline.core.recurrent import word_dropout
from pipeline.core.token_loss import TokenAccuracy, TokenCrossEntropy
from pipeline.core.tokens import BOS_ID, EOS_ID
from pipeline.params import (
    Task,
    TranslationEvaluate,
    TranslationTokenize,
    TranslationTrain,
    load_params,
)
from pipeline.tasks.translation import data as trdata
from pipeline.tasks.translation import evaluate as treval
from pipeline.tasks.translation import model as trmodel
from pipeline.tasks.translation import train as trtrain
from pipeline.tasks.translation.lexicon import learn_lexicon, translate_words
from pipeline.tasks.translation.lexicon_bias import (
    GuidedAlignment,
    LexiconBias,
    alignment_loss,
    ibm1_table,
)
from tests.conftest import new_store

ROOT = Path(__file__).resolve().parents[1]


def test_teacher_forcing_adds_bos_and_eos() -> None:
    """Decoder input is BOS + y, the target y + EOS."""
    target_in, target_out = trdata.teacher_forcing([np.asarray([7, 8], np.int32)])
    assert target_in[0].tolist() == [BOS_ID, 7, 8] and target_out[0].tolist() == [7, 8, EOS_ID]


def test_dataset_batches_named_inputs() -> None:
    """Batches are ({source, target_in}, target_out), padded with PAD=0."""
    cfg = TranslationTrain(batch_size=2, bucket_by_length=False)
    source = [np.asarray(s, np.int32) for s in ([5, 6, 7], [8], [9, 9])]
    target = [np.asarray(t, np.int32) for t in ([4], [5, 6], [7])]
    inputs, outputs = next(iter(trdata.make_dataset(source, target, cfg, shuffle=False)))
    assert inputs["source"].numpy().tolist() == [[5, 6, 7], [8, 0, 0]]
    assert inputs["target_in"].numpy().tolist() == [[BOS_ID, 4, 0], [BOS_ID, 5, 6]]
    assert outputs.numpy().tolist() == [[4, EOS_ID, 0], [5, 6, EOS_ID]]


def padded_example() -> tuple[np.ndarray, np.ndarray]:
    """Targets with pads and random logits."""
    targets = np.asarray([[4, 5, 3], [6, 3, 0]], dtype=np.int32)
    logits = np.random.default_rng(0).normal(size=(2, 3, 9)).astype(np.float32)
    return targets, logits


def manual_cross_entropy(targets: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """(B, T) cross-entropy with numpy."""
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def test_losses_ignore_padding() -> None:
    """Training loss = mean over real tokens; probe loss = per-example sum; pads never count."""
    targets, logits = padded_example()
    real = targets != 0
    tokens = manual_cross_entropy(targets, logits)
    scrambled = logits.copy()
    scrambled[1, 2] = 50.0  # a pad position
    for values in (logits, scrambled):
        mean = float(trtrain.token_loss()(targets, values))
        assert mean == pytest.approx(tokens[real].mean(), rel=1e-5)
        per_example = np.asarray(trtrain.per_example_loss(targets, values))
        np.testing.assert_allclose(per_example, (tokens * real).sum(axis=1), rtol=1e-5)


def test_label_smoothing_mixes_uniform_cross_entropy_over_real_tokens() -> None:
    """(1 - s) * CE + s * mean_v(-log p_v), averaged over non-pad tokens; s = 0 is plain CE."""
    targets, logits = padded_example()
    real = targets != 0
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    expected = 0.8 * manual_cross_entropy(targets, logits) - 0.2 * log_probs.mean(axis=-1)
    smoothed = float(trtrain.token_loss(0.2)(targets, logits))
    assert smoothed == pytest.approx(expected[real].mean(), rel=1e-5)
    plain = float(trtrain.SmoothedTokenLoss(0.0)(targets, logits))
    assert plain == pytest.approx(float(trtrain.token_loss()(targets, logits)), rel=1e-5)


class _UncompiledSmoothedLoss(keras.losses.Loss):
    """The translator's padding-weighted smoothed loss written with Keras ops (the reference)."""

    def call(self, y_true, y_pred):
        """Per-token smoothed cross-entropy times positions / real tokens, 0 at PAD."""
        y_true = keras.ops.cast(y_true, "int32")
        log_probs = keras.ops.log_softmax(keras.ops.cast(y_pred, "float32"), axis=-1)
        picked = keras.ops.take_along_axis(log_probs, y_true[..., None], axis=-1)[..., 0]
        losses = -0.9 * picked - 0.1 * keras.ops.mean(log_probs, axis=-1)
        valid = keras.ops.cast(keras.ops.not_equal(y_true, 0), "float32")
        scale = keras.ops.cast(keras.ops.size(valid), "float32") / keras.ops.sum(valid)
        return losses * valid * scale


def test_compiled_smoothed_loss_matches_keras_ops_through_a_masked_model() -> None:
    """Value and gradients of the XLA-compiled loss equal the Keras-ops formula's when the
    logits carry the target mask, as the translator's do (its padding weighting included)."""
    targets, _ = padded_example()
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(int(targets.max()) + 1, 8, mask_zero=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(11)(embedded))
    results = []
    for loss in (trtrain.SmoothedTokenLoss(0.1), _UncompiledSmoothedLoss()):
        with tf.GradientTape() as tape:
            value = loss(targets, model(targets))
        results.append((float(value), tape.gradient(value, model.trainable_variables)))
    (compiled, compiled_grads), (reference, reference_grads) = results
    assert compiled == pytest.approx(reference, rel=1e-5)
    real = targets != 0
    assert compiled > float(TokenCrossEntropy(0.1)(targets, model(targets))) * 1.01
    assert real.size / real.sum() > 1.01  # the padding weighting is there to see
    for ours, theirs in zip(compiled_grads, reference_grads, strict=True):
        np.testing.assert_allclose(
            tf.convert_to_tensor(ours), tf.convert_to_tensor(theirs), rtol=1e-4, atol=1e-7
        )


def test_word_dropout_zeroes_whole_tokens_in_training_only() -> None:
    """Each token's embedding is kept (scaled) or zeroed as a whole; inference is untouched."""
    x = keras.Input(shape=(None, 8))
    model = keras.Model(x, word_dropout(x, 0.5, "word_dropout"))
    embedded = np.ones((4, 50, 8), np.float32)
    dropped = np.asarray(model(embedded, training=True))
    per_token = dropped.reshape(-1, 8)
    assert set(np.unique(per_token.min(axis=1))) == {0.0, 2.0}
    assert (per_token.min(axis=1) == per_token.max(axis=1)).all()
    np.testing.assert_array_equal(np.asarray(model(embedded, training=False)), embedded)


def test_lexical_attention_memory_holds_source_embeddings(tmp_path: Path) -> None:
    """The memory is [encoder outputs; embeddings], and survives a save/load round trip."""
    cfg = TranslationTrain(units=6, embedding_dim=4, lexical_attention=True)
    seq2seq = trmodel.build_seq2seq(cfg, 20, 30)
    source = np.asarray([[3, 4, 5, 0]], np.int32)
    outputs = seq2seq.encoder({"source": source})
    memory = np.asarray(outputs[trmodel.MEMORY])
    assert memory.shape == (1, 4, 6 + 4) and seq2seq.layers.memory_width() == 10
    embedded = np.asarray(seq2seq.layers.source_embedding(source))
    np.testing.assert_allclose(memory[0, :3, 6:], embedded[0, :3], rtol=1e-6)
    seq2seq.model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert trmodel.seq2seq_from_model(loaded).layers.memory_width() == 10


@pytest.mark.parametrize("attention", ["luong", "none"])
def test_tied_logits_score_against_the_target_embedding(tmp_path: Path, attention: str) -> None:
    """Tied logits = state . E^T + bias; the step model and a reloaded model agree with it."""
    cfg = TranslationTrain(units=6, embedding_dim=4, tie_embeddings=True, attention=attention)
    seq2seq = trmodel.build_seq2seq(cfg, 20, 30)
    inputs = {"source": np.asarray([[3, 4, 5]], np.int32), "target_in": np.asarray([[2, 7]])}
    logits = np.asarray(seq2seq.model(inputs))
    assert logits.shape == (1, 2, 30)
    assert not any(
        isinstance(layer, keras.layers.Dense) and layer.name == "logits"
        for layer in seq2seq.model.layers
    )
    table = np.asarray(seq2seq.layers.target_embedding.embeddings)
    before = seq2seq.model.get_layer(
        "attention_output" if attention == "luong" else "output_projection"
    ).output
    state = np.asarray(keras.Model(seq2seq.model.inputs, before)(inputs))
    np.testing.assert_allclose(logits, state @ table.T, rtol=1e-4, atol=1e-5)  # bias starts at 0
    seq2seq.model.save(tmp_path / "model.keras")
    loaded = trmodel.seq2seq_from_model(
        keras.models.load_model(tmp_path / "model.keras", compile=False)
    )
    np.testing.assert_allclose(np.asarray(loaded.model(inputs)), logits, rtol=1e-5, atol=1e-6)


def test_token_accuracy_ignores_padding() -> None:
    """4 real tokens, 2 right: 2/4 whatever is predicted at the pads."""
    targets = np.asarray([[4, 5, 3], [6, 0, 0]], dtype=np.int32)
    predicted = np.asarray([[4, 5, 7], [8, 0, 0]])
    logits = keras.ops.one_hot(predicted, 9).numpy()
    metric = TokenAccuracy()
    metric.update_state(targets, logits)
    assert float(metric.result()) == pytest.approx(2 / 4)


def test_bleu_and_chrf_of_perfect_and_wrong_hypotheses() -> None:
    """A perfect hypothesis scores 100; an unrelated one scores far less."""
    references = ["He went away empty-handed.", "I am genuinely curious to see his report."]
    perfect = treval.corpus_scores(references, references, "test", "_greedy")
    assert perfect == pytest.approx({"test.bleu_greedy": 100.0, "test.chrf_greedy": 100.0})
    wrong = treval.corpus_scores(["Nothing.", "Cats sleep."], references, "test")
    assert wrong["test.bleu"] < 10 and wrong["test.chrf"] < 30


def test_lexicon_learns_word_translations() -> None:
    """Dice association picks each word's partner, not the most frequent target word."""
    pairs = [
        ("Ich bin müde.", "I am tired."),
        ("Ich bin hier.", "I am here."),
        ("Du bist müde.", "You are tired."),
        ("Du bist hier.", "You are here."),
        ("Ich bin alt.", "I am old."),
        ("Du schläfst.", "You sleep."),
    ]
    lexicon = learn_lexicon(pairs)
    assert lexicon["müde"] == "tired" and lexicon["du"] == "you" and lexicon["bist"] == "are"
    assert translate_words(lexicon, "Du bist alt, Bob!") == "You are old, Bob!"


def test_ibm1_table_aligns_words_from_sentence_pairs() -> None:
    """Koehn's das/Haus example: EM separates 'das' -> 'the' from 'Haus' -> 'house'.

    Source ids: das 3, Haus 4, Buch 5, ein 6; target ids: the 3, house 4, book 5, a 6.
    """
    source = [np.asarray(s) for s in ([3, 4], [3, 5], [6, 5])]
    target = [np.asarray(t) for t in ([3, 4], [3, 5], [6, 5])]
    table = ibm1_table(source, target, 8, 8, iterations=10)
    assert table.shape == (8, 8)
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=1e-5)
    assert [int(table[s].argmax()) for s in (3, 4, 5, 6)] == [3, 4, 5, 6]
    assert table[4, 4] > 0.5 and table[5, 5] > 0.5  # 'Haus' is not also 'the'
    np.testing.assert_allclose(table[7], 1 / 8)  # never seen: uniform
    # `train.translation.lexicon_iterations`: each EM pass sharpens the table.
    first = ibm1_table(source, target, 8, 8, iterations=1)
    assert first[4, 4] < ibm1_table(source, target, 8, 8, iterations=2)[4, 4] < table[4, 4]


def test_lexicon_bias_adds_the_attended_log_translation_probability(tmp_path: Path) -> None:
    """logits + log(sum_s a_ts p(y | x_s) + eps), by hand; the table survives save/load."""
    rows = np.asarray([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]], np.float32)  # (B=1, S=2, V=3)
    weights = np.asarray([[[1.0, 0.0], [0.25, 0.75]]], np.float32)  # (B, T=2, S)
    logits = np.zeros((1, 2, 3), np.float32)
    biased = np.asarray(LexiconBias()([logits, weights, rows]))
    expected = np.log(np.asarray([[[0.5, 0.5, 0.0], [0.125, 0.125, 0.75]]]) + 1e-3)
    np.testing.assert_allclose(biased, expected, rtol=1e-5)
    # A smaller epsilon holds harder: unpaired targets cost log(1e-5) instead of log(1e-3).
    strict = np.asarray(LexiconBias(epsilon=1e-5)([logits, weights, rows]))
    np.testing.assert_allclose(strict[0, 0, 2], np.log(1e-5), rtol=1e-5)
    cfg = TranslationTrain(
        units=6, embedding_dim=4, attention="luong", lexicon_bias=True, lexicon_epsilon=1e-5
    )
    seq2seq = trmodel.build_seq2seq(cfg, 20, 30)
    table = np.random.default_rng(0).dirichlet(np.ones(30), 20)
    seq2seq.layers.lexicon_table.set_table(table)
    seq2seq.model.save(tmp_path / "model.keras")
    loaded = trmodel.seq2seq_from_model(
        keras.models.load_model(tmp_path / "model.keras", compile=False)
    )
    np.testing.assert_allclose(np.asarray(loaded.layers.lexicon_table.table), table, rtol=1e-6)
    assert not loaded.layers.lexicon_table.trainable_weights
    assert loaded.layers.lexicon_bias.epsilon == 1e-5  # params -> model -> saved file


def test_lexicon_bias_needs_attention() -> None:
    """Without attention there are no weights to mix the table rows with: a params error."""
    with pytest.raises(ValueError, match="lexicon_bias needs attention"):
        TranslationTrain(attention="none", lexicon_bias=True)
    # Guided alignment reads the lexicon's table: without one there is nothing to align to, so
    # switching lexicon_bias off alone (one -S override) trains the plain model.
    cfg = TranslationTrain(units=4, embedding_dim=4, alignment_weight=1.0)
    plain = trmodel.build_seq2seq(cfg, 9, 9)
    assert plain.layers.alignment is None and plain.layers.lexicon_table is None


def test_alignment_loss_is_the_attention_cross_entropy_against_the_table_posterior() -> None:
    """By hand: source ids (3, 4, PAD), target_in (BOS, 5, 6, PAD). Position 0 predicts 5,
    position 1 predicts 6; position 2 predicts the EOS slot and position 3 is padding: neither
    counts. p(5 | 3) = .6, p(5 | 4) = .2 -> posterior (.75, .25); p(6 | .) = (0, .5) -> (0, 1)."""
    rows = np.zeros((1, 3, 8), np.float32)
    rows[0, 0, 5], rows[0, 1, 5], rows[0, 1, 6] = 0.6, 0.2, 0.5
    rows[0, 2, 5] = 0.9  # the PAD column: never a source word
    source = np.asarray([[3, 4, 0]], np.int32)
    target_in = np.asarray([[BOS_ID, 5, 6, 0]], np.int32)
    weights = np.asarray([[[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [1, 0, 0], [1, 0, 0]]], np.float32)
    expected = (-(0.75 * math.log(0.5) + 0.25 * math.log(0.5)) - math.log(0.8)) / 2
    loss = float(alignment_loss(weights, rows, source, target_in))
    assert loss == pytest.approx(expected, rel=1e-4)
    aligned = np.asarray([[[0.75, 0.25, 0.0], [0.0, 1.0, 0.0], [1, 0, 0], [1, 0, 0]]], np.float32)
    assert float(alignment_loss(aligned, rows, source, target_in)) < loss


def test_guided_alignment_adds_its_loss_in_training_only(tmp_path: Path) -> None:
    """The layer passes the logits through unchanged; only a training call adds the weighted
    loss (so validation loss and decoding never see it), and the weight survives save/load."""
    cfg = TranslationTrain(
        units=6, embedding_dim=4, attention="bahdanau", lexicon_bias=True, alignment_weight=0.5
    )
    seq2seq = trmodel.build_seq2seq(cfg, 20, 30)
    seq2seq.layers.lexicon_table.set_table(np.random.default_rng(0).dirichlet(np.ones(30), 20))
    inputs, _ = trdata.model_inputs(
        [np.asarray([3, 4, 5]), np.asarray([6, 7])], [np.asarray([8, 9]), np.asarray([10])]
    )
    inference = np.asarray(seq2seq.model(inputs, training=False))
    assert not seq2seq.model.losses
    seq2seq.model(inputs, training=True)
    assert len(seq2seq.model.losses) == 1 and float(seq2seq.model.losses[0]) > 0
    seq2seq.model.save(tmp_path / "model.keras")
    loaded = trmodel.seq2seq_from_model(
        keras.models.load_model(tmp_path / "model.keras", compile=False)
    )
    assert isinstance(loaded.layers.alignment, GuidedAlignment)
    assert loaded.layers.alignment.weight == 0.5
    np.testing.assert_allclose(np.asarray(loaded.model(inputs)), inference, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- real data (slow)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """300 real Ding pairs (apt-get download, cached), tokenized with ~120 pieces per side."""
    from pipeline.download import default_cache_dir, run_download
    from pipeline.tokenize import run_tokenize

    root = tmp_path_factory.mktemp("translation")
    download = load_params(ROOT / "params.yaml").download.translation
    download = download.model_copy(update={"max_examples": 300})
    run_download(Task.translation, download, root / "raw", default_cache_dir())
    tokenize = TranslationTokenize(vocab_size=120)
    run_tokenize(Task.translation, tokenize, root / "raw", root / "tok")
    return {"root": root, "raw": root / "raw", "tok": root / "tok"}


TINY = {
    "units": 16,
    "embedding_dim": 16,
    "max_len": 24,
    "batch_size": 16,
    "epochs": 3,
    "learning_rate": 0.01,
    "clip_norm": 5.0,
    "dropout": 0.0,
    "log_every_n_steps": 5,
    "probe_batch_size": 4,
    "report_examples": 3,
    "report_attention_maps": 2,
}
EVAL = TranslationEvaluate(examples=3, attention_maps=2, beam_size=3, decode_max_len=12)
SENTENCES = ["Er ist leer ausgegangen.", "", "Xyzzy ☃ 漢字 qqq!"]


def validation_loss(model: keras.Model, data_dir: Path, cfg: TranslationTrain) -> float:
    """Mean token loss of `model` on the validation pairs."""
    pairs = trdata.load_pairs(data_dir, "val", cfg.max_len)
    inputs, targets = trdata.model_inputs(*pairs)
    return float(trtrain.token_loss()(targets, model(inputs)))


@pytest.fixture(scope="module")
def trained(tiny_data: dict[str, Path]) -> dict[str, Any]:
    """Train with the shared trainer and a real MLflow run (sqlite store in a temp dir)."""
    from pipeline.core.tracking import stage_run
    from pipeline.core.trainer import Checkpoint, run_train, set_seed
    from pipeline.tasks.translation.model import seq2seq_from_model
    from pipeline.tasks.translation.translate import Translator, translate_texts

    root, cfg = tiny_data["root"], TranslationTrain(**TINY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", new_store(root / "mlflow.db", root))
        patch.chdir(root)
        set_seed(cfg.seed)
        with stage_run("translation", "train", cfg.model_dump(mode="json")) as run:
            setup = trtrain.setup(cfg, tiny_data["tok"])
            before = validation_loss(setup.model, tiny_data["tok"], cfg)
            checkpoint = Checkpoint(root / "ckpt", "tiny")
            result = run_train(
                setup, cfg, run, checkpoint, root / "model", root / "plots", root / "epochs"
            )
        after = validation_loss(setup.model, tiny_data["tok"], cfg)
        in_memory = Translator.from_parts(
            seq2seq_from_model(setup.model), root / "model/src.model", root / "model/tgt.model"
        )
        expected = translate_texts(in_memory, SENTENCES, beam_size=2, max_len=10)
    return {"cfg": cfg, "before": before, "after": after, "result": result, "expected": expected}


@pytest.mark.slow
def test_training_reduces_loss_and_writes_reports(tiny_data, trained) -> None:
    """Validation loss falls; the model, tokenizers, tables and heatmaps are written."""
    assert trained["after"] < trained["before"] - 0.5
    vocab = trdata.vocab_sizes(tiny_data["tok"])[1]
    assert trained["before"] == pytest.approx(math.log(vocab), abs=0.5)  # ~uniform at init
    model_dir = trained["result"].model_dir
    assert {"model.keras", "src.model", "tgt.model"} <= {p.name for p in model_dir.iterdir()}
    epoch = tiny_data["root"] / "epochs" / "reports" / "epoch_003"
    rows = (epoch / "examples.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "source\treference\thypothesis" and len(rows) == 1 + 3
    assert (epoch / "attention_1.png").stat().st_size > 1000
    assert (epoch / "attention_2.png").is_file() and not (epoch / "attention_3.png").exists()
    metrics = trained["result"].metrics
    assert 0 < metrics["val_token_accuracy"] <= 1
    assert {"grad_flow/horizon/encoder_1", "grad_flow/horizon/decoder_1"} <= set(metrics)


@pytest.mark.slow
def test_evaluate_scores_greedy_beam_and_baseline(tiny_data, trained, tmp_path: Path) -> None:
    """Flat, finite metrics within their ranges; reports for every test sentence."""
    cfg = trained["cfg"]
    metrics = treval.evaluate(
        cfg, EVAL, trained["result"].model_dir, tiny_data["tok"], tiny_data["raw"], tmp_path
    )
    assert set(metrics) == {
        "test.bleu_greedy",
        "test.bleu_beam",
        "test.chrf_greedy",
        "test.chrf_beam",
        "test.token_accuracy",
        "baseline.bleu",
        "baseline.chrf",
    }
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in metrics.values())
    assert 0 < metrics["test.token_accuracy"] < 1 and metrics["baseline.chrf"] > 5
    rows = (tmp_path / "translations.tsv").read_text(encoding="utf-8").splitlines()
    test_pairs = len(read_jsonl(tiny_data["raw"] / "test.jsonl"))
    assert rows[0] == "source\treference\tgreedy\tbeam" and len(rows) == 1 + test_pairs
    assert len((tmp_path / "examples.tsv").read_text().splitlines()) == 1 + EVAL.examples
    assert (tmp_path / "attention_2.png").is_file()


@pytest.mark.slow
def test_translate_after_save_and_load(trained) -> None:
    """The saved model translates like the in-memory one; empty and unknown input are fine."""
    from pipeline.tasks.translation.translate import translate

    model_dir = trained["result"].model_dir
    texts = translate(model_dir, SENTENCES, beam_size=2, max_len=10)
    assert texts == trained["expected"]
    assert texts[1] == "" and all(isinstance(t, str) for t in texts)
    assert translate(model_dir, [], beam_size=1, max_len=5) == []
