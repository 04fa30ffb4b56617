"""The Vega scripts of the offline `dvc plots show` page, fetched once from the npm registry.

`.dvc/plots/offline.html` (DVC's HTML template here) loads them from `vendor/` beside the page
instead of a CDN, so the charts draw without a network. Versions are pinned and each tarball
is checked against the registry's sha512 integrity before anything is written.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
TIMEOUT_S = 60


class IntegrityError(ValueError):
    """A fetched tarball is not the pinned one."""


@dataclass(frozen=True)
class NpmScript:
    """One browser build inside a pinned npm package."""

    package: str
    version: str
    member: str  # path inside the tarball
    integrity: str  # npm's `dist.integrity`: sha512-<base64>

    @property
    def filename(self) -> str:
        """The file the HTML template loads, e.g. `vega@5.33.1.min.js`."""
        return f"{self.package}@{self.version}.min.js"

    def tarball_url(self, registry: str) -> str:
        return f"{registry}/{self.package}/-/{self.package}-{self.version}.tgz"


# Vega-Lite 5 (DVC writes v5 specs) with the Vega and vega-embed it supports; the template's
# script tags name these files (tests/test_vega.py checks they agree).
SCRIPTS = (
    NpmScript(
        "vega",
        "5.33.1",
        "package/build/vega.min.js",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
    ),
    NpmScript(
        "vega-lite",
        "5.23.0",
        "package/build/vega-lite.min.js",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
    ),
    NpmScript(
        "vega-embed",
        "6.29.0",
        "package/build/vega-embed.min.js",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
    ),
)


def integrity_of(blob: bytes) -> str:
    """npm's integrity string of a tarball."""
    return "sha512-" + base64.b64encode(hashlib.sha512(blob).digest()).decode()


def extract_script(script: NpmScript, blob: bytes) -> bytes:
    """The script's file from its package tarball, once the tarball proves to be the pinned one."""
    found = integrity_of(blob)
    if found != script.integrity:
        raise IntegrityError(
            f"{script.package}@{script.version}: expected {script.integrity}, got {found}"
        )
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as archive:
        member = archive.extractfile(script.member)
        if member is None:
            raise IntegrityError(f"{script.package}@{script.version} has no {script.member}")
        return member.read()


def fetch_scripts(
    vendor: Path, scripts: Sequence[NpmScript] = SCRIPTS, registry: str = REGISTRY
) -> list[Path]:
    """Make sure `vendor` holds every script (fetching those missing); return their paths."""
    vendor.mkdir(parents=True, exist_ok=True)
    paths = []
    for script in scripts:
        path = vendor / script.filename
        if not path.is_file():
            with urllib.request.urlopen(script.tarball_url(registry), timeout=TIMEOUT_S) as got:
                code = extract_script(script, got.read())
            partial = path.with_suffix(".partial")
            partial.write_bytes(code)
            partial.replace(path)
        paths.append(path)
    return paths
