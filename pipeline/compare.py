"""Compare training runs of one task: what differs, how they scored, how their gradients flowed.

Runs are read back from MLflow. Each row pairs a training run with one of its evaluation runs
(children tagged `pipeline.train_run_id`), so evaluating one model with several beam sizes gives
one row each and `evaluate.beam_size` shows up among the differing params; a training run never
evaluated gives one row of its own. The comparison is a table (only the params that differ,
beside the architecture) and a self-contained HTML report with overlaid loss, gradient-norm and
gradient-flow curves (one line per training run); both are logged as artifacts of a `compare`
run in the task's experiment, so a comparison is itself tracked.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.core.metric_names import FLOW, epoch_key, flow_summary_key, is_flow_curve
from pipeline.core.tracking import stage_run
from pipeline.evaluate import TRAIN_RUN_TAG

log = logging.getLogger(__name__)

Row = dict[str, Any]

ALWAYS_PARAMS = ("cell", "units", "num_layers", "bidirectional")
FIRST_METRICS = ("val/loss", "val/accuracy")
METRIC_PREFIXES = ("val/", "test/", "baseline/")
GRADIENT_PREFIXES = (flow_summary_key("horizon", ""), flow_summary_key("log_ratio", ""))
TIMING_METRICS = ("perf/train_seconds", "perf/samples_per_second")
FLOW_PREFIX = FLOW
EVALUATE_PARAM_PREFIX = "evaluate."
EVALUATE_METRIC_PREFIXES = ("test/", "baseline/")  # copied onto the training run
EXP_TAG = "dvc.exp_name"
SHORT_ID = 8
MAX_TAG_LENGTH = 8000  # MLflow's limit on a tag value
SEARCH_PAGE = 1000
TRAIN_LOSS, VAL_LOSS = epoch_key("loss"), epoch_key("val_loss")


class CompareError(ValueError):
    """No run matches, or a filter is malformed: a message for the user, not a traceback."""


@dataclass(frozen=True)
class RunFilters:
    """Which training runs to compare; all given filters must hold."""

    run_ids: tuple[str, ...] = ()
    tag: str | None = None
    dvc_exp: str | None = None
    last: int | None = None
    finished_only: bool = True

    def describe(self) -> str:
        """Name the active selection filters, so an empty match says what was asked for."""
        chosen = {"run_ids": ",".join(self.run_ids), "tag": self.tag, "dvc_exp": self.dvc_exp}
        chosen["last"] = self.last
        return ", ".join(f"{k}={v}" for k, v in chosen.items() if v)


@dataclass(frozen=True)
class RunPair:
    """One row of the comparison: a training run and one evaluation of it (None: not evaluated)."""

    train: Run
    evaluation: Run | None = None

    @property
    def params(self) -> dict[str, str]:
        """Training params plus the evaluation's own settings, so decoding knobs can differ."""
        if self.evaluation is None:
            return dict(self.train.data.params)
        evaluated = self.evaluation.data.params.items()
        return self.train.data.params | {
            k: v for k, v in evaluated if k.startswith(EVALUATE_PARAM_PREFIX)
        }

    @property
    def metrics(self) -> dict[str, float]:
        """Training metrics plus this evaluation's scores, not the latest copy on the train run."""
        if self.evaluation is None:
            return dict(self.train.data.metrics)
        trained = self.train.data.metrics.items()
        own = {k: v for k, v in trained if not k.startswith(EVALUATE_METRIC_PREFIXES)}
        return own | self.evaluation.data.metrics

    @property
    def dvc_exp(self) -> str | None:
        """The DVC experiment that produced the row: an evaluation-only one names its own."""
        if self.evaluation is not None and EXP_TAG in self.evaluation.data.tags:
            return self.evaluation.data.tags[EXP_TAG]
        return self.train.data.tags.get(EXP_TAG)

    @property
    def start_time(self) -> int:
        """When the row's newest run started, so `--last` keeps the latest results."""
        return (self.evaluation or self.train).info.start_time or 0


@dataclass(frozen=True)
class CompareResult:
    """What `run_compare` produced and where it went."""

    run_id: str
    runs: list[Run]
    rows: list[Row]
    table: str
    report: Path
    files: list[Path] = field(default_factory=list)
    pairs: list[RunPair] = field(default_factory=list)


# --- selecting runs ------------------------------------------------------------------------


