"""A saved view of each task's runs table in the MLflow UI: the headline columns, no clicks.

MLflow's runs table opens with Source, Models and Dataset columns only; metrics are picked by
hand under "Columns" and forgotten on the next visit. Since MLflow 3.15 a named view (columns,
order, filters) is an experiment tag `mlflow.sharedViewState.<id>` that the UI applies when
the page's URL carries `viewStateShareKey=<id>`, and lists under "Views". `install_views`
writes one such view per task experiment — the test metric and its baseline, the gradient
horizon of every recurrent layer, the training time — and `ui-links` prints its URL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from mlflow.tracking import MlflowClient

from pipeline.core.metric_names import flow_summary_key
from pipeline.core.tracking import newest_stage_run

VIEW_ID = "headline"
VIEW_NAME = "Headline metrics"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
SHARE_PARAM = "viewStateShareKey"
# The test metric and its baseline first, per task (the experiments are named after tasks).
HEADLINE = {
    "classification": ("test/accuracy", "baseline/accuracy", "test/roc_auc"),
    "language_model": (
        "test/perplexity",
        "baseline/perplexity",
        "test/bpc",
        "baseline/bpc",
        "test/cache_perplexity",
        "test/cache_bpc",
    ),
    "translation": ("test/bleu_greedy", "test/bleu_beam", "baseline/bleu", "test/chrf_greedy"),
    "speech": ("test/accuracy", "baseline/accuracy", "test/macro_f1"),
    "forecasting": ("test/mase", "baseline/naive_week.mase", "baseline/ridge.mase"),
}
TIMING = ("perf/train_seconds", "perf/samples_per_second")
HORIZON = flow_summary_key("horizon", "")


def metric_column(key: str) -> str:
    """The UI's canonical key of a metric column (``metrics.`name` ``)."""
    return f"metrics.`{key}`"


def headline_columns(task: str, logged: Iterable[str]) -> list[str]:
    """The view's columns: the run's model, the task's scores, every layer's horizon, timing."""
    horizons = sorted(k for k in set(logged) if k.startswith(HORIZON))
    metrics = [*HEADLINE.get(task, ()), *horizons, *TIMING]
    return ["attributes.`Models`", *(metric_column(k) for k in metrics)]


def view_tag_value(columns: list[str], now_ms: int | None = None) -> str:
    """The saved-view envelope the UI reads: name, timestamps and the page state as JSON."""
    created = int(time.time() * 1000) if now_ms is None else now_ms
    state = {"selectedColumns": columns, "columnOrder": columns, "orderByAsc": False}
    state["orderByKey"] = "attributes.start_time"
    return json.dumps(
        {"name": VIEW_NAME, "createdAt": created, "updatedAt": created, "state": json.dumps(state)}
    )


def install_views(client: MlflowClient) -> dict[str, str]:
    """Write (or refresh) the headline view of every experiment that holds a training run.

    Returns experiment name -> id. The horizons are those of the newest training run, so a
    model with two recurrent layers (or an encoder and a decoder) shows both.
    """
    installed = {}
    for experiment in client.search_experiments(order_by=["name"]):
        newest = newest_stage_run(client, experiment.experiment_id, "train")
        if newest is None:
            continue
        columns = headline_columns(experiment.name, newest.data.metrics)
        current = experiment.tags.get(VIEW_TAG)
        if (
            current is None
            or json.loads(json.loads(current)["state"]).get("selectedColumns") != columns
        ):
            client.set_experiment_tag(experiment.experiment_id, VIEW_TAG, view_tag_value(columns))
        installed[experiment.name] = experiment.experiment_id
    return installed


def view_url(runs_page_url: str) -> str:
    """A runs-page URL that opens the headline view."""
    separator = "&" if "?" in runs_page_url else "?"
    return f"{runs_page_url}{separator}{SHARE_PARAM}={VIEW_ID}"
