"""Sentiment classification, training side: model, data and probe for the shared trainer."""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from pipeline.core.corpus import TOKENIZER
from pipeline.core.tracking import StageRun
from pipeline.core.trainer import TrainingSetup
from pipeline.params import ClassificationTrain
from pipeline.tasks.classification.data import load_split, make_dataset, probe_batch, vocab_size
from pipeline.tasks.classification.model import build_classifier
from pipeline.tasks.classification.serving import log_pyfunc_model


def per_example_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy of each example (the probe sums these)."""
    return keras.losses.binary_crossentropy(y_true, y_pred)


def setup(cfg: ClassificationTrain, data_dir: Path) -> TrainingSetup:
    """Build the classifier and its data for the shared trainer."""
    train_x, train_y = load_split(data_dir, "train", cfg.max_len, cfg.head_tokens)
    val_x, val_y = load_split(data_dir, "val", cfg.max_len, cfg.head_tokens)
    probe_x, probe_y = probe_batch(val_x, val_y, cfg.probe_batch_size, cfg.max_len)
    return TrainingSetup(
        model=build_classifier(cfg, vocab_size(data_dir)),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
        train=make_dataset(train_x, train_y, cfg, shuffle=True),
        val=make_dataset(val_x, val_y, cfg, shuffle=False),
        probe_inputs=probe_x,
        probe_targets=probe_y,
        probe_loss=per_example_loss,
        assets={TOKENIZER: data_dir / TOKENIZER},
    )


def after_training(cfg: ClassificationTrain, run: StageRun, model_dir: Path) -> None:
    """Log the servable model (raw text in) as the run's MLflow model, instead of the Keras one."""
    log_pyfunc_model(run, model_dir)
