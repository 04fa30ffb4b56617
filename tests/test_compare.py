"""Comparing training runs: selection, the params-that-differ table, the HTML report, the
compare run — on three real tiny classification runs, plus fast checks on synthetic runs."""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.compare import (
    CompareError,
    RunFilters,
    comparison_table,
    counted,
    differing_params,
    fetch_curves,
    format_table,
    plot_grad_flow,
    run_compare,
    select_runs,
    write_report,
)
from pipeline.core.tracking import PARENT_TAG, stage_run
from pipeline.evaluate import TRAIN_RUN_TAG
from tests.conftest import new_store, set_key
from tests.test_train import TINY_TRAIN, train_args

TASK = "classification"
# One epoch of at most 10 steps: the table and report need histories, not a good model.
FAST = {
    **TINY_TRAIN,
    "train.classification.epochs": 1,
    "train.classification.max_steps_per_epoch": 10,
}
# Trained oldest first: (name, DVC experiment, overrides). Same units; cell and learning rate
# differ. (Two runs keep the file under a minute on 2 cores; a subset that differs in one
# param only is covered by the synthetic runs below.)
VARIANTS = [
    ("rnn", "exp-rnn", {"train.classification.cell": "simple_rnn"}),
    (
        "gru",
        "exp-gru",
        {"train.classification.cell": "gru", "train.classification.learning_rate": 0.01},
    ),
]


@pytest.fixture(scope="module")
def store(
    tiny_data, default_params: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[MlflowClient, dict[str, str], Path]]:
    """Train the variants once through the CLI; yields (client, {name: run_id}, base dir)."""
    _, tok = tiny_data(TASK)
    base = tmp_path_factory.mktemp("compare")
    uri = new_store(base / "mlflow.db", base)
    ids: dict[str, str] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(base)
        for name, exp, overrides in VARIANTS:
            patch.setenv("DVC_EXP_NAME", exp)
            params = write_tree(default_params, {**FAST, **overrides}, base / f"{name}.yaml")
            result = CliRunner().invoke(app, train_args(tok, params, base / name))
            assert result.exit_code == 0, result.output
            run_file = base / name / "model" / "train_run.json"
            ids[name] = json.loads(run_file.read_text())["run_id"]
        patch.delenv("DVC_EXP_NAME")
        yield MlflowClient(uri), ids, base


def write_tree(default: dict[str, Any], overrides: dict[str, Any], path: Path) -> Path:
    """Write params.yaml with dotted overrides (module-scoped twin of `write_params`)."""
    tree = copy.deepcopy(default)
    for key, value in overrides.items():
        set_key(tree, key, value)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def ids_of(runs) -> list[str]:
    return [run.info.run_id for run in runs]


@pytest.mark.slow
def test_table_has_one_row_per_run_with_its_cell_and_metrics(store) -> None:
    client, ids, _ = store
    rows = comparison_table(select_runs(client, TASK))
    assert [row["id"] for row in rows] == [ids["gru"][:8], ids["rnn"][:8]]  # newest first
    assert [row["cell"] for row in rows] == ["gru", "simple_rnn"]
    assert [row["dvc_exp"] for row in rows] == ["exp-gru", "exp-rnn"]
    identity = ["run", "id", "dvc_exp", "cell", "units", "num_layers", "bidirectional"]
    assert list(rows[0])[:8] == [*identity, "learning_rate"]
    assert "epochs" not in rows[0] and "seed" not in rows[0]  # equal everywhere: left out
    gradients = ("grad_flow/horizon/rnn_1", "grad_flow/log_ratio/rnn_1")
    timing = ("perf/train_seconds", "perf/samples_per_second")
    for key in ("val/loss", "val/accuracy", *gradients, *timing):
        assert all(math.isfinite(row[key]) for row in rows), key
    assert all(1 <= row["grad_flow/horizon/rnn_1"] <= 48 for row in rows)
    assert all(0 <= row["val/accuracy"] <= 1 for row in rows)
    wide = format_table(rows, max_width=None).splitlines()
    assert len(wide) == 2 + 2 and wide[0].split()[:4] == ["run", "id", "dvc_exp", "cell"]
    assert wide[3].split()[3] == "simple_rnn"
    assert len(wide[0]) > 120  # so the default layout puts one field per line, runs as columns
    tall = {line.split()[0]: line.split()[1:] for line in format_table(rows).splitlines()}
    assert tall["id"] == [ids["gru"][:8], ids["rnn"][:8]]
    assert tall["cell"] == ["gru", "simple_rnn"] and tall["units"] == ["8", "8"]


