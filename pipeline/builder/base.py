"""The Debian 12 base rootfs: mmdebstrap with the package list in image/base.toml.

The base is only what Debian installs. The appliance's own files (image/rootfs/) are laid
on a copy of it when the template is assembled, so editing a unit file does not rebuild
the base or the litellm layer (whose venv uses the base's python3).
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path

from pipeline.builder.cache import Key
from pipeline.builder.context import BuildContext, read_toml
from pipeline.progress import Skip, console, step
from pipeline.runner import run


@dataclass(frozen=True)
class Base:
    key: str
    entry: Path
    rebuilt: bool

    @property
    def rootfs(self) -> Path:
        return self.entry / "rootfs"


def base_key(ctx: BuildContext) -> str:
    return Key("base").file("recipe", ctx.image_dir / "base.toml").file("code", Path(__file__)).hexdigest()


@dataclass(frozen=True)
class PendingBase:
    """A base being bootstrapped in the background (``bootstrap`` is None when it was cached)."""

    base: Base
    bootstrap: Future[None] | None
    started: float


def start(ctx: BuildContext, background: Executor) -> PendingBase:
    """Start the bootstrap (half a minute of downloading and unpacking Debian) beside the
    steps that do not need the base; ``wait`` returns it."""
    key = base_key(ctx)
    cached = ctx.cache.has("base", "debian", key)
    base = Base(key, ctx.cache.entry("base", "debian", key), rebuilt=not cached)
    if cached:
        return PendingBase(base, None, time.monotonic())
    console.print("[bold]>[/bold] bootstrap Debian base: started in the background")
    return PendingBase(base, background.submit(bootstrap, ctx, key), time.monotonic())


def wait(pending: PendingBase) -> Base:
    with step("bootstrap Debian base"):
        if pending.bootstrap is None:
            raise Skip(f"cached ({pending.base.key[:12]})")
        pending.bootstrap.result()
        console.print(f"  took {time.monotonic() - pending.started:.1f}s in all, the time above is the wait for it")
    return pending.base


def bootstrap(ctx: BuildContext, key: str) -> None:
    with ctx.cache.filling("base", "debian", key) as scratch:
        mmdebstrap(ctx, scratch / "rootfs")


def mmdebstrap(ctx: BuildContext, rootfs: Path) -> None:
    recipe = read_toml(ctx.image_dir / "base.toml")
    run([
        "mmdebstrap", "--mode=root", f"--variant={recipe['variant']}",
        f"--architectures={recipe['architecture']}",
        "--include=" + ",".join(recipe["packages"]),
        # Nothing the list does not name: the template stays small and predictable.
        "--aptopt=APT::Install-Recommends \"false\"",
        recipe["suite"], rootfs, *recipe["mirrors"],
    ], log=ctx.log("mmdebstrap"), timeout=1800)


def debian_packages(rootfs: Path) -> list[str]:
    """``name=version`` of every installed package, read from dpkg's status file."""
    packages = []
    for stanza in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Status") == "install ok installed":
            packages.append(f"{fields['Package']}={fields['Version']}")
    return sorted(packages)
