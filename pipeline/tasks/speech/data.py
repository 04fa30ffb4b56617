"""Speech data: standardised MFCC frames as padded, bucketed batches; the probe batch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.core.corpus import load_npz, unpack
from pipeline.core.datasets import batches, slices, truncate
from pipeline.params import SpeechTrain

DIGITS = 10  # classes: the spoken digits 0-9
PAD_FRAME = 0.0  # padded frames are all zeros, which the model masks


def load_split(data_dir: Path, split: str, max_len: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames (the first `max_len` of each utterance) and int32 digit labels."""
    data = load_npz(data_dir / f"{split}.npz")
    frames = truncate(unpack(data["features"], data["features_offsets"]), max_len, keep="first")
    return frames, data["labels"].astype(np.int32)


def num_features(frames: Sequence[np.ndarray]) -> int:
    """Coefficients per frame."""
    return int(frames[0].shape[1])


def ragged(frames: Sequence[np.ndarray]) -> tf.RaggedTensor:
    """A (utterances, None, F) ragged float tensor."""
    offsets = np.zeros(len(frames) + 1, dtype=np.int64)
    np.cumsum([len(f) for f in frames], out=offsets[1:])
    return tf.RaggedTensor.from_row_splits(np.concatenate(frames).astype(np.float32), offsets)


def make_dataset(
    frames: Sequence[np.ndarray], labels: np.ndarray, cfg: SpeechTrain, shuffle: bool
) -> tf.data.Dataset:
    """(frames, label) batches padded with zero frames, bucketed by length when training."""
    lengths = np.fromiter(map(len, frames), dtype=np.int64, count=len(frames))
    return batches(slices(ragged(frames), labels), cfg, lengths, shuffle)


def pad_frames(frames: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
    """Post-pad utterances with zero frames into one (B, T, F) float32 array."""
    width = length or max((len(f) for f in frames), default=1) or 1
    out = np.full((len(frames), width, num_features(frames)), PAD_FRAME, dtype=np.float32)
    for row, utterance in enumerate(frames):
        out[row, : min(len(utterance), width)] = utterance[:width]
    return out


def probe_batch(
    frames: Sequence[np.ndarray], labels: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch of the longest validation utterances, so the probe sees many frames."""
    order = sorted(range(len(frames)), key=lambda i: (-len(frames[i]), i))[:size]
    return pad_frames([frames[i] for i in order]), labels[order]
