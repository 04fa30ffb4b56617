"""Faults: unreachable tracking server, orphaned runs, bad files and paths — clear errors only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


def tokenize_cli(
    cwd: Path, params: str | Path, uri: str, out: str = "tok", metrics: str = "m.json"
) -> subprocess.CompletedProcess[str]:
    """`tokenize classification` of `cwd/raw` as a user would run it."""
    args = ["tokenize", "classification", "--data", "raw", "--out", out, "--metrics", metrics]
    return cli([*args, "--params", str(params)], cwd, MLFLOW_TRACKING_URI=uri)


def write_sonnet(raw: Path, label: int | None = None) -> None:
    """Three splits of the sonnet's lines as reviews (labels alternate unless given)."""
    from tests.test_tokenize import SONNET, write_jsonl

    for split in ("train", "val", "test"):
        rows = [
            {"text": t, "label": i % 2 if label is None else label} for i, t in enumerate(SONNET)
        ]
        write_jsonl(raw / f"{split}.jsonl", rows)


def test_unreachable_tracking_server_fails_fast_naming_the_uri(
    tmp_path: Path, write_params
) -> None:
    uri = f"http://127.0.0.1:{free_ports(1)[0]}"
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "manifest.json").write_text("{}")
    started = time.monotonic()
    done = tokenize_cli(tmp_path, write_params(), uri)
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    assert uri in done.stderr and "unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "tok").exists() and not (tmp_path / "m.json").exists()


@pytest.mark.slow  # starts `python -m pipeline` processes (TensorFlow import each)
@pytest.mark.parametrize(
    "args",
    [
        [
            "evaluate",
            "classification",
            "--model",
            "model",
            "--data",
            "tok",
            "--raw",
            "raw",
            "--reports",
            "reports",
            "--metrics",
            "e.json",
        ],
        ["compare", "classification"],
        ["predict", "classification", "great film", "--model-uri", "runs:/0123abcd/pyfunc"],
    ],
    ids=["evaluate", "compare", "predict"],
)
def test_every_command_that_talks_to_mlflow_fails_fast_when_it_is_down(
    tmp_path: Path, write_params, args: list[str]
) -> None:
    uri = f"http://127.0.0.1:{free_ports(1)[0]}"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "train_run.json").write_text('{"run_id": "0123abcd"}')
    started = time.monotonic()
    done = cli(
        [*args, "--params", str(write_params())] if args[0] != "compare" else args,
        tmp_path,
        MLFLOW_TRACKING_URI=uri,
    )
    assert time.monotonic() - started < 30  # not MLflow's ~4 minutes of retries
    assert done.returncode == 1
    assert uri in done.stderr and "unreachable" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "reports").exists() and not (tmp_path / "e.json").exists()


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


@pytest.mark.slow  # starts `python -m pipeline` processes (TensorFlow import each)
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


@pytest.mark.slow  # starts `python -m pipeline` processes (TensorFlow import each)
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
    write_sonnet(tmp_path / "raw")
    (tmp_path / "raw" / "manifest.json").write_text("{}")
    (tmp_path / "blocker").write_text("a file where a directory should be")
    params = write_params({"tokenize.classification.vocab_size": 60})
    done = tokenize_cli(tmp_path, str(params), mlflow_uri, "blocker/tok", "m.json")
    assert done.returncode == 1
    assert "error: cannot write blocker/tok" in done.stderr
    assert "Traceback" not in done.stderr
    # Checked before any work: no MLflow run, and no output (not even a tokenized directory
    # when only the metrics path is unwritable).
    assert MlflowClient(mlflow_uri).get_experiment_by_name("classification") is None
    done = tokenize_cli(tmp_path, str(params), mlflow_uri, "tok", "blocker/m.json")
    assert done.returncode == 1 and "error: cannot write blocker/m.json" in done.stderr
    assert not (tmp_path / "tok").exists()


