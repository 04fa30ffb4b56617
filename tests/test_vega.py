"""The offline plots page's Vega scripts: pinned, integrity-checked, named as it loads them."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.vega import SCRIPTS, IntegrityError, NpmScript, fetch_scripts, integrity_of
from tests.conftest import ROOT

TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"


def tarball(member: str, code: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(member)
        info.size = len(code)
        archive.addfile(info, io.BytesIO(code))
    return buffer.getvalue()


def registry_with(tmp_path: Path, script: NpmScript, blob: bytes) -> str:
    """A file:// registry that serves one tarball at npm's path."""
    path = tmp_path / "registry" / script.package / "-"
    path.mkdir(parents=True)
    (path / f"{script.package}-{script.version}.tgz").write_bytes(blob)
    return (tmp_path / "registry").as_uri()


def test_the_html_template_loads_the_pinned_scripts_from_vendor() -> None:
    html = TEMPLATE.read_text(encoding="utf-8")
    assert re.findall(r'<script src="vendor/([^"]+)"', html) == [s.filename for s in SCRIPTS]
    assert "{plot_divs}" in html and "{scripts}" not in html  # no CDN scripts from DVC


def test_fetch_checks_integrity_and_extracts_the_build(tmp_path: Path) -> None:
    blob = tarball("package/build/x.min.js", b"window.x = 1;")
    script = NpmScript("x", "1.0.0", "package/build/x.min.js", integrity_of(blob))
    registry = registry_with(tmp_path, script, blob)
    (path,) = fetch_scripts(tmp_path / "vendor", [script], registry)
    assert path == tmp_path / "vendor" / "x@1.0.0.min.js"
    assert path.read_bytes() == b"window.x = 1;"
    path.write_bytes(b"kept")  # present: not fetched again
    assert fetch_scripts(tmp_path / "vendor", [script], registry)[0].read_bytes() == b"kept"


def test_a_tarball_that_is_not_the_pinned_one_writes_nothing(tmp_path: Path) -> None:
    blob = tarball("package/build/x.min.js", b"window.x = 'tampered';")
    pinned = integrity_of(tarball("package/build/x.min.js", b"window.x = 1;"))
    script = NpmScript("x", "1.0.0", "package/build/x.min.js", pinned)
    registry = registry_with(tmp_path, script, blob)
    with pytest.raises(IntegrityError, match="x@1.0.0: expected sha512-"):
        fetch_scripts(tmp_path / "vendor", [script], registry)
    assert list((tmp_path / "vendor").iterdir()) == []


def test_vendor_vega_reports_an_unreachable_registry(tmp_path: Path) -> None:
    nowhere = (tmp_path / "nowhere").as_uri()
    args = ["vendor-vega", "--out", str(tmp_path / "vendor"), "--registry", nowhere]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "error: cannot fetch the Vega scripts" in result.output
