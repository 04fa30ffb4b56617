"""German -> English translation: data, model and probe for the shared trainer; evaluation.

Training examples are (source, BOS + target) -> target + EOS with teacher forcing, each side cut
to `max_len` tokens. The loss and the token accuracy ignore PAD targets. The gradient-flow probe
sums each example's loss over its target positions, so the encoder's curve shows how far back
into the source the decoder's loss reaches.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from pipeline.corpus import load_npz, read_jsonl, unpack
from pipeline.datasets import batches, pad_batch, ragged, slices, truncate
from pipeline.decoding import Hypothesis
from pipeline.lexicon import learn_lexicon, translate_all
from pipeline.models.seq2seq import SOURCE, TARGET_IN, build_seq2seq
from pipeline.params import TranslationTrain
from pipeline.tokenize import BOS_ID, EOS_ID, PAD_ID
from pipeline.train import TrainingSetup
from pipeline.translate import SOURCE_TOKENIZER, TARGET_TOKENIZER, Translator, load_translator
from pipeline.translation_reports import ExampleReporter, attention_figure, write_table

Pairs = tuple[list[np.ndarray], list[np.ndarray]]


def load_pairs(data_dir: Path, split: str, max_len: int) -> Pairs:
    """Source ids (first `max_len`) and target ids (first `max_len - 1`, room for BOS/EOS)."""
    data = load_npz(data_dir / f"{split}.npz")
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


def per_example_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Each example's cross-entropy summed over its target tokens (PAD contributes 0)."""
    losses = keras.losses.sparse_categorical_crossentropy(
        y_true, y_pred, from_logits=True, ignore_class=PAD_ID
    )
    return ops.sum(losses, axis=-1)


def token_loss() -> keras.losses.Loss:
    """Mean cross-entropy over non-PAD target tokens (PAD positions contribute 0)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID)


class TokenAccuracy(keras.metrics.Mean):
    """Fraction of non-PAD target tokens whose argmax prediction is right."""

    def __init__(self, name: str = "token_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Average hits over the positions where the target is not PAD."""
        y_true = ops.cast(y_true, "int32")
        hits = ops.cast(
            ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), "float32"
        )
        weight = ops.cast(ops.not_equal(y_true, PAD_ID), "float32")
        if sample_weight is not None:
            weight = weight * ops.cast(sample_weight, "float32")
        return super().update_state(hits, sample_weight=weight)


def vocab_sizes(data_dir: Path) -> tuple[int, int]:
    """Source and target vocabulary sizes of the tokenize stage's models."""
    import sentencepiece as spm

    sizes = [
        spm.SentencePieceProcessor(model_file=str(data_dir / name)).get_piece_size()
        for name in (SOURCE_TOKENIZER, TARGET_TOKENIZER)
    ]
    return sizes[0], sizes[1]


def example_reporter(
    cfg: TranslationTrain, translator: Translator, data_dir: Path
) -> ExampleReporter:
    """Reporter for the first `examples` test sentences (fixed across epochs and runs)."""
    source, target = load_pairs(data_dir, "test", cfg.max_len)
    references = [translator.target.decode(t.tolist()) for t in target]
    return ExampleReporter(
        translator, source, references, cfg.examples, cfg.attention_maps, cfg.decode_max_len
    )


def setup(cfg: TranslationTrain, data_dir: Path) -> TrainingSetup:
    """Build the encoder-decoder and its data for the shared trainer."""
    train_src, train_tgt = load_pairs(data_dir, "train", cfg.max_len)
    val_src, val_tgt = load_pairs(data_dir, "val", cfg.max_len)
    probe_x, probe_y = probe_batch(val_src, val_tgt, cfg.probe_batch_size)
    seq2seq = build_seq2seq(cfg, *vocab_sizes(data_dir))
    assets = {name: data_dir / name for name in (SOURCE_TOKENIZER, TARGET_TOKENIZER)}
    translator = Translator.from_parts(seq2seq, *assets.values())
    reporters = [example_reporter(cfg, translator, data_dir)]
    return TrainingSetup(
        model=seq2seq.model,
        loss=token_loss(),
        metrics=[TokenAccuracy()],
        train=make_dataset(train_src, train_tgt, cfg, shuffle=True),
        val=make_dataset(val_src, val_tgt, cfg, shuffle=False),
        probe_inputs=probe_x,
        probe_targets=probe_y,
        probe_loss=per_example_loss,
        assets=assets,
        reporters=reporters if cfg.examples or cfg.attention_maps else [],
    )


