"""Sentiment classification: data, model and probe for the shared trainer."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.corpus import load_npz, unpack
from pipeline.datasets import batches, pad_batch, ragged, slices, truncate
from pipeline.models.classifier import build_classifier
from pipeline.params import ClassificationTrain
from pipeline.train import TrainingSetup

TOKENIZER = "spm.model"


def load_split(data_dir: Path, split: str, max_len: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Token sequences (last `max_len` tokens of each review) and float labels."""
    data = load_npz(data_dir / f"{split}.npz")
    seqs = truncate(unpack(data["tokens_ids"], data["tokens_offsets"]), max_len)
    return seqs, data["labels"].astype(np.float32)


def make_dataset(
    seqs: list[np.ndarray], labels: np.ndarray, cfg: ClassificationTrain, shuffle: bool
) -> tf.data.Dataset:
    """(tokens, label) batches, padded with PAD=0 (masked by the model)."""
    ds = slices(ragged(seqs), labels)
    return batches(ds, cfg, np.fromiter(map(len, seqs), dtype=np.int64), shuffle)


def probe_batch(
    seqs: list[np.ndarray], labels: np.ndarray, size: int, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch of the longest validation reviews, so the probe sees full-length sequences."""
    order = sorted(range(len(seqs)), key=lambda i: (-min(len(seqs[i]), max_len), i))[:size]
    return pad_batch([seqs[i] for i in order]), labels[order].reshape(-1, 1)


def per_example_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy of each example (the probe sums these)."""
    return keras.losses.binary_crossentropy(y_true, y_pred)


def vocab_size(data_dir: Path) -> int:
    """Vocabulary size of the task's SentencePiece model."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(data_dir / TOKENIZER)).get_piece_size()


def setup(cfg: ClassificationTrain, data_dir: Path) -> TrainingSetup:
    """Build the classifier and its data for the shared trainer."""
    train_x, train_y = load_split(data_dir, "train", cfg.max_len)
    val_x, val_y = load_split(data_dir, "val", cfg.max_len)
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


# --------------------------------------------------------------------------- evaluation


def predict_probabilities(model: keras.Model, seqs: list[np.ndarray], batch: int) -> np.ndarray:
    """P(positive) for each sequence, batched in input order."""
    out = [
        model.predict_on_batch(pad_batch(seqs[i : i + batch])) for i in range(0, len(seqs), batch)
    ]
    return np.concatenate(out).reshape(-1) if out else np.zeros(0, dtype=np.float32)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, prefix: str) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and ROC-AUC at threshold 0.5 (scikit-learn)."""
    from sklearn import metrics as skm

    predicted = (probs >= 0.5).astype(int)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, predicted, average="binary", zero_division=0
    )
    return {
        f"{prefix}.accuracy": float(skm.accuracy_score(labels, predicted)),
        f"{prefix}.precision": float(precision),
        f"{prefix}.recall": float(recall),
        f"{prefix}.f1": float(f1),
        f"{prefix}.roc_auc": float(skm.roc_auc_score(labels, probs)),
    }


def tfidf_baseline(
    train: list[dict], test: list[dict], seed: int
) -> tuple[dict[str, float], np.ndarray]:
    """TF-IDF (1-2 grams) + logistic regression: the bar the RNN has to clear."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=200_000, sublinear_tf=True),
        LogisticRegression(C=4.0, max_iter=1000, random_state=seed),
    )
    model.fit([r["text"] for r in train], [r["label"] for r in train])
    probs = model.predict_proba([r["text"] for r in test])[:, 1]
    labels = np.asarray([r["label"] for r in test])
    return classification_metrics(labels, probs, "baseline"), probs


def plot_confusion(labels: np.ndarray, probs: np.ndarray, path: Path) -> Path:
    """Save the test confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    figure = Figure(figsize=(4, 4))
    axes = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        labels,
        (probs >= 0.5).astype(int),
        display_labels=["negative", "positive"],
        ax=axes,
        colorbar=False,
    )
    axes.set_title("Test confusion matrix")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def evaluate(
    cfg: ClassificationTrain, model_dir: Path, data_dir: Path, raw_dir: Path, report_dir: Path
) -> dict[str, float]:
    """Score the trained model and the TF-IDF baseline on the test split; write the reports."""
    import csv

    from pipeline.corpus import read_jsonl

    model = keras.saving.load_model(model_dir / "model.keras")
    seqs, labels = load_split(data_dir, "test", cfg.max_len)
    probs = predict_probabilities(model, seqs, cfg.batch_size)
    metrics = classification_metrics(labels.astype(int), probs, "test")
    baseline, _ = tfidf_baseline(
        read_jsonl(raw_dir / "train.jsonl"), read_jsonl(raw_dir / "test.jsonl"), cfg.seed
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    with (report_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "probability"])
        writer.writerows(zip(labels.astype(int).tolist(), probs.round(6).tolist(), strict=True))
    plot_confusion(labels.astype(int), probs, report_dir / "confusion_matrix.png")
    return metrics | baseline


# --------------------------------------------------------------------------- prediction


def load_predictor(model_dir: Path) -> tuple[keras.Model, object]:
    """Load a trained classifier and its SentencePiece model from one directory."""
    import sentencepiece as spm

    model = keras.saving.load_model(model_dir / "model.keras")
    return model, spm.SentencePieceProcessor(model_file=str(model_dir / TOKENIZER))


def predict_texts(
    model: keras.Model, sp, texts: list[str], max_len: int
) -> list[tuple[str, float]]:
    """(label, P(positive)) for raw texts; empty texts get the model's no-evidence answer."""
    seqs = [np.asarray(sp.encode(text)[-max_len:] or [], dtype=np.int32) for text in texts]
    probs = predict_probabilities(model, seqs, batch=64)
    return [("positive" if p >= 0.5 else "negative", float(p)) for p in probs]
