"""Multi30k: url_files params, the official splits kept as they are, loopback downloads, scores."""

from __future__ import annotations

import copy
import gzip
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from benchmarks.multi30k import (
    OFFICIAL_SHA256,
    multi30k_section,
    override_params,
    read_translations,
    score,
    serve_directory,
)
from pipeline.cli import app
from pipeline.download import DownloadError, build_multi30k, run_download
from pipeline.params import Task, TranslationDownload, parse_params
from pipeline.tasks.translation.reports import write_table
from tests.test_download import FAST, leftovers, read_splits, sha256

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

# A tiny Multi30k: aligned German/English lines per set, with a stray space to tidy.
LINES = {
    "train": [("Ein Hund läuft.", "A dog runs."), ("Zwei  Kinder spielen.", "Two children play.")]
    * 3,
    "val": [("Eine Frau liest.", "A woman reads.")],
    "test_2016_flickr": [("Ein Mann kocht.", "A man cooks."), ("Es regnet.", "It rains.")],
}


def fake_files(lines: dict[str, list[tuple[str, str]]] = LINES) -> dict[str, bytes]:
    """Gzipped `<set>.de.gz` / `<set>.en.gz` files, one sentence a line."""
    files = {}
    for name, pairs in lines.items():
        for index, lang in enumerate(("de", "en")):
            text = "".join(f"{pair[index]}\n" for pair in pairs)
            files[f"{name}.{lang}.gz"] = gzip.compress(text.encode(), mtime=0)
    return files


def config(url: str, files: dict[str, bytes]) -> TranslationDownload:
    """A multi30k section pinning each file's real sha256."""
    pins = {name: sha256(data) for name, data in files.items()}
    return TranslationDownload.model_validate(multi30k_section(url, pins))


def expected_splits() -> dict[str, list[dict[str, str]]]:
    """The splits the fake files must give: official sets, file order, whitespace tidied."""
    return {
        split: [{"src": " ".join(de.split()), "tgt": en} for de, en in LINES[name]]
        for split, name in (("train", "train"), ("val", "val"), ("test", "test_2016_flickr"))
    }


# --------------------------------------------------------------------------- parsing


def test_official_splits_are_kept_in_file_order_with_duplicates():
    files = fake_files()
    splits, details = build_multi30k(config("http://127.0.0.1:9/m/", files), files)
    assert splits == expected_splits()  # train keeps its repeated pairs: no de-duplication
    assert details["stats"] == {"empty_pairs_dropped": {"train": 0, "val": 0, "test": 0}}


def test_plain_files_and_empty_pairs():
    lines = {**LINES, "val": [("Eine Frau liest.", "A woman reads."), ("Nur Deutsch.", "  ")]}
    files = {
        name.removesuffix(".gz"): gzip.decompress(data) for name, data in fake_files(lines).items()
    }
    splits, details = build_multi30k(config("http://127.0.0.1:9/m/", files), files)
    assert splits["val"] == [{"src": "Eine Frau liest.", "tgt": "A woman reads."}]
    assert details["stats"]["empty_pairs_dropped"]["val"] == 1


def test_misaligned_files_are_refused_naming_both():
    files = fake_files()
    files["val.en.gz"] = gzip.compress(b"A woman reads.\nOne line too many.\n")
    with pytest.raises(DownloadError, match=r"val\.de\.gz has 1 lines but val\.en\.gz has 2"):
        build_multi30k(config("http://127.0.0.1:9/m/", files), files)


def test_corrupt_gzip_is_a_clear_error():
    files = fake_files()
    files["train.de.gz"] = files["train.de.gz"][:20]
    with pytest.raises(DownloadError, match=r"cannot read gzip file train\.de\.gz"):
        build_multi30k(config("http://127.0.0.1:9/m/", files), files)


# --------------------------------------------------------------------------- params