@pytest.mark.slow
def test_differing_params_finds_what_changed(store) -> None:
    client, ids, _ = store
    runs = select_runs(client, TASK)
    assert differing_params(runs) == ["cell", "learning_rate"]  # not units, seed, max_len, ...
    assert differing_params(runs[:1]) == []


@pytest.mark.slow
def test_filters_select_the_right_runs(store) -> None:
    client, ids, _ = store
    both = [ids["gru"], ids["rnn"]]
    assert ids_of(select_runs(client, TASK, last=1)) == [ids["gru"]]
    assert ids_of(select_runs(client, TASK, run_ids=[ids["rnn"], ids["gru"][:10]])) == both
    assert ids_of(select_runs(client, TASK, run_ids=[ids["rnn"]])) == [ids["rnn"]]
    assert ids_of(select_runs(client, TASK, tag="dvc.exp_name=exp-gru")) == [ids["gru"]]
    assert ids_of(select_runs(client, TASK, tag="pipeline.task=classification")) == both
    assert ids_of(select_runs(client, TASK, dvc_exp="exp-rnn")) == [ids["rnn"]]
    assert select_runs(client, TASK, dvc_exp="exp-rnn", tag="dvc.exp_name=exp-gru") == []
    assert select_runs(client, "translation") == []  # no such experiment in this store
    with pytest.raises(CompareError, match="has id 'ffff'"):
        select_runs(client, TASK, run_ids=["ffff"])


@pytest.mark.slow
def test_report_overlays_every_run_in_three_figures(store, tmp_path: Path) -> None:
    client, ids, _ = store
    runs = select_runs(client, TASK)
    path = write_report(client, runs, tmp_path / "deep" / "report.html")
    page = path.read_text(encoding="utf-8")
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    assert page.count("<tr>") == 1 + 2
    assert ids["rnn"][:8] in page and ids["gru"][:8] in page
    assert "train-classification" in page and "simple_rnn" in page
    curves = [fetch_curves(client, run) for run in runs]
    assert all(len(c.series["grad_flow/rnn_1"][0]) == 48 for c in curves)
    assert all({"train/loss", "val/loss", "grad_norm/global"} <= set(c.series) for c in curves)
    assert curves[1].label == f"exp-rnn {ids['rnn'][:8]} (simple_rnn)"
    (axis,) = plot_grad_flow(curves).axes
    assert len(axis.get_lines()) == 2 and axis.get_yscale() == "log"


