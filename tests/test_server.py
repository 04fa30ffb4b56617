"""The pipeline against a real `mlflow server`: every stage over HTTP, and a restart mid-training.

The local-store tests cannot see what only a server does: artifacts proxied to the server's
own artifact root, metric batches sent over HTTP, and client retries while the server is down.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import mlflow.artifacts
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tests.mlflow_server import MlflowServer, group_alive
from tests.pipeline_runs import (
    CLI_TIMEOUT_S,
    env_for,
    run_cli,
    stage_runs,
    train_cli,
    wait_until,
    write_tiny_params,
)

pytest_plugins = ["tests.conftest_server"]
pytestmark = pytest.mark.slow

EVERY = 5  # TINY_TRAIN's log_every_n_steps


class PipelineOnServer(NamedTuple):
    """A server holding one tiny download -> tokenize -> train -> evaluate, and its workspace."""

    server: MlflowServer
    work: Path

    def runs(self) -> dict[str, Run]:
        """The one run of each stage (fails if a stage logged more or fewer)."""
        grouped = stage_runs(MlflowClient(self.server.uri))
        assert all(len(runs) == 1 for runs in grouped.values()), grouped
        return {stage: runs[0] for stage, runs in grouped.items()}


def run_stages(work: Path, params: Path, env: dict[str, str]) -> None:
    """download -> tokenize -> train -> evaluate, with the arguments dvc.yaml uses."""
    task, common = "classification", ["--params", str(params)]
    run_cli(["download", task, "--out", "raw", *common], work, env)
    tokenize = ["tokenize", task, "--data", "raw", "--out", "tok", "--metrics", "tok.json"]
    run_cli([*tokenize, *common], work, env)
    run_cli(train_cli(Path("tok"), Path("out"), params), work, env)
    evaluate = ["evaluate", task, "--model", "out/model", "--data", "tok", "--raw", "raw"]
    run_cli([*evaluate, "--reports", "reports", "--metrics", "eval.json", *common], work, env)


@pytest.fixture(scope="module")
def pipeline_on_server(
    backend_server: MlflowServer,
    tmp_path_factory: pytest.TempPathFactory,
    default_params: dict[str, Any],
) -> PipelineOnServer:
    """Run the real CLI once per module against a real server (the slow part)."""
    work = tmp_path_factory.mktemp("pipeline")
    params = write_tiny_params(work / "params.yaml", default_params)
    run_stages(work, params, env_for(backend_server))
    return PipelineOnServer(backend_server, work)


def expected_steps(steps: int, every: int = EVERY) -> list[int]:
    """The steps MlflowMetrics logs gradient norms at: the first and every `every`-th."""
    return sorted({1, *range(every, steps + 1, every)})


def fetch(uri: str, run: Run, path: str, dst: Path) -> Path:
    """Download a run's artifact through the server's artifact proxy."""
    dst.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=path, dst_path=str(dst), tracking_uri=uri
    )
    return Path(local)


def test_every_stage_logs_one_finished_run_with_its_params(
    pipeline_on_server: PipelineOnServer,
) -> None:
    runs = pipeline_on_server.runs()
    assert sorted(runs) == ["download", "evaluate", "tokenize", "train"]
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    evaluation = runs["evaluate"].data
    assert evaluation.tags["mlflow.parentRunId"] == runs["train"].info.run_id  # nested in the UI
    assert "evaluate.baseline_c" in evaluation.params
    assert 0.0 <= evaluation.metrics["test/accuracy"] <= 1.0
    assert runs["download"].data.params["max_examples"] == "600"
    assert runs["tokenize"].data.params["vocab_size"] == "400"
    train = runs["train"].data
    assert train.params["units"] == "8" and train.params["log_every_n_steps"] == str(EVERY)
    assert train.tags["pipeline.evaluate.status"] == "FINISHED"
    assert 0.0 <= train.metrics["test/accuracy"] <= 1.0


def test_gradient_norms_arrive_for_every_logged_step(pipeline_on_server: PipelineOnServer) -> None:
    train = pipeline_on_server.runs()["train"]
    client = MlflowClient(pipeline_on_server.server.uri)
    steps = int(json.loads((pipeline_on_server.work / "out" / "train.json").read_text())["steps"])
    history = client.get_metric_history(train.info.run_id, "grad_norm/global")
    assert sorted(m.step for m in history) == expected_steps(steps)


def test_artifacts_round_trip_through_the_server(
    pipeline_on_server: PipelineOnServer, tmp_path: Path
) -> None:
    """Files come back byte for byte, and they are stored in the server's artifact root."""
    runs, work = pipeline_on_server.runs(), pipeline_on_server.work
    uri = pipeline_on_server.server.uri
    model = fetch(uri, runs["train"], "model", tmp_path)
    for name in ("model.keras", "spm.model"):
        assert (model / name).read_bytes() == (work / "out" / "model" / name).read_bytes()
    flow = {p.name for p in fetch(uri, runs["train"], "grad_flow", tmp_path).iterdir()}
    assert {"epoch_001.json", "epoch_002.json", "grad_flow.png"} <= flow
    predictions = fetch(uri, runs["evaluate"], "evaluation", tmp_path) / "predictions.csv"
    assert predictions.read_text() == (work / "reports" / "predictions.csv").read_text()
    assert fetch(uri, runs["download"], "manifest.json", tmp_path / "download").is_file()
    assert (fetch(uri, runs["tokenize"], "tokenizer", tmp_path / "tok") / "spm.model").is_file()
    stored = pipeline_on_server.server.root / "artifacts"
    assert any(stored.rglob("model.keras")), "artifacts did not go through the server's proxy"


