"""The real `dvc repro` of download + tokenize for all tasks in a scratch git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.core.tracking import INVOCATION_STAGE, PARENT_TAG
from tests.conftest import ROOT, TINY_DATA, new_store, set_key

pytestmark = pytest.mark.slow
TASKS = ("classification", "language_model", "translation")


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def make_project(tmp_path: Path, overrides: dict[str, object] | None = None):
    """A git repo holding the pipeline, its dvc.yaml and tiny params (plus overrides)."""
    repo = tmp_path / "repo"
    shutil.copytree(
        ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for task, (download, tokenize) in TINY_DATA.items():
        for key, value in download.items():
            set_key(params, f"download.{task}.{key}", value)
        for key, value in tokenize.items():
            set_key(params, f"tokenize.{task}.{key}", value)
    for key, value in (overrides or {}).items():
        set_key(params, key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": new_store(tmp_path / "mlflow.db", repo),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    env.pop("DVC_EXP_NAME", None)
    for args in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "init"],
    ):
        run(args, repo, env)
    return repo, env


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The pipeline in a scratch git repo with tiny data params."""
    return make_project(tmp_path)


def stage_runs(client: MlflowClient) -> list[tuple[str, str]]:
    """(stage, task) of every stage run (the invocations' parent runs left out)."""
    runs = []
    for task in TASKS:
        experiment = client.get_experiment_by_name(task)
        for r in client.search_runs([experiment.experiment_id]) if experiment else []:
            assert r.info.status == "FINISHED"
            if r.data.tags["pipeline.stage"] != INVOCATION_STAGE:
                runs.append((r.data.tags["pipeline.stage"], task))
    return sorted(runs)


def invocations(client: MlflowClient, task: str) -> dict[str, list[str]]:
    """Each `dvc repro` parent run of a task (by name and start) -> its children's stages."""
    runs = client.search_runs(
        [client.get_experiment_by_name(task).experiment_id], order_by=["attributes.start_time"]
    )
    return {
        f"{p.info.run_name}#{i}": sorted(
            r.data.tags["pipeline.stage"]
            for r in runs
            if r.data.tags.get(PARENT_TAG) == p.info.run_id
        )
        for i, p in enumerate(r for r in runs if r.data.tags["pipeline.stage"] == INVOCATION_STAGE)
    }


def test_repro_download_and_tokenize_all_tasks(project) -> None:
    repo, env = project
    run(["dvc", "repro", "download", "tokenize"], repo, env)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert stage_runs(client) == sorted(
        (stage, task) for stage in ("download", "tokenize") for task in TASKS
    )
    for task in TASKS:
        assert (repo / "data" / "tokenized" / task / "train.npz").is_file()
        assert (repo / "metrics" / task / "tokenize.json").is_file()
        (run_,) = client.search_runs(
            [client.get_experiment_by_name(task).experiment_id],
            filter_string="tags.`pipeline.stage` = 'tokenize'",
        )
        tags = run_.data.tags
        assert len(tags["mlflow.source.git.commit"]) == 40
        assert tags["data.sha256"] and tags["data.version"] and tags["data.source"]

    # One `dvc repro`: in each task's experiment, one parent run named after the commit.
    commit = run(["git", "rev-parse", "--short=7", "HEAD"], repo, env).strip()
    for task in TASKS:
        assert invocations(client, task) == {f"repro-{commit}#0": ["download", "tokenize"]}

    # A second repro is a no-op: nothing reruns, no new MLflow runs.
    again = run(["dvc", "repro", "download", "tokenize"], repo, env)
    assert "didn't change, skipping" in again or "up to date" in again
    assert len(stage_runs(client)) == 6

    # One param of one task reruns only that task's tokenize stage.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tokenize"]["translation"]["vocab_size"] = 180
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro", "download", "tokenize"], repo, env)
    assert "Running stage 'tokenize@translation'" in changed
    assert changed.count("Running stage") == 1
    assert stage_runs(client).count(("tokenize", "translation")) == 2
    assert invocations(client, "translation") == {
        f"repro-{commit}#0": ["download", "tokenize"],
        f"repro-{commit}#1": ["tokenize"],  # the second pipeline run, as its own row
    }


TINY_TRANSLATION = {
    "train.translation.units": 8,
    "train.translation.embedding_dim": 8,
    "train.translation.max_len": 16,
    "train.translation.epochs": 1,
    "train.translation.max_steps_per_epoch": 5,
    "train.translation.log_every_n_steps": 2,
    "train.translation.probe_batch_size": 4,
    "train.translation.report_examples": 2,
    # Explicit, not `auto`: the bfloat16 path (reports, greedy and beam decoding) runs on any CPU.
    "train.translation.precision": "mixed_bfloat16",
    "evaluate.translation.beam_size": 2,
    "evaluate.translation.decode_max_len": 10,
    # The cheapest model and reports, whatever the defaults: what reruns is the point here.
    "train.translation.attention": "luong",
    "train.translation.bidirectional": False,
    "train.translation.lexical_attention": False,
    "train.translation.lexicon_bias": False,
    "train.translation.tie_embeddings": False,
    "train.translation.ema_momentum": None,
    "train.translation.word_dropout": 0.0,
    "train.translation.label_smoothing": 0.0,
    "train.translation.early_stopping_patience": None,
    "train.translation.report_attention_maps": 0,
    "evaluate.translation.examples": 5,
    "evaluate.translation.attention_maps": 1,
}


