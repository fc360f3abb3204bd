"""``python -m lab up|down|status|token``: run the lab's Proxmox VE API in the background.

    python -m lab up [--state DIR]     start (idempotent); prints the URL, token id, CA and secret paths
    python -m lab status               server and containers
    python -m lab restart              a new server process; the containers keep running
    python -m lab token add ID --acl /pool/meridian=PVEVMUser --secret-file F
    python -m lab down                 stop containers and server; remove bridge, volumes, state

``down`` removes only what ``up`` and the server created: the containers in the state's own
lxcpath, the bridge when ``up`` created it, and the state directory's contents.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import requests
import yaml

from lab import disk, lxc, thin
from lab.errors import LabError
from lab.guests import Guests
from lab.node import DEFAULT_NODE, DEFAULT_STATE, Node
from lab.server import serve, tls_context
from lab.tls import ensure_certificates

HOST = "127.0.0.1"
PORT = 8006
LAB_TOKEN = yaml.safe_load((Path(__file__).parent / "data" / "lab-token.yml").read_text())
READY_TRIES = 100
READY_PAUSE = 0.2
STOP_TRIES = 50
# What a state directory holds (node.py documents it); `down` removes these and nothing else.
# "pipeline" is the lab site's state_dir (sites/lab.yml): its journal and deploy key describe
# containers that die with the lab, so they go with it (a stale journal would make replace-ct
# look for a credentials volume that `down` destroyed).
STATE_ENTRIES = ("ca.pem", "ca.key", "server.pem", "server.key", "token.secret", "access.json",
                 "owned.json", "etc", "storage", "storage.img", "lxc", "tasks", "server.pid", "server.log",
                 "pipeline")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m lab", description="the local Proxmox VE API lab")
    top.add_argument("--state", type=Path, default=DEFAULT_STATE, help=f"state directory ({DEFAULT_STATE})")
    sub = top.add_subparsers(dest="command", required=True)
    up_cmd = sub.add_parser("up", help="start the API server (idempotent)")
    up_cmd.add_argument("--node", default=DEFAULT_NODE, help="node name the API reports")
    up_cmd.add_argument("--port", type=int, default=PORT)
    up_cmd.set_defaults(func=up)
    restart_cmd = sub.add_parser("restart", help="restart only the API server; containers keep running")
    restart_cmd.add_argument("--node", default=DEFAULT_NODE, help="node name the API reports")
    restart_cmd.add_argument("--port", type=int, default=PORT)
    restart_cmd.set_defaults(func=restart)
    sub.add_parser("down", help="stop everything the lab started and remove it").set_defaults(func=down)
    sub.add_parser("status", help="show the server and containers").set_defaults(func=status)
    token = sub.add_parser("token", help="manage API tokens").add_subparsers(dest="action", required=True)
    add = token.add_parser("add", help="create (or replace) a token, e.g. a less privileged one for tests")
    add.add_argument("token_id", help="USER@REALM!TOKENID")
    add.add_argument("--acl", action="append", default=[], metavar="PATH=ROLE", help="repeatable")
    add.add_argument("--secret-file", type=Path, required=True, help="where the secret is written (0600)")
    add.set_defaults(func=token_add)
    for name in ("up", "restart", "down", "status"):
        sub.choices[name].add_argument("--state", type=Path, default=argparse.SUPPRESS)
    add.add_argument("--state", type=Path, default=argparse.SUPPRESS)
    return top


# -- up ------------------------------------------------------------------------------

def up(args: argparse.Namespace) -> int:
    state: Path = args.state
    if _server_pid(state) and _answers(state, args.port):
        _print_access(state, args.port)
        return 0
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)  # container root (uid 100000) must traverse to its rootfs
    ensure_certificates(state)
    _ensure_token(state)
    disk.attach(state / "storage", state / "storage.img")
    Node(state).ensure_bridge()
    daemon = _start_daemon(state, args.node, args.port)
    for _ in range(READY_TRIES):
        if _answers(state, args.port):
            _print_access(state, args.port)
            return 0
        if os.waitpid(daemon, os.WNOHANG)[0] == daemon:
            raise LabError(f"the lab API server exited at start:\n{_log_tail(state)}",
                                hint=f"whole log: {state / 'server.log'}")
        time.sleep(READY_PAUSE)
    raise LabError(f"the lab API did not answer on https://{HOST}:{args.port} in "
                        f"{READY_TRIES * READY_PAUSE:.0f}s; its log ends:\n{_log_tail(state)}",
                        hint=f"whole log: {state / 'server.log'}")


def _log_tail(state: Path, lines: int = 20) -> str:
    log = state / "server.log"
    text = log.read_text(errors="replace") if log.exists() else "(no server.log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _ensure_token(state: Path) -> None:
    node = Node(state)
    secret_file = state / "token.secret"
    for pool in LAB_TOKEN["pools"]:
        node.access.ensure_pool(pool)
    acl = [(entry["path"], entry["role"]) for entry in LAB_TOKEN["acl"]]
    if secret_file.exists() and node.access.authenticate(_header(secret_file)):
        node.access.set_acl(LAB_TOKEN["token"], acl)  # a lab made by an older version gets today's
        return
    _write_secret(secret_file, node.access.add_token(LAB_TOKEN["token"], acl))


def _write_secret(path: Path, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    path.chmod(0o600)


def _start_daemon(state: Path, node_name: str, port: int) -> int:
    """Fork the server into its own session; its output goes to server.log. Returns its PID."""
    child = os.fork()
    if child != 0:
        return child
    os.setsid()
    log = os.open(state / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        node = Node(state, node_name)
        _reclaim_addresses(node)
        tls = tls_context(state / "server.pem", state / "server.key")
        serve(node, HOST, port, tls, ready=lambda: _write_pid(state))
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(1)


def _write_pid(state: Path) -> None:
    (state / "server.pid").write_text(str(os.getpid()))


def _reclaim_addresses(node: Node) -> None:
    """After a server restart its running containers keep their addresses (leases name our PID)."""
    guests = Guests(node)
    for vmid in guests.vmids():
        try:
            conf = guests.load(vmid)
            net = conf.get("net0", "")
            if guests.running(vmid, conf) and "ip=" in net:
                lxc.claim_address(net.split("ip=", 1)[1].split(",", 1)[0])
        except Exception as exc:  # a broken guest never keeps the lab from coming up
            print(f"CT {vmid}: not reclaimed: {exc}", flush=True)


def _answers(state: Path, port: int) -> bool:
    secret_file = state / "token.secret"
    if not secret_file.exists():
        return False
    try:
        resp = requests.get(f"https://{HOST}:{port}/api2/json/version",
                            headers={"Authorization": _header(secret_file)},
                            verify=str(state / "ca.pem"), timeout=2)
    except requests.RequestException:
        return False
    return resp.status_code == 200


def _header(secret_file: Path) -> str:
    return f"PVEAPIToken={LAB_TOKEN['token']}={secret_file.read_text().strip()}"


def _print_access(state: Path, port: int) -> None:
    print(f"url: https://{HOST}:{port}/api2/json")
    print(f"token: {LAB_TOKEN['token']}")
    print(f"token secret file: {state / 'token.secret'}")
    print(f"ca: {state / 'ca.pem'}")


def restart(args: argparse.Namespace) -> int:
    _stop_server(args.state)
    return up(args)


# -- down ----------------------------------------------------------------------------

def down(args: argparse.Namespace) -> int:
    state: Path = args.state
    _stop_server(state)
    node = Node(state)
    guests = Guests(node)
    for vmid in guests.vmids():
        conf = guests.load(vmid)
        if "net0" in conf and "ip=" in conf["net0"]:
            lxc.release_address(conf["net0"].split("ip=", 1)[1].split(",", 1)[0])
    # Every container in the lab's own lxcpath is one of ours, whatever its config says.
    for ct_dir in sorted((state / "lxc").glob("*")) if (state / "lxc").is_dir() else []:
        try:
            lxc.Container(ct_dir.name, state / "lxc").destroy(keep_rootfs=True)
        except LabError as exc:
            print(f"could not stop container {ct_dir.name}: {exc}", file=sys.stderr)
    # Linked clones' overlays first: removing the storage through a mounted overlay would not free it.
    for storage_dir in sorted((state / "storage").glob("*")) if (state / "storage").is_dir() else []:
        thin.deactivate_all(storage_dir)
    disk.detach(state / "storage", state / "storage.img")
    bridge = node.owned().get("bridge")
    if bridge and not lxc.remove_bridge(bridge):
        print(f"kept bridge {lxc.BRIDGE}: other containers are still attached to it")
    for entry in STATE_ENTRIES:
        path = state / entry
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if state.is_dir() and not any(state.iterdir()):
        state.rmdir()
    print("lab is down")
    return 0


def _stop_server(state: Path) -> None:
    pid = _server_pid(state)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(STOP_TRIES):
        if not _is_lab_server(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _server_pid(state: Path) -> int | None:
    """The server's PID from server.pid, only while that process is still our server."""
    pidfile = state / "server.pid"
    if not pidfile.exists():
        return None
    text = pidfile.read_text().strip()
    return int(text) if text.isdigit() and _is_lab_server(int(text)) else None


