"""Load on a team's tracking server: MLflow on PostgreSQL, killed and restarted mid-load.

N concurrent tiny trainings (each logging every step's gradient norms) and a reader polling
the runs API like the UI does, against `mlflow server` on a throwaway PostgreSQL cluster on
loopback (`pipeline.server`, what `make mlflow-server-pg` runs); the server is killed with
SIGKILL once mid-load and started again. Optionally a `dvc exp run --queue ... -j 2` grid logs
through the same server. Then every run is checked against what it should hold: points lost
or duplicated (must be 0) and runs left RUNNING (must be 0). Flush latencies are the
`perf/flush_ms` points every training logs. The trainings run as batch work: one TensorFlow
thread each and a lower priority than the server they share the cores with. The machine's
load average at the start and end of each load is recorded: other work moves the latencies.

    python benchmarks/tracking_load.py --data data/tokenized/classification \\
        --out benchmarks/results/tracking_load.json
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import psutil
import typer
import yaml
from mlflow.tracking import MlflowClient

from pipeline.core.distribute import free_ports
from pipeline.core.metric_names import TRAIN_STEPS
from pipeline.server import LEAN_ENV, mlflow_command, postgres, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
TINY = {  # a short training that logs every step: 6 epochs, ~12 flushes each at N = 4
    "units": 8,
    "embedding_dim": 8,
    "max_len": 48,
    "batch_size": 16,
    "epochs": 6,
    "max_steps_per_epoch": 60,
    "log_every_n_steps": 1,
    "probe_batch_size": 8,
    "early_stopping_patience": None,
}
# Clients outlast a restart (the server is down ~10 s): retry sooner and longer than the CLI's.
RETRY_ENV = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7"}
# Several tiny trainings at once on few cores: one TensorFlow thread each, as a user should run
# them (TensorFlow sizes its pools to all cores per process; a model this small gains nothing).
TF_THREADS_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
# Trainings are batch work on the cores the shared server needs to answer promptly.
BATCH_NICE = 19  # default niceness of the trainings (`--batch-nice`)
TIMEOUT_S = 600


class Server:
    """`mlflow server` on a PostgreSQL URI that can be SIGKILLed and started again."""

    def __init__(self, backend_uri: str, root: Path):
        self.backend_uri, self.root = backend_uri, root
        self.port = free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with (self.root / "mlflow.log").open("ab") as log:
            self.process = subprocess.Popen(
                mlflow_command(self.backend_uri, self.root / "artifacts", self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **LEAN_ENV},
                start_new_session=True,
            )
        wait_healthy(self.uri, self.process)

    def kill(self) -> None:
        """SIGKILL the whole server, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def rss_mb(self) -> float:
        """Resident memory of the server and its workers."""
        try:
            main = psutil.Process(self.process.pid)
            parts = [main, *main.children(recursive=True)]
            return sum(p.memory_info().rss for p in parts) / 2**20
        except (psutil.Error, AttributeError):
            return 0.0


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages: how much else wanted the cores."""
    return [round(value, 2) for value in os.getloadavg()]


def write_params(path: Path, extra: dict[str, Any] | None = None) -> Path:
    """The repository's params with TINY training for classification."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["classification"] |= TINY | (extra or {})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def as_batch(process: subprocess.Popen, nice: int) -> subprocess.Popen:
    """Run a just-started process (started in its own session) below the tracking server.

    With autogroup scheduling (`kernel.sched_autogroup_enabled`, on in most distributions)
    `nice` only ranks processes within one session, so the session's group is niced too.
    """
    with suppress(OSError):  # no autogroup in this kernel: plain nice is what counts
        Path(f"/proc/{process.pid}/autogroup").write_text(str(nice))
    with suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, process.pid, nice)
    return process


def stop_all(processes: list[subprocess.Popen]) -> None:
    """SIGKILL what is still running (they have their own sessions: Ctrl-C misses them)."""
    for process in processes:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_trainings(
    data: Path, work: Path, count: int, env: dict[str, str], nice: int
) -> list[Any]:
    """`count` trainings of the real `train` command, each in its own directory."""
    processes = []
    for index in range(count):
        out = work / f"training-{index}"
        out.mkdir(parents=True)
        params = write_params(out / "params.yaml", {"seed": index})
        args = ["train", "classification", "--data", str(data.resolve()), "--out", "model",
                "--plots", "plots", "--metrics", "train.json", "--checkpoints", "ckpt",
                "--params", str(params)]  # fmt: skip
        with (out / "train.log").open("w") as log:
            processes.append(
                as_batch(
                    subprocess.Popen(
                        [sys.executable, "-m", "pipeline", *args],
                        cwd=out,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    ),
                    nice,
                )
            )
    return processes


