"""The litellm layer: a venv at its final path (/opt/litellm), made by the container's own
python3 inside the base rootfs, from the hash-locked sysext/litellm/requirements.lock.

pip runs under systemd-nspawn with a throw-away overlay on the base, so the base stays
clean. The host's CA bundle is bind-mounted read-only for pip (TLS-intercepting proxies,
DESIGN.md §3) and never copied into the tree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.build.base import Base
from pipeline.build.context import BuildContext, read_toml
from pipeline.build.layers import Layer, build_layer, layer_key
from pipeline.errors import PipelineError
from pipeline.progress import step
from pipeline.runner import run

CA_IN_CONTAINER = "/run/build/ca-bundle.pem"
LOCK_IN_CONTAINER = "/run/build/requirements.lock"
PIP_CACHE_IN_CONTAINER = "/var/cache/pip-build"
# Host variables that tell pip where the index or proxy is: handed into the container.
PIP_ENV = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT",
           "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def recipe(ctx: BuildContext) -> dict:
    return read_toml(ctx.sysext_dir / "litellm" / "recipe.toml")


def build(ctx: BuildContext, base: Base) -> Layer:
    key = layer_key(ctx, "litellm", __file__).text("base", base.key).hexdigest()
    return build_layer(ctx, "litellm", key, lambda tree: install(ctx, base, tree))


def install(ctx: BuildContext, base: Base, tree: Path) -> dict[str, str]:
    prefix = recipe(ctx)["prefix"]
    lock = ctx.sysext_dir / "litellm" / recipe(ctx)["requirements"]
    venv = tree / prefix.lstrip("/")
    venv.mkdir(parents=True)
    log = ctx.log("litellm")
    binds = [f"--bind={venv}:{prefix}", f"--bind-ro={lock}:{LOCK_IN_CONTAINER}"]
    with step("create venv"):
        in_base(ctx, base, binds, ["/usr/bin/python3", "-m", "venv", prefix], log=log)
    with step("pip install --require-hashes"):
        in_base(ctx, base, binds, [
            f"{prefix}/bin/pip", "install", "--no-input", "--require-hashes", "--no-deps",
            "-r", LOCK_IN_CONTAINER,
        ], log=log)
    with step("compile bytecode"):
        # /opt is read-only in the container, and the squash step pins every mtime, which
        # makes pip's timestamp-checked .pyc files stale: Python would recompile in memory
        # at every start. Hash-based, unchecked .pyc files stay valid and are reproducible.
        # Exit 1 means some file did not compile (test data in some wheels), as pip allows.
        in_base(ctx, base, binds, [
            "/usr/bin/python3", "-m", "compileall", "-q", "-f", "-j0",
            "--invalidation-mode", "unchecked-hash", prefix,
        ], log=log, check=(0, 1))
    return {"litellm": pinned_version(lock, "litellm")}


def in_base(ctx: BuildContext, base: Base, binds: list[str], argv: list[str], *, log: Path,
            check: tuple[int, ...] = (0,)) -> None:
    pip_cache = ctx.cache.root / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    run([
        "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--machine=meridian-build",
        "--volatile=overlay",
        "--resolv-conf=copy-host", "--timezone=off", f"--directory={base.rootfs}",
        f"--bind={pip_cache}:{PIP_CACHE_IN_CONTAINER}", *binds, *trust_store_args(),
        f"--setenv=PIP_CACHE_DIR={PIP_CACHE_IN_CONTAINER}", "--setenv=HOME=/root",
        "--setenv=PIP_DISABLE_PIP_VERSION_CHECK=1",
        *(f"--setenv={k}={os.environ[k]}" for k in PIP_ENV if k in os.environ),
        "--", *argv,
    ], log=log, timeout=1800, check=check)


def trust_store_args() -> list[str]:
    """The host's CA bundle for pip, when the host names one (never baked in)."""
    bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if not bundle or not Path(bundle).is_file():
        return []
    return [f"--bind-ro={Path(bundle).resolve()}:{CA_IN_CONTAINER}",
            f"--setenv=PIP_CERT={CA_IN_CONTAINER}", f"--setenv=SSL_CERT_FILE={CA_IN_CONTAINER}"]


def pinned_version(lock: Path, package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==([^\s;\\]+)", lock.read_text(), re.MULTILINE)
    if not match:
        raise PipelineError(f"{lock}: no `{package}==VERSION` line", hint="regenerate the lock")
    return match.group(1)
