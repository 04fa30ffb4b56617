"""`python -m pipeline ui-links`: the UI's runs page of each task, as `make mlflow-ui` prints."""

from __future__ import annotations

import mlflow
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.server import runs_page


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
