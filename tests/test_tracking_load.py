"""A team's server under load: PostgreSQL-backed MLflow killed mid-training loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.tracking_load import run_load
from pipeline.core.distribute import free_ports
from pipeline.server import postgres

pytestmark = pytest.mark.slow


def test_two_trainings_survive_a_server_kill_with_nothing_lost(tiny_data, tmp_path: Path) -> None:
    _, tok = tiny_data("classification")
    with postgres(free_ports(1)[0]) as cluster:
        load = run_load(tok, 2, tmp_path / "load", cluster.uri, restart=True)
    assert load["exit_codes"] == [0, 0]
    assert load["training_runs"] == load["finished"] == 2
    assert load["steps_checked"] > 0  # the check covered every step both trainings took
    assert load["lost_points"] == 0 and load["duplicated_points"] == 0
    assert load["left_running"] == 0
    assert load["flushes"] > 0 and load["metric_points"] > 0
    assert len(load["load_average_start"]) == len(load["load_average_end"]) == 3