def start_training(tok: Path, work: Path, params: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start `pipeline train` in the background, its output in `work/train.log`."""
    with (work / "train.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", *train_cli(tok, work, params)],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def logged_steps(client: MlflowClient, training: subprocess.Popen | None = None) -> list[int]:
    """Steps of `grad_norm/global` logged so far by the (only) training run."""
    assert training is None or training.poll() is None, "training exited before its first epoch"
    runs = stage_runs(client).get("train", [])
    if not runs:
        return []
    return [m.step for m in client.get_metric_history(runs[0].info.run_id, "grad_norm/global")]


def test_training_survives_a_server_restart(
    mlflow_server: MlflowServer, tiny_data, default_params: dict[str, Any], tmp_path: Path
) -> None:
    """Restart the server after the first epoch's flush; later steps arrive exactly once."""
    _, tok = tiny_data("classification")
    long = {"train.classification.epochs": 3, "train.classification.batch_size": 4}
    params = write_tiny_params(tmp_path / "params.yaml", default_params, long)
    training = start_training(tok, tmp_path, params, env_for(mlflow_server))
    try:
        client = MlflowClient(mlflow_server.uri)
        before = wait_until("the first epoch", lambda: logged_steps(client, training), 180)
        first_server = mlflow_server.process
        mlflow_server.restart()
        assert not group_alive(first_server.pid), "the first server left processes behind"
        assert training.wait(timeout=CLI_TIMEOUT_S) == 0, (tmp_path / "train.log").read_text()
    finally:
        training.kill()
    log = (tmp_path / "train.log").read_text()
    steps = int(json.loads((tmp_path / "train.json").read_text())["steps"])
    after = logged_steps(client)
    assert max(before) < steps, "the restart came after training had logged everything"
    assert len(after) == len(set(after)), f"duplicate steps: {sorted(after)}"
    assert sorted(after) == expected_steps(steps)
    assert "Retrying" in log, "no request met the stopped server: the restart tested nothing"
    assert stage_runs(client)["train"][0].info.status == "FINISHED"


def test_a_server_that_stays_down_fails_training_within_the_bound(
    mlflow_server: MlflowServer, tiny_data, default_params: dict[str, Any], tmp_path: Path
) -> None:
    """Server killed mid-training and not restarted: training exits non-zero within the
    bounded retries; when the server is back, the next training marks the orphan KILLED."""
    import time

    _, tok = tiny_data("classification")
    long = {"train.classification.epochs": 3, "train.classification.batch_size": 4}
    params = write_tiny_params(tmp_path / "params.yaml", default_params, long)
    env = env_for(mlflow_server) | {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    training = start_training(tok, tmp_path, params, env)
    client = MlflowClient(mlflow_server.uri)
    try:
        wait_until("the first epoch", lambda: logged_steps(client, training), 180)
        mlflow_server.stop()
        stopped = time.monotonic()
        assert training.wait(timeout=120) != 0, (tmp_path / "train.log").read_text()
        assert time.monotonic() - stopped < 90
    finally:
        training.kill()
    assert not (tmp_path / "model" / "model.keras").exists()
    mlflow_server.start()
    (orphan,) = stage_runs(client)["train"]
    assert orphan.info.status == "RUNNING"  # the dead process could not say otherwise
    # Any training of the task reaps the orphan when it opens its run: the tiny default will do.
    short = write_tiny_params(tmp_path / "short.yaml", default_params)
    again = subprocess.run(
        [sys.executable, "-m", "pipeline", *train_cli(tok, tmp_path / "again", short)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
