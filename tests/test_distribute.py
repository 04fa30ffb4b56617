"""Multi-worker training: real MultiWorkerMirroredStrategy workers on loopback, tiny real data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.distribute import local_cluster
from pipeline.tasks.classification.data import load_split
from tests.test_train import TINY_TRAIN, train_args

# One optimizer step, no dropout. Plain SGD, because Adam's first step hardly depends on the
# gradient's scale and would hide a wrong all-reduce.
ONE_STEP = {
    **TINY_TRAIN,
    "train.classification.dropout": 0.0,
    "train.classification.bucket_by_length": False,
    "train.classification.epochs": 1,
    "train.classification.max_steps_per_epoch": 1,
    "train.classification.optimizer": "sgd",
    "train.classification.learning_rate": 0.5,
}
MULTI = {"train.classification.distribute": "multi_worker"}
# Epochs of 10 of the 30 steps: multi-worker steps are slow on a busy runner (0.3-0.6 s each),
# and the tests that kill a worker need only epoch boundaries, not whole passes over the data.
SHORT_EPOCHS = {"train.classification.max_steps_per_epoch": 10}


def test_local_cluster_gives_each_worker_its_own_index_and_port():
    configs = [json.loads(c) for c in local_cluster(3)]
    hosts = configs[0]["cluster"]["worker"]
    assert len(set(hosts)) == 3 and all(h.startswith("127.0.0.1:") for h in hosts)
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"]["worker"] == hosts for c in configs)


def test_workers_option_needs_multi_worker(tiny_data, write_params, tmp_path):
    _, tok = tiny_data("classification")
    args = train_args(tok, write_params(TINY_TRAIN), tmp_path) + ["--workers", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "train.classification.distribute: multi_worker, got 'none'" in result.output
    assert not (tmp_path / "model").exists()


def test_multi_worker_without_tf_config_is_a_clear_error(
    tiny_data, write_params, tmp_path, monkeypatch
):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    _, tok = tiny_data("classification")
    result = CliRunner().invoke(app, train_args(tok, write_params(TINY_TRAIN | MULTI), tmp_path))
    assert result.exit_code == 2
    assert "TF_CONFIG is not set" in result.output


@pytest.mark.slow  # starts two worker processes
def test_launcher_reports_the_failing_worker(write_params, tmp_path):
    command = ["train", "classification", "--data", str(tmp_path / "no-data"), "--out", "o"]
    command += ["--plots", "p", "--metrics", "m.json", "--checkpoints", str(tmp_path / "ck")]
    command += ["--params", str(write_params(MULTI)), "--workers", "2"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1
    assert re.search(r"worker [01] exited with code 1", result.output), result.output


def cli(args: list[str], **kwargs) -> subprocess.Popen:
    """`python -m pipeline ARGS` as a child process (the launcher needs a real process)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def weights(model_dir: Path) -> list[np.ndarray]:
    import keras

    import pipeline.tasks.classification.model  # noqa: F401  (registers the pooling layer)

    return keras.saving.load_model(model_dir / "model.keras").get_weights()


def first_step_norm(client: MlflowClient, run_id: str) -> float:
    history = client.get_metric_history(run_id, "grad_norm/global")
    return min(history, key=lambda m: m.step).value


@pytest.mark.slow
def test_two_workers_match_one_worker_on_the_same_global_batch(
    tiny_data, write_params, mlflow_uri, tmp_path
):
    _, tok = tiny_data("classification")
    examples = len(load_split(tok, "train", 48)[0])
    assert examples % 2 == 0
    # The global batch is the whole (shuffled) split, so both runs see the same examples in
    # their one step, and each worker gets exactly half.
    step = ONE_STEP | {"train.classification.batch_size": examples}
    single = cli(train_args(tok, write_params(step, "single.yaml"), tmp_path / "single"))
    assert single.wait(timeout=300) == 0, single.stdout.read()
    multi_args = train_args(tok, write_params(step | MULTI, "multi.yaml"), tmp_path / "multi")
    multi = cli([*multi_args, "--workers", "2", "--worker-timeout", "60"])
    assert multi.wait(timeout=300) == 0, multi.stdout.read()

    one, two = weights(tmp_path / "single" / "model"), weights(tmp_path / "multi" / "model")
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert not np.allclose(one[0], weights_before(tok, write_params(step, "init.yaml"))[0])

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("classification").experiment_id])
    assert len(runs) == 2  # one per training, none from the second worker
    by_workers = {r.data.tags["pipeline.workers"]: r for r in runs}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert by_workers["2"].data.tags["pipeline.replicas"] == "2"
    norm_one = first_step_norm(client, by_workers["1"].info.run_id)
    norm_two = first_step_norm(client, by_workers["2"].info.run_id)
    assert norm_two == pytest.approx(norm_one, rel=1e-5)
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two, strict=True))
    print(f"max |w_1 - w_2| = {gap:.2e}; first-step grad norm {norm_one:.6f} vs {norm_two:.6f}")


