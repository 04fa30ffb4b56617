"""Shared fixtures: an isolated MLflow store and tiny, valid params files."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """One TensorFlow thread per pool in each process that runs tests, one op thread in what
    they start.

    The tests that run in-process execute thousands of tiny ops; while other tests' stages,
    workers and servers hold both cores, handing each op to a pool thread that waits for a core
    made one such test take 40-50 s in the suite against 1.4 s alone. The stages the tests
    start inherit `TF_NUM_INTRAOP_THREADS=1` (read by TensorFlow at start-up): with one test
    per core, a second op thread per stage only contends for the other test's core. Their
    inter-op pools stay TensorFlow's default (collective ops of multi-worker training need them).
    """
    if getattr(config, "workerinput", None) is None and config.getoption("numprocesses", None):
        return  # the xdist controller runs no test
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow at a fresh sqlite store (and artifact dir) under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture(scope="session")
def default_params() -> dict[str, Any]:
    """The repository's params.yaml as a dict."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def set_key(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict (like `dvc exp run -S`)."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree[key]
    tree[leaf] = value


@pytest.fixture
def write_params(tmp_path: Path, default_params: dict[str, Any]) -> Callable[..., Path]:
    """Write params.yaml with dotted-key overrides; returns its path."""

    def write(overrides: dict[str, Any] | None = None, name: str = "params.yaml") -> Path:
        tree = copy.deepcopy(default_params)
        for key, value in (overrides or {}).items():
            set_key(tree, key, value)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        return path

    return write


# Caps and vocabularies that keep the real data path fast on 2 cores.
TINY_DATA = {
    "classification": ({"max_examples": 600}, {"vocab_size": 400}),
    "language_model": ({"max_documents": 5}, {"vocab_size": 300}),
    "translation": ({"max_examples": 1200}, {"vocab_size": 200}),
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """Download (real sources, capped) and tokenize a task once per session.

    Returns (raw_dir, tokenized_dir). Fetched packages stay in the user cache, so only the
    first session pays for the download.
    """
    from pipeline.download import default_cache_dir, run_download
    from pipeline.params import Task, load_params
    from pipeline.tokenize import run_tokenize

    params = load_params(ROOT / "params.yaml")
    done: dict[str, tuple[Path, Path]] = {}

    def prepare(task: str) -> tuple[Path, Path]:
        if task not in done:
            base = tmp_path_factory.mktemp(task)
            download_caps, tokenize_caps = TINY_DATA[task]
            cfg = params.download.section(Task(task)).model_copy(update=download_caps)
            run_download(Task(task), cfg, base / "raw", default_cache_dir())
            tok = params.tokenize.section(Task(task)).model_copy(update=tokenize_caps)
            run_tokenize(Task(task), tok, base / "raw", base / "tok")
            done[task] = (base / "raw", base / "tok")
        return done[task]

    return prepare
