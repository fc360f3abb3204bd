#!/opt/litellm/bin/python3
"""/opt/litellm/bin/litellm: the console script for `litellm`, plus two start-up changes.

1. Importing the proxy creates millions of long-lived objects (thousands of pydantic models,
hundreds of FastAPI routes), and Python's cyclic garbage collector rescans the growing heap
again and again while they are made: about a third of the start time, for nothing, since
none of it is garbage. So: no collection until the proxy is imported, then gc.freeze()
moves everything made so far out of the collector's sight and collection resumes as usual.

2. The openai SDK's type packages (openai.types and its subpackages) are generated files
whose __init__.py only re-exports names from their modules (`from .x import X as X`), and
importing one name from such a package runs every module it re-exports: ≈ 1 000 modules
across openai.types, with their pydantic models, nearly half of which this proxy never
touches (agents, sessions, assistants …). Such a package is given a module __getattr__
instead, which imports a name's module when the name is first asked for, so only the
modules actually used are imported. A package whose __init__.py holds anything else (or
re-exports a name that is also a submodule's) is imported as usual.

3. The unit starts it at boot, before the site's files exist (replace-ct writes them over
SSH about a second later): it imports first, then waits for the files named by
LITELLM_SITE_FILES (bounded: after WAIT_SECONDS it exits 0, and the seed's `systemctl start`
starts it again), reads the NAME=value lines of its .env files into the environment
(systemd does not: the unit has no EnvironmentFile for them, so it can start without them)
and serves on LITELLM_PORT. The import, ≈ 2.5 s of CPU, then runs while the container is
being seeded rather than after it.

4. The listening socket outlives a restart of the service: the launcher binds it, hands a copy
to systemd's file descriptor store (the unit allows one: FileDescriptorStoreMax=1) and gives
it to uvicorn; at the next start systemd passes it back (LISTEN_FDS), and the launcher serves
on it when it is bound where the site says (else it replaces it). Systemd 252 keeps the store
across `systemctl restart` and drops it at `systemctl stop`. So while a restart (an extension
swap, a re-seed) stops the old process and the new one imports, the port keeps accepting: the
kernel queues the connections and the new process answers them, instead of refusing them.

Same imports in the same order as the plain script otherwise (the CLI module first: it sets
sys.path and reads LITELLM_MODE; run_server() imports the proxy server first thing).
See README.md.
"""

import gc
import importlib
import importlib.machinery
import os
import re
import socket
import sys
import time

WAIT_SECONDS = 600
WAIT_POLL_SECONDS = 0.05
# sd_listen_fds(3): passed descriptors start at 3. Uvicorn's own default backlog.
LISTEN_FDS_START = 3
STORE_NAME = "litellm-listen"
BACKLOG = 2048

LAZY_REEXPORT_PACKAGES = ("openai.types",)
REEXPORT = re.compile(r"from \.([\w.]*) import \(?\s*(\w+) as (\w+),?\s*\)?\s*")
NOTHING_ELSE = re.compile(r"(?:#[^\n]*|from __future__ import annotations|\s)*")


