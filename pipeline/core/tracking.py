"""One MLflow run per stage invocation, with buffered metric logging.

Every stage opens its run through `stage_run`, so all runs carry the same tags (stage, task,
git commit, DVC experiment, data source) and a stage that raises is marked FAILED. Metrics are
buffered and sent with `log_batch` (one call per metric costs ~5 ms locally, 12-55 ms over HTTP).

Stages run by one `dvc repro`, or by one experiment of `dvc exp run`, are nested under one
parent run per task experiment, named after the DVC experiment (or `repro-<commit>`): the
pipeline run is one row of the task's runs table that expands into its stages. Each stage is its
own process, so no state is shared: the parent is found by its `pipeline.invocation` tag (the
host, the DVC process and the experiment name), or created by the first stage. An evaluation
is nested one level deeper, under the training run it scores (MLflow gives a run one parent).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys, as MLflow params are flat."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


# Files `dvc repro` itself rewrites mid-pipeline: they do not make the user's code dirty.
DVC_OWNED = (
    ".",
    ":(exclude)dvc.lock",
    ":(exclude,glob)**/.gitignore",
    ":(exclude)metrics",
    ":(exclude)plots",
)


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """Return the commit and whether the user's files differ from it (DVC's own do not count)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", *DVC_OWNED))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "pipeline.git_dirty": str(dirty).lower()}


def manifest_tags(manifest: Mapping[str, Any] | None) -> dict[str, str]:
    """Tag runs with the data source recorded by the download stage."""
    if not manifest:
        return {}
    source = manifest.get("source", {})
    name = source.get("package") or source.get("url") or ""
    tags = {
        "data.source": f"{source.get('kind', '?')}:{name}",
        "data.version": str(source.get("version", "")),
        "data.sha256": str(source.get("sha256", "")),
    }
    return {k: v for k, v in tags.items() if v}


FLUSH_LATENCY = "perf/flush_ms"  # one point per flush (step = flush number), sent with the next


class StageRun:
    """Handle on an open MLflow run; metrics are buffered until `flush`.

    Each flush's duration is logged as `perf/flush_ms`, so a team can see what its tracking
    server costs the trainings (`benchmarks/tracking_load.py` reads them back).
    """

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self._metrics: list[Metric] = []
        self.flushes = 0
        self.models: list[str] = []  # ids of the MLflow models logged to this run, in order

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flat params in batches of MLflow's maximum size."""
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(params).items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set several tags in one request."""
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def last_step(self, key: str) -> int:
        """The highest step logged for `key` so far (0 if none): where a resumed run stands."""
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=0)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Buffer metrics; they are sent in batches by `flush` (and when the buffer fills)."""
        now = int(time.time() * 1000)
        self._metrics.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self._metrics) >= MAX_METRICS_PER_BATCH:
            self.flush()

    def flush(self) -> None:
        """Send buffered metrics with as few `log_batch` calls as possible."""
        pending, self._metrics = self._metrics, []
        if not pending:
            return
        started = time.perf_counter()
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            chunk = pending[start : start + MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=chunk)
        self.flushes += 1
        milliseconds = (time.perf_counter() - started) * 1000
        now = int(time.time() * 1000)
        self._metrics.append(Metric(FLUSH_LATENCY, milliseconds, now, self.flushes))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or directory to the run's artifact store."""
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)


def project_root(cwd: Path) -> Path:
    """The project directory, also from inside a DVC experiment's temporary copy.

    `dvc exp run --queue/--temp` runs stages in `<project>/.dvc/tmp/exps/...`; a store there
    would vanish with the copy, so the local store always lives in the real project root.
    """
    parts = cwd.resolve().parts
    return Path(*parts[: parts.index(".dvc")]) if ".dvc" in parts else cwd.resolve()


def make_client(cwd: Path | None = None) -> MlflowClient:
    """`MLFLOW_TRACKING_URI` if set, else the project's local sqlite store (`mlflow.db`)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return MlflowClient()
    root = project_root(cwd or Path.cwd())
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def _artifact_location(client: MlflowClient, name: str) -> str | None:
    """Pin a local store's artifacts to `<project>/mlruns/<experiment>` (not the cwd)."""
    uri = client.tracking_uri
    if not uri.startswith("sqlite:///") or os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns" / name).as_uri()


def _experiment_id(client: MlflowClient, name: str) -> str:
    """Get or create the experiment for a task.

    Two stages starting together (queued experiments, concurrent trainings on a shared
    server) may both find it missing; the one whose create loses the race reads the winner's.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(client, name))
    except MlflowException as exc:
        created = client.get_experiment_by_name(name)
        if created is None:
            raise
        log.debug("experiment %s was created concurrently (%s)", name, exc.error_code)
        return created.experiment_id


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached; raised before any work starts."""


