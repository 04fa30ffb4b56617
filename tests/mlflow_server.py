"""Real `mlflow server` and `mlflow models serve` processes for tests, stopped by PID group.

The tracking server is started lean (FACTS.md: `--workers 1` and job execution off: 2 processes,
~0.5 GB, ~7 s to healthy) on a free 127.0.0.1 port with a sqlite store and a local artifact root
under a test directory. Each process gets its own session, so stopping it signals the whole
group and no uvicorn worker survives the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pipeline.core.distribute import free_ports
from pipeline.server import postgres

MLFLOW = [sys.executable, "-m", "mlflow"]
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0


def lean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A lean server's environment: no job-execution workers, the venv's scripts on PATH.

    `mlflow models serve` execs `uvicorn` by name, so the venv's bin must come first even when
    pytest was started as `.venv/bin/pytest` without activating the venv.
    """
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PATH": path}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env | dict(extra or {})


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll `url` until it answers 200; fail early (with the log tail) if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited {process.returncode}\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f} s\n{tail(log)}")


def tail(log: Path, chars: int = 3000) -> str:
    """The end of a process log, for failure messages."""
    return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no log)"


def stop_group(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group, SIGKILL it after `timeout_s`; wait for the leader."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout_s)
    # Workers may outlive a leader that exited on its own: reap the rest of the group too.
    _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group that may already be gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (zombies of ours are reaped first)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_group(
    command: list[str], cwd: Path, env: dict[str, str], log: Path, ready_url: str, timeout_s: float
) -> subprocess.Popen:
    """Start `command` in its own process group, appending to `log`; wait for `ready_url`.

    If it never becomes ready the whole group is stopped before the error propagates.
    """
    with log.open("a") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, signalled as a whole
        )
    try:
        wait_http(ready_url, process, log, timeout_s)
    except BaseException:
        stop_group(process)
        raise
    return process


class MlflowServer:
    """A lean `mlflow server` on one port and one store; `restart` keeps both."""

    def __init__(self, root: Path, port: int | None = None, backend_uri: str | None = None):
        self.root = root
        self.backend_uri = backend_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.port = port or free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def command(self) -> list[str]:
        """`mlflow server` on its store with proxied artifacts under `root`."""
        return [
            *MLFLOW,
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until `/health` answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            log.write(f"\n--- start {self.starts + 1}\n")
        self.starts += 1
        self.process = start_group(
            self.command(), self.root, lean_env(), self.log, f"{self.uri}/health", timeout_s
        )

    def stop(self) -> None:
        """Stop every process of the server (SIGTERM, then SIGKILL)."""
        if self.process is not None:
            stop_group(self.process)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down `down_s` seconds, start again on the same port and store."""
        self.stop()
        time.sleep(down_s)
        self.start()


@contextmanager
def running_server(root: Path, backend: str = "sqlite") -> Iterator[MlflowServer]:
    """A started `MlflowServer` under `root`, on sqlite or on a throwaway PostgreSQL cluster
    (`pipeline.server.postgres`, as `make mlflow-server-pg` runs it); all of it stops on exit."""
    with ExitStack() as stack:
        uri = None
        if backend == "postgresql":
            uri = stack.enter_context(postgres(free_ports(1)[0])).uri
        server = MlflowServer(root, backend_uri=uri)
        server.start()
        stack.callback(server.stop)
        yield server


class ModelServer:
    """`mlflow models serve --env-manager local` for one model URI on a free port."""

    def __init__(self, model_uri: str, root: Path, tracking_uri: str):
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "model-server.log"
        self.command = [
            *MLFLOW,
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        self.env = lean_env({"MLFLOW_TRACKING_URI": tracking_uri})
        self.root = root
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start serving and wait for `/ping` (the model is loaded by then)."""
        self.log.write_text("")
        self.process = start_group(
            self.command, self.root, self.env, self.log, f"{self.url}/ping", timeout_s
        )

    def stop(self) -> None:
        """Stop the scoring server and its workers."""
        if self.process is not None:
            stop_group(self.process)

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
