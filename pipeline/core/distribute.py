"""tf.distribute for the shared trainer: strategy choice, worker roles and a local launcher.

`train.<task>.distribute` picks the strategy. Under `multi_worker` every host runs the same
`train` command with its own `TF_CONFIG`; the chief (worker 0, or the task typed "chief")
writes the real outputs, checkpoints and MLflow run, while the other workers write theirs to
a scratch directory (Keras needs every worker to run the same callbacks and saves, because
reading mirrored weights may involve collectives). `launch_local` starts N such workers on
loopback ports, for trying multi-worker training on one machine.

`batch_size` stays the global batch: each of N replicas gets batch_size / N examples, and the
gradient is the mean over the global batch, so results match one worker with the same
batch_size and learning rate. To go faster with more workers, scale batch_size with the
worker count and the learning rate by the same factor (the linear scaling rule).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class WorkerFailed(RuntimeError):
    """A worker exited with an error or the workers ran past their time limit."""


@dataclass(frozen=True)
class Worker:
    """Where this process stands in the cluster."""

    strategy: object  # tf.distribute.Strategy (TensorFlow is imported lazily)
    index: int
    count: int
    is_chief: bool

    @property
    def replicas(self) -> int:
        """Replicas summed over all workers (the global batch is split this many ways)."""
        return int(self.strategy.num_replicas_in_sync)


def cluster_spec() -> dict | None:
    """The TF_CONFIG of this process, or None when it is not part of a cluster."""
    raw = os.environ.get("TF_CONFIG")
    return json.loads(raw) if raw else None


def make_worker(kind: str, collective_timeout_s: float) -> Worker:
    """Create the strategy first (multi-worker must precede other TF work) and this role."""
    import tensorflow as tf

    if kind == "multi_worker":
        if cluster_spec() is None:
            raise WorkerFailed(
                "distribute is multi_worker but TF_CONFIG is not set: run "
                "`train TASK --workers N` on one machine, or set TF_CONFIG on each host"
            )
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=collective_timeout_s
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        resolver = strategy.cluster_resolver
        task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
        spec = resolver.cluster_spec().as_dict()
        count = sum(len(spec.get(role, [])) for role in ("chief", "worker"))
        chief = task_type == "chief" or (
            task_type == "worker" and task_id == 0 and "chief" not in spec
        )
        index = task_id + (1 if task_type == "worker" and "chief" in spec else 0)
        return Worker(strategy, index, count, chief)
    if kind == "mirrored":
        return Worker(tf.distribute.MirroredStrategy(), 0, 1, True)
    return Worker(tf.distribute.get_strategy(), 0, 1, True)


@contextmanager
def scratch_for(worker: Worker) -> Iterator[Path | None]:
    """A throwaway directory for a non-chief worker's outputs (None for the chief)."""
    if worker.is_chief:
        yield None
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"pipeline-worker{worker.index}-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def free_ports(count: int) -> list[int]:
    """Loopback ports the OS reports free right now (held together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_cluster(count: int) -> list[str]:
    """One TF_CONFIG per local worker, all on loopback."""
    hosts = [f"127.0.0.1:{port}" for port in free_ports(count)]
    return [
        json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})
        for i in range(count)
    ]


def launch_local(
    count: int, argv: Sequence[str], log_dir: Path, timeout_s: float, grace_s: float
) -> None:
    """Run `python -m pipeline ARGV` as `count` workers; raise WorkerFailed if any fails.

    Worker 0 (the chief) prints to this terminal; the others write `worker-N.log` in
    `log_dir`. When one worker fails, or time runs out, the rest are interrupted and given
    `grace_s` to close their MLflow runs (a collective waiting on a dead peer gives up after
    the collective timeout), then killed, so nothing hangs.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    for index, tf_config in enumerate(local_cluster(count)):
        env = {**os.environ, "TF_CONFIG": tf_config}
        output = None if index == 0 else (log_dir / f"worker-{index}.log").open("w")
        command = [sys.executable, "-m", "pipeline", *argv]
        procs.append(subprocess.Popen(command, env=env, stdout=output, stderr=output))
    log.info("started %d workers (logs of workers 1..%d in %s)", count, count - 1, log_dir)
    try:
        _wait_all(procs, log_dir, timeout_s)
    finally:
        _stop(procs, grace_s)


def _wait_all(procs: list[subprocess.Popen], log_dir: Path, timeout_s: float) -> None:
    """Return when all workers succeed; raise as soon as one fails or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [proc.poll() for proc in procs]
        for index, code in enumerate(codes):
            if code not in (None, 0):
                where = "above" if index == 0 else f"in {log_dir / f'worker-{index}.log'}"
                raise WorkerFailed(
                    f"worker {index} exited with code {code} (its output is {where})"
                )
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            raise WorkerFailed(f"workers still running after {timeout_s:.0f} s; stopped them")
        time.sleep(0.2)


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    """Interrupt the workers still running, then kill those that ignore it."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