@pytest.mark.slow
def test_run_compare_logs_report_to_a_compare_run(store, tmp_path: Path) -> None:
    client, ids, _ = store
    result = run_compare(TASK, client, RunFilters(last=2), tmp_path / "out")
    assert ids_of(result.runs) == [ids["gru"], ids["rnn"]]
    assert result.report == tmp_path / "out" / "compare.html" and result.report.is_file()
    assert (tmp_path / "out" / "compare.txt").read_text().strip() == result.table
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["run_ids"] == ids_of(result.runs) and len(saved["rows"]) == 2
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["pipeline.stage"] == "compare"
    assert run.data.tags["pipeline.task"] == TASK
    assert run.data.tags["compare.run_ids"] == f"{ids['gru']},{ids['rnn']}"
    assert run.data.params["last"] == "2"
    assert run.info.experiment_id == result.runs[0].info.experiment_id
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"compare.html", "compare.txt", "compare.json"} <= artifacts
    # The compare run is not a training run, so it never shows up in a later comparison.
    assert result.run_id not in ids_of(select_runs(client, TASK))
    with pytest.raises(CompareError, match="no finished training runs of classification match"):
        run_compare(TASK, client, RunFilters(dvc_exp="nope"), tmp_path / "none")
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_compare_command_prints_table_and_report(store, tmp_path: Path) -> None:
    client, ids, _ = store
    out = tmp_path / "cli"
    args = ["compare", TASK, "--run-id", ids["rnn"][:8], "--run-id", ids["gru"], "--out", str(out)]
    opened: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
        patch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
        result = CliRunner().invoke(app, [*args, "--open"])
        missing = CliRunner().invoke(app, ["compare", TASK, "--dvc-exp", "nope"])
    assert result.exit_code == 0, result.output
    assert ids["rnn"][:8] in result.output and str(out / "compare.html") in result.output
    assert opened == [(out / "compare.html").resolve().as_uri()]
    assert missing.exit_code == 1 and "error: no finished training runs" in missing.output


# --- fast checks on synthetic runs (no training) ---------------------------------------------


def fake_train_run(params: dict[str, Any], metrics: dict[str, float], fail: bool = False) -> str:
    """Log a training-like run without training (FAILED when `fail`)."""
    try:
        with stage_run(TASK, "train", params) as run:
            run.log_metrics(metrics)
            if fail:
                raise RuntimeError("diverged")
    except RuntimeError:
        pass
    return run.run_id


def test_unfinished_runs_partial_differences_and_bad_filters(mlflow_uri: str) -> None:
    arch = {"cell": "lstm", "units": 8, "num_layers": 1, "bidirectional": False}
    first = fake_train_run({**arch, "dropout": 0.1, "seed": 1}, {"val/loss": 0.5, "test/f1": 0.7})
    done = fake_train_run({**arch, "dropout": 0.2, "seed": 1}, {"val/loss": 0.4, "test/f1": 0.8})
    failed = fake_train_run({**arch, "dropout": 0.2, "seed": 2}, {"val/loss": math.nan}, fail=True)
    with stage_run(TASK, "evaluate", arch):
        pass  # not a training run: never selected
    client = MlflowClient(mlflow_uri)
    assert ids_of(select_runs(client, TASK)) == [done, first]
    everything = select_runs(client, TASK, finished_only=False)
    assert ids_of(everything) == [failed, done, first]
    assert differing_params(everything) == ["dropout", "seed"]
    assert differing_params(everything[:2]) == ["seed"]
    with pytest.raises(CompareError, match="KEY=VALUE"):
        select_runs(client, TASK, tag="dvc.exp_name")
    with pytest.raises(CompareError, match="at least 1"):
        select_runs(client, TASK, last=0)
    rows = comparison_table(everything)
    assert list(rows[0]) == ["run", "id", *arch, "dropout", "seed", "val/loss", "test/f1"]
    assert rows[0]["test/f1"] is None  # a metric one run lacks is blank, not an error
    lines = format_table(rows).splitlines()
    assert set(lines[1]) == {"─"}  # rich's header rule
    assert lines[2].split()[-2:] == ["nan", "-"] and lines[3].split()[-2:] == ["0.4", "0.8"]


def test_table_cells_are_text_and_counts_agree_in_number() -> None:
    rows = [{"run": "[bold]exp[/bold]", "id": "ab12", "val_loss": 0.5}]
    header, rule, line = format_table(rows).splitlines()
    assert header.split() == ["run", "id", "val_loss"] and set(rule) == {"─"}
    assert line.split() == ["[bold]exp[/bold]", "ab12", "0.5"]  # not rich markup
    runs = [counted(n, "training run") for n in (0, 1, 2)]
    assert runs == ["0 training runs", "1 training run", "2 training runs"]