def check_reachable(client: MlflowClient, timeout_s: float = 5.0) -> None:
    """Fail within seconds when an HTTP tracking server is down (MLflow would retry ~2 min)."""
    uri = client.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as reply:
            reply.read()
    except (OSError, ValueError) as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({exc}); start it, or unset "
            "MLFLOW_TRACKING_URI to use the local store"
        ) from None


def connected_client(cwd: Path | None = None) -> MlflowClient:
    """The configured client, once its server answered: every command that talks to MLflow
    starts here, so none of them waits minutes in MLflow's retries for a server that is down."""
    client = make_client(cwd)
    check_reachable(client)
    return client


def process_tags() -> dict[str, str]:
    """Host and PID of this stage, so a later stage can tell a dead run from a live one."""
    return {"pipeline.host": socket.gethostname(), "pipeline.pid": str(os.getpid())}


def newest_stage_run(client: MlflowClient, experiment_id: str, stage: str) -> Run | None:
    """The most recently started run of one stage in an experiment, or None if it has none."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`pipeline.stage` = '{stage}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def reap_orphans(client: MlflowClient, experiment_id: str, stage: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this stage whose process on this host is gone."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`pipeline.stage` = '{stage}' "
        f"and tags.`pipeline.host` = '{socket.gethostname()}'",
    )
    reaped = []
    for run in runs:
        pid = int(run.data.tags.get("pipeline.pid", "0") or 0)
        if pid and not _alive(pid):
            client.set_terminated(run.info.run_id, status="KILLED")
            reaped.append(run.info.run_id)
            log.warning("marked run %s KILLED: its process %d is gone", run.info.run_id, pid)
    return reaped


def reap_stage(task: str, stage: str) -> list[str]:
    """Mark KILLED this host's runs of a task's stage whose process is gone (e.g. workers a
    launcher had to kill); nothing when the experiment does not exist yet."""
    client = make_client()
    experiment = client.get_experiment_by_name(task)
    return reap_orphans(client, experiment.experiment_id, stage) if experiment else []


def _alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open_run(
    client: MlflowClient, experiment_id: str, name: str, resume_run_id: str | None
) -> str:
    """Start a new run, or reopen a previous one so a resumed training continues it."""
    if resume_run_id:
        client.update_run(resume_run_id, status="RUNNING")
        return resume_run_id
    return client.create_run(experiment_id, run_name=name).info.run_id


PARENT_TAG = "mlflow.parentRunId"  # the MLflow UI nests a run under its parent
INVOCATION_TAG = "pipeline.invocation"
INVOCATION_STAGE = "pipeline"  # the `pipeline.stage` of an invocation's parent run


@dataclass(frozen=True)
class Invocation:
    """One `dvc repro`, or one experiment of a `dvc exp run`, that this stage runs under."""

    key: str  # host:pid:start time of the DVC process:experiment name
    name: str  # the parent run's name
    pid: int  # the DVC process (its parent run is reaped once it is gone)


def dvc_invocation(commit: str = "") -> Invocation | None:
    """The DVC command running this stage (DVC sets `DVC_STAGE`), or None outside DVC."""
    if not os.environ.get("DVC_STAGE"):
        return None
    dvc = _dvc_ancestor()
    if dvc is None:
        log.debug("DVC_STAGE is set but no dvc process runs this stage: no parent run")
        return None
    pid, started = dvc
    experiment = os.environ.get("DVC_EXP_NAME", "")
    name = experiment or ("repro-" + commit[:7] if commit else "repro")
    return Invocation(f"{socket.gethostname()}:{pid}:{started:.2f}:{experiment}", name, pid)


def _dvc_ancestor() -> tuple[int, float] | None:
    """PID and start time of the nearest ancestor process that is `dvc` (`... dvc repro`,
    `python -m dvc ...`)."""
    import psutil  # a DVC dependency, and this runs only under DVC

    for process in psutil.Process().parents():
        try:
            head = process.cmdline()[:3]
            if any(Path(arg).name == "dvc" for arg in head) or "-m dvc" in " ".join(head):
                return process.pid, process.create_time()
        except psutil.Error:
            continue
    return None


@contextmanager
def invocation_parent(
    client: MlflowClient, experiment_id: str, invocation: Invocation, tags: Mapping[str, str]
) -> Iterator[str]:
    """Yield the invocation's parent run in this experiment (created by its first stage).

    The parent is RUNNING while one of its stages runs, then FINISHED; a failed or killed stage
    leaves it FAILED or KILLED for good.
    """
    reap_orphans(client, experiment_id, INVOCATION_STAGE)
    query = f"tags.`{INVOCATION_TAG}` = '{invocation.key}'"
    query += f" and tags.`pipeline.stage` = '{INVOCATION_STAGE}'"
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        parent = found[0].info.run_id
    else:
        parent_tags = {**tags, "pipeline.stage": INVOCATION_STAGE, "pipeline.pid": invocation.pid}
        parent = client.create_run(
            experiment_id,
            run_name=invocation.name,
            tags={k: str(v) for k, v in parent_tags.items()},
        ).info.run_id
    _mark_parent(client, parent, "RUNNING")
    status = "FAILED"
    try:
        yield parent
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _mark_parent(client, parent, status)


def _mark_parent(client: MlflowClient, run_id: str, status: str) -> None:
    """Set an invocation's status, unless a stage already failed it; never mask a stage error."""
    try:
        if client.get_run(run_id).info.status in ("FAILED", "KILLED"):
            return
        if status == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, status=status)
    except Exception:  # noqa: BLE001 - the stage's own outcome matters more
        log.warning("could not mark parent run %s %s", run_id, status)


