"""Tokenize stage: train SentencePiece on the train split and encode every split.

Special ids are fixed for every task: PAD=0 (masked by the models), UNK=1, BOS=2, EOS=3.
Language-model text keeps its line structure through a `<nl>` control symbol appended after
every line. Outputs (see `pipeline/core/corpus.py` for the npz layout):

- classification: `spm.model`; `{split}.npz` with `tokens` (one review each) and `labels`.
- language_model: `spm.model`; `{split}.npz` with `tokens` (one play each) and `chars`
  (characters per play, for bits-per-character).
- translation: `src.model`, `tgt.model` (the same model twice when `shared`); `{split}.npz`
  with `src` and `tgt` (targets without BOS/EOS; training adds them). With `sampled_copies`,
  train holds the pairs once as best segmented, then that many times as sampled.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from pipeline.core.corpus import (
    MANIFEST,
    SOURCE_TOKENIZER,
    SPLITS,
    TARGET_TOKENIZER,
    TOKENIZER,
    lengths,
    pack,
    read_jsonl,
    save_npz,
    staged_directory,
)
from pipeline.core.tokens import BOS_ID, EOS_ID, NEWLINE, PAD_ID, UNK_ID, encode_lines
from pipeline.params import SentencePieceParams, Task, TranslationTokenize

log = logging.getLogger(__name__)

MAX_SENTENCE_BYTES = 1 << 16


class VocabularyTooSmall(ValueError):
    """The configured vocabulary cannot hold the text's characters; names the params key."""


@dataclass(frozen=True)
class TokenizeResult:
    """What the stage wrote and measured."""

    out_dir: Path
    stats: dict[str, float]