def poll_runs(client: MlflowClient, stop: threading.Event, latencies: list[float]) -> None:
    """Search the runs every half second, like the runs page of the UI."""
    while not stop.wait(0.5):
        started = time.perf_counter()
        try:
            for experiment in client.search_experiments():
                client.search_runs([experiment.experiment_id], max_results=100)
        except Exception:  # noqa: BLE001 - the server may be down: that is the point
            continue
        latencies.append((time.perf_counter() - started) * 1000)


def sample(fn: Callable[[], float], stop: threading.Event, into: list[float]) -> None:
    """Call `fn` every half second until stopped (memory of the server)."""
    while not stop.wait(0.5):
        into.append(fn())


def wait_for_first_flush(client: MlflowClient, deadline_s: float = 300) -> None:
    """Block until some training has sent its first gradient norms (the load is on)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        experiment = client.get_experiment_by_name("classification")
        if experiment and client.search_runs(
            [experiment.experiment_id], filter_string="metrics.`grad_norm/global` > 0"
        ):
            return
        time.sleep(0.2)
    raise RuntimeError("no training logged anything")


def run_grid(work: Path, env: dict[str, str], nice: int) -> subprocess.Popen:
    """A `dvc exp run --queue -j 2` grid of two tiny trainings in a scratch project."""
    repo = work / "grid"
    shutil.copytree(
        ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    write_params(repo / "params.yaml")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["download"]["classification"]["max_examples"] = 600
    params["tokenize"]["classification"]["vocab_size"] = 400
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    script = " && ".join([
        "git init -q", "dvc init -q", "dvc config core.analytics false",
        "git add -A", "git -c user.name=b -c user.email=b@b commit -qm grid",
        "dvc repro -q tokenize@classification",
        "git add -A", "git -c user.name=b -c user.email=b@b commit -qm data",
        "dvc exp run -q --queue train_classification -S train.classification.units=8,12",
        "dvc queue start -j 2", "until dvc queue status | grep -q Success && "
        "! dvc queue status | grep -qE 'Queued|Running'; do sleep 2; done",
        "dvc queue stop",
    ])  # fmt: skip
    env = env | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    return as_batch(subprocess.Popen(["bash", "-c", script], cwd=repo, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True), nice)  # fmt: skip


def audit(client: MlflowClient, down: tuple[float, float] | None) -> dict[str, Any]:
    """What every training run holds against what it should: lost, duplicated, RUNNING.

    Flushes are split by whether they overlapped the server's downtime `down` (epoch
    seconds): those wait for MLflow's retries; the others show the server's steady cost.
    """
    experiment = client.get_experiment_by_name("classification")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    training = [r for r in runs if r.data.tags.get("pipeline.stage") == "train"]
    lost = duplicated = points = checked = 0
    flushes: list[float] = []
    during_restart: list[float] = []
    for run in training:
        steps = int(run.data.metrics[TRAIN_STEPS])  # a run without it never finished training
        logged = [m.step for m in client.get_metric_history(run.info.run_id, "grad_norm/global")]
        duplicated += len(logged) - len(set(logged))
        lost += len(set(range(1, steps + 1)) - set(logged))
        checked += steps
        for key in run.data.metrics:
            points += len(client.get_metric_history(run.info.run_id, key))
        for m in client.get_metric_history(run.info.run_id, "perf/flush_ms"):
            end = m.timestamp / 1000
            hit = down is not None and end - m.value / 1000 <= down[1] and end >= down[0]
            (during_restart if hit else flushes).append(m.value)
    return {
        "training_runs": len(training),
        "steps_checked": checked,  # every one of them must have its gradient norm
        "finished": sum(r.info.status == "FINISHED" for r in training),
        "left_running": sum(r.info.status == "RUNNING" for r in runs),
        "lost_points": lost,
        "duplicated_points": duplicated,
        "metric_points": points,
        "flush_ms": flushes,
        "flush_ms_during_restart": during_restart,
    }


def run_load(
    data: Path,
    trainings: int,
    work: Path,
    backend_uri: str,
    restart: bool,
    grid: bool = False,
    nice: int = BATCH_NICE,
) -> dict[str, Any]:
    """One load scenario on a fresh database schema; returns its measurements."""
    server = Server(backend_uri, work)
    work.mkdir(parents=True, exist_ok=True)
    server.start()
    env = {
        **os.environ,
        **RETRY_ENV,
        **TF_THREADS_ENV,
        "MLFLOW_TRACKING_URI": server.uri,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    client = MlflowClient(server.uri)
    # A team's experiment exists before its trainings: N first stages racing to create it
    # would fail all but one (get-or-create is not atomic over HTTP).
    client.create_experiment("classification")
    stop, reads, rss = threading.Event(), [], []
    threads = [
        threading.Thread(target=poll_runs, args=(client, stop, reads), daemon=True),
        threading.Thread(target=sample, args=(server.rss_mb, stop, rss), daemon=True),
    ]
    load_start, started = load_average(), time.perf_counter()
    processes: list[subprocess.Popen] = []
    try:
        for thread in threads:
            thread.start()
        processes += start_trainings(data, work, trainings, env, nice)
        if grid:
            processes.append(run_grid(work, env, nice))
        down = None
        if restart:
            wait_for_first_flush(client)
            killed = time.time()
            server.kill()
            time.sleep(1.0)
            server.start()
            down = (killed, time.time())
        codes = [p.wait(timeout=TIMEOUT_S) for p in processes]
        seconds = time.perf_counter() - started
        stop.set()
        result = audit(client, down)
    finally:
        stop.set()
        stop_all(processes)
        server.kill()
    flush = np.asarray(result.pop("flush_ms") or [np.nan])
    waited = result.pop("flush_ms_during_restart")
    return {
        "trainings": trainings,
        "grid": grid,
        "restarted": restart,
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "trainings_nice": nice,
        "exit_codes": codes,
        "seconds": round(seconds, 1),
        "points_per_second": round(result["metric_points"] / seconds, 1),
        "flush_ms_p50": round(float(np.nanpercentile(flush, 50)), 1),
        "flush_ms_p95": round(float(np.nanpercentile(flush, 95)), 1),
        "flushes": int(np.isfinite(flush).sum()),
        "flushes_during_restart": len(waited),
        "flush_ms_max_during_restart": round(max(waited, default=0.0), 1),
        "server_down_s": round(down[1] - down[0], 1) if down else 0.0,
        "read_ms_p95": round(float(np.percentile(reads or [np.nan], 95)), 1),
        "server_rss_mb_max": round(max(rss or [0.0]), 1),
        **result,
    }


def write_results(path: Path, loads: list[dict[str, Any]]) -> None:
    """The loads measured so far, with the machine they ran on."""
    machine = {"cpus": os.cpu_count(), "platform": platform.platform()}
    path.write_text(json.dumps({"machine": machine, "loads": loads}, indent=2) + "\n")


def main(
    data: Annotated[Path, typer.Option(help="Tokenized classification data (dvc repro).")] = Path(
        "data/tokenized/classification"
    ),
    counts: Annotated[
        list[int] | None, typer.Option("--trainings", help="N concurrent trainings (1 2 4).")
    ] = None,
    grid_with: Annotated[
        int, typer.Option(help="Then N trainings plus the DVC grid (0 = no grid scenario).")
    ] = 4,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
    batch_nice: Annotated[
        int,
        typer.Option(
            min=0, max=19, help="Niceness of the trainings and the grid (their sessions too)."
        ),
    ] = BATCH_NICE,
) -> None:
    """Print one row per load (N trainings; then N with the DVC grid), all with a restart."""
    scenarios = [(count, False) for count in counts or [1, 2, 4]]
    scenarios += [(grid_with, True)] if grid_with else []
    results = []
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(ignore_cleanup_errors=True)))
        for count, grid in scenarios:
            cluster = stack.enter_context(postgres(free_ports(1)[0]))
            work = root / f"n{count}{'-grid' if grid else ''}"
            row = run_load(data, count, work, cluster.uri, restart=True, grid=grid, nice=batch_nice)
            results.append(row)
            if out:  # after every scenario, so a later failure keeps what was measured
                write_results(out, results)
            typer.echo(
                f"N={count}{' + grid' if grid else ''}: {row['points_per_second']} points/s, "
                f"flush p50 {row['flush_ms_p50']} ms p95 {row['flush_ms_p95']} ms "
                f"({row['flushes_during_restart']} during the restart, up to "
                f"{row['flush_ms_max_during_restart']} ms), "
                f"server {row['server_rss_mb_max']} MB, lost {row['lost_points']}, "
                f"duplicated {row['duplicated_points']}, left RUNNING {row['left_running']}"
            )


if __name__ == "__main__":
    typer.run(main)
