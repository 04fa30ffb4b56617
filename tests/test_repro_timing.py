"""benchmarks/repro_timing.py: the scratch projects it times no-op repros against."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.repro_timing import chained_project


@pytest.fixture
def dvc_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark runs `dvc` from this interpreter's environment, as its main() arranges."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def test_chained_project_is_up_to_date_and_chains_every_stage(
    tmp_path: Path, dvc_on_path: None
) -> None:
    repo = chained_project(tmp_path / "chain", 3)
    assert (repo / "s3.txt").read_text() == "0\n"  # copied through s1 and s2
    status = subprocess.run(["dvc", "status"], cwd=repo, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout
    (repo / "params.yaml").write_text("p0: 0\np1: 5\np2: 2\n")  # one stage's param
    status = subprocess.run(["dvc", "status"], cwd=repo, capture_output=True, text=True)
    assert "s2:" in status.stdout and "s1:" not in status.stdout and "s3:" not in status.stdout