def train_sentencepiece(
    texts: Iterable[str], cfg: SentencePieceParams, control_symbols: Sequence[str] = ()
) -> spm.SentencePieceProcessor:
    """Train a SentencePiece model in memory from an iterable of sentences."""
    model = io.BytesIO()
    spm.set_random_generator_seed(cfg.seed)
    try:
        _train(texts, cfg, control_symbols, model)
    except RuntimeError as exc:
        needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(exc))
        if needed:
            raise VocabularyTooSmall(
                f"vocab_size: expected at least {needed.group(1)} for this text (its characters "
                f"and special tokens), got {cfg.vocab_size}; or lower character_coverage"
            ) from None
        raise
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def _train(
    texts: Iterable[str],
    cfg: SentencePieceParams,
    control_symbols: Sequence[str],
    model: io.BytesIO,
) -> None:
    """SentencePiece's trainer, writing the model into `model`."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=cfg.vocab_size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        input_sentence_size=cfg.input_sentence_size,
        shuffle_input_sentence=True,
        max_sentence_length=MAX_SENTENCE_BYTES,
        hard_vocab_limit=False,  # tiny corpora get a smaller vocabulary, not an error
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        control_symbols=list(control_symbols),
        minloglevel=2,
    )


def sequence_stats(prefix: str, seqs: Sequence[Sequence[int]]) -> dict[str, float]:
    """Unknown-token rate and length percentiles of one encoded split."""
    _, offsets = pack(seqs)
    sizes = lengths(offsets)
    total = int(sizes.sum())
    unknown = sum(int(np.count_nonzero(np.asarray(s) == UNK_ID)) for s in seqs)
    stats = {
        f"{prefix}.examples": float(len(seqs)),
        f"{prefix}.tokens": float(total),
        f"{prefix}.unk_rate": unknown / max(total, 1),
    }
    for q in (50, 90, 99):
        stats[f"{prefix}.len_p{q}"] = float(np.percentile(sizes, q)) if len(sizes) else 0.0
    stats[f"{prefix}.len_max"] = float(sizes.max()) if len(sizes) else 0.0
    return stats


def _ragged(name: str, seqs: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """Name the packed arrays of one field."""
    ids, offsets = pack(seqs)
    return {f"{name}_ids": ids, f"{name}_offsets": offsets}


def _tokenize_classification(
    cfg: SentencePieceParams, splits: dict[str, list[dict[str, Any]]], out: Path
) -> dict[str, float]:
    """Reviews -> token ids + labels."""
    sp = train_sentencepiece((r["text"] for r in splits["train"]), cfg)
    (out / TOKENIZER).write_bytes(sp.serialized_model_proto())
    stats = {"vocab_size": float(sp.get_piece_size())}
    for split, rows in splits.items():
        seqs = sp.encode([r["text"] for r in rows])
        labels = np.asarray([r["label"] for r in rows], dtype=np.int32)
        save_npz(out / f"{split}.npz", {**_ragged("tokens", seqs), "labels": labels})
        stats |= sequence_stats(split, seqs)
    return stats


def _tokenize_language_model(
    cfg: SentencePieceParams, splits: dict[str, list[dict[str, Any]]], out: Path
) -> dict[str, float]:
    """Plays -> one token stream each (with `<nl>`), plus character counts for bpc."""
    lines = (line for doc in splits["train"] for line in doc["text"].split("\n") if line.strip())
    sp = train_sentencepiece(lines, cfg, control_symbols=[NEWLINE])
    (out / TOKENIZER).write_bytes(sp.serialized_model_proto())
    stats = {"vocab_size": float(sp.get_piece_size())}
    for split, docs in splits.items():
        seqs = [encode_lines(sp, doc["text"]) for doc in docs]
        chars = np.asarray([len(doc["text"]) + 1 for doc in docs], dtype=np.int64)
        save_npz(out / f"{split}.npz", {**_ragged("tokens", seqs), "chars": chars})
        stats |= sequence_stats(split, seqs)
        stats[f"{split}.chars_per_token"] = float(chars.sum()) / max(sum(map(len, seqs)), 1)
    return stats


def sampled_segmentations(
    sp: spm.SentencePieceProcessor, texts: Sequence[str], cfg: TranslationTokenize
) -> list[list[int]]:
    """`cfg.sampled_copies` sampled segmentations of every text, one copy after another.

    Subword regularisation: the model sees "Bahnhof" as one piece in one copy and as
    "Bahn" + "hof" in another, so rare pieces' parts get trained too. One thread and a fixed
    seed keep the draws reproducible.
    """
    spm.set_random_generator_seed(cfg.seed)
    draws: list[list[int]] = []
    for _ in range(cfg.sampled_copies):
        draws += sp.encode(
            list(texts),
            enable_sampling=True,
            nbest_size=-1,
            alpha=cfg.sampling_alpha,
            num_threads=1,
        )
    return draws


def _tokenize_translation(
    cfg: TranslationTokenize, splits: dict[str, list[dict[str, Any]]], out: Path
) -> dict[str, float]:
    """Sentence pairs -> source and target ids, with one model per language unless shared."""
    train = splits["train"]
    if cfg.shared:
        src_sp = tgt_sp = train_sentencepiece([r[k] for r in train for k in ("src", "tgt")], cfg)
    else:
        src_cfg = cfg.model_copy(update={"vocab_size": cfg.source_vocab_size or cfg.vocab_size})
        src_sp = train_sentencepiece((r["src"] for r in train), src_cfg)
        tgt_sp = train_sentencepiece((r["tgt"] for r in train), cfg)
    (out / SOURCE_TOKENIZER).write_bytes(src_sp.serialized_model_proto())
    (out / TARGET_TOKENIZER).write_bytes(tgt_sp.serialized_model_proto())
    stats = {
        "src.vocab_size": float(src_sp.get_piece_size()),
        "tgt.vocab_size": float(tgt_sp.get_piece_size()),
    }
    for split, rows in splits.items():
        src = src_sp.encode([r["src"] for r in rows])
        tgt = tgt_sp.encode([r["tgt"] for r in rows])
        if split == "train" and cfg.sampled_copies:
            src += sampled_segmentations(src_sp, [r["src"] for r in rows], cfg)
            tgt += sampled_segmentations(tgt_sp, [r["tgt"] for r in rows], cfg)
        save_npz(out / f"{split}.npz", {**_ragged("src", src), **_ragged("tgt", tgt)})
        stats |= sequence_stats(f"{split}.src", src) | sequence_stats(f"{split}.tgt", tgt)
    return stats


TOKENIZERS = {
    Task.classification: _tokenize_classification,
    Task.language_model: _tokenize_language_model,
    Task.translation: _tokenize_translation,
}


def run_tokenize(
    task: Task, cfg: SentencePieceParams, data_dir: Path, out_dir: Path
) -> TokenizeResult:
    """Tokenize one task's downloaded splits into `out_dir`, replacing it atomically."""
    splits = {split: read_jsonl(data_dir / f"{split}.jsonl") for split in SPLITS}
    if not splits["train"]:
        raise ValueError(f"{data_dir / 'train.jsonl'} is empty: nothing to train a tokenizer on")
    with staged_directory(out_dir) as staging:
        stats = TOKENIZERS[task](cfg, splits, staging)  # type: ignore[arg-type]
        if (data_dir / MANIFEST).is_file():  # later stages tag runs with the source
            shutil.copyfile(data_dir / MANIFEST, staging / MANIFEST)
    log.info("tokenized %s into %s: %s", task, out_dir, _summary(stats))
    return TokenizeResult(out_dir=out_dir, stats=stats)


def _summary(stats: dict[str, float]) -> str:
    """A short progress line for the log."""
    keys = [k for k in stats if k.endswith(("vocab_size", "unk_rate", "len_p50"))]
    return ", ".join(f"{k}={stats[k]:.4g}" for k in keys)
