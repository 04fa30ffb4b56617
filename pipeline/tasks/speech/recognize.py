"""Recognise spoken digits with a trained model: shared by `recognize` and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from pipeline.core.saved import load_model
from pipeline.tasks.speech.audio import FEATURIZER, Featurizer, read_wav
from pipeline.tasks.speech.data import pad_frames


def predict_probabilities(
    model: keras.Model, frames: Sequence[np.ndarray], batch: int
) -> np.ndarray:
    """(utterances, 10) digit probabilities, batched in input order."""
    out = [
        model.predict_on_batch(pad_frames(frames[i : i + batch]))
        for i in range(0, len(frames), batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, 10), dtype=np.float32)


def load_recognizer(model_dir: Path) -> tuple[keras.Model, Featurizer]:
    """Load a trained recognizer and the featurizer it was trained with."""
    model = load_model(model_dir)
    return model, Featurizer.load(model_dir / FEATURIZER)


def recognize_files(
    model: keras.Model, featurizer: Featurizer, paths: Sequence[Path], max_len: int
) -> list[tuple[int, float]]:
    """(digit, probability) for each WAV file, featurized as `featurize` does."""
    frames = [featurizer.features(*read_wav(path))[:max_len] for path in paths]
    probs = predict_probabilities(model, frames, batch=32)
    return [(int(p.argmax()), float(p.max())) for p in probs]
