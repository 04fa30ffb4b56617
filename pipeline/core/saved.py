"""Load what the train stage saved, with one-line errors that name the file and the fix."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras

from pipeline.core.corpus import MODEL_FILE


class CorruptModel(ValueError):
    """A model file exists but cannot be loaded."""


def load_model(model_dir: Path, compile: bool = True) -> keras.Model:
    """Load `model_dir/model.keras`; a missing or damaged file says so (Keras says "not found")."""
    path = model_dir / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro` (or `train`) first")
    if not zipfile.is_zipfile(path):
        raise CorruptModel(f"{path} is not a Keras model file (truncated or corrupt?): retrain it")
    try:
        return keras.saving.load_model(path, compile=compile)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise CorruptModel(f"{path} cannot be loaded ({exc}): retrain it") from None
