"""Translate sentences with a trained model directory (`model.keras`, `src.model`, `tgt.model`).

Empty input gives an empty translation; characters the source tokenizer never saw become UNK
(id 1), which the model reads like any other token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from pipeline.core.corpus import SOURCE_TOKENIZER, TARGET_TOKENIZER
from pipeline.core.saved import load_model
from pipeline.tasks.translation.decoding import Hypothesis, KerasStepModel, decode_sequences
from pipeline.tasks.translation.model import Seq2Seq, seq2seq_from_model

# Defaults for callers without params (the evaluate stage passes evaluate.translation's).
DECODE_MAX_LEN, LENGTH_PENALTY = 40, 0.6


@dataclass(frozen=True)
class Translator:
    """A seq2seq model with its decoder runner and both SentencePiece models."""

    seq2seq: Seq2Seq
    step_model: KerasStepModel
    source: spm.SentencePieceProcessor
    target: spm.SentencePieceProcessor

    @classmethod
    def from_parts(cls, seq2seq: Seq2Seq, source: Path, target: Path) -> Translator:
        """Wrap an in-memory model (e.g. during training) with tokenizer files."""
        return cls(
            seq2seq,
            KerasStepModel(seq2seq),
            spm.SentencePieceProcessor(model_file=str(source)),
            spm.SentencePieceProcessor(model_file=str(target)),
        )

    def decode_ids(
        self,
        sources: Sequence[np.ndarray],
        beam_size: int,
        max_len: int,
        length_penalty: float = LENGTH_PENALTY,
        batch_size: int = 64,
        eos_penalty: float = 0.0,
        coverage_penalty: float = 0.0,
        no_repeat_ngram: int = 0,
    ) -> list[Hypothesis]:
        """Translate source id sequences (greedy when beam_size is 1)."""
        return decode_sequences(
            self.step_model,
            sources,
            beam_size,
            max_len,
            length_penalty,
            batch_size,
            eos_penalty,
            coverage_penalty,
            no_repeat_ngram,
        )

    def detokenize(self, hypotheses: Sequence[Hypothesis]) -> list[str]:
        """Target SentencePiece ids -> text."""
        return [self.target.decode(h.tokens) for h in hypotheses]


def load_translator(model_dir: Path) -> Translator:
    """Load a trained model directory written by the train stage."""

    model = load_model(model_dir, compile=False)
    return Translator.from_parts(
        seq2seq_from_model(model), model_dir / SOURCE_TOKENIZER, model_dir / TARGET_TOKENIZER
    )


def translate_texts(
    translator: Translator,
    sentences: Sequence[str],
    beam_size: int = 4,
    max_len: int = DECODE_MAX_LEN,
    length_penalty: float = LENGTH_PENALTY,
    eos_penalty: float = 0.0,
    coverage_penalty: float = 0.0,
    no_repeat_ngram: int = 0,
) -> list[str]:
    """Translate raw sentences; blank ones come back as empty strings without decoding."""
    texts = [sentence.strip() for sentence in sentences]
    todo = [i for i, text in enumerate(texts) if text]
    ids = [np.asarray(translator.source.encode(texts[i]), dtype=np.int32) for i in todo]
    hypotheses = translator.decode_ids(
        ids,
        beam_size,
        max_len,
        length_penalty,
        eos_penalty=eos_penalty,
        coverage_penalty=coverage_penalty,
        no_repeat_ngram=no_repeat_ngram,
    )
    out = [""] * len(texts)
    for i, text in zip(todo, translator.detokenize(hypotheses), strict=True):
        out[i] = text
    return out


def translate(
    model_dir: Path,
    sentences: list[str],
    beam_size: int = 4,
    max_len: int = DECODE_MAX_LEN,
    length_penalty: float = LENGTH_PENALTY,
    eos_penalty: float = 0.0,
    coverage_penalty: float = 0.0,
    no_repeat_ngram: int = 0,
) -> list[str]:
    """Load `model_dir` and translate German sentences to English."""
    translator = load_translator(model_dir)
    return translate_texts(
        translator,
        sentences,
        beam_size,
        max_len,
        length_penalty,
        eos_penalty,
        coverage_penalty,
        no_repeat_ngram,
    )
