"""MLflow tracking: one run per stage, tags, batched metrics, FAILED on error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.core.tracking import (
    INVOCATION_STAGE,
    PARENT_TAG,
    _experiment_id,
    attached_run,
    flatten,
    git_state,
    make_client,
    project_root,
    stage_run,
    system_metrics,
)
from tests.conftest import ROOT


def test_flatten_makes_dotted_keys() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": None}) == {
        "a.b": 1,
        "a.c.d": "x",
        "e": None,
    }


def test_successful_stage_is_finished_with_tags_params_metrics(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "sunny-lark")
    manifest = {
        "source": {"kind": "debian", "package": "trans-de-en", "version": "1.9-6", "sha256": "45f6"}
    }
    with stage_run("translation", "download", {"split": {"seed": 3}, "max": 5}, manifest) as run:
        for step in range(2500):  # more than one log_batch can carry
            run.log_metrics({"grad_norm/global": step / 10}, step=step)
    client = MlflowClient(mlflow_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"split.seed": "3", "max": "5"}
    tags = got.data.tags
    assert tags["pipeline.stage"] == "download" and tags["pipeline.task"] == "translation"
    assert tags["dvc.exp_name"] == "sunny-lark"
    assert tags["data.source"] == "debian:trans-de-en" and tags["data.version"] == "1.9-6"
    history = client.get_metric_history(run.run_id, "grad_norm/global")
    assert sorted(m.step for m in history) == list(range(2500))
    assert client.get_experiment(got.info.experiment_id).name == "translation"


def test_failing_stage_is_marked_failed(mlflow_uri: str) -> None:
    with pytest.raises(ValueError), stage_run("classification", "train", {}) as run:
        run.log_metrics({"loss": 1.0})
        raise ValueError("boom")
    got = MlflowClient(mlflow_uri).get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.metrics["loss"] == 1.0  # buffered metrics are flushed, not lost


def test_attached_run_adds_metrics_without_retagging(mlflow_uri: str) -> None:
    with stage_run("classification", "train", {}) as run:
        pass
    with attached_run(run.run_id, "evaluate") as again:
        again.log_metrics({"test.accuracy": 0.9})
    got = MlflowClient(mlflow_uri).get_run(run.run_id)
    assert got.data.tags["pipeline.stage"] == "train"
    assert got.data.tags["pipeline.evaluate.status"] == "FINISHED"
    assert got.data.metrics["test.accuracy"] == 0.9 and got.info.status == "FINISHED"


def test_git_state_reports_commit_and_dirty(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {}
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "PATH": "/usr/bin:/bin",
    }
    dvc_owned = ["dvc.lock", "metrics/m.json", "plots/p.json", "models/.gitignore"]
    for name in ["f", *dvc_owned]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("1")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, env=env)
    state = git_state(tmp_path)
    assert len(state["mlflow.source.git.commit"]) == 40 and state["pipeline.git_dirty"] == "false"
    for name in dvc_owned:  # what `dvc repro` rewrites mid-pipeline is not the user's change
        (tmp_path / name).write_text("2")
    assert git_state(tmp_path)["pipeline.git_dirty"] == "false"
    (tmp_path / "f").write_text("2")
    assert git_state(tmp_path)["pipeline.git_dirty"] == "true"


def test_local_store_lives_in_the_project_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    inside_exp = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    inside_exp.mkdir(parents=True)
    assert project_root(inside_exp) == tmp_path.resolve()
    client = make_client(inside_exp)
    assert client.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.chdir(inside_exp)
    with stage_run("classification", "train", {}, client=client) as run:
        run.log_artifact(_write(inside_exp / "note.txt"))
    location = client.get_experiment(run.experiment_id).artifact_location
    assert location == (tmp_path.resolve() / "mlruns" / "classification").as_uri()
    assert (tmp_path / "mlruns" / "classification").is_dir()


SYSTEM_CPU = "system/cpu_utilization_percentage"


def _write(path: Path) -> Path:
    path.write_text("x")
    return path


def test_each_flush_logs_its_latency_with_the_next(mlflow_uri: str) -> None:
    with stage_run("classification", "train", {}) as run:
        run.flush()  # nothing buffered: no request, no latency point
        assert run.flushes == 0
        run.log_metrics({"loss": 1.0}, step=1)
        run.flush()
        run.log_metrics({"loss": 0.5}, step=2)
        run.flush()
    history = MlflowClient(mlflow_uri).get_metric_history(run.run_id, "perf/flush_ms")
    assert sorted(m.step for m in history) == [1, 2]  # the closing flush adds the second
    assert all(0 < m.value < 60_000 for m in history)


def test_system_metrics_sample_cpu_and_memory_while_the_body_runs(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    with stage_run("classification", "train", {}) as run:
        with system_metrics(run):
            time.sleep(1.5)
        stopped = len(MlflowClient(mlflow_uri).get_metric_history(run.run_id, SYSTEM_CPU))
        time.sleep(0.5)
    client = MlflowClient(mlflow_uri)
    cpu = client.get_metric_history(run.run_id, SYSTEM_CPU)
    assert len(cpu) >= 3 and all(0 <= m.value <= 100 for m in cpu)
    assert sorted(m.step for m in cpu) == list(range(len(cpu)))
    assert len(cpu) == stopped  # no sample after the block
    metrics = client.get_run(run.run_id).data.metrics
    assert metrics["system/system_memory_usage_megabytes"] > 0
    assert not [k for k in metrics if k.startswith(("system/disk", "system/network"))]


# Stands in for `dvc`: runs each argument as a shell command, like DVC runs its stages.
FAKE_DVC = """#!{python}
import subprocess, sys
sys.exit(max(subprocess.call(command, shell=True) for command in sys.argv[1:]))
"""
STAGE = """
import sys
from pipeline.core.tracking import stage_run
with stage_run("classification", sys.argv[1], {{}}):
    if sys.argv[1] == "train":
        raise SystemExit("diverged")
