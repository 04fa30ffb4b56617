"""Throughput of the instrumented trainer vs plain `model.fit` on the same model and data.

Both variants train the classifier from params.yaml on the same batches; the instrumented one
uses the project's train step (per-layer gradient norms, global-norm clipping) plus its MLflow
and gradient-flow callbacks against a throwaway local store. Epochs are interleaved and the
median samples/s of each variant is compared, so machine noise hits both alike.

    python benchmarks/trainer_overhead.py --steps 60 --repeats 5 --out benchmark.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import keras
import numpy as np
import tensorflow as tf
import typer

from pipeline.callbacks import GradientFlowLogger, MlflowMetrics
from pipeline.gradient_flow import GradientFlowProbe
from pipeline.gradients import InstrumentedModel
from pipeline.models.classifier import build_classifier
from pipeline.params import ClassificationTrain, load_params
from pipeline.tasks.classification import load_split, per_example_loss, vocab_size
from pipeline.tracking import stage_run


def batches(cfg: ClassificationTrain, data: Path | None, steps: int) -> tuple[tf.data.Dataset, int]:
    """Fixed full-length batches (real reviews when available, else random tokens)."""
    rows = steps * cfg.batch_size
    if data and (data / "train.npz").is_file():
        seqs, labels = load_split(data, "train", cfg.max_len)
        tokens = np.stack([np.resize(s, cfg.max_len) for s in seqs[:rows]])
        return _dataset(tokens, labels[:rows], cfg), vocab_size(data)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 8000, size=(rows, cfg.max_len)).astype("int32")
    return _dataset(tokens, rng.integers(0, 2, rows).astype("float32"), cfg), 8000


def _dataset(tokens: np.ndarray, labels: np.ndarray, cfg: ClassificationTrain) -> tf.data.Dataset:
    """Cache the batches in memory so input work is identical for both variants."""
    ds = tf.data.Dataset.from_tensor_slices((tokens.astype("int32"), labels.astype("float32")))
    return ds.batch(cfg.batch_size).cache().prefetch(tf.data.AUTOTUNE)


def plain(cfg: ClassificationTrain, vocab: int) -> tuple[keras.Model, list]:
    """The classifier with Keras's own train step and no callbacks."""
    keras.utils.set_random_seed(cfg.seed)
    model = build_classifier(cfg, vocab)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="binary_crossentropy")
    return model, []


def instrumented(
    cfg: ClassificationTrain, vocab: int, run, work: Path, probe
) -> tuple[keras.Model, list]:
    """The same classifier under the project's instrumented step and callbacks."""
    keras.utils.set_random_seed(cfg.seed)
    base = build_classifier(cfg, vocab)
    model = InstrumentedModel(base.inputs, base.outputs, clip_norm=cfg.clip_norm)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="binary_crossentropy")
    flow = GradientFlowLogger(GradientFlowProbe(base, *probe, per_example_loss), run, work)
    return model, [MlflowMetrics(run, cfg.log_every_n_steps), flow]


def time_epoch(model: keras.Model, callbacks: list, ds: tf.data.Dataset, samples: int) -> float:
    """Samples per second of one epoch."""
    started = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0, callbacks=callbacks)
    return samples / (time.perf_counter() - started)


def main(
    steps: Annotated[int, typer.Option(help="Batches per timed epoch.")] = 60,
    repeats: Annotated[int, typer.Option(help="Timed epochs per variant (interleaved).")] = 5,
    data: Annotated[Path | None, typer.Option(help="Tokenized classification data.")] = Path(
        "data/tokenized/classification"
    ),
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Print instrumented/plain throughput ratio (target >= 0.90)."""
    cfg = load_params(params).train.classification
    ds, vocab = batches(cfg, data, steps)
    probe = next(iter(ds))
    probe = (
        probe[0][: cfg.probe_batch_size].numpy(),
        probe[1][: cfg.probe_batch_size].numpy()[:, None],
    )
    with tempfile.TemporaryDirectory() as tmp:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        with stage_run("benchmark", "train", {}) as run:
            variants = {
                "plain": plain(cfg, vocab),
                "instrumented": instrumented(cfg, vocab, run, Path(tmp), probe),
            }
            for model, callbacks in variants.values():  # warm-up: tracing and compilation
                model.fit(ds, epochs=1, verbose=0, callbacks=callbacks)
            rates: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(repeats):
                for name, (model, callbacks) in variants.items():
                    rates[name].append(time_epoch(model, callbacks, ds, steps * cfg.batch_size))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratio = medians["instrumented"] / medians["plain"]
    result = {
        "cell": cfg.cell,
        "units": cfg.units,
        "batch_size": cfg.batch_size,
        "max_len": cfg.max_len,
        "steps": steps,
        "repeats": repeats,
        "samples_per_s": rates,
        "median_samples_per_s": medians,
        "ratio": ratio,
    }
    for name, value in medians.items():
        runs = ", ".join(f"{r:.0f}" for r in rates[name])
        typer.echo(f"{name:>13}: median {value:8.1f} samples/s  ({runs})")
    typer.echo(f"ratio instrumented/plain: {ratio:.3f}")
    if out:
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
