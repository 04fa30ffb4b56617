"""Fixtures for tests against real MLflow processes; load with `pytest_plugins`.

Helpers live in `tests/pipeline_runs.py` and `tests/mlflow_server.py`: test modules import
those, never this file, so pytest can rewrite its asserts when it registers the plugin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mlflow_server import MlflowServer, running_server


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A real lean `mlflow server` with an empty store, stopped (all its processes) after."""
    with running_server(tmp_path / "server") as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """One server per backend a team may run: sqlite, and PostgreSQL (a real cluster)."""
    with running_server(tmp_path_factory.mktemp("server"), request.param) as server:
        yield server


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One server shared by a module whose tests only read what a fixture logged once."""
    with running_server(tmp_path_factory.mktemp("server")) as server:
        yield server
