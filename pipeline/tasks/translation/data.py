"""German -> English translation: data, model and probe for the shared trainer; evaluation.

Training examples are (source, BOS + target) -> target + EOS with teacher forcing, each side cut
to `max_len` tokens. The loss and the token accuracy ignore PAD targets. The gradient-flow probe
sums each example's loss over its target positions, so the encoder's curve shows how far back
into the source the decoder's loss reaches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sentencepiece as spm
import tensorflow as tf

from pipeline.core.corpus import SOURCE_TOKENIZER, TARGET_TOKENIZER, check_ids, load_npz, unpack
from pipeline.core.datasets import batches, pad_batch, ragged, slices, truncate
from pipeline.core.tokens import BOS_ID, EOS_ID
from pipeline.params import TranslationTrain
from pipeline.tasks.translation.model import SOURCE, TARGET_IN

Pairs = tuple[list[np.ndarray], list[np.ndarray]]


def load_pairs(data_dir: Path, split: str, max_len: int) -> Pairs:
    """Source ids (first `max_len`) and target ids (first `max_len - 1`, room for BOS/EOS)."""
    path = data_dir / f"{split}.npz"
    data = load_npz(path)
    for field, size in zip(("src", "tgt"), vocab_sizes(data_dir), strict=True):
        check_ids(data[f"{field}_ids"], size, path)
    source = truncate(unpack(data["src_ids"], data["src_offsets"]), max_len, keep="first")
    target = truncate(unpack(data["tgt_ids"], data["tgt_offsets"]), max_len - 1, keep="first")
    return source, target


def teacher_forcing(target: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Decoder inputs BOS + y and outputs y + EOS."""
    bos, eos = np.asarray([BOS_ID], np.int32), np.asarray([EOS_ID], np.int32)
    return [np.concatenate([bos, t]) for t in target], [np.concatenate([t, eos]) for t in target]


def _model_io(
    source: tf.Tensor, target_in: tf.Tensor, target_out: tf.Tensor
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Name the inputs as the model's `keras.Input`s."""
    return {SOURCE: source, TARGET_IN: target_in}, target_out


def make_dataset(
    source: list[np.ndarray], target: list[np.ndarray], cfg: TranslationTrain, shuffle: bool
) -> tf.data.Dataset:
    """({source, target_in}, target_out) batches, bucketed by the longer side."""
    target_in, target_out = teacher_forcing(target)
    ds = slices(ragged(source), ragged(target_in), ragged(target_out)).map(_model_io)
    lengths = np.maximum([len(s) for s in source], [len(t) for t in target_in]).astype(np.int64)
    return batches(ds, cfg, lengths, shuffle)


def model_inputs(source: list[np.ndarray], target: list[np.ndarray]) -> tuple[dict, np.ndarray]:
    """Padded teacher-forcing inputs and targets for a list of pairs."""
    target_in, target_out = teacher_forcing(target)
    inputs = {SOURCE: pad_batch(source), TARGET_IN: pad_batch(target_in)}
    return inputs, pad_batch(target_out)


def probe_batch(
    source: list[np.ndarray], target: list[np.ndarray], size: int
) -> tuple[dict, np.ndarray]:
    """Fixed validation pairs with the longest sources, so the probe sees long sentences."""
    order = sorted(range(len(source)), key=lambda i: (-len(source[i]), i))[:size]
    return model_inputs([source[i] for i in order], [target[i] for i in order])


def vocab_sizes(data_dir: Path) -> tuple[int, int]:
    """Source and target vocabulary sizes of the tokenize stage's models."""
    sizes = [
        spm.SentencePieceProcessor(model_file=str(data_dir / name)).get_piece_size()
        for name in (SOURCE_TOKENIZER, TARGET_TOKENIZER)
    ]
    return sizes[0], sizes[1]
