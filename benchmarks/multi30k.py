"""Multi30k de->en: the translation stages on the official splits, scored like published work.

Why: the default translation data (Ding example sentences) has no published reference point;
Multi30k task 1 has (attention GRU encoder-decoders: 28.3 BLEU on test_2016_flickr, lowercased,
greedy). This runs `dvc repro evaluate_translation` (download -> tokenize -> train -> evaluate,
each stage timed) in a scratch clone of HEAD (the workspace is untouched; MLflow logs to a
sqlite file beside it), with `download.translation` switched to format multi30k and the six
files served over loopback from `../shared/data/multi30k`, fetched and sha256-checked exactly
as a user's `url_files` source would be from GitHub. The test translations that evaluate
writes (`reports/translation/translations.tsv`) are then scored again: cased detokenized
BLEU/chrF (what evaluate reports), lowercased BLEU (comparable with the published figures), and
copy-source BLEU (the German source offered as the translation: what names, numbers and
punctuation score with no model and no dictionary at all).

    python benchmarks/multi30k.py --epochs 3 --out benchmarks/results/multi30k.json
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import sacrebleu
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "multi30k"
# The official files' checksums (the Multi30k repository's data/task1/raw/), as params.yaml's
# commented multi30k block pins them: a served copy that differs is refused by the download.
OFFICIAL_SHA256 = {
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
}
STAGES = (
    "download@translation",
    "tokenize@translation",
    "train_translation",
    "evaluate_translation",
)
TSV_COLUMNS = ("source", "reference", "greedy", "beam")
PUBLISHED = {  # test_2016_flickr, de->en, greedy, lowercased (the shared data's README)
    "gru_attention_bahdanau_bleu_lowercased": 28.3,
    "gru_no_attention_bleu_lowercased": 20.6,
    "lstm_no_attention_bleu_lowercased": 13.8,
    "setup": "10 epochs, embedding 256 / hidden 512, ~20M parameters, GPU",
}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serve files from one directory without a log line per request."""

    def log_message(self, *args: Any) -> None:
        """Keep the benchmark's output to its results."""


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (a free port) from a thread; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def multi30k_section(base_url: str, files: dict[str, str] | None = None) -> dict[str, Any]:
    """The `download.translation` block that switches a checkout to Multi30k."""
    source = {"kind": "url_files", "url": base_url, "files": dict(files or OFFICIAL_SHA256)}
    return {"source": source, "format": "multi30k"}


def override_params(
    params: dict[str, Any], base_url: str, train: dict[str, Any], tokenize: dict[str, Any]
) -> dict[str, Any]:
    """params.yaml with Multi30k as the translation data and the given overrides applied."""
    params["download"]["translation"] = multi30k_section(base_url)
    params["train"]["translation"].update(train)
    params["tokenize"]["translation"].update(tokenize)
    return params


def run_stage(stage: str, repo: Path, env: dict[str, str]) -> float:
    """Run one DVC stage alone (its dependencies are already done); return its seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        ["dvc", "repro", "-s", stage], cwd=repo, env=env, capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"dvc repro -s {stage} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - started


def read_translations(path: Path) -> dict[str, list[str]]:
    """Columns of evaluate's translations.tsv (source, reference, greedy, beam), in test order."""
    header, *lines = path.read_text(encoding="utf-8").split("\n")
    rows = [line.split("\t") for line in lines if line]
    columns = header.split("\t")
    return {name: [row[columns.index(name)] for row in rows] for name in TSV_COLUMNS}


def bleu(hypotheses: list[str], references: list[str], lowercase: bool = False) -> float:
    """Corpus BLEU, sacrebleu defaults (13a tokenization), optionally case-insensitive."""
    return float(sacrebleu.corpus_bleu(hypotheses, [references], lowercase=lowercase).score)


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF, sacrebleu defaults."""
    return float(sacrebleu.corpus_chrf(hypotheses, [references]).score)


def score(columns: dict[str, list[str]]) -> dict[str, float]:
    """BLEU cased and lowercased and chrF of greedy, beam and the copied source."""
    references = columns["reference"]
    scores = {}
    for name, hypotheses in (("greedy", columns["greedy"]), ("beam", columns["beam"])):
        scores[f"bleu_{name}"] = bleu(hypotheses, references)
        scores[f"bleu_{name}_lowercased"] = bleu(hypotheses, references, lowercase=True)
        scores[f"chrf_{name}"] = chrf(hypotheses, references)
    scores["copy_source_bleu"] = bleu(columns["source"], references)
    scores["copy_source_bleu_lowercased"] = bleu(columns["source"], references, lowercase=True)
    scores["copy_source_chrf"] = chrf(columns["source"], references)
    return scores


def machine() -> dict[str, Any]:
    """What the numbers were measured on; other work on the cores moves the timings."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }


