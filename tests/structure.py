"""Static view of the package: which modules each dvc.yaml stage imports (no TensorFlow).

A stage `python -m pipeline <command> <task>` runs `pipeline/__main__.py`, the module level of
`pipeline/cli.py`, the imports inside the command's function (and the cli helpers it calls),
and the task's entry module `pipeline.tasks.<task>.<command>` that the stage loads by name.
From those roots every `import` counts, at any depth (a function-level import runs when the
function does), except those under `if TYPE_CHECKING:`.

`python -m tests.structure` prints each stage's expected code deps; `--write` puts them into
dvc.yaml.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"


def module_file(module: str) -> Path | None:
    """The file of a module or package inside the project, or None (outside / missing)."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = ROOT / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    """`pipeline/tasks/x/__init__.py` -> `pipeline.tasks.x`."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, functions: bool) -> Iterator[ast.AST]:
    """Nodes below `node`, skipping TYPE_CHECKING blocks (and function bodies unless asked)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for stmt in child.orelse for n in [stmt, *_walk(stmt, functions)])
            continue
        if not functions and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        yield child
        yield from _walk(child, functions)


def imported_modules(node: ast.AST, functions: bool = True) -> set[str]:
    """Project modules imported under `node` (`from a import b` counts `a.b` when a module)."""
    found: set[str] = set()
    for child in _walk(node, functions):
        if isinstance(child, ast.Import):
            found |= {alias.name for alias in child.names}
        elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
            found.add(child.module)
            found |= {f"{child.module}.{alias.name}" for alias in child.names}
    return {name for name in found if module_file(name)}


def with_parents(module: str) -> set[str]:
    """A module and the packages above it (importing it runs their `__init__`)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def closure(roots: set[str], opaque: frozenset[str] = frozenset()) -> set[str]:
    """Every project module the roots import, transitively (not looking inside `opaque`)."""
    seen: set[str] = set()
    todo = [m for root in roots for m in with_parents(root)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if module in opaque:
            continue
        path = module_file(module)
        assert path is not None, module
        for name in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            todo.extend(with_parents(name) - seen)
    return seen


def cli_roots(command: str) -> set[str]:
    """Modules the CLI imports at module level plus inside `command` and the helpers it calls."""
    tree = ast.parse((ROOT / PACKAGE / "cli.py").read_text(encoding="utf-8"))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    roots = imported_modules(tree, functions=False)
    todo, done = [command], set()
    while todo:
        name = todo.pop()
        done.add(name)
        roots |= imported_modules(functions[name])
        called = {
            n.func.id
            for n in ast.walk(functions[name])
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        todo.extend(called & functions.keys() - done)
    return roots


def stage_modules(command: str, task: str) -> set[str]:
    """Every project module `python -m pipeline <command> <task>` can import."""
    cli = f"{PACKAGE}.cli"  # only the command's part of it runs: see cli_roots
    roots = {f"{PACKAGE}.__main__", cli} | cli_roots(command)
    entry = f"{PACKAGE}.tasks.{task}.{command}"
    if module_file(entry):
        roots.add(entry)
    return closure(roots, opaque=frozenset({cli}))


def stage_files(command: str, task: str) -> list[str]:
    """`stage_modules` as sorted repository-relative paths (dvc.yaml's `deps` spelling)."""
    paths = {module_file(m) for m in stage_modules(command, task)}
    return sorted(str(p.relative_to(ROOT)) for p in paths if p)


def dvc_stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict]:
    """Stages of dvc.yaml with `foreach` expanded (`name@item`)."""
    stages = {}
    for name, stage in yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"].items():
        if "foreach" not in stage:
            stages[name] = stage
            continue
        for item in stage["foreach"]:
            text = yaml.safe_dump(stage["do"]).replace("${item}", str(item))
            stages[f"{name}@{item}"] = yaml.safe_load(text)
    return stages


def command_of(stage: dict) -> tuple[str, str]:
    """(command, task) of a stage's `python -m pipeline <command> <task> ...`."""
    argv = shlex.split(re.sub(r"\s+", " ", stage["cmd"]))
    start = argv.index(PACKAGE) + 1
    return argv[start], argv[start + 1]


def code_deps(stage: dict) -> list[str]:
    """The stage's declared deps that are package code."""
    return sorted(d for d in stage.get("deps", []) if d.startswith(f"{PACKAGE}/"))


def expected_deps() -> dict[str, list[str]]:
    """Expected code deps per dvc.yaml stage entry (a `foreach` entry shares one list)."""
    expected: dict[str, list[str]] = {}
    for name, stage in dvc_stages().items():
        files = stage_files(*command_of(stage))
        base = name.split("@")[0]
        if expected.setdefault(base, files) != files:
            raise SystemExit(f"{base}: foreach items import different code; split the stage")
    return expected


def rewrite_deps(dvc_yaml: Path = ROOT / "dvc.yaml") -> None:
    """Replace each stage's `- pipeline/...` dep lines with its import closure, in place."""
    expected, out, current = expected_deps(), [], None
    lines = dvc_yaml.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if match := re.match(r"^  (\w+):\s*$", line):
            current = match.group(1)
        if re.match(r"^\s+- pipeline/", line):
            indent = line[: line.index("-")]
            while index < len(lines) and re.match(r"^\s+- pipeline/", lines[index]):
                index += 1
            out += [f"{indent}- {path}" for path in expected[current]]
            continue
        out.append(line)
        index += 1
    dvc_yaml.write_text("\n".join(out) + "\n", encoding="utf-8")


def main() -> None:
    """Print each stage's expected code deps; `--write` puts them into dvc.yaml."""
    if sys.argv[1:] == ["--write"]:
        rewrite_deps()
        return
    for name, files in expected_deps().items():
        print(f"{name}:")
        for path in files:
            print(f"  - {path}")


if __name__ == "__main__":
    main()
