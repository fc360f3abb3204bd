"""The litellm layer: a venv at its final path (/opt/litellm), made by the container's own
python3 inside the base rootfs, from the hash-locked sysext/litellm/requirements.lock.

The installer is uv (the version this package pins; its binary is bind-mounted read-only):
it installs the same wheels, checked against the same hashes, as pip, in seconds instead of
pip's 86 s (docs/build-cache.md). It runs under systemd-nspawn with a throw-away overlay on the
base, so the base stays clean. The host's CA bundle is bind-mounted read-only for the
downloads (TLS-intercepting proxies, docs/containers.md) and never copied into the tree. Before
the bytecode is made, the recipe's patches are applied to the installed packages (`git apply`:
exact context, no fuzz, all or nothing) and the `litellm` console script is replaced by the
recipe's launcher; both make the proxy start faster (sysext/litellm/README.md).
"""

from __future__ import annotations

import os
import re
import shutil
from importlib.metadata import version
from pathlib import Path

from uv import find_uv_bin

from pipeline.builder.base import Base
from pipeline.builder.context import BuildContext, read_toml
from pipeline.builder.layers import Layer, build_layer, layer_key
from pipeline.errors import PipelineError
from pipeline.progress import step
from pipeline.runner import run

CA_IN_CONTAINER = "/run/build/ca-bundle.pem"
LOCK_IN_CONTAINER = "/run/build/requirements.lock"
UV_IN_CONTAINER = "/run/build/uv"
UV_CACHE_IN_CONTAINER = "/var/cache/uv-build"
SITE_PACKAGES = "lib/python3.11/site-packages"  # Debian 12's python3
# Host variables that tell uv where the index or proxy is: handed into the container.
INSTALLER_ENV = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_INDEX", "UV_HTTP_TIMEOUT",
                 "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def recipe(ctx: BuildContext) -> dict:
    return read_toml(ctx.sysext_dir / "litellm" / "recipe.toml")


def build(ctx: BuildContext, base: Base) -> Layer:
    # The recipe folder's files (patches and launcher included) are part of layer_key.
    key = layer_key(ctx, "litellm", __file__).text("base", base.key).text("uv", version("uv")).hexdigest()
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
    with step("uv pip install --require-hashes"):
        # Copies, not links: the patches below must never reach uv's cache.
        in_base(ctx, base, binds, [
            UV_IN_CONTAINER, "pip", "install", "--no-config", "--python", f"{prefix}/bin/python3",
            "--require-hashes", "--no-deps", "--link-mode=copy", "-r", LOCK_IN_CONTAINER,
        ], log=log)
    for name in recipe(ctx).get("patches", []):
        with step(f"apply {name}"):
            apply_patch(ctx.sysext_dir / "litellm" / name, venv / SITE_PACKAGES, log=log)
    with step("install launcher"):
        install_launcher(ctx.sysext_dir / "litellm" / recipe(ctx)["launcher"], venv, prefix)
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


def apply_patch(patch: Path, site_packages: Path, *, log: Path) -> None:
    """`git apply` outside any repository: paths relative to site-packages, the context must
    match exactly (a new LiteLLM release that moved the code fails here, not at run time)."""
    env = {"GIT_CEILING_DIRECTORIES": str(site_packages.parent)}
    for check in (["--check"], []):
        run(["git", "apply", *check, "--verbose", "-p1", patch.resolve()],
            cwd=site_packages, env=env, log=log)


def install_launcher(source: Path, venv: Path, prefix: str) -> None:
    """Put the launcher where the installer wrote its console script, after checking both
    agree on the interpreter (the shebang written there is the venv's own python)."""
    script = venv / "bin" / "litellm"
    shebang = f"#!{prefix}/bin/python3"
    for path in (script, source):
        if path.read_text().splitlines()[0] != shebang:
            raise PipelineError(f"{path}: first line is not {shebang!r}",
                                hint="the launcher must run the venv's own python")
    shutil.copyfile(source, script)
    script.chmod(0o755)


def in_base(ctx: BuildContext, base: Base, binds: list[str], argv: list[str], *, log: Path,
            check: tuple[int, ...] = (0,)) -> None:
    uv_cache = ctx.cache.root / "uv"
    uv_cache.mkdir(parents=True, exist_ok=True)
    run([
        "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--machine=meridian-build",
        "--volatile=overlay",
        "--resolv-conf=copy-host", "--timezone=off", f"--directory={base.rootfs}",
        f"--bind={uv_cache}:{UV_CACHE_IN_CONTAINER}", f"--bind-ro={find_uv_bin()}:{UV_IN_CONTAINER}",
        *binds, *trust_store_args(),
        f"--setenv=UV_CACHE_DIR={UV_CACHE_IN_CONTAINER}", "--setenv=UV_PYTHON_DOWNLOADS=never",
        "--setenv=HOME=/root",
        *(f"--setenv={k}={os.environ[k]}" for k in INSTALLER_ENV if k in os.environ),
        "--", *argv,
    ], log=log, timeout=1800, check=check)


def trust_store_args() -> list[str]:
    """The host's CA bundle for the downloads, when the host names one (never baked in)."""
    bundle = os.environ.get("SSL_CERT_FILE") or os.environ.get("PIP_CERT")
    if not bundle or not Path(bundle).is_file():
        return []
    return [f"--bind-ro={Path(bundle).resolve()}:{CA_IN_CONTAINER}", f"--setenv=SSL_CERT_FILE={CA_IN_CONTAINER}"]


def pinned_version(lock: Path, package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==([^\s;\\]+)", lock.read_text(), re.MULTILINE)
    if not match:
        raise PipelineError(f"{lock}: no `{package}==VERSION` line", hint="regenerate the lock")
    return match.group(1)
