"""Run the real CLI in subprocesses against a tracking server and read its runs back.

Helpers only (fixtures live in `tests/conftest_server.py`), imported by the server, UI and
serving tests.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tests.conftest import TINY_DATA, set_key
from tests.mlflow_server import MlflowServer
from tests.test_train import TINY_TRAIN, train_args

CLI_TIMEOUT_S = 300
# Retry sooner than MLflow's default (factor 2: waits 0, 4, 8, 16, 32 ... s) so a client that
# meets a restarting server (~7-12 s down) is back soon after it; 7 retries still span ~2 min.
RETRY_ENV = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def tiny_overrides(task: str = "classification") -> dict[str, Any]:
    """Dotted overrides that keep download, tokenize and train of a task tiny."""
    download_caps, tokenize_caps = TINY_DATA[task]
    return {
        **{f"download.{task}.{k}": v for k, v in download_caps.items()},
        **{f"tokenize.{task}.{k}": v for k, v in tokenize_caps.items()},
        **TINY_TRAIN,
    }


def write_tiny_params(
    path: Path, defaults: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    """Write the repository's params with the tiny overrides (and `extra`) applied."""
    tree = copy.deepcopy(defaults)
    for key, value in {**tiny_overrides(), **(extra or {})}.items():
        set_key(tree, key, value)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def env_for(server: MlflowServer) -> dict[str, str]:
    """The environment of a pipeline process that logs to `server`."""
    return {
        **os.environ,
        **RETRY_ENV,
        "MLFLOW_TRACKING_URI": server.uri,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline ARGS` as DVC would; fail the test with its stderr if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert done.returncode == 0, f"pipeline {' '.join(args)}:\n{done.stderr[-4000:]}"
    return done


def train_cli(tok: Path, out: Path, params: Path) -> list[str]:
    """`train classification` arguments writing everything under `out` (like dvc.yaml)."""
    return train_args(tok, params, out)


def train_on(server: MlflowServer, tok: Path, out: Path, params: Path) -> Run:
    """Train through the CLI logging to `server`; return the finished training run."""
    run_cli(train_cli(tok, out, params), out, env_for(server))
    (run,) = stage_runs(MlflowClient(server.uri))["train"]
    return run


def stage_runs(client: MlflowClient, task: str = "classification") -> dict[str, list[Run]]:
    """The task's runs grouped by their `pipeline.stage` tag."""
    experiment = client.get_experiment_by_name(task)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.data.tags.get("pipeline.stage", "?"), []).append(run)
    return grouped


def wait_until(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.3) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
