"""Classify texts with a trained model: shared by `predict`, evaluation and the served model."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import sentencepiece as spm

from pipeline.core.corpus import TOKENIZER
from pipeline.core.datasets import pad_batch
from pipeline.core.saved import load_model
from pipeline.tasks.classification import model as _custom_layers  # noqa: F401  (registers them)

THRESHOLD = 0.5  # P(positive) at or above this is labelled positive
LABELS = ("negative", "positive")


def predict_probabilities(model: keras.Model, seqs: list[np.ndarray], batch: int) -> np.ndarray:
    """P(positive) for each sequence, in input order (batched by length: little padding)."""
    order = np.argsort([len(s) for s in seqs], kind="stable")
    probs = np.zeros(len(seqs), dtype=np.float32)
    for i in range(0, len(seqs), batch):
        rows = order[i : i + batch]
        probs[rows] = np.asarray(model.predict_on_batch(pad_batch([seqs[j] for j in rows])))[:, 0]
    return probs


def decide(probs: np.ndarray) -> np.ndarray:
    """Label ids (0 negative, 1 positive) for P(positive) values."""
    return (np.asarray(probs) >= THRESHOLD).astype(int)


def label_probability(label: str, p_positive: float) -> float:
    """The probability of `label` from P(positive)."""
    return p_positive if label == LABELS[1] else 1.0 - p_positive


def load_predictor(model_dir: Path) -> tuple[keras.Model, spm.SentencePieceProcessor]:
    """Load a trained classifier and its SentencePiece model from one directory."""
    model = load_model(model_dir)
    return model, spm.SentencePieceProcessor(model_file=str(model_dir / TOKENIZER))


def predict_texts(
    model: keras.Model, sp: spm.SentencePieceProcessor, texts: list[str]
) -> list[tuple[str, float]]:
    """(label, P(positive)) for raw texts, each read whole; empty texts get the model's
    no-evidence answer."""
    seqs = [np.asarray(sp.encode(text), dtype=np.int32) for text in texts]
    probs = predict_probabilities(model, seqs, batch=64)
    return [(LABELS[label], float(p)) for label, p in zip(decide(probs), probs, strict=True)]
