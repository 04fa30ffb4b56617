"""Shared fixtures: an isolated MLflow store and tiny, valid params files."""

from __future__ import annotations

import copy
import functools
import os
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import closing
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


# The longest tests of `make test` (seconds each, measured in the suite on 2 busy cores). They
# start first, longest first, so that no long test begins while the other worker has nothing
# left to do; the hundreds of quick tests fill in at the end. A stale entry only costs balance.
LONGEST = {
    "tests/test_pipeline.py::test_evaluate_params_rerun_evaluation_only_and_train_params_both": 78,
    "tests/test_forecasting_pipeline.py::test_repro_forecasting_end_to_end_then_forecast_and": 71,
    "tests/test_tracking_load.py::test_two_trainings_survive_a_server_kill_with_nothing_lost": 66,
    "tests/test_distribute.py::test_killed_multi_worker_training_resumes_on_every_worker": 58,
    "tests/test_pipeline.py::test_repro_download_and_tokenize_all_tasks": 56,
    "tests/test_experiments.py::test_concurrent_queued_grid_gives_one_complete_tagged_run": 53,
    "tests/test_server.py::test_a_server_that_stays_down_fails_training_within_the_bound": 50,
    "tests/test_speech_pipeline.py::test_repro_speech_end_to_end_then_recognize": 48,
    "tests/test_distribute.py::test_killed_worker_stops_the_launcher_within_the_timeout": 41,
    "tests/test_train.py::test_killed_training_resumes_at_the_next_epoch": 40,
    "tests/test_distribute.py::test_two_workers_match_one_worker_on_the_same_global_batch": 37,
    "tests/test_pipeline.py::test_dvc_checkout_restores_every_output_after_a_failed_stage": 31,
}
# Modules whose tests share a module-scoped fixture, costly to set up, with their longest test:
# all their tests go to one worker (one setup per parameter, not one per worker).
LONGEST_MODULES = {
    # The tiny pipeline on a sqlite and a postgres server, and the restart mid-training.
    "tests/test_server.py": 38 + 37 + 37 + 5,
    "tests/test_language_model.py": 44,
    "tests/test_train.py": 35,  # one shared training, the NaN runs and the flush-then-kill runs
}


def unit_of(nodeid: str) -> str:
    """What one worker runs together: a LONGEST test alone, otherwise its whole module."""
    if any(nodeid.startswith(name) for name in LONGEST):
        return nodeid
    return nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the units of work (`unit_of`) longest first: LONGEST, then modules with slow
    tests, then the rest; within a unit, and among equals, the collection order stays."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(unit_of(item.nodeid), []).append(item)

    def cost(unit: list[pytest.Item]) -> float:
        nodeid = unit[0].nodeid
        known = next((s for name, s in LONGEST.items() if nodeid.startswith(name)), 0)
        known = known or LONGEST_MODULES.get(unit_of(nodeid), 0)
        return known or sum(1.0 for item in unit if item.get_closest_marker("slow"))

    ordered = sorted(units.values(), key=cost, reverse=True)  # stable: equals keep their order
    items[:] = [item for unit in ordered for item in unit]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` (the Makefile's) hands out `unit_of` units in collection order, so
    module-scoped fixtures are set up once and the longest tests go out first."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    config.option.loadscopereorder = False  # keep the order above, not "most tests first"
    return LongestFirst(config, log)


@functools.cache
def _empty_store() -> bytes:
    """The bytes of an empty MLflow sqlite store, created once per process."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "mlflow.db"
        MlflowClient(f"sqlite:///{db}").search_experiments()  # creates the schema
        return db.read_bytes()


def new_store(db: Path, cwd: Path) -> str:
    """Write an empty MLflow sqlite store at `db`, as a process in `cwd` would create it; return
    its URI.

    A new store runs every schema migration on first use (2-5 s on a busy runner, once per
    store and test); a copy of one migrated store skips them. What differs between two new
    stores is the artifact location of the `Default` experiment (`<cwd>/mlruns/0`), set here.
    """
    db.write_bytes(_empty_store())
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(cwd / "mlruns" / "0"),),
        )
    return f"sqlite:///{db}"


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow at a fresh sqlite store (and artifact dir) under tmp_path."""
    uri = new_store(tmp_path / "mlflow.db", tmp_path)
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