def test_a_vocabulary_too_small_for_the_text_is_a_params_error(
    tmp_path: Path, mlflow_uri: str, write_params
) -> None:
    write_sonnet(tmp_path / "raw", label=0)
    (tmp_path / "raw" / "manifest.json").write_text("{}")
    params = write_params({"tokenize.classification.vocab_size": 32})
    done = tokenize_cli(tmp_path, params, mlflow_uri)
    assert done.returncode == 2
    assert "error: tokenize.classification.vocab_size: expected at least" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "tok").exists()


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
    assert cold.exit_code == 2 and "--temperature must be a finite number > 0" in cold.output
    nan = runner.invoke(
        app, ["generate", "language_model", "--temperature", "nan", "--params", params]
    )
    assert nan.exit_code == 2 and "--temperature must be a finite number > 0" in nan.output
    missing = runner.invoke(
        app, ["translate", "Hallo.", "--model", str(tmp_path / "none"), "--params", params]
    )
    assert missing.exit_code == 1 and "not found" in missing.output
    for command in (["translate", "  "], ["predict", "classification", "good", ""]):
        empty = runner.invoke(app, [*command, "--params", params])
        assert empty.exit_code == 2 and "empty text" in empty.output
    broken = runner.invoke(app, ["translate", "Stra\udcdfe", "--params", params])
    assert broken.exit_code == 2 and "not UTF-8 text" in broken.output


def test_damaged_inputs_name_the_file_and_the_fix(tmp_path: Path) -> None:
    """Truncated JSON lines, out-of-range token ids, bad labels and a corrupt model file."""
    import numpy as np

    from pipeline.core.corpus import CorruptInput, check_ids, read_jsonl
    from pipeline.core.saved import CorruptModel, load_model

    truncated = tmp_path / "train.jsonl"
    truncated.write_text('{"text": "fine", "label": 1}\n{"text": "cut of')
    with pytest.raises(CorruptInput, match=rf"{truncated} line 2: not valid JSON"):
        read_jsonl(truncated)
    with pytest.raises(CorruptInput, match=r"token ids outside 0\.\.99 \(found 0\.\.100\)"):
        check_ids(np.asarray([0, 5, 100]), 100, tmp_path / "train.npz")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptModel, match="not a Keras model file .* retrain it"):
        load_model(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="run `dvc repro`"):
        load_model(tmp_path)

    from pipeline.params import SentencePieceParams, Task
    from pipeline.tasks.classification.data import load_split
    from pipeline.tokenize import run_tokenize

    write_sonnet(tmp_path / "raw", label=2)
    run_tokenize(
        Task.classification, SentencePieceParams(vocab_size=60), tmp_path / "raw", tmp_path / "tok"
    )
    with pytest.raises(CorruptInput, match="train.npz: labels must be 0 or 1"):
        load_split(tmp_path / "tok", "train", 16)


HOLD_LOCK = """
import sys, time
from pathlib import Path
from pipeline.core.trainer import owned
with owned(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def _hold(directory: Path) -> subprocess.Popen[str]:
    """A process that owns `directory`'s checkpoint until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.slow  # starts `python -m pipeline` processes (TensorFlow import each)
def test_a_live_checkpoint_owner_blocks_a_second_training_at_once(tmp_path: Path) -> None:
    from pipeline.core.trainer import CheckpointBusy, owned

    directory = tmp_path / "checkpoints" / "classification"
    holder = _hold(directory)
    try:
        started = time.monotonic()
        with (
            pytest.raises(CheckpointBusy, match=rf"in use by pid {holder.pid} on "),
            owned(directory),
        ):
            pass
        assert time.monotonic() - started < 1
    finally:
        holder.kill()
        holder.wait()
    with owned(directory):  # its owner died (kill -9 included): the checkpoint is free again
        pass


@pytest.mark.slow  # starts `python -m pipeline` processes (TensorFlow import each)
def test_a_busy_checkpoint_stops_the_train_command_with_one_line(
    tmp_path: Path, write_params
) -> None:
    data = tmp_path / "tok"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    holder = _hold(tmp_path / "ckpt" / "classification")
    try:
        done = cli(
            [
                "train",
                "classification",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "m"),
                "--plots",
                str(tmp_path / "p"),
                "--metrics",
                str(tmp_path / "t.json"),
                "--checkpoints",
                str(tmp_path / "ckpt"),
                "--params",
                str(write_params({})),
            ],
            tmp_path,
            MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        )
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert f"in use by pid {holder.pid}" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m").exists()
