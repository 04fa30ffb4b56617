"""Evaluate stage: score the trained model on the test split beside a simple baseline.

Each evaluation is its own MLflow run, a child of the training run (`mlflow.parentRunId`), with
the `evaluate.<task>` params it used: evaluating one model with several beam sizes or sampling
temperatures gives one row each. The latest results are also copied onto the training run, so
its row in the MLflow UI shows its test metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipeline.core.corpus import RUN_FILE, write_json
from pipeline.core.metric_names import flow_summary_key, mlflow_metrics
from pipeline.core.tracking import PARENT_TAG, attached_run, stage_run
from pipeline.params import Task
from pipeline.tasks import evaluation_task

TRAIN_RUN_TAG = "pipeline.train_run_id"
PIPELINE_ROW = (flow_summary_key("horizon", ""), "perf/train_seconds", "perf/samples_per_second")


def training_run_id(model_dir: Path) -> str:
    """The MLflow run that trained the model in `model_dir`."""
    path = model_dir / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m pipeline train` first")
    return json.loads(path.read_text(encoding="utf-8"))["run_id"]


def run_evaluate(
    task: Task,
    cfg: Any,
    eval_cfg: Any,
    model_dir: Path,
    data_dir: Path,
    raw_dir: Path,
    report_dir: Path,
) -> dict[str, float]:
    """Compute the task's test metrics (and baseline) and write its reports."""
    adapter = evaluation_task(task.value)
    return adapter.evaluate(cfg, eval_cfg, model_dir, data_dir, raw_dir, report_dir)


def evaluate_and_log(
    task: Task,
    cfg: Any,
    eval_cfg: Any,
    paths: tuple[Path, Path, Path, Path],
    metrics_path: Path,
) -> dict[str, float]:
    """Evaluate under a child run of the model's training run; write the metrics JSON."""
    model_dir, data_dir, raw_dir, report_dir = paths
    train_run = training_run_id(model_dir)
    params = {"evaluate": eval_cfg.model_dump(mode="json")}
    with stage_run(task.value, "evaluate", params, parent_run_id=train_run) as run:
        run.set_tags({TRAIN_RUN_TAG: train_run})
        results = run_evaluate(task, cfg, eval_cfg, model_dir, data_dir, raw_dir, report_dir)
        write_json(metrics_path, results)
        run.log_metrics(mlflow_metrics(results))
        run.log_artifact(metrics_path)
        run.log_artifact(report_dir, "evaluation")
    with attached_run(train_run, "evaluate") as trained:
        trained.log_metrics(mlflow_metrics(results))
        trained.set_tags({"pipeline.evaluate.run_id": run.run_id})
    copy_to_pipeline_run(trained.client, train_run, mlflow_metrics(results))
    return results


def copy_to_pipeline_run(client: MlflowClient, train_run: str, scores: dict[str, float]) -> None:
    """Put the headline numbers on the row a user sees first: the pipeline run's.

    Under `dvc repro` the training run is a child of its invocation's parent run, collapsed
    in the UI's runs table; the parent gets the scores, the gradient horizons and the
    training time, so one pipeline run reads as one row.
    """
    trained = client.get_run(train_run)
    parent = trained.data.tags.get(PARENT_TAG)
    if parent is None:
        return
    summary = {k: v for k, v in trained.data.metrics.items() if k.startswith(PIPELINE_ROW)}
    with attached_run(parent, "evaluate", client) as pipeline_run:
        pipeline_run.log_metrics(scores | summary)
