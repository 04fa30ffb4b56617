"""The shared trainer on the classification task, end to end on tiny real data."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import new_store, set_key

pytestmark = pytest.mark.slow

REGISTERED = "models:/rnn-classification/latest"

TINY_TRAIN = {
    "train.classification.units": 8,
    "train.classification.embedding_dim": 8,
    "train.classification.max_len": 48,
    "train.classification.batch_size": 16,
    "train.classification.epochs": 2,
    "train.classification.log_every_n_steps": 5,
    "train.classification.probe_batch_size": 8,
    "train.classification.early_stopping_patience": None,
    # 2 epochs of 480 reviews: regularisation and a decaying rate would only hide the learning.
    "train.classification.dropout": 0.0,
    "train.classification.embedding_dropout": 0.0,
    "train.classification.word_dropout": 0.0,
    "train.classification.lr_schedule": "constant",
}


def train_args(tok: Path, params: Path, out: Path) -> list[str]:
    return [
        "train",
        "classification",
        "--data",
        str(tok),
        "--out",
        str(out / "model"),
        "--plots",
        str(out / "plots"),
        "--metrics",
        str(out / "train.json"),
        "--checkpoints",
        str(out / "ckpt"),
        "--params",
        str(params),
    ]


def only_run(client: MlflowClient, task: str = "classification"):
    (run,) = client.search_runs([client.get_experiment_by_name(task).experiment_id])
    return run


class Trained(NamedTuple):
    """One tiny training through the CLI, shared by the tests that only read what it wrote."""

    run: Run
    out: Path
    raw: Path
    tok: Path
    params: Path
    uri: str


@pytest.fixture(scope="module")
def trained(tiny_data, default_params, tmp_path_factory) -> Trained:
    """Train once per module on tiny real data through the CLI, in a store of its own."""
    out = tmp_path_factory.mktemp("trained")
    uri = new_store(out / "mlflow.db", out)
    raw, tok = tiny_data("classification")
    tree = copy.deepcopy(default_params)
    for key, value in TINY_TRAIN.items():
        set_key(tree, key, value)
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(tree, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # a tiny run is short
        patch.chdir(out)
        result = CliRunner().invoke(app, train_args(tok, params, out))
    assert result.exit_code == 0, result.output
    return Trained(only_run(MlflowClient(uri)), out, raw, tok, params, uri)


@pytest.fixture
def in_trained_store(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> Trained:
    """The shared training, with MLflow (and the working directory) pointed at its store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    monkeypatch.chdir(trained.out)
    return trained


def test_training_logs_curves_and_learns(trained: Trained) -> None:
    run, out = trained.run, trained.out
    client = MlflowClient(trained.uri)
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.stage"] == "train"
    assert run.data.tags["pipeline.precision"] == "float32"  # the classifier's default
    first = client.get_metric_history(run.info.run_id, "train/batch_loss")
    epochs = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in epochs] == [1, 2]
    assert min(m.step for m in first) == 1
    # The model learned: last epoch's mean loss is below the very first batch's loss.
    assert epochs[-1].value < next(m.value for m in first if m.step == 1)
    steps = int(json.loads((out / "train.json").read_text())["steps"])
    expected = [1, *range(5, steps + 1, 5)]
    for key in ("grad_norm/global", "grad_norm/rnn_1", "grad_norm/embedding", "grad_norm/head"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == expected, key
        assert all(np.isfinite(m.value) and m.value > 0 for m in history)
    assert client.get_metric_history(run.info.run_id, "grad_norm/global_clipped")
    cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert cpu and all(0 <= m.value <= 100 for m in cpu)
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0


def test_gradient_flow_is_logged(trained: Trained) -> None:
    run, out = trained.run, trained.out
    client = MlflowClient(trained.uri)
    flow = client.get_metric_history(run.info.run_id, "grad_flow/rnn_1")
    assert sorted(m.step for m in flow) == list(range(48))  # one value per timestep
    horizon = run.data.metrics["grad_flow/horizon/rnn_1"]
    assert 1 <= horizon <= 48
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "grad_flow")}
    assert {
        "grad_flow/epoch_001.json",
        "grad_flow/epoch_002.json",
        "grad_flow/grad_flow.png",
    } <= artifacts
    curve = json.loads((out / "plots" / "epochs" / "grad_flow" / "epoch_002.json").read_text())
    assert len(curve["rnn_1"]) == 48
    rows = json.loads((out / "plots" / "grad_flow.json").read_text())
    assert rows[-1]["rnn_1"] == pytest.approx(curve["rnn_1"][-1])
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.keras", "model/spm.model"} <= model_files


