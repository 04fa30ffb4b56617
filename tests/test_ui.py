"""The MLflow UI and the offline DVC plots page, in a real headless Chromium.

A user's path: open the task's runs page as `make mlflow-ui` prints it (the runs table, in the
model-training view), open the training run, find `grad_norm/global` in its metrics table (with
the value the client reads) and as a chart in the model-metrics tab. The page of `make plots`
draws every chart with no network. Screenshots go to `tmp_path` and to `$PYTEST_ARTIFACTS`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser, Page, expect, sync_playwright

from pipeline.server import runs_page
from pipeline.ui_views import install_views, view_url
from pipeline.vega import fetch_scripts
from tests.mlflow_server import MlflowServer
from tests.pipeline_runs import env_for, run_cli, train_on, write_tiny_params
from tests.test_dvc_views import PLOTS, dvc, plots_project

pytest_plugins = ["tests.conftest_server"]
pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # generous: a cold UI bundle on a busy 2-core runner


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's Chromium under Playwright; missing Chromium fails (CI installs it)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: `apt-get install -y chromium` (.ci/run does this)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def training_run(
    mlflow_server: MlflowServer, tiny_data, default_params: dict[str, Any], tmp_path: Path
) -> Run:
    """A tiny real training run, and its evaluation, logged to the test's server by the CLI."""
    raw, tok = tiny_data("classification")
    params = write_tiny_params(tmp_path / "params.yaml", default_params)
    run = train_on(mlflow_server, tok, tmp_path, params)
    evaluate = ["evaluate", "classification", "--model", "model", "--data", str(tok)]
    evaluate += ["--raw", str(raw), "--reports", "reports"]
    run_cli(
        [*evaluate, "--metrics", "eval.json", "--params", str(params)],
        tmp_path,
        env_for(mlflow_server),
    )
    return MlflowClient(mlflow_server.uri).get_run(run.info.run_id)


def screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    """Save a screenshot beside the test and, when CI collects them, in `$PYTEST_ARTIFACTS`."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    if os.environ.get("PYTEST_ARTIFACTS"):
        target = Path(os.environ["PYTEST_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / name)
    return path


def open_training_run(page: Page, uri: str, run: Run, tmp_path: Path) -> None:
    """Navigate as a user would: the task's runs page that `make mlflow-ui` prints -> the run.

    That page opens the experiment's headline view: the test metric and the gradient horizon
    are columns of the runs table without picking them.
    """
    install_views(MlflowClient(uri))
    page.goto(view_url(runs_page(uri, run.info.experiment_id)), wait_until="domcontentloaded")
    link = page.get_by_role("link", name="train-classification", exact=True)
    expect(link).to_be_visible(timeout=TIMEOUT_MS)  # the runs table, no click needed
    # The model-training view (its sidebar has the registry), not the GenAI view it opens in.
    expect(page.get_by_text("Model registry", exact=True)).to_be_visible()
    for column in ("test/accuracy", "baseline/accuracy", "grad_flow/horizon/rnn_1"):
        header = page.locator(f'.ag-header-cell[col-id="metrics.`{column}`"]')
        expect(header).to_have_text(column)
    screenshot(page, "ui-runs-table.png", tmp_path)
    link.click()


def shown_metric_value(page: Page, key: str) -> float:
    """The value the run page's metrics table shows for `key`."""
    page.get_by_placeholder("Search metrics").fill(key)
    link = page.get_by_role("link", name=key, exact=True)
    row = page.get_by_role("row").filter(has=link)
    expect(row).to_be_visible(timeout=TIMEOUT_MS)
    return float(row.inner_text().split()[-1])


def test_ui_shows_the_gradient_norm_of_a_training_run(
    browser: Browser, mlflow_server: MlflowServer, training_run: Run, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        open_training_run(page, mlflow_server.uri, training_run, tmp_path)
        run_page = re.compile(rf"#/experiments/\d+/runs/{training_run.info.run_id}")
        expect(page).to_have_url(run_page, timeout=TIMEOUT_MS)
        # Its logged model and its evaluation, a child run, are listed on the run's page.
        expect(page.get_by_text("Logged models (1)", exact=True)).to_be_visible()
        expect(page.get_by_role("link", name="evaluate-classification")).to_be_visible()
        shown = shown_metric_value(page, "grad_norm/global")
        assert shown == pytest.approx(training_run.data.metrics["grad_norm/global"])
        screenshot(page, "ui-run-metrics.png", tmp_path)
        page.get_by_role("tab", name="Model metrics").click()
        page.get_by_placeholder("Search metric charts").fill("grad_norm/global")
        legend = page.get_by_text("train-classification (grad_norm/global)", exact=True)
        expect(legend).to_be_visible(timeout=TIMEOUT_MS)
        screenshot(page, "ui-grad-norm-chart.png", tmp_path)
    except BaseException:
        screenshot(page, "ui-failure.png", tmp_path)
        raise


# Pixels of each chart canvas in a colour (the curves), not black, grey or white (axes, text).
CURVE_PIXELS_JS = """() => [...document.querySelectorAll('canvas.marks')].map(canvas => {
    if (!canvas.width || !canvas.height) return 0;
    const rgba = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let curve = 0;
    for (let i = 0; i < rgba.length; i += 4) {
        const [r, g, b, a] = rgba.slice(i, i + 4);
        if (a > 128 && Math.max(r, g, b) - Math.min(r, g, b) > 60) curve++;
    }
    return curve;
})"""


def test_offline_plots_page_draws_every_chart(browser: Browser, tmp_path: Path) -> None:
    """What `make plots` writes, opened with the network cut: every JSON plot is drawn."""
    project, out = plots_project(tmp_path / "project"), tmp_path / "dvc_plots"
    fetch_scripts(out / "vendor")
    dvc(project, "plots", "show", "--html-template", ".dvc/plots/offline.html", "-o", str(out))
    charts = sum(path.endswith(".json") for path, _ in PLOTS)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.route(re.compile(r"^https?://"), lambda route: route.abort())
    try:
        page.goto((out / "index.html").as_uri())
        expect(page.locator("canvas.marks")).to_have_count(charts)
        page.wait_for_function(f"({CURVE_PIXELS_JS})().every(n => n > 50)", timeout=TIMEOUT_MS)
        assert [url for url in requested if url.startswith("http")] == []
        screenshot(page, "plots-offline.png", tmp_path)
    except BaseException:
        screenshot(page, "plots-failure.png", tmp_path)
        raise