def set_params(repo: Path, overrides: dict[str, object]) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in overrides.items():
        set_key(params, key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if "Running stage '" in line]


def test_evaluate_params_rerun_evaluation_only_and_train_params_both(tmp_path: Path) -> None:
    """Real repro on tiny data: a beam size costs an evaluation, a train key a retraining."""
    repo, env = make_project(tmp_path, TINY_TRANSLATION)
    first = run(["dvc", "repro", "evaluate_translation"], repo, env)
    assert ran(first)[-2:] == ["train_translation", "evaluate_translation"]

    set_params(repo, {"evaluate.translation.beam_size": 3})
    assert ran(run(["dvc", "repro", "evaluate_translation"], repo, env)) == ["evaluate_translation"]

    set_params(repo, {"train.translation.units": 10})
    again = ran(run(["dvc", "repro", "evaluate_translation"], repo, env))
    assert again == ["train_translation", "evaluate_translation"]

    # Each evaluation is a child run of its training run, with the params it used.
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("translation").experiment_id
    evaluations = client.search_runs(
        [experiment], filter_string="tags.`pipeline.stage` = 'evaluate'", order_by=["start_time"]
    )
    assert [r.data.params["evaluate.beam_size"] for r in evaluations] == ["2", "3", "3"]
    parents = [r.data.tags["mlflow.parentRunId"] for r in evaluations]
    assert parents[0] == parents[1] != parents[2]
    for r in evaluations:
        assert r.info.status == "FINISHED" and "test/bleu_beam" in r.data.metrics
    # The pipeline run above the last training holds its headline numbers: one row in the UI.
    trained = client.get_run(parents[2])
    pipeline_run = client.get_run(trained.data.tags["mlflow.parentRunId"])
    assert pipeline_run.data.tags["pipeline.stage"] == "pipeline"
    shown = pipeline_run.data.metrics
    assert shown["test/bleu_beam"] == evaluations[2].data.metrics["test/bleu_beam"]
    assert shown["perf/train_seconds"] == trained.data.metrics["perf/train_seconds"]
    assert trained.data.tags["pipeline.precision"] == "mixed_bfloat16"
    assert (
        shown["grad_flow/horizon/encoder_1"] == trained.data.metrics["grad_flow/horizon/encoder_1"]
    )


TINY_CLASSIFIER = {
    "train.classification.units": 8,
    "train.classification.embedding_dim": 8,
    "train.classification.max_len": 32,
    "train.classification.epochs": 1,
    "train.classification.max_steps_per_epoch": 5,
    "train.classification.log_every_n_steps": 2,
    "train.classification.probe_batch_size": 4,
}


def snapshot(repo: Path, folders: list[str]) -> dict[str, bytes]:
    files = [p for folder in folders for p in sorted((repo / folder).rglob("*")) if p.is_file()]
    return {str(p.relative_to(repo)): p.read_bytes() for p in files if p.name != ".gitignore"}


def test_dvc_checkout_restores_every_output_after_a_failed_stage(tmp_path: Path) -> None:
    """DVC deletes a stage's outputs before its command fails; `dvc checkout` brings back the
    last good ones, metrics and plots included (they are in the DVC cache)."""
    repo, env = make_project(tmp_path, TINY_CLASSIFIER)
    run(["dvc", "repro", "train_classification"], repo, env)
    outputs = ["models/classification", "plots/classification", "metrics/classification"]
    good = snapshot(repo, outputs)
    assert {"metrics/classification/train.json", "plots/classification/loss.json"} <= set(good)

    set_params(repo, {"train.classification.cell": "lstmm"})
    failed = subprocess.run(
        ["dvc", "repro", "train_classification"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert failed.returncode != 0
    assert not (repo / "models" / "classification").exists()  # what DVC does before the command

    # (Plain `dvc checkout` restores every stage; here only this one was ever run.)
    run(["dvc", "checkout", "train_classification"], repo, env)
    assert snapshot(repo, outputs) == good


def test_venv_prefixed_dvc_runs_stages_in_the_projects_environment(tmp_path: Path) -> None:
    """`.venv/bin/dvc repro` works without activating the virtualenv: stage commands find the
    project's interpreter, not a bare `python` from PATH."""
    repo, env = make_project(tmp_path)
    venv = Path(sys.executable).parents[1]
    (repo / ".venv").symlink_to(venv, target_is_directory=True)
    bare = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    bare["PATH"] = "/usr/bin:/bin"
    done = subprocess.run(
        [str(venv / "bin" / "dvc"), "repro", "download@classification"],
        cwd=repo,
        env=bare,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (repo / "data" / "raw" / "classification" / "train.jsonl").is_file()
