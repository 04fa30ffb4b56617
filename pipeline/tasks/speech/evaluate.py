"""Evaluate the digit recognizer beside logistic regression on per-utterance MFCC statistics."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.saved import load_model
from pipeline.params import SpeechEvaluate, SpeechTrain
from pipeline.tasks.speech.data import DIGITS, load_split
from pipeline.tasks.speech.recognize import predict_probabilities


def digit_metrics(labels: np.ndarray, predicted: np.ndarray, prefix: str) -> dict[str, float]:
    """Accuracy and macro-F1 over the ten digits (scikit-learn)."""
    from sklearn import metrics as skm

    return {
        f"{prefix}.accuracy": float(skm.accuracy_score(labels, predicted)),
        f"{prefix}.macro_f1": float(
            skm.f1_score(labels, predicted, average="macro", labels=range(DIGITS), zero_division=0)
        ),
    }


def summary_features(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Per-utterance mean and standard deviation of each coefficient, side by side."""
    return np.stack([np.concatenate([f.mean(axis=0), f.std(axis=0)]) for f in frames])


def summary_baseline(
    train: tuple[Sequence[np.ndarray], np.ndarray],
    test_frames: Sequence[np.ndarray],
    cfg: SpeechEvaluate,
    seed: int,
) -> np.ndarray:
    """Logistic regression on MFCC mean and std (no order in time): the bar the RNN must clear."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=cfg.baseline_c, max_iter=2000, random_state=seed)
    )
    model.fit(summary_features(train[0]), train[1])
    return model.predict(summary_features(test_frames))


def plot_confusion(labels: np.ndarray, predicted: np.ndarray, title: str, path: Path) -> Path:
    """Save a 10x10 confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        labels, predicted, labels=list(range(DIGITS)), ax=axes, colorbar=False
    )
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def write_predictions(
    path: Path, labels: np.ndarray, probs: np.ndarray, baseline: np.ndarray
) -> None:
    """One row per test utterance: label, model digit and probability, baseline digit."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "predicted", "probability", "baseline"])
        for label, p, base in zip(labels.tolist(), probs, baseline.tolist(), strict=True):
            writer.writerow([label, int(p.argmax()), round(float(p.max()), 6), int(base)])


def evaluate(
    cfg: SpeechTrain,
    eval_cfg: SpeechEvaluate,
    model_dir: Path,
    data_dir: Path,
    raw_dir: Path,
    report_dir: Path,
) -> dict[str, float]:
    """Score the recognizer and the mean/std baseline on the test split; write the reports.

    Both read the featurized frames (`data_dir`); `raw_dir` is not needed.
    """
    model = load_model(model_dir)
    frames, labels = load_split(data_dir, "test", cfg.max_len)
    probs = predict_probabilities(model, frames, cfg.batch_size)
    predicted = probs.argmax(axis=1)
    baseline = summary_baseline(
        load_split(data_dir, "train", cfg.max_len), frames, eval_cfg, cfg.seed
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(report_dir / "predictions.csv", labels, probs, baseline)
    plot_confusion(
        labels, predicted, "RNN: test confusion matrix", report_dir / "confusion_matrix.png"
    )
    plot_confusion(
        labels,
        baseline,
        "Baseline: test confusion matrix",
        report_dir / "baseline_confusion_matrix.png",
    )
    return digit_metrics(labels, predicted, "test") | digit_metrics(labels, baseline, "baseline")
