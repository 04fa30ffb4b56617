"""Spoken-digit recognition, training side: model, data and probe for the shared trainer."""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from pipeline.core.tracking import StageRun
from pipeline.core.trainer import TrainingSetup
from pipeline.params import SpeechTrain
from pipeline.tasks.speech.audio import FEATURIZER
from pipeline.tasks.speech.data import load_split, make_dataset, num_features, probe_batch
from pipeline.tasks.speech.model import build_recognizer


def per_example_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of each utterance (the probe sums these)."""
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)


def setup(cfg: SpeechTrain, data_dir: Path) -> TrainingSetup:
    """Build the recognizer and its data for the shared trainer."""
    train_x, train_y = load_split(data_dir, "train", cfg.max_len)
    val_x, val_y = load_split(data_dir, "val", cfg.max_len)
    probe_x, probe_y = probe_batch(val_x, val_y, cfg.probe_batch_size)
    return TrainingSetup(
        model=build_recognizer(cfg, num_features(train_x)),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        train=make_dataset(train_x, train_y, cfg, shuffle=True),
        val=make_dataset(val_x, val_y, cfg, shuffle=False),
        probe_inputs=probe_x,
        probe_targets=probe_y,
        probe_loss=per_example_loss,
        assets={FEATURIZER: data_dir / FEATURIZER},  # `recognize` featurizes WAVs with it
    )


def after_training(cfg: SpeechTrain, run: StageRun, model_dir: Path) -> None:
    """Nothing to add: the logged model directory already holds what `recognize` needs."""
