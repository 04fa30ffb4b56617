"""A team's tracking server on this machine: a lean `mlflow server` on PostgreSQL or sqlite.

`python -m pipeline server --backend postgresql` starts a throwaway PostgreSQL cluster (its
own data directory, port and socket, loopback only), creates the database and runs MLflow on
it with artifacts on local disk, until Ctrl-C stops everything it started. PostgreSQL refuses
to run as root, so as root the cluster runs as the `postgres` user in a directory it owns.
The tests start servers the same way.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DATABASE, ROLE = "mlflow", "mlflow"
LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 2 processes, ~0.5 GB (FACTS)
# MLflow 3.17's UI opens its GenAI (traces) view unless the URL asks for model training.
TRAINING_VIEW = "workflowType=machine_learning"


class ServerError(RuntimeError):
    """A server could not be started; the message says which and why."""


def postgres_bin(name: str) -> str:
    """Path of a PostgreSQL server program (Debian keeps them out of PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        raise ServerError(f"{name} not found: install PostgreSQL (apt-get install -y postgresql)")
    return found[-1]


def _as_owner(command: list[str], owner: str | None) -> list[str]:
    """Run as `owner` (root may not run PostgreSQL)."""
    return ["runuser", "-u", owner, "--", *command] if owner else command


def _run(command: list[str], owner: str | None) -> None:
    done = subprocess.run(_as_owner(command, owner), capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise ServerError(f"{Path(command[0]).name} failed: {done.stderr.strip()[-500:]}")


@dataclass(frozen=True)
class Postgres:
    """A running throwaway cluster."""

    root: Path
    port: int
    owner: str | None

    @property
    def uri(self) -> str:
        """MLflow's SQLAlchemy URI for the database (psycopg 3 driver)."""
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"


@contextmanager
def postgres(port: int) -> Iterator[Postgres]:
    """Init, start and finally stop and delete a cluster listening on 127.0.0.1:`port`."""
    owner = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
    if owner:
        record = pwd.getpwnam(owner)
        os.chown(root, record.pw_uid, record.pw_gid)
    data = root / "data"
    try:
        _run([postgres_bin("initdb"), "-D", str(data), "-U", ROLE, "--auth=trust",
              "-E", "UTF8", "--no-locale"], owner)  # fmt: skip
        # fsync=off: the cluster is deleted when the server stops, so only a crash of MLflow
        # matters, and PostgreSQL outlives it with every commit it acknowledged. A machine
        # crash loses the cluster either way; a real team database keeps fsync on (commits cost
        # no measurable latency here either way: tracking_load.json is CPU-bound).
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([postgres_bin("pg_ctl"), "-D", str(data), "-o", options,
              "-l", str(root / "postgres.log"), "-w", "start"], owner)  # fmt: skip
        try:
            _run([postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", ROLE,
                  DATABASE], owner)  # fmt: skip
            yield Postgres(root, port, owner)
        finally:
            _run([postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], owner)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mlflow_command(backend_uri: str, artifacts: Path, port: int) -> list[str]:
    """A lean `mlflow server` on loopback (one worker; FACTS.md)."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Wait for `/health` to answer, or fail if the server exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise ServerError(f"mlflow server at {url} not healthy after {timeout_s:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """Stop a server's whole process group (SIGTERM, then SIGKILL)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


@contextmanager
def mlflow_server(backend_uri: str, root: Path, port: int) -> Iterator[subprocess.Popen]:
    """Run a lean MLflow server (its own process group, log in `root/mlflow.log`)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "mlflow.log").open("ab") as out:
        process = subprocess.Popen(
            mlflow_command(backend_uri, root / "artifacts", port),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **LEAN_ENV},
            start_new_session=True,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        yield process
    finally:
        stop(process)


def serve(backend: str, root: Path, port: int, db_port: int) -> None:
    """Run a tracking server until interrupted, then stop everything it started."""
    if backend == "sqlite":
        with mlflow_server(f"sqlite:///{root.resolve() / 'mlflow.db'}", root, port) as process:
            log.info("MLflow on sqlite at http://127.0.0.1:%d", port)
            process.wait()
        return
    with postgres(db_port) as cluster, mlflow_server(cluster.uri, root, port) as process:
        log.info("MLflow on %s at http://127.0.0.1:%d", cluster.uri, port)
        process.wait()


def runs_page(base_url: str, experiment_id: str) -> str:
    """The UI's runs table of an experiment, in its model-training view."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}"


def runs_pages(client: MlflowClient, base_url: str) -> dict[str, str]:
    """Each experiment that holds runs (one per task), by name, with its runs page."""
    return {
        experiment.name: runs_page(base_url, experiment.experiment_id)
        for experiment in client.search_experiments(order_by=["name"])
        if client.search_runs([experiment.experiment_id], max_results=1)
    }