def weights_before(tok: Path, params: Path) -> list[np.ndarray]:
    """The seeded initial weights (so the comparison above is of trained weights)."""
    import keras

    from pipeline.params import load_params
    from pipeline.tasks.classification.data import vocab_size
    from pipeline.tasks.classification.model import build_classifier

    cfg = load_params(params).train.classification
    keras.utils.set_random_seed(cfg.seed)
    return build_classifier(cfg, vocab_size(tok)).get_weights()


@pytest.mark.slow
def test_killed_worker_stops_the_launcher_within_the_timeout(
    tiny_data, write_params, mlflow_uri, tmp_path
):
    _, tok = tiny_data("classification")
    long_run = TINY_TRAIN | MULTI | SHORT_EPOCHS | {"train.classification.epochs": 500}
    args = train_args(tok, write_params(long_run), tmp_path)
    launcher = cli([*args, "--workers", "2", "--worker-timeout", "15"])
    for line in launcher.stdout:
        if "epoch 1/500" in line:
            break
    else:
        pytest.fail(f"training never started (exit {launcher.wait()})")
    second = next(
        p
        for p in psutil.Process(launcher.pid).children()
        if '"index": 1' in p.environ().get("TF_CONFIG", "")
    )
    second.kill()
    killed_at = time.monotonic()
    code = launcher.wait(timeout=120)
    output = launcher.stdout.read()
    assert code == 1, output
    assert "worker 1 exited with code -9" in output
    elapsed = time.monotonic() - killed_at
    assert elapsed < 15 + 10 + 10  # collective timeout + grace + start-up slack
    assert not (tmp_path / "model").exists()
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("classification").experiment_id])
    assert run.info.status in {"FAILED", "KILLED"}
    print(f"launcher exited {elapsed:.1f} s after the kill; chief's run {run.info.status}")


@pytest.mark.slow
def test_mirrored_strategy_trains_with_the_same_instrumentation(
    tiny_data, write_params, mlflow_uri, tmp_path
):
    _, tok = tiny_data("classification")
    mirrored = TINY_TRAIN | {"train.classification.distribute": "mirrored"}
    result = CliRunner().invoke(app, train_args(tok, write_params(mirrored), tmp_path))
    assert result.exit_code == 0, result.output
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("classification").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["distribute"] == "mirrored"
    assert run.data.tags["pipeline.replicas"] == str(len(local_devices()))
    assert len(client.get_metric_history(run.info.run_id, "grad_norm/global")) > 1
    assert (tmp_path / "model" / "model.keras").is_file()


def local_devices() -> list:
    """What MirroredStrategy mirrors over here: the GPUs, or the one CPU."""
    import tensorflow as tf

    return tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")[:1]


@pytest.mark.slow
def test_killed_multi_worker_training_resumes_on_every_worker(
    tiny_data, write_params, mlflow_uri, tmp_path
):
    _, tok = tiny_data("classification")
    params = write_params(TINY_TRAIN | MULTI | SHORT_EPOCHS | {"train.classification.epochs": 3})
    args = [*train_args(tok, params, tmp_path), "--workers", "2", "--worker-timeout", "20"]
    launcher = cli(args)
    for line in launcher.stdout:
        if "epoch 2/3" in line:
            break
    for worker in psutil.Process(launcher.pid).children():
        worker.kill()
    assert launcher.wait(timeout=60) == 1

    again = cli(args)
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, output
    assert "resuming from checkpoint" in output
    second_log = (tmp_path / "ckpt" / "classification-workers" / "worker-1.log").read_text()
    assert "resuming from checkpoint" in second_log  # from its copy of the chief's checkpoint
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("classification").experiment_id])
    assert run.info.status == "FINISHED"
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(epochs) == [1, 2, 3]  # epochs 1-2 before the kill, 3 after, once each