def select_runs(
    client: MlflowClient,
    task: str,
    *,
    run_ids: Sequence[str] | None = None,
    tag: str | None = None,
    dvc_exp: str | None = None,
    last: int | None = None,
    finished_only: bool = True,
) -> list[Run]:
    """Return the task's training runs, newest first, that pass every given filter."""
    check_last(last)
    experiment = client.get_experiment_by_name(task)
    if experiment is None:
        return []
    runs = _search_stage_runs(client, [experiment.experiment_id], "train", finished_only)
    if tag:
        key, value = parse_tag(tag)
        runs = [r for r in runs if r.data.tags.get(key) == value]
    if dvc_exp:
        runs = [r for r in runs if r.data.tags.get(EXP_TAG) == dvc_exp]
    if run_ids:
        runs = _match_ids(runs, run_ids)
    return runs[:last] if last is not None else runs


def check_last(last: int | None) -> None:
    """Reject `--last 0` up front, rather than comparing nothing."""
    if last is not None and last < 1:
        raise CompareError(f"--last must be at least 1, got {last}")


def select_pairs(client: MlflowClient, task: str, filters: RunFilters) -> list[RunPair]:
    """Select training runs, pair them with their evaluations; `last` counts rows, not runs.

    `dvc_exp` filters rows: an evaluation-only experiment (say, a beam size) names the
    evaluation run, not the training run it reused.
    """
    check_last(filters.last)
    runs = select_runs(
        client,
        task,
        run_ids=filters.run_ids,
        tag=filters.tag,
        finished_only=filters.finished_only,
    )
    pairs = pair_evaluations(client, runs)
    if filters.dvc_exp:
        pairs = [pair for pair in pairs if pair.dvc_exp == filters.dvc_exp]
    return pairs[: filters.last] if filters.last is not None else pairs


def pair_evaluations(client: MlflowClient, runs: Sequence[Run]) -> list[RunPair]:
    """One row per finished evaluation of each run (one bare row if none), newest first."""
    found = _evaluations(client, runs)
    pairs = [
        RunPair(run, evaluation)
        for run in runs
        for evaluation in found.get(run.info.run_id) or [None]
    ]
    return sorted(pairs, key=lambda pair: pair.start_time, reverse=True)  # stable on ties