def stage_env(tmp: Path) -> dict[str, str]:
    """The scratch run's environment: this interpreter's tools, MLflow and caches under tmp."""
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(Path(sys.executable).parents[1]),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "PIPELINE_CACHE_DIR": str(tmp / "cache"),
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def read_json(path: Path) -> dict[str, Any]:
    """One of the stage outputs the benchmark reports from."""
    return json.loads(path.read_text(encoding="utf-8"))


def run_benchmark(data: Path, train: dict[str, Any], tokenize: dict[str, Any]) -> dict[str, Any]:
    """Clone HEAD, switch it to Multi30k served from `data`, run the stages, score the test."""
    with tempfile.TemporaryDirectory(prefix="multi30k-") as scratch, serve_directory(data) as url:
        tmp = Path(scratch)
        repo = tmp / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        params_path = repo / "params.yaml"
        params = override_params(yaml.safe_load(params_path.read_text()), url, train, tokenize)
        params_path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
        env = stage_env(tmp)
        load_before = list(os.getloadavg())
        seconds = {stage: run_stage(stage, repo, env) for stage in STAGES}
        columns = read_translations(repo / "reports/translation/translations.tsv")
        counts = read_json(repo / "data/raw/translation/manifest.json")["counts"]
        if len(columns["reference"]) != counts["test"]:
            sys.exit(
                f"translations.tsv has {len(columns['reference'])} rows, test {counts['test']}"
            )
        return {
            "commit": subprocess.check_output(
                ["git", "rev-parse", "HEAD"], cwd=repo, text=True
            ).strip(),
            "counts": counts,
            "params": {
                section: params[section]["translation"]
                for section in ("download", "tokenize", "train", "evaluate")
            },
            "test": score(columns),
            "evaluate_metrics": read_json(repo / "metrics/translation/evaluate.json"),
            "train_metrics": read_json(repo / "metrics/translation/train.json"),
            "stage_seconds": seconds,
            "load_average_before": load_before,
        }


def main(
    out: Annotated[Path, typer.Option(help="Results JSON.")] = ROOT
    / "benchmarks/results/multi30k.json",
    data: Annotated[Path, typer.Option(help="Directory holding the six files.")] = DEFAULT_DATA,
    epochs: Annotated[int | None, typer.Option(help="train.translation.epochs")] = None,
    units: Annotated[int | None, typer.Option(help="train.translation.units")] = None,
    embedding_dim: Annotated[
        int | None, typer.Option(help="train.translation.embedding_dim")
    ] = None,
    max_len: Annotated[int | None, typer.Option(help="train.translation.max_len")] = None,
    max_steps_per_epoch: Annotated[
        int | None, typer.Option(help="train.translation.max_steps_per_epoch")
    ] = None,
    vocab_size: Annotated[int | None, typer.Option(help="tokenize.translation.vocab_size")] = None,
) -> None:
    """Train and evaluate the translator on Multi30k in a scratch clone; write the scores."""
    overrides = {
        "epochs": epochs,
        "units": units,
        "embedding_dim": embedding_dim,
        "max_len": max_len,
        "max_steps_per_epoch": max_steps_per_epoch,
    }
    train = {key: value for key, value in overrides.items() if value is not None}
    tokenize = {} if vocab_size is None else {"vocab_size": vocab_size}
    result = {"command": " ".join(["python", "benchmarks/multi30k.py", *sys.argv[1:]])}
    result |= run_benchmark(data.resolve(), train, tokenize)
    result |= {
        "train_seconds": result["train_metrics"].get("train_seconds"),
        "epochs_run": result["train_metrics"].get("epochs_run"),
        "published": PUBLISHED,
        "machine": machine(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for key, value in result["test"].items():
        typer.echo(f"{key:<32} {value:7.2f}")
    typer.echo(f"{'train seconds':<32} {result['train_seconds']:7.1f}")


if __name__ == "__main__":
    typer.run(main)
