"""Package structure: exact dvc.yaml deps, no import cycles, tasks behind one interface.

The dvc tests run real `dvc status` / `dvc repro --dry` in a scratch copy of the pipeline whose
stage outputs are placeholders committed with `dvc commit`, so they see exactly what a user's
`dvc repro` would rerun after an edit, without training anything.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.params import Task
from tests.structure import (
    ROOT,
    code_deps,
    command_of,
    dvc_stages,
    imported_modules,
    module_file,
    module_name,
    stage_files,
)

DVC = [sys.executable, "-m", "dvc"]
STAGES = dvc_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_are_the_commands_import_closure(name: str) -> None:
    """Each stage lists exactly the package modules its command can import (regenerate with
    `python -m tests.structure --write`)."""
    assert code_deps(STAGES[name]) == stage_files(*command_of(STAGES[name]))


def test_closure_follows_function_level_imports_and_the_task_entry_module() -> None:
    """The analysis sees what the issue found missing: lazy imports and the loaded task."""
    files = stage_files("evaluate", "language_model")
    assert "pipeline/tasks/language_model/model.py" in files  # custom layers to load the model
    assert "pipeline/core/datasets.py" in files
    assert "pipeline/tasks/language_model/ngram.py" in files  # the baseline
    assert "pipeline/core/trainer.py" not in files  # evaluation never trains
    assert "pipeline/tasks/classification/serving.py" in stage_files("train", "classification")


def _import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports (any depth, not TYPE_CHECKING-only imports)."""
    graph = {}
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        module = module_name(path)
        imports = imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        graph[module] = {name for name in imports if module_file(name)} - {module}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path, or None (iterative DFS with colours)."""
    state: dict[str, int] = {}
    for start in graph:
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path, state[start] = [start], 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_no_import_cycles() -> None:
    """No module reaches itself through imports, function-level ones included."""
    assert _find_cycle(_import_graph()) is None, " -> ".join(_find_cycle(_import_graph()) or [])


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_shared_code_never_names_a_task() -> None:
    """The trainer and the other shared modules know no task by name."""
    tasks = tuple(Task)
    for path in [*(ROOT / "pipeline" / "core").glob("*.py"), ROOT / "pipeline/train.py"]:
        text = path.read_text(encoding="utf-8")
        assert not any(f'"{task}"' in text or f"tasks.{task}" in text for task in tasks), path


def test_every_task_implements_both_interfaces() -> None:
    from pipeline.tasks import EvaluationTask, TrainingTask, evaluation_task, training_task

    for task in Task:
        assert isinstance(training_task(task), TrainingTask)
        assert isinstance(evaluation_task(task), EvaluationTask)


# --------------------------------------------------------------------------- real dvc


def _placeholder(path: Path, stage: str) -> None:
    """A stand-in for a dep or output: a JSON file, a file, or a directory with one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text("{}")
    elif path.suffix:
        path.write_text(stage)
    else:
        path.mkdir(exist_ok=True)
        (path / "placeholder").write_text(stage)


def _dvc(project: Path, *args: str) -> str:
    done = subprocess.run(
        [*DVC, *args], cwd=project, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline's code and dvc.yaml in a scratch repo, every stage committed as up to date."""
    root = tmp_path_factory.mktemp("structure")
    shutil.copytree(
        ROOT / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copyfile(ROOT / name, root / name)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    _dvc(root, "config", "core.analytics", "false")
    for name, stage in STAGES.items():
        paths = [d for d in stage.get("deps", []) if not d.startswith("pipeline/")]
        for key in ("outs", "metrics", "plots"):
            paths += [
                out if isinstance(out, str) else next(iter(out)) for out in stage.get(key, [])
            ]
        for path in paths:
            _placeholder(root / path, name)
    _dvc(root, "commit", "-f", "-q")
    assert json.loads(_dvc(root, "status", "--json")) == {}
    return root


def _stale_stages(project: Path) -> set[str]:
    return set(json.loads(_dvc(project, "status", "--json")))


EDITED = [  # (module, the stage it is picked for)
    "pipeline/core/sources.py",
    "pipeline/tokenize.py",
    "pipeline/tasks/classification/serving.py",
    "pipeline/tasks/classification/evaluate.py",
    "pipeline/tasks/language_model/train.py",
    "pipeline/tasks/language_model/ngram.py",
    "pipeline/tasks/translation/reports.py",
    "pipeline/tasks/translation/lexicon.py",
    "pipeline/core/tokens.py",
    "pipeline/featurize.py",
    "pipeline/tasks/speech/audio.py",
]


@pytest.mark.parametrize("module", EDITED)
def test_editing_a_module_marks_exactly_the_stages_that_import_it(
    project: Path, module: str
) -> None:
    expected = {name for name, stage in STAGES.items() if module in code_deps(stage)}
    assert expected, f"no stage imports {module}"
    path = project / module
    original = path.read_text(encoding="utf-8")
    try:
        path.write_text(original + "\n# edited\n", encoding="utf-8")
        assert _stale_stages(project) == expected
    finally:
        path.write_text(original, encoding="utf-8")


def _would_run(project: Path, key: str, old: str, new: str) -> list[str]:
    """Stages `dvc repro --dry` would run after one params.yaml edit (then undone)."""
    params = project / "params.yaml"
    original = params.read_text(encoding="utf-8")
    edited = re.sub(rf"(?m)^(\s+{key}: ){re.escape(old)}$", rf"\g<1>{new}", original, count=1)
    assert edited != original, key
    try:
        params.write_text(edited, encoding="utf-8")
        return re.findall(r"Running stage '([^']+)'", _dvc(project, "repro", "--dry"))
    finally:
        params.write_text(original, encoding="utf-8")


def test_beam_size_reruns_only_translation_evaluation(project: Path) -> None:
    assert _would_run(project, "beam_size", "4", "8") == ["evaluate_translation"]


def test_sampling_temperature_reruns_only_language_model_evaluation(project: Path) -> None:
    assert _would_run(project, "sample_temperature", "0.8", "1.2") == ["evaluate_language_model"]


def test_a_training_key_reruns_training_whose_model_evaluation_reads(project: Path) -> None:
    """Dry runs do not cascade; evaluation reruns because it reads the model training writes
    (the real repro is in tests/test_pipeline.py)."""
    assert _would_run(project, "units", "128", "96") == ["train_translation"]
    assert "models/translation" in STAGES["evaluate_translation"]["deps"]
    assert "models/translation" in STAGES["train_translation"]["outs"]