class ReexportsOnFirstUse:
    """Meta path finder: the packages above, when their __init__.py only re-exports."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if not any(name == p or name.startswith(p + ".") for p in LAZY_REEXPORT_PACKAGES):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.submodule_search_locations and spec.origin:
            exports = reexports(spec.origin)
            if exports is not None:
                spec.loader = LazyPackageLoader(spec.loader, exports)
        return spec


def reexports(init: str) -> dict[str, str] | None:
    """{name: module it comes from} when the file is nothing but such re-exports (and no
    name is also a submodule's, which the import system would overwrite), else None."""
    with open(init, encoding="utf-8") as file:
        text = file.read()
    exports = {}
    for match in REEXPORT.finditer(text):
        module, name, alias = match.groups()
        if not module or name != alias:
            return None
        exports[name] = module
    if not NOTHING_ELSE.fullmatch(REEXPORT.sub("", text)):
        return None
    submodules = {entry.removesuffix(".py") for entry in os.listdir(os.path.dirname(init))}
    return None if submodules & exports.keys() else exports


class LazyPackageLoader:
    """The package's own loader (resources, source …) with exec_module replaced."""

    def __init__(self, loader, exports: dict[str, str]) -> None:
        self.loader, self.exports = loader, exports

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        exports, package = self.exports, module.__name__
        modules = {m.split(".")[0] for m in exports.values()}

        def __getattr__(attr: str):
            if attr in exports:
                value = getattr(importlib.import_module(f".{exports[attr]}", package), attr)
            elif attr in modules:  # the eager __init__ imported these submodules too
                value = importlib.import_module(f".{attr}", package)
            else:
                raise AttributeError(f"module {package!r} has no attribute {attr!r}")
            setattr(module, attr, value)
            return value

        module.__getattr__ = __getattr__
        module.__dir__ = lambda: sorted({*module.__dict__, *exports, *modules})
        module.__all__ = list(exports)


def wait_for(paths: list[str]) -> bool:
    """Until every path exists (bounded in time and count); says so once when it waits."""
    for attempt in range(int(WAIT_SECONDS / WAIT_POLL_SECONDS) + 1):
        if all(os.path.exists(p) for p in paths):
            return True
        if attempt == 0:
            print(f"proxy imported; waiting for the site's files: {' '.join(paths)}", file=sys.stderr, flush=True)
        time.sleep(WAIT_POLL_SECONDS)
    return False


def read_env_file(path: str) -> dict[str, str]:
    """NAME=value lines as the seed writes them (no quoting; blank and # lines skipped)."""
    with open(path, encoding="utf-8") as file:
        lines = [line.strip() for line in file]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def notify(message: str, fds: tuple[int, ...] = ()) -> None:
    """sd_pid_notify_with_fds(3) for the main process; nothing when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as channel:
        channel.connect("\0" + address[1:] if address.startswith("@") else address)
        socket.send_fds(channel, [message.encode()], list(fds))


def passed_socket() -> socket.socket | None:
    """The socket systemd passed back from its store (LISTEN_FDS), if any; consumed."""
    mine = os.environ.pop("LISTEN_PID", None) == str(os.getpid())
    count = int(os.environ.pop("LISTEN_FDS", "0") or 0)
    os.environ.pop("LISTEN_FDNAMES", None)
    return socket.socket(fileno=LISTEN_FDS_START) if mine and count == 1 else None


def listening_socket(host: str, port: int) -> socket.socket:
    """The previous run's socket when it listens on host:port, else a new one, stored."""
    kept = passed_socket()
    if kept is not None and kept.getsockname()[:2] == (host, port):
        return kept
    if kept is not None:
        notify(f"FDSTOREREMOVE=1\nFDNAME={STORE_NAME}")
        kept.close()
    sock = socket.create_server((host, port), backlog=BACKLOG)
    notify(f"FDSTORE=1\nFDNAME={STORE_NAME}", (sock.fileno(),))
    return sock


def option(name: str, default: str) -> str:
    """The last value of a command line option (`--name value`), as click would take it."""
    values = [sys.argv[i + 1] for i, arg in enumerate(sys.argv[:-1]) if arg == name]
    return values[-1] if values else default


sys.meta_path.insert(0, ReexportsOnFirstUse)
gc.disable()
from litellm import run_server  # noqa: E402

importlib.import_module("litellm.proxy.proxy_server")
import uvicorn  # noqa: E402  (the proxy imported it already)

gc.freeze()
gc.enable()

if __name__ == "__main__":
    site_files = os.environ.get("LITELLM_SITE_FILES", "").split()
    if not wait_for(site_files):
        print(f"no site configuration after {WAIT_SECONDS} s ({' '.join(site_files)}): exiting; "
              "`systemctl start litellm` starts it again", file=sys.stderr)
        sys.exit(0)
    for path in site_files:
        if path.endswith(".env"):
            os.environ.update(read_env_file(path))
    if "LITELLM_PORT" in os.environ:
        sys.argv += ["--port", os.environ["LITELLM_PORT"]]
    listener = listening_socket(option("--host", "0.0.0.0"), int(option("--port", "4000")))
    serve = uvicorn.Server.run
    uvicorn.Server.run = lambda self, sockets=None: serve(self, sockets=sockets or [listener])
    sys.argv[0] = re.sub(r"(-script\.pyw|\.exe)?$", "", sys.argv[0])
    sys.exit(run_server())