@contextmanager
def stage_run(
    task: str,
    stage: str,
    params: Mapping[str, Any],
    manifest: Mapping[str, Any] | None = None,
    resume_run_id: str | None = None,
    client: MlflowClient | None = None,
    parent_run_id: str | None = None,
) -> Iterator[StageRun]:
    """Open an MLflow run for one stage; FAILED if the body raises, KILLED on Ctrl-C.

    The run is nested under `parent_run_id` if given, else under the DVC invocation's parent.
    """
    if client is None:
        client = connected_client()
    else:
        check_reachable(client)
    experiment_id = _experiment_id(client, task)
    reap_orphans(client, experiment_id, stage)
    git = git_state()
    tags = {"pipeline.task": task, **process_tags(), **git}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    invocation = dvc_invocation(git.get("mlflow.source.git.commit", ""))
    if invocation:
        tags[INVOCATION_TAG] = invocation.key
    with ExitStack() as stack:
        if parent_run_id is None and invocation is not None:
            parent_run_id = stack.enter_context(
                invocation_parent(client, experiment_id, invocation, tags)
            )
        with _stage_run(client, experiment_id, task, stage, resume_run_id) as run:
            tags |= {"pipeline.stage": stage, **manifest_tags(manifest)}
            run.set_tags({**tags, PARENT_TAG: parent_run_id} if parent_run_id else tags)
            run.log_params(params)
            yield run


@contextmanager
def _stage_run(
    client: MlflowClient, experiment_id: str, task: str, stage: str, resume_run_id: str | None
) -> Iterator[StageRun]:
    """Open (or reopen) the run; FINISHED after the body, FAILED if it raises, KILLED on Ctrl-C."""
    run_id = _open_run(client, experiment_id, f"{stage}-{task}", resume_run_id)
    run = StageRun(client, run_id, experiment_id)
    log.info("MLflow run %s (experiment %s) at %s", run_id, task, client.tracking_uri)
    try:
        yield run
        run.flush()
    except KeyboardInterrupt:
        _end(run, "KILLED")
        raise
    except BaseException:
        _end(run, "FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


# One sample costs ~33 ms (psutil, a run read and a `log_batch` on the local store): every 10 s
# that is 0.3% of one core, where every second would take 3%.
SYSTEM_METRICS_EVERY_S = 10.0


@contextmanager
def system_metrics(run: StageRun, resumed: bool = False) -> Iterator[None]:
    """Log CPU and memory use (MLflow's `system/...` metrics) while the body runs.

    MLflow's monitor samples on its own thread every `SYSTEM_METRICS_EVERY_S` seconds
    (`MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` overrides it); a resumed run continues its steps.
    Disk and network counters are left out: they describe the machine, not the training.
    """
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run.run_id,
        sampling_interval=SYSTEM_METRICS_EVERY_S,
        resume_logging=resumed,
        tracking_uri=run.client.tracking_uri,
    )
    skipped = (DiskMonitor, NetworkMonitor)
    monitor.monitors = [m for m in monitor.monitors if not isinstance(m, skipped)]
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def _end(run: StageRun, status: str) -> None:
    """Flush what we have and close the run without masking the original error."""
    try:
        run.flush()
    except Exception:  # noqa: BLE001 - the stage's own error matters more
        log.warning("could not flush metrics of run %s", run.run_id)
    try:
        run.client.set_terminated(run.run_id, status=status)
    except Exception:  # noqa: BLE001
        log.warning("could not mark run %s %s", run.run_id, status)


@contextmanager
def attached_run(run_id: str, stage: str, client: MlflowClient | None = None) -> Iterator[StageRun]:
    """Add a later stage's results to an existing run (evaluate logs beside its training)."""
    client = client or connected_client()
    run = StageRun(client, run_id, client.get_run(run_id).info.experiment_id)
    try:
        yield run
        run.flush()
    except BaseException:
        run.set_tags({f"pipeline.{stage}.status": "FAILED"})
        raise
    run.set_tags({f"pipeline.{stage}.status": "FINISHED", **_prefixed(git_state(), stage)})


def _prefixed(tags: Mapping[str, str], stage: str) -> dict[str, str]:
    """Namespace tags by stage so they do not overwrite the run's own."""
    return {f"pipeline.{stage}.{key.rsplit('.', 1)[-1]}": value for key, value in tags.items()}
