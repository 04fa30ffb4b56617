"""TensorFlow's native start-up logs stay off the console unless `--verbose` asks for them."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest

from pipeline.core.quiet import NATIVE_LOG, drop_native_logs, native_stderr_filtered
from tests.pipeline_runs import run_cli

# What `import tensorflow` and a train step printed before (TensorFlow 2.21, x86-64).
NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1795995081.138277   12070 port.cc:153] oneDNN custom operations are on.\n"
    "E0000 00:00:1795995150.577523   12211 util.cc:131] oneDNN supports DT_BOOL only on "
    "platforms with AVX-512.\n"
    "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] No GPU\n"
)


TINY_SPEECH = {"units": 8, "batch_size": 16, "epochs": 1, "probe_batch_size": 8}


def native_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NATIVE_LOG.match(line)]


def test_only_native_log_lines_are_dropped() -> None:
    kept = "12:00:01 INFO pipeline.train: epoch 1\nTraceback (most recent call last):\n"
    assert drop_native_logs(NOISE + kept) == kept
    assert len(native_lines(NOISE)) == 4


def test_native_stderr_is_filtered_at_the_file_descriptor(capfd: pytest.CaptureFixture) -> None:
    with native_stderr_filtered():
        os.write(2, NOISE.encode())  # as C++ writes: below Python's sys.stderr
        os.write(2, b"a real problem\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "a real problem\nafter\n"


@pytest.mark.slow
def test_train_prints_no_native_logs_unless_verbose(tmp_path: Path, write_params) -> None:
    from pipeline.download import run_download
    from pipeline.featurize import run_featurize
    from pipeline.params import SpeechDownload, SplitParams, Task
    from tests.test_speech import SMALL, fake_fsdd, tone, wav_bytes

    source = fake_fsdd(tmp_path / "cache")
    download = SpeechDownload(source=source, format="fsdd_wav", test_speakers=["carol"])
    download = download.model_copy(update={"split": SplitParams(val_fraction=0.2)})
    run_download(Task.speech, download, tmp_path / "raw", tmp_path / "cache")
    run_featurize(Task.speech, SMALL, tmp_path / "raw", tmp_path / "features")
    params = write_params({f"train.speech.{key}": value for key, value in TINY_SPEECH.items()})
    # oneDNN on: the import then logs natively wherever TensorFlow is built with it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP_")}
    env |= {"TF_ENABLE_ONEDNN_OPTS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    model = tmp_path / "model"
    train = ["train", "speech", "--data", str(tmp_path / "features"), "--out", str(model)]
    train += ["--plots", str(tmp_path / "plots"), "--metrics", str(tmp_path / "train.json")]
    train += ["--checkpoints", str(tmp_path / "ckpt"), "--params", str(params)]
    quiet = run_cli(train, tmp_path, env)
    assert native_lines(quiet.stderr) == [], quiet.stderr

    wav = tmp_path / "five.wav"
    wav.write_bytes(wav_bytes(tone(1050, 0.3)))
    recognize = ["--verbose", "recognize", str(wav), "--model", str(model)]
    verbose = run_cli([*recognize, "--params", str(params)], tmp_path, env)
    assert len(verbose.stdout.split("\t")) == 2  # digit, probability
    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert native_lines(verbose.stderr), verbose.stderr