def _is_lab_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"lab" in cmdline and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


# -- status, token -------------------------------------------------------------------

def status(args: argparse.Namespace) -> int:
    state: Path = args.state
    pid = _server_pid(state)
    print(f"server: {'running, pid ' + str(pid) if pid else 'not running'} (state {state})")
    if not (state / "etc").exists():
        return 0 if pid else 1
    guests = Guests(Node(state))
    for vmid in guests.vmids():
        conf = guests.load(vmid)
        problem = guests.problem(vmid)
        print(f"CT {vmid} {conf.get('hostname', '')}: {'running' if guests.running(vmid, conf) else 'stopped'}"
              + (f" (lock: {conf['lock']})" if "lock" in conf else "")
              + (f" BROKEN: {problem} (remove it: DELETE /nodes/NODE/lxc/{vmid}, or python -m lab down)"
                 if problem else ""))
    return 0 if pid else 1


def token_add(args: argparse.Namespace) -> int:
    acl = []
    for item in args.acl:
        path, sep, role = item.partition("=")
        if not sep or not path.startswith("/"):
            raise LabError(f"--acl {item!r} is not PATH=ROLE", hint="e.g. --acl /pool/meridian=PVEVMUser")
        acl.append((path, role))
    try:
        secret = Node(args.state).access.add_token(args.token_id, acl)
    except ValueError as exc:
        raise LabError(str(exc)) from None
    _write_secret(args.secret_file, secret)
    print(f"token {args.token_id}: secret written to {args.secret_file}")
    return 0
