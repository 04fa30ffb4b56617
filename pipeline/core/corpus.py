"""On-disk formats shared by the stages.

Downloaded data: `{split}.jsonl`, one JSON object per line (see `pipeline/download.py`).
Tokenized data: `{split}.npz` holding ragged integer sequences as `<field>_ids` (all sequences
concatenated, int32) plus `<field>_offsets` (int64, length n+1), and any per-example arrays
(e.g. `labels`). Ragged storage keeps files small and lets training choose `max_len` later.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")

# File names that several stages and tasks share.
MODEL_FILE = "model.keras"  # the trained Keras model in `train --out`
TOKENIZER = "spm.model"  # one SentencePiece model (classification, language model)
SOURCE_TOKENIZER, TARGET_TOKENIZER = "src.model", "tgt.model"  # translation
RUN_FILE = "train_run.json"  # the MLflow run that trained a model, beside it
MANIFEST = "manifest.json"  # what `download` fetched; copied along the data


class OutputError(Exception):
    """An output path cannot be written as asked (e.g. it exists and is not a directory)."""


class CorruptInput(ValueError):
    """A file an earlier stage wrote is damaged; the message names it and the fix."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read one JSON object per line; a damaged line names the file and line number."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CorruptInput(
                    f"{path} line {number}: not valid JSON ({exc.msg}); re-run the stage that "
                    "wrote it (`dvc repro`)"
                ) from None
    return rows


def check_ids(ids: np.ndarray, vocab_size: int, path: Path) -> None:
    """Refuse token ids the model's vocabulary cannot embed (TensorFlow's error is a graph dump)."""
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise CorruptInput(
            f"{path}: token ids outside 0..{vocab_size - 1} (found {int(ids.min())}.."
            f"{int(ids.max())}); the data and tokenizer disagree: re-run tokenize"
        )


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
        os.chmod(tmp, _umask_mode(directory=False))  # mkstemp's 0600 would stick
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
        os.chmod(tmp, _umask_mode(directory=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load every array of an npz file into memory."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def check_writable(*paths: Path) -> None:
    """Raise OutputError unless each output path can be created (its folder made and written)."""
    for path in paths:
        if path.exists() and not os.access(path, os.W_OK):
            raise OutputError(f"cannot write {path}: permission denied")
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=parent):
                pass
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _umask_mode(directory: bool) -> int:
    """The mode a plain `mkdir`/`open` would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """Yield an empty sibling directory; on success swap it in as `out_dir`, else delete it.

    Readers never see a half-written `out_dir`, and a failure leaves the previous one intact.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        staging.chmod(_umask_mode(directory=True))  # mkdtemp's 0700 would become out_dir's
        yield staging
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Swap `new` into `target` by renames, restoring the old directory if the swap fails."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise OutputError(f"{target} exists and is not a directory; remove it first")
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    try:
        os.replace(target, old)  # renaming onto the empty placeholder is atomic on POSIX
    except BaseException:
        old.rmdir()
        raise
    try:
        os.rename(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