def _evaluations(client: MlflowClient, runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Group the finished evaluate runs by the training run they scored, in one search."""
    wanted = {run.info.run_id for run in runs}
    experiments = sorted({run.info.experiment_id for run in runs})
    found: dict[str, list[Run]] = {}
    if not experiments:
        return found
    for evaluation in _search_stage_runs(client, experiments, "evaluate", finished_only=True):
        train_id = evaluation.data.tags.get(TRAIN_RUN_TAG)
        if train_id in wanted:
            found.setdefault(train_id, []).append(evaluation)
    return found


def training_runs(pairs: Sequence[RunPair]) -> list[Run]:
    """The distinct training runs behind the rows, in row order (curves are drawn per run)."""
    return list({pair.train.info.run_id: pair.train for pair in pairs}.values())


def as_pairs(items: Sequence[Run | RunPair]) -> list[RunPair]:
    """Accept bare training runs too, each a row with its own metrics (no evaluation lookup)."""
    return [item if isinstance(item, RunPair) else RunPair(item) for item in items]


def parse_tag(tag: str) -> tuple[str, str]:
    """Split a KEY=VALUE filter, so a missing '=' is an error rather than an empty match."""
    key, sep, value = tag.partition("=")
    if not sep or not key.strip():
        raise CompareError(f"--tag expects KEY=VALUE, got {tag!r}")
    return key.strip(), value.strip()


def _search_stage_runs(
    client: MlflowClient, experiment_ids: list[str], stage: str, finished_only: bool
) -> list[Run]:
    """Page through one stage's runs; tags and ids are matched locally (no quoting rules)."""
    query = f"tags.`pipeline.stage` = '{stage}'"
    if finished_only:
        query += " and attributes.status = 'FINISHED'"
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=query,
            max_results=SEARCH_PAGE,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _match_ids(runs: list[Run], wanted: Sequence[str]) -> list[Run]:
    """Keep runs named by full id or unique prefix; a typo is an error, not a silent drop."""
    chosen: set[str] = set()
    for prefix in wanted:
        matches = [r.info.run_id for r in runs if r.info.run_id.startswith(prefix.strip())]
        if not matches:
            raise CompareError(f"no training run matching the other filters has id {prefix!r}")
        if len(matches) > 1:
            raise CompareError(f"run id prefix {prefix!r} is ambiguous: {', '.join(matches)}")
        chosen.add(matches[0])
    return [r for r in runs if r.info.run_id in chosen]


# --- the table -----------------------------------------------------------------------------


def differing_params(runs: Sequence[Run | RunPair]) -> list[str]:
    """List params whose values are not the same in every row (a missing param counts)."""
    params = [pair.params for pair in as_pairs(runs)]
    keys = sorted({key for row in params for key in row})
    return [k for k in keys if len({row.get(k) for row in params}) > 1]


def metric_columns(runs: Sequence[Run | RunPair]) -> list[str]:
    """Order the known metric keys that any row has: validation, test, baseline, gradients."""
    present = {key for pair in as_pairs(runs) for key in pair.metrics}
    first = [k for k in FIRST_METRICS if k in present]
    scored = [
        k
        for prefix in METRIC_PREFIXES
        for k in sorted(present)
        if k.startswith(prefix) and k not in first
    ]
    layers = sorted(
        {k.removeprefix(p) for k in present for p in GRADIENT_PREFIXES if k.startswith(p)}
    )
    gradient = [
        f"{p}{layer}" for layer in layers for p in GRADIENT_PREFIXES if f"{p}{layer}" in present
    ]
    return first + scored + gradient + [k for k in TIMING_METRICS if k in present]


def comparison_table(runs: Sequence[Run | RunPair]) -> list[Row]:
    """Build one row per run or evaluation: identity, architecture, differing params, metrics."""
    pairs = as_pairs(runs)
    differing = [k for k in differing_params(pairs) if k not in ALWAYS_PARAMS]
    metrics = metric_columns(pairs)
    with_eval = any(pair.evaluation is not None for pair in pairs)
    with_exp = any(pair.dvc_exp is not None for pair in pairs)
    rows = []
    for pair in pairs:
        row = _identity(pair, with_eval, with_exp)
        params, scores = pair.params, pair.metrics
        row |= {k: params.get(k) for k in (*ALWAYS_PARAMS, *differing)}
        row |= {k: scores.get(k) for k in metrics}
        rows.append(row)
    return rows


def _identity(pair: RunPair, with_eval: bool, with_exp: bool) -> Row:
    """Name a row's runs; the columns appear only when some row has a value for them."""
    row: Row = {"run": pair.train.info.run_name, "id": pair.train.info.run_id[:SHORT_ID]}
    if with_eval:
        row["eval_id"] = pair.evaluation.info.run_id[:SHORT_ID] if pair.evaluation else None
    if with_exp:
        row["dvc_exp"] = pair.dvc_exp
    return row


def format_cell(value: Any) -> str:
    """Render one table value: 4 significant digits for numbers, '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[Row], max_width: int | None = 120) -> str:
    """Render rows as a text table; wider than `max_width`, runs become columns instead."""
    if not rows:
        return "(no runs)"
    headers = list(rows[0])
    cells = [[format_cell(row.get(h)) for h in headers] for row in rows]
    wide = _grid([headers, *cells])
    if max_width is None or max(map(len, wide.splitlines())) <= max_width:
        return wide
    # Many metrics, few runs: a field per line reads better than a line that wraps.
    fields = [[h, *(line[i] for line in cells)] for i, h in enumerate(headers)]
    if "id" in headers:  # the short run id names each column
        fields.insert(0, fields.pop(headers.index("id")))
    return _grid(fields)


def _grid(matrix: Sequence[Sequence[str]]) -> str:
    """Lay out a header line, a rule and body lines (a rich table as plain text); all-numeric
    columns are right-aligned."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in zip(*matrix, strict=True):
        numeric = all(map(_looks_numeric, column[1:]))
        table.add_column(Text(column[0]), justify="right" if numeric else "left", no_wrap=True)
    for values in matrix[1:]:
        table.add_row(*map(Text, values))  # Text: brackets in a run name are not markup
    buffer = io.StringIO()
    Console(file=buffer, width=1_000_000, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def _looks_numeric(text: str) -> bool:
    """Tell numbers (and the '-' of a missing value) from text, for alignment."""
    try:
        float(text)
    except ValueError:
        return text == "-"
    return True


def comparison_json(
    task: str, filters: RunFilters, pairs: Sequence[RunPair], rows: Sequence[Row]
) -> str:
    """Serialise the comparison as strict JSON (NaN/inf become null) with the full run ids."""

    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    document = {
        "task": task,
        "filters": asdict(filters),
        "run_ids": [run.info.run_id for run in training_runs(pairs)],
        "evaluation_run_ids": [p.evaluation.info.run_id if p.evaluation else None for p in pairs],
        "rows": [{k: clean(v) for k, v in row.items()} for row in rows],
    }
    return json.dumps(document, indent=2)


# --- curves and figures --------------------------------------------------------------------


@dataclass(frozen=True)
class RunCurves:
    """One run's metric histories as (steps, values), with the label its lines carry."""

    label: str
    series: dict[str, tuple[np.ndarray, np.ndarray]]


def run_label(run: Run) -> str:
    """Label a run's lines: DVC experiment or run name, short id, cell."""
    name = run.data.tags.get("dvc.exp_name") or run.info.run_name
    cell = run.data.params.get("cell", "?")
    return f"{name} {run.info.run_id[:SHORT_ID]} ({cell})"


def fetch_curves(client: MlflowClient, run: Run) -> RunCurves:
    """Fetch the histories the report plots: epoch losses, global grad norm, final flow."""
    flow = sorted(k for k in run.data.metrics if is_flow_curve(k))
    series = {}
    for key in (TRAIN_LOSS, VAL_LOSS, "grad_norm/global", *flow):
        history = client.get_metric_history(run.info.run_id, key)
        if history:
            # A resumed run may log a step twice; the later value wins.
            by_step = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
            steps = np.array(sorted(by_step))
            series[key] = (steps, np.array([by_step[s] for s in steps], dtype=float))
    return RunCurves(run_label(run), series)


def _overlay(
    ax: Axes, curves: Sequence[RunCurves], key: str, labelled: bool = True, **style: Any
) -> bool:
    """Draw `key` for every run that has it, one colour per run; True if anything was drawn."""
    drawn = False
    for index, run in enumerate(curves):
        if key in run.series:
            steps, values = run.series[key]
            label = run.label if labelled else "_nolegend_"
            ax.plot(steps, values, color=f"C{index % 10}", label=label, **style)
            drawn = True
    return drawn


def _finish(ax: Axes, drawn: bool, title: str, xlabel: str, ylabel: str) -> None:
    """Title and label an axis, with a note instead of an empty plot when no run has the data."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, steps, timesteps
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if drawn:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data logged", ha="center", va="center", transform=ax.transAxes)


def _new_figure(rows: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure with its own Agg canvas: no pyplot, no global backend switch."""
    fig = Figure(figsize=(8.0, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(rows, 1, squeeze=False)[:, 0])


def plot_losses(curves: Sequence[RunCurves]) -> Figure:
    """Overlay training (solid) and validation (dashed) loss per epoch."""
    fig, (ax,) = _new_figure()
    drawn = _overlay(ax, curves, TRAIN_LOSS, marker="o")
    drawn |= _overlay(ax, curves, VAL_LOSS, labelled=False, linestyle="--", marker="x")
    _finish(ax, drawn, "train/loss (solid) and val/loss (dashed) per epoch", "epoch", "loss")
    return fig


def plot_grad_norms(curves: Sequence[RunCurves]) -> Figure:
    """Overlay the global gradient norm per optimizer step on a log scale."""
    fig, (ax,) = _new_figure()
    drawn = _overlay(ax, curves, "grad_norm/global", linewidth=1.0)
    ax.set_yscale("log", nonpositive="mask")
    _finish(ax, drawn, "global gradient norm (before clipping)", "optimizer step", "‖g‖")
    return fig


def plot_grad_flow(curves: Sequence[RunCurves]) -> Figure:
    """Overlay the final epoch's ‖∂L/∂h_t‖ against timestep, one panel per recurrent layer."""
    keys = sorted({k for run in curves for k in run.series if is_flow_curve(k)})
    fig, axes = _new_figure(max(len(keys), 1))
    if not keys:
        _finish(axes[0], False, "gradient flow through time", "timestep t", "‖∂L/∂h_t‖")
    for ax, key in zip(axes, keys, strict=False):
        drawn = _overlay(ax, curves, key, linewidth=1.0)
        ax.set_yscale("log", nonpositive="mask")
        title = f"gradient flow through time, {key.removeprefix(FLOW_PREFIX)} (final epoch)"
        _finish(ax, drawn, title, "timestep t (input position)", "mean ‖∂L/∂h_t‖")
    return fig


def figure_base64(fig: Figure) -> str:
    """Encode a figure as a base64 PNG, so the report needs no side files."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- the report ----------------------------------------------------------------------------


def counted(n: int, noun: str) -> str:
    """`1 training run`, `2 training runs`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; }
th { background: #f3f3f3; vertical-align: bottom; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1.5rem 0; }
.meta { color: #666; font-size: 0.85rem; }
.scroll { overflow-x: auto; max-width: 100%; }
img { max-width: 100%; }
"""
BREAKS, WBR = re.compile(r"([/.])"), r"\1<wbr>"  # where a long header may wrap


def table_html(rows: Sequence[Row]) -> str:
    """Render rows as an HTML table with escaped text and right-aligned numbers; a long header
    (`grad_flow/log_ratio/encoder_1`) may wrap after `/` and `.`, so columns stay narrow."""
    headers = list(rows[0]) if rows else []
    head = "".join(f"<th>{BREAKS.sub(WBR, html.escape(h))}</th>" for h in headers)
    body = []
    for row in rows:
        cells = (
            f'<td class="num">{format_cell(v)}</td>'
            if isinstance(v, int | float)
            else f"<td>{html.escape(format_cell(v))}</td>"
            for v in (row.get(h) for h in headers)
        )
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(title: str, meta: str, rows: Sequence[Row], images: dict[str, str]) -> str:
    """Assemble the self-contained report page: table first, then the figures."""
    figures = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, data in images.items()
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="meta">{html.escape(meta)}</p>'
        f'<div class="scroll">{table_html(rows)}</div>{figures}</body></html>\n'
    )


def write_report(client: MlflowClient, runs: Sequence[Run | RunPair], path: Path) -> Path:
    """Write the HTML comparison (table, and curves once per training run) to `path`."""
    pairs = as_pairs(runs)
    trained = training_runs(pairs)
    curves = [fetch_curves(client, run) for run in trained]
    images = {
        "Loss per epoch": figure_base64(plot_losses(curves)),
        "Global gradient norm per step": figure_base64(plot_grad_norms(curves)),
        "Gradient flow through time (final epoch)": figure_base64(plot_grad_flow(curves)),
    }
    task = trained[0].data.tags.get("pipeline.task", "?") if trained else "?"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    evaluated = sum(pair.evaluation is not None for pair in pairs)
    meta = f"{counted(len(trained), 'training run')}, {counted(evaluated, 'evaluation run')}"
    meta += f" from {client.tracking_uri}, {stamp}"
    page = render_html(f"Comparison of {task} runs", meta, comparison_table(pairs), images)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# --- the compare stage ---------------------------------------------------------------------


def run_compare(
    task: str, client: MlflowClient, filters: RunFilters, out_dir: Path
) -> CompareResult:
    """Select rows, write the table and report, and log them to a new `compare` MLflow run."""
    pairs = select_pairs(client, task, filters)
    if not pairs:
        state = "finished " if filters.finished_only else ""
        where = f" ({filters.describe()})" if filters.describe() else ""
        raise CompareError(
            f"no {state}training runs of {task} match{where} in {client.tracking_uri}; "
            f"train first (`python -m pipeline train {task} ...`) or relax the filters"
        )
    rows = comparison_table(pairs)
    table = format_table(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "compare.txt", out_dir / "compare.json"]
    files[0].write_text(table + "\n", encoding="utf-8")
    files[1].write_text(comparison_json(task, filters, pairs, rows) + "\n", encoding="utf-8")
    report = write_report(client, pairs, out_dir / "compare.html")
    run_id = _log_compare_run(task, client, filters, pairs, [report, *files])
    runs = training_runs(pairs)
    return CompareResult(run_id, runs, rows, table, report, [report, *files], pairs)


def _log_compare_run(
    task: str,
    client: MlflowClient,
    filters: RunFilters,
    pairs: Sequence[RunPair],
    files: list[Path],
) -> str:
    """Track the comparison itself: its filters, the runs it covered and its files."""
    runs = training_runs(pairs)
    evaluations = [pair.evaluation.info.run_id for pair in pairs if pair.evaluation]
    tags = {"compare.run_ids": _id_list([run.info.run_id for run in runs])}
    if evaluations:
        tags["compare.evaluation_run_ids"] = _id_list(evaluations)
    params = asdict(filters) | {"run_ids": ",".join(filters.run_ids)}
    with stage_run(task, "compare", params, client=client) as run:
        run.set_tags(tags)
        run.log_metrics({"compare/runs": float(len(runs)), "compare/rows": float(len(pairs))})
        for path in files:
            run.log_artifact(path)
    log.info("compared %d rows of %s in MLflow run %s", len(pairs), task, run.run_id)
    return run.run_id


def _id_list(ids: Sequence[str]) -> str:
    """Join run ids into one tag value, cut to MLflow's limit (the full list is in the JSON)."""
    joined = ",".join(ids)
    return joined if len(joined) <= MAX_TAG_LENGTH else joined[: MAX_TAG_LENGTH - 3] + "..."
