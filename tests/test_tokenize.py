"""Tokenize stage on small fixtures written here (the real data path is in test_pipeline)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.corpus import load_npz, unpack, write_json
from pipeline.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID, decode_lines, encode_lines
from pipeline.params import SentencePieceParams, Task, TranslationTokenize
from pipeline.tokenize import run_tokenize, train_sentencepiece

SONNET = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.""".split("\n")

PAIRS = [
    ("Er ist leer ausgegangen.", "He went away empty-handed."),
    ("Das Wetter ist heute schön.", "The weather is nice today."),
    ("Ich habe keine Zeit.", "I have no time."),
    ("Wo ist der Bahnhof?", "Where is the station?"),
    ("Sie liest ein Buch.", "She is reading a book."),
    ("Wir gehen morgen ins Kino.", "We are going to the cinema tomorrow."),
]

TINY = SentencePieceParams(vocab_size=60, model_type="unigram", character_coverage=1.0)


def normalised(sp: spm.SentencePieceProcessor, text: str) -> str:
    """SentencePiece's normalisation of `text`, in surface form (no ▁ meta-spaces)."""
    return sp.normalize(text).replace("\u2581", " ").strip()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sonnet_model() -> spm.SentencePieceProcessor:
    return train_sentencepiece(SONNET * 3, TINY)


def test_round_trip_equals_normalised_text(sonnet_model) -> None:
    for line in SONNET + ["  the   summer,  thou   art   fair  "]:
        ids = sonnet_model.encode(line)
        assert sonnet_model.decode(ids) == normalised(sonnet_model, line)
    assert normalised(sonnet_model, "  a   b ") == "a b"


def test_unseen_characters_become_unk(sonnet_model) -> None:
    assert UNK_ID in sonnet_model.encode("zebra Ωmega")


def test_special_ids_are_fixed(sonnet_model) -> None:
    assert (sonnet_model.pad_id(), sonnet_model.unk_id()) == (PAD_ID, UNK_ID)
    assert (sonnet_model.bos_id(), sonnet_model.eos_id()) == (BOS_ID, EOS_ID)
    assert PAD_ID not in sonnet_model.encode(" ".join(SONNET))


def test_lines_survive_encoding() -> None:
    sp = train_sentencepiece(SONNET * 3, TINY, control_symbols=["<nl>"])
    text = "\n".join(SONNET[:4])
    ids = encode_lines(sp, text)
    assert ids.count(sp.piece_to_id("<nl>")) == 4
    assert decode_lines(sp, ids) == "\n".join(normalised(sp, line) for line in SONNET[:4])


