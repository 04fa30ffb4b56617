"""Faults: unreachable tracking server, orphaned runs, bad files and paths — clear errors only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.core.distribute import free_ports
from pipeline.core.tracking import reap_orphans, stage_run


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_unreachable_tracking_server_fails_fast_naming_the_uri(
    tmp_path: Path, write_params
) -> None:
    uri = f"http://127.0.0.1:{free_ports(1)[0]}"
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "manifest.json").write_text("{}")
    started = time.monotonic()
    done = cli(
        [
            "tokenize",
            "classification",
            "--data",
            "raw",
            "--out",
            "tok",
            "--metrics",
            "m.json",
            "--params",
            str(write_params()),
        ],
        tmp_path,
        MLFLOW_TRACKING_URI=uri,
    )
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    assert uri in done.stderr and "unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "tok").exists() and not (tmp_path / "m.json").exists()


def test_runs_of_dead_processes_are_marked_killed(mlflow_uri: str) -> None:
    client = MlflowClient(mlflow_uri)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with stage_run("classification", "train", {}) as live:
        pass
    orphan = client.create_run(live.experiment_id).info.run_id
    for key, value in {
        "pipeline.stage": "train",
        "pipeline.pid": str(dead.pid),
        "pipeline.host": socket.gethostname(),
    }.items():
        client.set_tag(orphan, key, value)
    running = client.create_run(live.experiment_id).info.run_id  # our own process: alive
    for key, value in {
        "pipeline.stage": "train",
        "pipeline.pid": str(os.getpid()),
        "pipeline.host": socket.gethostname(),
    }.items():
        client.set_tag(running, key, value)
    assert reap_orphans(client, live.experiment_id, "train") == [orphan]
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(running).info.status == "RUNNING"


def test_corrupted_model_file_is_a_clear_error(tmp_path: Path, write_params) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.keras").write_bytes(b"not a zip")
    (model / "spm.model").write_bytes(b"nor a tokenizer")
    done = cli(
        [
            "predict",
            "classification",
            "fine film",
            "--model",
            str(model),
            "--params",
            str(write_params()),
        ],
        tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in done.stderr


def test_missing_model_and_wrong_task_are_clear(tmp_path: Path, write_params) -> None:
    params = str(write_params())
    missing = cli(
        ["predict", "classification", "x", "--model", "nowhere", "--params", params], tmp_path
    )
    assert missing.returncode == 1 and "not found" in missing.stderr
    wrong = cli(["predict", "translation", "x", "--params", params], tmp_path)
    assert wrong.returncode == 2 and "predict supports classification" in wrong.stderr


def test_unwritable_output_fails_the_run_cleanly(
    tmp_path: Path, mlflow_uri: str, write_params
) -> None:
    from tests.test_tokenize import SONNET, write_jsonl

    for split in ("train", "val", "test"):
        write_jsonl(
            tmp_path / "raw" / f"{split}.jsonl",
            [{"text": line, "label": i % 2} for i, line in enumerate(SONNET)],
        )
    (tmp_path / "raw" / "manifest.json").write_text("{}")
    (tmp_path / "blocker").write_text("a file where a directory should be")
    params = write_params({"tokenize.classification.vocab_size": 60})
    done = cli(
        [
            "tokenize",
            "classification",
            "--data",
            "raw",
            "--out",
            "blocker/tok",
            "--metrics",
            "m.json",
            "--params",
            str(params),
        ],
        tmp_path,
        MLFLOW_TRACKING_URI=mlflow_uri,
    )
    assert done.returncode == 1
    assert "error: " in done.stderr and "blocker" in done.stderr
    assert "Traceback" not in done.stderr
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("classification").experiment_id])
    assert run.info.status == "FAILED"


def test_generate_and_translate_check_their_inputs(tmp_path: Path, write_params) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    params = str(write_params())
    runner = CliRunner()
    wrong = runner.invoke(app, ["generate", "classification", "--params", params])
    assert wrong.exit_code == 2 and "only language_model" in wrong.output
    cold = runner.invoke(
        app, ["generate", "language_model", "--temperature", "0", "--params", params]
    )
    assert cold.exit_code == 2 and "--temperature must be > 0" in cold.output
    missing = runner.invoke(
        app, ["translate", "Hallo.", "--model", str(tmp_path / "none"), "--params", params]
    )
    assert missing.exit_code == 1 and "not found" in missing.output
