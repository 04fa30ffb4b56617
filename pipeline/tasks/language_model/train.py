"""Language modeling, training side: windows of each play's token stream, model and probe."""

from __future__ import annotations

from pathlib import Path

import keras
import sentencepiece as spm
import tensorflow as tf

from pipeline.core.corpus import TOKENIZER
from pipeline.core.token_loss import Perplexity, TokenAccuracy, TokenCrossEntropy
from pipeline.core.tokens import NEWLINE
from pipeline.core.tracking import StageRun
from pipeline.core.trainer import TrainingSetup
from pipeline.params import LanguageModelTrain
from pipeline.tasks.language_model.data import (
    load_streams,
    load_tokenizer,
    make_dataset,
    probe_windows,
    windows,
)
from pipeline.tasks.language_model.generate import generate
from pipeline.tasks.language_model.model import build_language_model


def last_token_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Per-example loss of the last prediction: how far back does its gradient reach?"""
    return keras.losses.sparse_categorical_crossentropy(
        y_true[:, -1], y_pred[:, -1, :], from_logits=True
    )


def sample_reporter(cfg: LanguageModelTrain, sp: spm.SentencePieceProcessor):
    """A per-epoch reporter writing one seeded sample, so MLflow shows the model learning."""

    def report(model: keras.Model, epoch: int, folder: Path) -> list[Path]:
        text = generate(
            model,
            sp,
            cfg.report_prompt,
            cfg.report_tokens,
            cfg.report_temperature,
            seed=cfg.seed,
            context=cfg.max_len,
        )
        path = folder / "sample.txt"
        path.write_text(f"epoch {epoch}, temperature {cfg.report_temperature}\n\n{text}\n")
        return [path]

    return report


def setup(cfg: LanguageModelTrain, data_dir: Path) -> TrainingSetup:
    """Build the language model and its windows for the shared trainer."""
    sp = load_tokenizer(data_dir)
    newline = sp.piece_to_id(NEWLINE)
    train_rows = windows(
        load_streams(data_dir, "train", newline)[0], cfg.max_len, cfg.stride or cfg.max_len
    )
    val_rows = windows(load_streams(data_dir, "val", newline)[0], cfg.max_len, cfg.max_len)
    probe_x, probe_y = probe_windows(val_rows, cfg.probe_batch_size)
    return TrainingSetup(
        model=build_language_model(cfg, sp.get_piece_size()),
        loss=TokenCrossEntropy(),
        metrics=[TokenAccuracy(name="accuracy"), Perplexity()],
        train=make_dataset(train_rows, cfg, shuffle=True),
        val=make_dataset(val_rows, cfg, shuffle=False),
        probe_inputs=probe_x,
        probe_targets=probe_y,
        probe_loss=last_token_loss,
        assets={TOKENIZER: data_dir / TOKENIZER},
        reporters=[sample_reporter(cfg, sp)],
    )


def after_training(cfg: LanguageModelTrain, run: StageRun, model_dir: Path) -> None:
    """Nothing beyond the trainer's outputs: `generate` reads the model directory."""
