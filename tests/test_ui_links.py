"""`python -m pipeline ui-links`: the UI's runs page of each task, as `make mlflow-ui` prints."""

from __future__ import annotations

import json

import mlflow
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.server import runs_page
from pipeline.ui_views import headline_columns


def test_each_experiment_with_runs_gets_its_runs_page(mlflow_uri: str) -> None:
    empty = CliRunner().invoke(app, ["ui-links"])
    assert empty.exit_code == 0 and "no runs yet: http://127.0.0.1:5000" in empty.output
    mlflow.create_experiment("speech")  # no runs: no link
    mlflow.set_experiment("classification")
    with mlflow.start_run(run_name="train-classification"):
        pass
    classification = mlflow.get_experiment_by_name("classification").experiment_id
    result = CliRunner().invoke(app, ["ui-links", "--base-url", "http://host:5001/"])
    assert result.exit_code == 0, result.output
    url = f"http://host:5001/#/experiments/{classification}/runs?workflowType=machine_learning"
    assert result.output.splitlines() == [f"classification: {url}"]
    assert runs_page("http://host:5001", classification) == url


def test_experiments_with_a_training_run_get_a_headline_view(mlflow_uri: str) -> None:
    mlflow.set_experiment("translation")
    with mlflow.start_run(run_name="train-translation", tags={"pipeline.stage": "train"}):
        mlflow.log_metrics({"grad_flow/horizon/encoder_1": 3, "grad_flow/horizon/decoder_1": 2})
    experiment = mlflow.get_experiment_by_name("translation")
    result = CliRunner().invoke(app, ["ui-links", "--base-url", "http://host:5001"])
    assert result.exit_code == 0, result.output
    page = runs_page("http://host:5001", experiment.experiment_id)
    assert result.output.splitlines() == [f"translation: {page}&viewStateShareKey=headline"]
    tags = MlflowClient(mlflow_uri).get_experiment(experiment.experiment_id).tags
    envelope = json.loads(tags["mlflow.sharedViewState.headline"])
    assert envelope["name"] == "Headline metrics" and isinstance(envelope["createdAt"], int)
    columns = json.loads(envelope["state"])["selectedColumns"]
    assert columns == [
        "attributes.`Models`",
        *(f"metrics.`{k}`" for k in ("test/bleu_greedy", "test/bleu_beam", "baseline/bleu")),
        "metrics.`test/chrf_greedy`",
        "metrics.`grad_flow/horizon/decoder_1`",
        "metrics.`grad_flow/horizon/encoder_1`",
        "metrics.`perf/train_seconds`",
        "metrics.`perf/samples_per_second`",
    ]
    assert headline_columns("speech", ["grad_flow/horizon/rnn_1", "grad_flow/rnn_1"])[1:3] == [
        "metrics.`test/accuracy`",
        "metrics.`baseline/accuracy`",
    ]