def test_evaluate_matches_scikit_learn_on_saved_predictions(in_trained_store: Trained) -> None:
    run, out, raw, tok, params, uri = in_trained_store
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "classification",
            "--model",
            str(out / "model"),
            "--data",
            str(tok),
            "--raw",
            str(raw),
            "--reports",
            str(out / "reports"),
            "--metrics",
            str(out / "evaluate.json"),
            "--params",
            str(params),
        ],
    )
    assert result.exit_code == 0, result.output
    with (out / "reports" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["probability"]) for r in rows])
    metrics = json.loads((out / "evaluate.json").read_text())
    assert len(rows) == 60
    assert metrics["test.accuracy"] == pytest.approx(accuracy_score(labels, probs >= 0.5))
    assert metrics["test.f1"] == pytest.approx(f1_score(labels, probs >= 0.5, zero_division=0))
    assert metrics["test.roc_auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-5)
    assert set(metrics) >= {"val.accuracy", "val.roc_auc"}  # whole validation reviews
    assert 0.0 <= metrics["val.accuracy"] <= 1.0 and 0.0 <= metrics["val.roc_auc"] <= 1.0
    assert 0.5 < metrics["baseline.accuracy"] <= 1.0  # TF-IDF + LR learns something
    client = MlflowClient(uri)
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["test/accuracy"] == pytest.approx(metrics["test.accuracy"])
    (evaluation,) = client.search_runs(
        [run.info.experiment_id], filter_string="tags.`pipeline.stage` = 'evaluate'"
    )
    assert evaluation.data.tags["mlflow.parentRunId"] == run.info.run_id  # nested in the UI
    assert logged["baseline/accuracy"] == pytest.approx(metrics["baseline.accuracy"])
    assert (out / "reports" / "confusion_matrix.png").stat().st_size > 1000
    predicted = CliRunner().invoke(
        app,
        [
            "predict",
            "classification",
            "great film",
            "a dull, tired plot",
            "--model",
            str(out / "model"),
            "--params",
            str(params),
        ],
    )
    assert predicted.exit_code == 0, predicted.output
    header, *lines = predicted.output.strip().splitlines()
    assert header == "text\tlabel\tp_label" and len(lines) == 2
    assert lines[0].split("\t")[:2] in (["great film", "positive"], ["great film", "negative"])
    run_id = run.info.run_id  # the model directory, the logged pyfunc model, the registry's
    for uri in (f"runs:/{run_id}/model", f"runs:/{run_id}/pyfunc", REGISTERED):
        from_mlflow = CliRunner().invoke(
            app,
            [
                "predict",
                "classification",
                "great film",
                "--model-uri",
                uri,
                "--params",
                str(params),
            ],
        )
        assert from_mlflow.exit_code == 0, (uri, from_mlflow.output)
        assert from_mlflow.stdout.strip().splitlines()[-1] == lines[0], uri


def test_the_trained_model_is_logged_and_registered(trained: Trained) -> None:
    run = trained.run
    client = MlflowClient(trained.uri)
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert (model.name, model.source_run_id, model.status) == ("pyfunc", run.info.run_id, "READY")
    assert model.params["units"] == "8"  # the training params travel with the model
    assert [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs] == [
        model.model_id
    ]
    version = client.get_model_version("rnn-classification", "1")
    assert (version.source, version.run_id) == (f"models:/{model.model_id}", run.info.run_id)
    assert run.data.tags["pipeline.model_version"] == "rnn-classification/1"
    files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert {"MLmodel", "artifacts", "code"} <= files
    code = {a.path for a in client.list_logged_model_artifacts(model.model_id, "code/pipeline")}
    assert "code/pipeline/compare.py" not in code  # only what the served model imports


@pytest.mark.parametrize(
    ("optimizer", "rate"), [("adam", 1e38), ("sgd", 1e30)], ids=["nan", "absurd"]
)
def test_nan_loss_fails_the_run_and_writes_no_model(
    tiny_data, write_params, mlflow_uri, tmp_path, optimizer: str, rate: float
) -> None:
    """A NaN loss, or a finite but absurd one (SGD at 1e30 once ended with loss 1e30 and a
    model), is divergence: the run fails and no model is written."""
    _, tok = tiny_data("classification")
    params = write_params(
        {
            **TINY_TRAIN,
            "train.classification.optimizer": optimizer,
            "train.classification.learning_rate": rate,
            "train.classification.clip_norm": None,
        }
    )
    result = CliRunner().invoke(app, train_args(tok, params, tmp_path))
    assert result.exit_code == 1
    assert "training diverged" in result.output
    assert not (tmp_path / "model").exists()
    assert only_run(MlflowClient(mlflow_uri)).info.status == "FAILED"


def test_killed_training_resumes_at_the_next_epoch(
    tiny_data, write_params, mlflow_uri, tmp_path
) -> None:
    _, tok = tiny_data("classification")
    params = write_params(
        {**TINY_TRAIN, "train.classification.epochs": 3, "train.classification.batch_size": 8}
    )
    command = [sys.executable, "-m", "pipeline", *train_args(tok, params, tmp_path)]
    meta = tmp_path / "ckpt" / "classification" / "keras" / "training_metadata.json"
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while not meta.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads(meta.read_text())["epoch"] == 1, "kill landed after epoch 2"
    assert not (tmp_path / "model").exists()
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from checkpoint" in resumed.stderr
    client = MlflowClient(mlflow_uri)
    run = only_run(client)  # the same run continued, not a second one
    assert run.info.status == "FINISHED"
    epochs = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in epochs) == [1, 2, 3]
    assert not (tmp_path / "ckpt" / "classification").exists()

    # Indistinguishable from an uninterrupted training of the same params and seed.
    clean = tmp_path / "clean"
    clean.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": new_store(clean / "mlflow.db", clean)}
    uninterrupted = [sys.executable, "-m", "pipeline", *train_args(tok, params, clean)]
    done = subprocess.run(uninterrupted, cwd=clean, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = only_run(MlflowClient(env["MLFLOW_TRACKING_URI"]))
    assert_same_training(
        tmp_path, run, client, clean, reference, MlflowClient(env["MLFLOW_TRACKING_URI"])
    )


def output_shape(out: Path) -> dict[str, object]:
    """What a training wrote, minus the values: epochs, steps, keys and per-epoch files."""
    loss = json.loads((out / "plots" / "loss.json").read_text())
    norms = json.loads((out / "plots" / "grad_norm.json").read_text())
    final = json.loads((out / "train.json").read_text())
    epochs = out / "plots" / "epochs"
    return {
        "epochs": [row["epoch"] for row in loss],
        "loss_keys": sorted({k for row in loss for k in row}),
        "steps": [row["step"] for row in norms],
        "train.json": sorted(final),
        "epochs_run": final["epochs_run"],
        "total_steps": final["steps"],
        "grad_flow": len(json.loads((out / "plots" / "grad_flow.json").read_text())),
        "files": sorted(str(p.relative_to(epochs)) for p in epochs.rglob("*") if p.is_file()),
    }


def metric_shape(client: MlflowClient, run) -> dict[str, list[int]]:
    """Every metric key of a run with the steps it was logged at (duplicates would show);
    `perf/` timings (e.g. one point per flush) and `system/` samples (one per 10 s)
    legitimately differ between two trainings."""
    return {
        key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        for key in client.get_run(run.info.run_id).data.metrics
        if not key.startswith(("perf/", "system/"))
    }


def assert_same_training(out_a: Path, run_a, client_a, out_b: Path, run_b, client_b) -> None:
    """Two trainings wrote the same files and logged the same metrics at the same steps."""
    assert output_shape(out_a) == output_shape(out_b)
    assert metric_shape(client_a, run_a) == metric_shape(client_b, run_b)
    artifacts = [
        sorted(a.path for a in client.list_artifacts(run.info.run_id, "grad_flow"))
        for client, run in ((client_a, run_a), (client_b, run_b))
    ]
    assert artifacts[0] == artifacts[1]


def test_kill_between_the_metrics_flush_and_the_checkpoint_loses_nothing(
    tiny_data, write_params, mlflow_uri, tmp_path, monkeypatch
) -> None:
    """The nastiest moment: MLflow holds epoch 2, its checkpoint does not; the rerun redoes it."""
    from pipeline.core.distribute import make_worker
    from pipeline.core.trainer import Checkpoint, TrainPaths
    from pipeline.params import Task, load_params
    from pipeline.train import train_task

    _, tok = tiny_data("classification")
    # Epoch boundaries are what matter here: 3 epochs of 10 steps.
    short = {"train.classification.epochs": 3, "train.classification.max_steps_per_epoch": 10}
    params = write_params({**TINY_TRAIN, **short})
    cfg = load_params(params).train.section(Task.classification)
    bind = Checkpoint.bind

    def dying_bind(self: Checkpoint, run_id: str):
        backup = bind(self, run_id)
        save = backup.on_epoch_end

        def on_epoch_end(epoch: int, logs=None) -> None:
            if epoch == 1:  # after EpochCommit flushed epoch 2, before its weights are saved
                raise KeyboardInterrupt
            save(epoch, logs)

        backup.on_epoch_end = on_epoch_end
        return backup

    def train(out: Path, uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        paths = TrainPaths(tok, out / "model", out / "plots", out / "train.json", out / "ckpt")
        train_task("classification", cfg, paths, make_worker("none", 60.0), None)

    with monkeypatch.context() as patch:
        patch.setattr(Checkpoint, "bind", dying_bind)
        with pytest.raises(KeyboardInterrupt):
            train(tmp_path, mlflow_uri)
    client = MlflowClient(mlflow_uri)
    killed = only_run(client)
    epochs = client.get_metric_history(killed.info.run_id, "train/loss")
    assert sorted(m.step for m in epochs) == [1, 2]
    train(tmp_path, mlflow_uri)  # resumes after epoch 1
    clean = tmp_path / "clean"
    clean.mkdir()
    train(clean, new_store(clean / "mlflow.db", tmp_path))
    reference_client = MlflowClient(f"sqlite:///{clean / 'mlflow.db'}")
    run = only_run(client)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert_same_training(tmp_path, run, client, clean, only_run(reference_client), reference_client)


def test_ema_momentum_ends_training_on_the_moving_average() -> None:
    """SGD with a constant gradient walks w down by lr a step; training ends on the EMA of w."""
    import keras

    from pipeline.core.trainer import ema_swap, make_optimizer
    from pipeline.params import TrainParams

    def train(ema: float | None, epochs: int = 1) -> float:
        x = keras.Input(shape=(1,))
        model = keras.Model(x, keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(x))
        cfg = TrainParams(optimizer="sgd", learning_rate=0.1, ema_momentum=ema)
        model.compile(optimizer=make_optimizer(cfg), loss=lambda y, p: keras.ops.mean(p))
        # Early stopping restores its best weights after Keras finalizes the average: the
        # averaged weights must be the ones it kept (loss falls every epoch: best = last).
        stop = keras.callbacks.EarlyStopping("loss", patience=5, restore_best_weights=True)
        callbacks = [*ema_swap(cfg), stop]
        data = np.ones((5, 1)), np.zeros((5, 1))
        model.fit(*data, batch_size=1, epochs=epochs, verbose=0, callbacks=callbacks)
        return float(model.get_weights()[0][0, 0])

    raw = [1.0 - 0.1 * step for step in range(1, 11)]  # d(mean(w * 1))/dw = 1 each step
    assert train(None, epochs=2) == pytest.approx(raw[-1], abs=1e-6)
    average = raw[0]
    for value in raw[1:]:
        average = 0.5 * average + 0.5 * value
    assert train(0.5, epochs=2) == pytest.approx(average, abs=1e-6)
