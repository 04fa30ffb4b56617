"""DVC experiment grids: a queued 2-experiment grid, run two at a time, gives two MLflow runs."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.core.tracking import PARENT_TAG
from tests.test_pipeline import make_project, run
from tests.test_train import TINY_TRAIN

pytestmark = pytest.mark.slow


def wait_for_queue(repo: Path, env: dict[str, str], timeout: float = 420) -> str:
    """Poll `dvc queue status` until nothing is queued or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(2)
    raise AssertionError(f"queue still busy after {timeout} s:\n{status}")


def start_workers(repo: Path, env: dict[str, str], log: Path) -> None:
    """`dvc queue start -j 2` with its output in a file: the workers it leaves behind inherit
    the command's stdout and stderr, and pipes would keep a reader waiting until they exit."""
    with log.open("w") as out:
        done = subprocess.run(
            ["dvc", "queue", "start", "-j", "2"], cwd=repo, env=env, stdout=out, stderr=out
        )
    assert done.returncode == 0, log.read_text()[-3000:]


def test_concurrent_queued_grid_gives_one_complete_tagged_run_per_experiment(
    tmp_path: Path,
) -> None:
    repo, env = make_project(tmp_path, {**TINY_TRAIN, "train.classification.epochs": 1})
    run(["dvc", "repro", "tokenize@classification"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "data"], repo, env)
    params_before = (repo / "params.yaml").read_bytes()
    # The README's grid recipe: one command queues one experiment per value.
    run(
        [
            "dvc",
            "exp",
            "run",
            "--queue",
            "train_classification",
            "-S",
            "train.classification.cell=simple_rnn,gru",
        ],
        repo,
        env,
    )
    start_workers(repo, env, tmp_path / "queue.log")  # both at once, one sqlite store
    status = wait_for_queue(repo, env)
    assert status.count("Success") == 2, status
    assert (repo / "params.yaml").read_bytes() == params_before  # no stacked overrides

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("classification")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`pipeline.stage` = 'train'"
    )
    assert sorted(r.data.params["cell"] for r in runs) == ["gru", "simple_rnn"]
    assert all(r.info.status == "FINISHED" for r in runs)
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time  # they really ran concurrently
    steps = [len(client.get_metric_history(r.info.run_id, "grad_norm/global")) for r in runs]
    assert steps[0] == steps[1] > 0  # every logged step of both arrived
    names = {r.data.tags.get("dvc.exp_name") for r in runs}
    assert len(names) == 2 and None not in names
    # Each experiment is one pipeline run: a parent named after it holds its stages.
    parents = [client.get_run(r.data.tags[PARENT_TAG]) for r in runs]
    assert {p.info.run_name for p in parents} == names
    assert all(p.info.status == "FINISHED" for p in parents)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env))
    assert names <= set(_experiment_names(shown))


def _experiment_names(shown: list[dict]) -> list[str]:
    """Experiment names in `dvc exp show --json` output."""
    names = []
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            names.append(experiment.get("name"))
    return names