def cli_download(path: Path, out: Path) -> Any:
    """Run the download command on a params file (a bad one exits 2 before any fetch)."""
    return runner.invoke(app, ["download", "translation", "--out", str(out), "--params", str(path)])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"split": {"seed": 1}}, "download.translation: split: not used by format multi30k"),
        (
            {"min_words": 3, "dictionary_pairs": 0},
            "download.translation: min_words, dictionary_pairs: not used by format multi30k",
        ),
        ({"format": "ding"}, "format multi30k reads a source of kind url_files"),
        (
            {"source": {"kind": "url", "url": "http://127.0.0.1:9/a.gz", "sha256": "0" * 64}},
            "format multi30k reads a source of kind url_files",
        ),
        (
            {"source_url": "http://127.0.0.1:9/m"},
            "download.translation.source.url: expected a string matching",
        ),
        (
            {"source_files": {"train.fr.gz": "0" * 64}},
            "source.files: 'train.fr.gz' is not <set>.<de|en>[.gz]",
        ),
        (
            {"source_files": {"test_2017_flickr.de.gz": "0" * 64}},
            "source.files: need exactly one test set, got test_2016_flickr, test_2017_flickr",
        ),
        (
            {"source_files": {"val.en.gz": None}},
            "source.files: val needs a .de and an .en file",
        ),
        (
            {"source_files": {"train.de.gz": "abc"}},
            "download.translation.source.files.train.de.gz: expected a string matching",
        ),
        (
            {"source_files": {"../x.de.gz": "0" * 64}},
            "download.translation.source.files.../x.de.gz.[key]: expected a string matching",
        ),
    ],
)
def test_bad_multi30k_params_exit_2_naming_the_key(write_params, tmp_path, change, expected):
    change = dict(change)  # parametrize shares its values between runs
    section = multi30k_section("http://127.0.0.1:9/m/")
    files = section["source"]["files"]
    for name, pin in change.pop("source_files", {}).items():
        if pin is None:
            files.pop(name)
        else:
            files[name] = pin
    if "source_url" in change:
        section["source"]["url"] = change.pop("source_url")
    path = write_params({"download.translation": section | change})
    result = cli_download(path, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert not (tmp_path / "out").exists()


def test_commented_params_example_is_valid_and_official(default_params):
    """The multi30k block commented in params.yaml parses and pins the official checksums."""
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    start = text.index("    # source:\n    #   kind: url_files")
    block = re.match(r"((?:    # .*\n)+)", text[start:])
    assert block is not None
    section = yaml.safe_load("\n".join(line[6:] for line in block[1].splitlines()))
    tree = {**default_params, "download": {**default_params["download"], "translation": section}}
    cfg = parse_params(tree).download.translation
    assert cfg.format == "multi30k"
    assert cfg.source.url == "https://github.com/multi30k/dataset/raw/master/data/task1/raw/"
    assert dict(cfg.source.files) == OFFICIAL_SHA256


def test_benchmark_override_is_valid_params(default_params):
    tree = override_params(
        copy.deepcopy(default_params), "http://127.0.0.1:8000/", {"epochs": 2}, {"vocab_size": 500}
    )
    params = parse_params(tree)
    assert params.download.translation.format == "multi30k"
    assert params.train.translation.epochs == 2
    assert params.tokenize.translation.vocab_size == 500


# --------------------------------------------------------------------------- loopback HTTP


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The fake files written to a directory and served with http.server on 127.0.0.1."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    files = fake_files()
    folder = tmp_path / "www"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with serve_directory(folder) as url:
        yield url, files


@pytest.mark.slow
def test_loopback_download_writes_the_official_splits(served, tmp_path):
    url, files = served
    out, cache = tmp_path / "raw", tmp_path / "cache"
    result = run_download(Task.translation, config(url, files), out, cache, options=FAST)

    assert read_splits(out) == expected_splits()
    assert result.counts == {"train": 6, "val": 1, "test": 2}
    source = result.manifest["source"]
    assert source["kind"] == "url_files" and source["url"] == url
    assert source["files"] == {name: sha256(data) for name, data in files.items()}
    assert sorted(path.parent.name for path in cache.glob("*/*.gz")) == sorted(
        sha256(data) for data in files.values()
    )
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_loopback_wrong_checksum_leaves_nothing(served, tmp_path):
    url, files = served
    cfg = config(url, {**files, "val.en.gz": b"not the served bytes"})
    out, cache = tmp_path / "raw", tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"sha256 mismatch for .*/val\.en\.gz"):
        run_download(Task.translation, cfg, out, cache, options=FAST)

    assert not out.exists()
    assert leftovers(tmp_path) == []
    assert not (cache / sha256(b"not the served bytes")).exists()  # the cache holds no bad file


@pytest.mark.slow
def test_loopback_missing_file_is_a_clear_error(served, tmp_path):
    url, files = served
    cfg = config(url + "nope/", files)
    with pytest.raises(DownloadError, match="HTTP 404"):
        run_download(Task.translation, cfg, tmp_path / "raw", tmp_path / "cache", options=FAST)
    assert not (tmp_path / "raw").exists()


# --------------------------------------------------------------------------- benchmark scores


def test_benchmark_scores_read_evaluates_table(tmp_path):
    rows = [
        ("Ein Hund läuft.", "A dog runs.", "a dog runs.", "A dog runs."),
        ("Ein Mann kocht.", "A man cooks.", "A man is cooking.", ""),
    ]
    path = write_table(
        tmp_path / "translations.tsv", ("source", "reference", "greedy", "beam"), rows
    )
    columns = read_translations(path)
    assert columns["beam"] == ["A dog runs.", ""]
    scores = score(columns)
    assert scores["bleu_greedy_lowercased"] > scores["bleu_greedy"]
    assert scores["copy_source_bleu"] < scores["bleu_greedy_lowercased"]
    assert set(scores) >= {"chrf_greedy", "chrf_beam", "copy_source_bleu_lowercased"}
