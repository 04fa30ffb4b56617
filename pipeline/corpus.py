"""On-disk formats shared by the stages.

Downloaded data: `{split}.jsonl`, one JSON object per line (see `download.py`).
Tokenized data: `{split}.npz` holding ragged integer sequences as `<field>_ids` (all sequences
concatenated, int32) plus `<field>_offsets` (int64, length n+1), and any per-example arrays
(e.g. `labels`). Ragged storage keeps files small and lets training choose `max_len` later.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read one JSON object per line."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def json_safe(data: Any) -> Any:
    """Replace NaN/inf (which strict JSON readers such as DVC reject) with null."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: json_safe(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(value) for value in data]
    return data


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON deterministically and atomically, so DVC sees stable, whole files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(data), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pack(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ragged sequences into (ids, offsets)."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = [token for seq in sequences for token in seq]
    return np.asarray(flat, dtype=np.int32), offsets


def unpack(ids: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Split packed ids back into one array per sequence."""
    return [ids[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def lengths(offsets: np.ndarray) -> np.ndarray:
    """Sequence lengths from offsets."""
    return np.diff(offsets)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays atomically (uncompressed: loading speed matters more than size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load every array of an npz file into memory."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def load_sequences(path: Path, field: str) -> list[np.ndarray]:
    """Load one ragged field (e.g. `ids`, `src`, `tgt`) of a tokenized split."""
    data = load_npz(path)
    return unpack(data[f"{field}_ids"], data[f"{field}_offsets"])


def iter_splits(directory: Path, suffix: str) -> Iterator[tuple[str, Path]]:
    """Yield (split, path) for the three splits of a stage directory."""
    for split in SPLITS:
        yield split, directory / f"{split}{suffix}"
