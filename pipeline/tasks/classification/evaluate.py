"""Evaluate the sentiment classifier beside a TF-IDF + logistic-regression baseline."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.core.corpus import read_jsonl
from pipeline.core.saved import load_model
from pipeline.params import ClassificationEvaluate, ClassificationTrain
from pipeline.tasks.classification.data import load_split
from pipeline.tasks.classification.predict import LABELS, decide, predict_probabilities


def classification_metrics(labels: np.ndarray, probs: np.ndarray, prefix: str) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and ROC-AUC at threshold 0.5 (scikit-learn)."""
    from sklearn import metrics as skm

    predicted = decide(probs)
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
    train: list[dict], test: list[dict], cfg: ClassificationEvaluate, seed: int
) -> tuple[dict[str, float], np.ndarray]:
    """TF-IDF word n-grams + logistic regression: the bar the RNN has to clear."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(
            ngram_range=(1, cfg.baseline_max_ngram),
            min_df=2,
            max_features=cfg.baseline_max_features,
            sublinear_tf=True,
        ),
        LogisticRegression(C=cfg.baseline_c, max_iter=1000, random_state=seed),
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
        decide(probs),
        display_labels=list(LABELS),
        ax=axes,
        colorbar=False,
    )
    axes.set_title("Test confusion matrix")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def evaluate(
    cfg: ClassificationTrain,
    eval_cfg: ClassificationEvaluate,
    model_dir: Path,
    data_dir: Path,
    raw_dir: Path,
    report_dir: Path,
) -> dict[str, float]:
    """Score the trained model on validation and test, the TF-IDF baseline on test; write the
    reports. Validation is the split settings are chosen on (test is scored once)."""
    model = load_model(model_dir)
    # Whole reviews, as `predict` and the served model read them: `train.classification.max_len`
    # truncates training reviews for speed, and the pooled model reads any length. Training's
    # own validation reads the truncated reviews, so `val.*` here is the comparable score.
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        seqs, labels = load_split(data_dir, split, None)
        probs = predict_probabilities(model, seqs, cfg.batch_size)
        metrics |= classification_metrics(labels.astype(int), probs, split)
    baseline, _ = tfidf_baseline(
        read_jsonl(raw_dir / "train.jsonl"), read_jsonl(raw_dir / "test.jsonl"), eval_cfg, cfg.seed
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    with (report_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "probability"])
        writer.writerows(zip(labels.astype(int).tolist(), probs.round(6).tolist(), strict=True))
    plot_confusion(labels.astype(int), probs, report_dir / "confusion_matrix.png")
    return metrics | baseline
