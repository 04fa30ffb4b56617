"""The shared trainer on the classification task, end to end on tiny real data."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from typer.testing import CliRunner

from pipeline.cli import app

pytestmark = pytest.mark.slow

TINY_TRAIN = {
    "train.classification.units": 8,
    "train.classification.embedding_dim": 8,
    "train.classification.max_len": 48,
    "train.classification.batch_size": 16,
    "train.classification.epochs": 2,
    "train.classification.log_every_n_steps": 5,
    "train.classification.probe_batch_size": 8,
    "train.classification.early_stopping_patience": None,
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


@pytest.fixture
def trained(tiny_data, write_params, mlflow_uri, tmp_path):
    """Train once on tiny real data through the CLI; returns (run, out_dir, raw, tok)."""
    raw, tok = tiny_data("classification")
    params = write_params(TINY_TRAIN)
    result = CliRunner().invoke(app, train_args(tok, params, tmp_path))
    assert result.exit_code == 0, result.output
    return only_run(MlflowClient(mlflow_uri)), tmp_path, raw, tok, params


def test_training_logs_curves_and_learns(trained, mlflow_uri) -> None:
    run, out, *_ = trained
    client = MlflowClient(mlflow_uri)
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.stage"] == "train"
    first = client.get_metric_history(run.info.run_id, "train/loss")
    epochs = client.get_metric_history(run.info.run_id, "loss")
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


def test_gradient_flow_is_logged(trained, mlflow_uri) -> None:
    run, out, *_ = trained
    client = MlflowClient(mlflow_uri)
    flow = client.get_metric_history(run.info.run_id, "grad_flow/rnn_1")
    assert sorted(m.step for m in flow) == list(range(48))  # one value per timestep
    horizon = run.data.metrics["grad_horizon/rnn_1"]
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


def test_evaluate_matches_scikit_learn_on_saved_predictions(trained, mlflow_uri) -> None:
    run, out, raw, tok, params = trained
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
    assert 0.5 < metrics["baseline.accuracy"] <= 1.0  # TF-IDF + LR learns something
    logged = MlflowClient(mlflow_uri).get_run(run.info.run_id).data.metrics
    assert logged["test.accuracy"] == pytest.approx(metrics["test.accuracy"])
    assert logged["baseline.accuracy"] == pytest.approx(metrics["baseline.accuracy"])
    assert (out / "reports" / "confusion_matrix.png").stat().st_size > 1000
    predicted = CliRunner().invoke(
        app,
        [
            "predict",
            "classification",
            "great film",
            "",
            "--model",
            str(out / "model"),
            "--params",
            str(params),
        ],
    )
    assert predicted.exit_code == 0, predicted.output
    lines = predicted.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in {"positive", "negative"}
    uri = f"runs:/{run.info.run_id}/model"
    from_mlflow = CliRunner().invoke(
        app,
        ["predict", "classification", "great film", "--model-uri", uri, "--params", str(params)],
    )
    assert from_mlflow.exit_code == 0, from_mlflow.output
    assert from_mlflow.stdout.strip().splitlines()[-1] == lines[0]  # progress bar: stderr


def test_nan_loss_fails_the_run_and_writes_no_model(
    tiny_data, write_params, mlflow_uri, tmp_path
) -> None:
    _, tok = tiny_data("classification")
    params = write_params(
        {
            **TINY_TRAIN,
            "train.classification.optimizer": "adam",
            "train.classification.learning_rate": 1e38,
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
        {**TINY_TRAIN, "train.classification.epochs": 3, "train.classification.batch_size": 4}
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
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3]
    assert not (tmp_path / "ckpt" / "classification").exists()