# --------------------------------------------------------------------------- evaluation


def corpus_scores(
    hypotheses: list[str], references: list[str], prefix: str, suffix: str = ""
) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu defaults, detokenized text) as flat metrics."""
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    return {f"{prefix}.bleu{suffix}": float(bleu), f"{prefix}.chrf{suffix}": float(chrf)}


def token_accuracy(
    model: keras.Model, source: list[np.ndarray], target: list[np.ndarray], batch: int
) -> float:
    """Teacher-forced accuracy over all non-PAD target tokens."""
    metric = TokenAccuracy()
    for start in range(0, len(source), batch):
        inputs, targets = model_inputs(source[start : start + batch], target[start : start + batch])
        metric.update_state(targets, model.predict_on_batch(inputs))
    return float(metric.result())


def baseline_scores(raw_dir: Path, sources: list[str], references: list[str]) -> dict[str, float]:
    """BLEU/chrF of the word-for-word dictionary learned from the training pairs."""
    lexicon = learn_lexicon((r["src"], r["tgt"]) for r in read_jsonl(raw_dir / "train.jsonl"))
    return corpus_scores(translate_all(lexicon, sources), references, "baseline")


def write_reports(
    report_dir: Path,
    translator: Translator,
    source: list[np.ndarray],
    rows: list[tuple[str, str, str, str]],
    greedy: list[Hypothesis],
    cfg: TranslationTrain,
) -> None:
    """All test translations, the first `examples` of them, and attention heatmaps."""
    header = ("source", "reference", "greedy", "beam")
    write_table(report_dir / "translations.tsv", header, rows)
    write_table(report_dir / "examples.tsv", header, rows[: cfg.examples])
    for i in range(min(cfg.attention_maps, len(greedy))):
        path = report_dir / f"attention_{i + 1}.png"
        attention_figure(translator, source[i], greedy[i], path, f"test {i + 1}: {rows[i][2][:60]}")


def evaluate(
    cfg: TranslationTrain, model_dir: Path, data_dir: Path, raw_dir: Path, report_dir: Path
) -> dict[str, float]:
    """Score greedy and beam translations of the test split beside the dictionary baseline."""
    translator = load_translator(model_dir)
    source, target = load_pairs(data_dir, "test", cfg.max_len)
    raw = read_jsonl(raw_dir / "test.jsonl")
    if len(raw) != len(source):
        raise ValueError(f"{raw_dir} and {data_dir} disagree on the test split; re-run tokenize")
    texts, references = [r["src"] for r in raw], [r["tgt"] for r in raw]
    greedy = translator.decode_ids(source, 1, cfg.decode_max_len, cfg.length_penalty)
    beam = translator.decode_ids(source, cfg.beam_size, cfg.decode_max_len, cfg.length_penalty)
    greedy_text, beam_text = translator.detokenize(greedy), translator.detokenize(beam)
    metrics = corpus_scores(greedy_text, references, "test", "_greedy")
    metrics |= corpus_scores(beam_text, references, "test", "_beam")
    accuracy = token_accuracy(translator.seq2seq.model, source, target, cfg.batch_size)
    metrics["test.token_accuracy"] = accuracy
    metrics |= baseline_scores(raw_dir, texts, references)
    report_dir.mkdir(parents=True, exist_ok=True)
    rows = list(zip(texts, references, greedy_text, beam_text, strict=True))
    write_reports(report_dir, translator, source, rows, greedy, cfg)
    return metrics
