"""Shared fixtures: an isolated MLflow store and tiny, valid params files."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


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