"""


@pytest.mark.slow  # four stage processes, each importing MLflow (~19 s)
def test_stages_of_one_dvc_invocation_are_children_of_one_parent(
    mlflow_uri: str, tmp_path: Path
) -> None:
    dvc = tmp_path / "bin" / "dvc"
    dvc.parent.mkdir()
    dvc.write_text(FAKE_DVC.format(python=sys.executable))
    dvc.chmod(0o755)
    (tmp_path / "stage.py").write_text(STAGE.format())
    env = {**os.environ, "DVC_STAGE": "x", "PYTHONPATH": str(ROOT)}
    stage = f"{sys.executable} stage.py"
    first = subprocess.run([dvc, f"{stage} download", f"{stage} tokenize"], env=env, check=True)
    assert first.returncode == 0
    failed = subprocess.run([dvc, f"{stage} train", f"{stage} download"], env=env)
    assert failed.returncode == 1
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("classification").experiment_id])
    parents = [r for r in runs if r.data.tags["pipeline.stage"] == INVOCATION_STAGE]
    assert len(parents) == 2 and {p.info.run_name for p in parents} == {"repro"}
    children = {
        p.info.status: sorted(
            (r.data.tags["pipeline.stage"], r.info.status)
            for r in runs
            if r.data.tags.get(PARENT_TAG) == p.info.run_id
        )
        for p in parents
    }
    assert children == {
        "FINISHED": [("download", "FINISHED"), ("tokenize", "FINISHED")],
        "FAILED": [("download", "FINISHED"), ("train", "FAILED")],  # a failure sticks
    }


def test_a_stage_outside_dvc_has_no_parent(mlflow_uri: str, monkeypatch) -> None:
    monkeypatch.setenv("DVC_STAGE", "x")  # set by hand: no dvc process runs this test
    with stage_run("classification", "download", {}) as run:
        pass
    client = MlflowClient(mlflow_uri)
    assert PARENT_TAG not in client.get_run(run.run_id).data.tags
    assert len(client.search_runs([run.experiment_id])) == 1


class LateClient(MlflowClient):
    """A client that, like a stage racing another, looks the experiment up before it exists."""

    def __init__(self, uri: str):
        super().__init__(uri)
        self.lookups = 0

    def get_experiment_by_name(self, name):
        self.lookups += 1
        return None if self.lookups == 1 else super().get_experiment_by_name(name)


def test_a_stage_that_loses_the_experiment_creation_race_joins_the_winner(mlflow_uri) -> None:
    winner = MlflowClient(mlflow_uri).create_experiment("speech")
    late = LateClient(mlflow_uri)  # saw no experiment; the other stage then created it
    assert _experiment_id(late, "speech") == winner and late.lookups == 2
