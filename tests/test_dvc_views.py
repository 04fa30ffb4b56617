"""What `dvc metrics show` and `dvc plots show` present: headline numbers, one chart per file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image

from pipeline.params import Task
from tests.structure import ROOT, dvc_stages

DVC_YAML = ROOT / "dvc.yaml"
STAGES = dvc_stages()
HEADLINE_METRICS = {"train.json", "evaluate.json"}


def test_only_headline_numbers_are_dvc_metrics() -> None:
    """Data statistics (tokenize, featurize) are plain, cached outputs, not metrics columns."""
    metrics = {path for stage in STAGES.values() for path in stage.get("metrics", [])}
    assert metrics and {Path(path).name for path in metrics} == HEADLINE_METRICS
    for name, stage in STAGES.items():
        if name.startswith(("tokenize@", "featurize_")):
            stats = "tokenize.json" if name.startswith("tokenize") else "featurize.json"
            assert [out for out in stage["outs"] if out.endswith(stats)], name


# --------------------------------------------------------------------------- plots

PLOTS = [  # (path, definition); an image is a bare path
    next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
    for entry in yaml.safe_load(DVC_YAML.read_text(encoding="utf-8"))["plots"]
]
TEMPLATES = ROOT / ".dvc" / "plots"
TRAINED = ("loss.json", "grad_norm.json", "grad_flow.json")


def test_each_plots_file_is_declared_once_with_title_and_axes() -> None:
    stage_plots = [path for stage in STAGES.values() for path in stage.get("plots", [])]
    assert stage_plots == []  # a stage-level entry would draw the file a second time, untitled
    paths = [path for path, _ in PLOTS]
    assert len(paths) == len(set(paths))
    for path, spec in PLOTS:
        if path.endswith(".json"):
            assert {"title", "x", "y", "x_label", "y_label", "template"} <= set(spec), path
            assert (TEMPLATES / f"{spec['template']}.json").is_file(), path
    for task in Task:
        for name in TRAINED:
            assert f"plots/{task.value}/{name}" in paths
            assert any(f"plots/{task.value}/{name}" in stage["outs"] for stage in STAGES.values())
    assert {spec["template"] for path, spec in PLOTS if path.endswith(TRAINED[1:])} == {"log_y"}


def plot_rows(spec: dict) -> list[dict]:
    """Rows a plot's definition can draw: its x and every y, positive (log scales)."""
    time = spec.get("template") == "time_x"
    ys = spec["y"] if isinstance(spec["y"], list) else [spec["y"]]
    return [
        {
            spec["x"]: f"2014-11-01T{i:02d}:00" if time else i,
            **{y: (k + 1) * 10.0 ** -(i % 6) for k, y in enumerate(ys)},
        }
        for i in range(12)
    ]


def plots_project(root: Path) -> Path:
    """A scratch DVC repository with this dvc.yaml, its plot templates and made-up plot files."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copyfile(ROOT / name, root / name)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    shutil.copytree(TEMPLATES, root / ".dvc" / "plots")
    for path, spec in PLOTS:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".json"):
            target.write_text(json.dumps(plot_rows(spec)))
        else:
            Image.new("RGB", (8, 8), "white").save(target)
    return root


def dvc(root: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_dvc_plots_show_draws_every_file_once_titled_and_log_scaled(tmp_path: Path) -> None:
    shown = json.loads(dvc(plots_project(tmp_path), "plots", "show", "--json"))
    assert not shown.get("errors")
    assert sorted(shown["data"]) == sorted(path for path, _ in PLOTS)  # nothing twice
    for path, spec in PLOTS:
        (chart,) = shown["data"][path]
        if not path.endswith(".json"):
            assert chart["type"] == "image"
            continue
        content = chart["content"]
        assert content["title"]["text"] == spec["title"]
        x, y = content["encoding"]["x"], content["encoding"]["y"]
        assert (x["title"], y["title"]) == (spec["x_label"], spec["y_label"])
        assert len(content["data"]["values"]) == 12 * len(spec["y"])  # one curve per y
        assert (y["scale"].get("type") == "log") == (spec["template"] == "log_y"), path