def test_classification_splits_and_stats(tmp_path: Path) -> None:
    rows = [{"text": line, "label": i % 2} for i, line in enumerate(SONNET)]
    for split, part in {"train": rows[:10], "val": rows[10:12], "test": rows[12:]}.items():
        write_jsonl(tmp_path / "raw" / f"{split}.jsonl", part)
    result = run_tokenize(Task.classification, TINY, tmp_path / "raw", tmp_path / "tok")
    data = load_npz(tmp_path / "tok" / "train.npz")
    seqs = unpack(data["tokens_ids"], data["tokens_offsets"])
    assert len(seqs) == 10 and data["labels"].tolist() == [i % 2 for i in range(10)]
    assert result.stats["train.examples"] == 10 and result.stats["test.examples"] == 2
    assert result.stats["vocab_size"] <= 60
    # Trained on train only: val/test lines bring characters the model never saw.
    assert result.stats["train.unk_rate"] == 0
    assert result.stats["val.unk_rate"] + result.stats["test.unk_rate"] > 0
    # Outputs get the modes a plain mkdir/open would give (not mkdtemp's 0700 / mkstemp's 0600).
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "tok").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "tok" / "train.npz").stat().st_mode & 0o777 == 0o666 & ~mask
    write_json(tmp_path / "stats.json", result.stats)
    assert (tmp_path / "stats.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert not list(tmp_path.glob(".tok.*")), "staging directory left behind"


def test_translation_has_two_models_unless_shared(tmp_path: Path) -> None:
    rows = [{"src": s, "tgt": t} for s, t in PAIRS]
    for split in ("train", "val", "test"):
        write_jsonl(tmp_path / "raw" / f"{split}.jsonl", rows)
    cfg = TranslationTokenize(vocab_size=50)
    run_tokenize(Task.translation, cfg, tmp_path / "raw", tmp_path / "sep")
    src = (tmp_path / "sep" / "src.model").read_bytes()
    assert src != (tmp_path / "sep" / "tgt.model").read_bytes()
    run_tokenize(
        Task.translation,
        cfg.model_copy(update={"shared": True}),
        tmp_path / "raw",
        tmp_path / "shared",
    )
    assert (tmp_path / "shared" / "src.model").read_bytes() == (
        tmp_path / "shared" / "tgt.model"
    ).read_bytes()
    data = load_npz(tmp_path / "sep" / "test.npz")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sep" / "tgt.model"))
    first = unpack(data["tgt_ids"], data["tgt_offsets"])[0]
    assert sp.decode(first.tolist()) == PAIRS[0][1]


def test_translation_source_vocabulary_can_differ_from_the_target(tmp_path: Path) -> None:
    rows = [{"src": s, "tgt": t} for s, t in PAIRS]
    for split in ("train", "val", "test"):
        write_jsonl(tmp_path / "raw" / f"{split}.jsonl", rows)
    cfg = TranslationTokenize(vocab_size=40, source_vocab_size=46)
    result = run_tokenize(Task.translation, cfg, tmp_path / "raw", tmp_path / "tok")
    assert (result.stats["src.vocab_size"], result.stats["tgt.vocab_size"]) == (46, 40)
    with pytest.raises(ValueError, match="source_vocab_size needs shared: false"):
        TranslationTokenize(shared=True, source_vocab_size=60)


def test_sampled_copies_add_other_segmentations_of_the_train_pairs(tmp_path: Path) -> None:
    rows = [{"src": s, "tgt": t} for s, t in PAIRS]
    for split in ("train", "val", "test"):
        write_jsonl(tmp_path / "raw" / f"{split}.jsonl", rows)
    cfg = TranslationTokenize(vocab_size=60, sampled_copies=3, sampling_alpha=0.1)
    run_tokenize(Task.translation, cfg, tmp_path / "raw", tmp_path / "tok")
    plain = TranslationTokenize(vocab_size=60)
    run_tokenize(Task.translation, plain, tmp_path / "raw", tmp_path / "plain")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "src.model"))

    def sources(folder: str, split: str) -> list[list[int]]:
        data = load_npz(tmp_path / folder / f"{split}.npz")
        return [s.tolist() for s in unpack(data["src_ids"], data["src_offsets"])]

    train, best = sources("tok", "train"), sources("plain", "train")
    n = len(rows)
    assert len(train) == 4 * n and train[:n] == best  # best segmentation first, then 3 draws
    assert sources("tok", "val") == sources("plain", "val")  # evaluation splits untouched
    draws = train[n:]
    assert [sp.decode(ids) for ids in draws] == [sp.decode(ids) for ids in best] * 3
    assert sum(d != b for d, b in zip(draws, best * 3, strict=True)) > n // 2  # they do vary
    run_tokenize(Task.translation, cfg, tmp_path / "raw", tmp_path / "again")
    assert sources("again", "train") == train  # seeded: the same draws every run


def test_language_model_counts_characters(tmp_path: Path) -> None:
    docs = [{"title": f"Play {i}", "text": "\n".join(SONNET[i::3])} for i in range(3)]
    for split, doc in zip(("train", "val", "test"), docs, strict=True):
        write_jsonl(tmp_path / "raw" / f"{split}.jsonl", [doc] if split != "train" else docs)
    run_tokenize(Task.language_model, TINY, tmp_path / "raw", tmp_path / "tok")
    data = load_npz(tmp_path / "tok" / "val.npz")
    assert data["chars"].tolist() == [len(docs[1]["text"]) + 1]


def test_cli_logs_a_finished_run(tmp_path: Path, mlflow_uri: str, write_params) -> None:
    from mlflow.tracking import MlflowClient

    rows = [{"text": line, "label": i % 2} for i, line in enumerate(SONNET)]
    for split in ("train", "val", "test"):
        write_jsonl(tmp_path / "raw" / f"{split}.jsonl", rows)
    manifest = {"source": {"kind": "pypi", "package": "demo", "version": "1", "sha256": "ab"}}
    (tmp_path / "raw" / "manifest.json").write_text(json.dumps(manifest))
    params = write_params({"tokenize.classification.vocab_size": 60})
    result = CliRunner().invoke(
        app,
        [
            "tokenize",
            "classification",
            "--data",
            "raw",
            "--out",
            "tok",
            "--metrics",
            "metrics/tokenize.json",
            "--params",
            str(params),
        ],
    )
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "metrics" / "tokenize.json").read_text())
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("classification").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["pipeline.stage"] == "tokenize"
    assert run.data.tags["data.source"] == "pypi:demo"
    assert run.data.params["vocab_size"] == "60"
    # The statistics file keeps DVC's dotted keys; MLflow files them under `data/`.
    assert run.data.metrics["data/train_unk_rate"] == pytest.approx(stats["train.unk_rate"])
    assert np.isclose(run.data.metrics["data/vocab_size"], stats["vocab_size"])


def test_cli_without_download_says_what_to_run(tmp_path: Path, mlflow_uri, write_params) -> None:
    result = CliRunner().invoke(
        app,
        [
            "tokenize",
            "classification",
            "--data",
            "nowhere",
            "--out",
            "tok",
            "--metrics",
            "m.json",
            "--params",
            str(write_params()),
        ],
    )
    assert result.exit_code == 1
    assert "run `python -m pipeline download` first" in result.output
