"""Evaluate translation: greedy and beam BLEU/chrF beside a word-for-word dictionary baseline."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from pipeline.core.corpus import read_jsonl
from pipeline.core.token_loss import TokenAccuracy
from pipeline.params import TranslationEvaluate, TranslationTrain
from pipeline.tasks.translation.data import load_pairs, model_inputs
from pipeline.tasks.translation.decoding import Hypothesis
from pipeline.tasks.translation.lexicon import learn_lexicon, translate_all
from pipeline.tasks.translation.reports import attention_figure, write_table
from pipeline.tasks.translation.translate import Translator, load_translator


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
    cfg: TranslationEvaluate,
) -> None:
    """All test translations, the first `examples` of them, and attention heatmaps."""
    header = ("source", "reference", "greedy", "beam")
    write_table(report_dir / "translations.tsv", header, rows)
    write_table(report_dir / "examples.tsv", header, rows[: cfg.examples])
    for i in range(min(cfg.attention_maps, len(greedy))):
        path = report_dir / f"attention_{i + 1}.png"
        attention_figure(translator, source[i], greedy[i], path, f"test {i + 1}: {rows[i][2][:60]}")


def evaluate(
    cfg: TranslationTrain,
    eval_cfg: TranslationEvaluate,
    model_dir: Path,
    data_dir: Path,
    raw_dir: Path,
    report_dir: Path,
) -> dict[str, float]:
    """Score greedy and beam translations of the test split beside the dictionary baseline."""
    translator = load_translator(model_dir)
    source, target = load_pairs(data_dir, "test", cfg.max_len)
    raw = read_jsonl(raw_dir / "test.jsonl")
    if len(raw) != len(source):
        raise ValueError(f"{raw_dir} and {data_dir} disagree on the test split; re-run tokenize")
    texts, references = [r["src"] for r in raw], [r["tgt"] for r in raw]
    decode = eval_cfg.decode_max_len, eval_cfg.length_penalty
    eos, ngram = eval_cfg.eos_penalty, eval_cfg.no_repeat_ngram
    greedy = translator.decode_ids(source, 1, *decode, eos_penalty=eos, no_repeat_ngram=ngram)
    beam = translator.decode_ids(
        source,
        eval_cfg.beam_size,
        *decode,
        eos_penalty=eos,
        coverage_penalty=eval_cfg.coverage_penalty,
        no_repeat_ngram=ngram,
    )
    greedy_text, beam_text = translator.detokenize(greedy), translator.detokenize(beam)
    metrics = corpus_scores(greedy_text, references, "test", "_greedy")
    metrics |= corpus_scores(beam_text, references, "test", "_beam")
    accuracy = token_accuracy(translator.seq2seq.model, source, target, cfg.batch_size)
    metrics["test.token_accuracy"] = accuracy
    metrics |= baseline_scores(raw_dir, texts, references)
    report_dir.mkdir(parents=True, exist_ok=True)
    rows = list(zip(texts, references, greedy_text, beam_text, strict=True))
    write_reports(report_dir, translator, source, rows, greedy, eval_cfg)
    return metrics
