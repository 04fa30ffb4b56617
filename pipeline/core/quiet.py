"""Keep TensorFlow's native start-up logs off the console (`--verbose` lets them through).

`TF_CPP_MIN_LOG_LEVEL` filters the C++ log lines TensorFlow writes while it runs, but not the
ones its shared libraries write while `import tensorflow` loads them (each library's own copy of
absl logs before anything configured it, e.g. `oneDNN custom operations are on`, with a
`WARNING: All log messages before absl::InitializeLog() ...` banner). Those are caught by
importing TensorFlow, the first time anything does, with file descriptor 2 sent to a temporary
file; what it held is written back without the native log lines.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

# 3 = no INFO, WARNING or ERROR lines from C++ (errors reach Python as exceptions anyway).
MIN_LOG_LEVEL = "3"
# absl/glog lines (`I0000 00:00:1795995081.138277   12070 port.cc:153] ...`), TSL's own format
# (`2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ...`) and absl's banner.
NATIVE_LOG = re.compile(
    r"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\]"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's native logs in this process (a variable set by the user wins)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", MIN_LOG_LEVEL)
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietImport())


def drop_native_logs(text: str) -> str:
    """`text` without TensorFlow's native log lines."""
    return "".join(line for line in text.splitlines(True) if not NATIVE_LOG.match(line))


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there directly); write back all but native logs."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            sys.stderr.write(drop_native_logs(capture.read().decode(errors="replace")))
            sys.stderr.flush()


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, with a loader that runs its import under the stderr filter."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # by the finders after this one
        if spec is not None and spec.loader is not None:
            spec.loader.exec_module = _filtered(spec.loader.exec_module)  # type: ignore[method-assign]
        return spec


def _filtered(exec_module: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
    """`exec_module` run under `native_stderr_filtered`."""

    def run(module: ModuleType) -> None:
        with native_stderr_filtered():
            exec_module(module)

    return run
