"""benchmarks/step_gaps.py finds pauses between logged steps in a real (sqlite) MLflow store."""

from __future__ import annotations

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from benchmarks.step_gaps import STEP_METRIC, gaps, latest_train_run
from pipeline.core.gradients import GLOBAL


def test_a_pause_between_steps_is_found_with_its_extra_seconds(mlflow_uri: str) -> None:
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("classification")
    run = client.create_run(experiment, tags={"pipeline.stage": "train"})
    start = run.info.start_time
    # Steps 0, 10, ..., 100 at one second per 10 steps, with 20 s lost after step 50; the
    # machine sat idle then (CPU sampled once, just after it).
    times = {step: start + 100 * step + (20_000 if step > 50 else 0) for step in range(0, 101, 10)}
    assert STEP_METRIC == GLOBAL  # the metric the trainer logs every `log_every_n_steps`
    points = [Metric(GLOBAL, 1.0, t, s) for s, t in times.items()]
    points.append(Metric("system/cpu_utilization_percentage", 0.5, times[60] + 1, 0))
    client.log_batch(run.info.run_id, metrics=points)
    client.set_terminated(run.info.run_id, end_time=times[100])

    found = gaps(client, latest_train_run(client, "classification"), factor=3, min_seconds=5)

    assert found["median_ms_per_step"] == 100
    (pause,) = found["gaps"]
    assert pause["after_step"] == 50
    assert pause["extra_seconds"] == 20
    assert pause["cpu_percent_next_sample"] == 0.5
    assert found["run_seconds"] == 30
    # A slower interval that is short in absolute terms (an epoch's validation) is no pause.
    assert gaps(client, client.get_run(run.info.run_id), factor=3, min_seconds=25)["gaps"] == []


def test_a_task_without_a_training_run_is_skipped(mlflow_uri: str) -> None:
    client = MlflowClient(mlflow_uri)
    assert latest_train_run(client, "speech") is None
    client.create_run(client.create_experiment("speech"), tags={"pipeline.stage": "evaluate"})
    assert latest_train_run(client, "speech") is None