def fake_evaluation(train_id: str, beam_size: int, f1: float, fail: bool = False) -> str:
    """Log an evaluate child run of `train_id` as `evaluate_and_log` does, without a model."""
    params = {"evaluate": {"beam_size": beam_size, "length_penalty": 0.6}}
    try:
        with stage_run(TASK, "evaluate", params) as run:
            run.set_tags({PARENT_TAG: train_id, TRAIN_RUN_TAG: train_id})
            run.log_metrics({"test/f1": f1, "baseline/f1": 0.5})
            if fail:
                raise RuntimeError("out of memory")
    except RuntimeError:
        pass
    return run.run_id


def test_each_evaluation_of_a_run_is_a_row_with_its_settings(
    mlflow_uri: str, tmp_path: Path
) -> None:
    arch = {"cell": "gru", "units": 8, "num_layers": 1, "bidirectional": False}
    scores = {"train/loss": 0.7, "val/loss": 0.6, "test/f1": 0.4}
    bare = fake_train_run({**arch, "dropout": 0.1}, scores)
    # The training run also holds the latest evaluation's scores (here a stale copy, 0.1).
    scores = {"train/loss": 0.6, "val/loss": 0.5, "test/f1": 0.1}
    train = fake_train_run({**arch, "dropout": 0.1}, scores)
    beam1 = fake_evaluation(train, 1, 0.6)
    beam4 = fake_evaluation(train, 4, 0.7)
    fake_evaluation(train, 8, 0.9, fail=True)  # not finished: no row
    client = MlflowClient(mlflow_uri)

    result = run_compare(TASK, client, RunFilters(run_ids=(train[:8],)), tmp_path / "one")
    assert ids_of(result.runs) == [train] and len(result.rows) == 2
    by_beam = {row["evaluate.beam_size"]: row for row in result.rows}
    assert by_beam["1"]["eval_id"] == beam1[:8] and by_beam["4"]["eval_id"] == beam4[:8]
    assert by_beam["1"]["test/f1"] == 0.6 and by_beam["4"]["test/f1"] == 0.7  # not the copy
    assert all(row["val/loss"] == 0.5 and row["id"] == train[:8] for row in result.rows)
    assert differing_params(result.pairs) == ["evaluate.beam_size"]  # not length_penalty
    assert list(result.rows[0])[:3] == ["run", "id", "eval_id"]
    printed = {line.split()[0]: line.split()[1:] for line in result.table.splitlines()}
    assert sorted(printed["evaluate.beam_size"]) == ["1", "4"]  # a column per row
    page = result.report.read_text(encoding="utf-8")
    assert page.count("<tr>") == 1 + 2 and "1 training run, 2 evaluation runs" in page
    assert "<th>evaluate.<wbr>beam_size</th>" in page  # long headers may wrap
    assert '<div class="scroll"><table>' in page and ".scroll { overflow-x: auto;" in page
    saved = json.loads((tmp_path / "one" / "compare.json").read_text())
    assert saved["run_ids"] == [train] and set(saved["evaluation_run_ids"]) == {beam1, beam4}
    tags = client.get_run(result.run_id).data.tags
    assert set(tags["compare.evaluation_run_ids"].split(",")) == {beam1, beam4}

    everything = run_compare(TASK, client, RunFilters(), tmp_path / "all")
    assert ids_of(everything.runs) == [train, bare]  # one curve per training run
    assert [row["id"] for row in everything.rows] == [train[:8], train[:8], bare[:8]]
    unevaluated = everything.rows[-1]  # one row of its own, with its own scores
    assert unevaluated["eval_id"] is None and unevaluated["evaluate.beam_size"] is None
    assert unevaluated["test/f1"] == 0.4
    newest = run_compare(TASK, client, RunFilters(last=2), tmp_path / "last")
    assert {row["eval_id"] for row in newest.rows} == {beam1[:8], beam4[:8]}  # rows, not runs
