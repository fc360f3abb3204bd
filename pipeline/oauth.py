"""``python -m pipeline oauth-login --site FILE``: the one-time Claude OAuth login in the container.

Runs the bundled ``claude auth login --claudeai`` as the meridian user over ``ssh -t``: it
prints a URL, you log in in a browser and paste the code back. Then ``claude auth status``
must say logged in. The credentials land in /var/lib/meridian/.claude on the credentials
volume, which every replace-ct keeps, so this is needed once per site.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

from pipeline.config import Site, load_site
from pipeline.errors import PipelineError
from pipeline.progress import console
from pipeline.replace.ssh import SSH, latest_known_hosts
from pipeline.runner import ANY_EXIT, run

SERVICE = "meridian.service"
SERVICE_USER = "meridian"
LOGIN_TIMEOUT = 900  # a person reads a URL, logs in and pastes a code


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site file (sites/*.yml)")
    parser.add_argument("--force", action="store_true", help="log in again even when logged in")


def main(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    ssh = _connect(site)
    claude = _claude_command(ssh)
    status = _auth_status(ssh, claude)
    if status.get("loggedIn") and not args.force:
        console.print(f"already logged in (subscription: {status.get('subscriptionType')}); "
                      "--force logs in again")
        return 0
    console.print(f"logging in as {SERVICE_USER} on {site.container.network.ip}: open the URL, "
                  "then paste the code here")
    interactive = ["ssh", "-t", *ssh._argv(shlex.join(["sudo", "-n", *claude, "login", "--claudeai"]))[1:]]
    run(interactive, interactive=True, timeout=LOGIN_TIMEOUT, check=ANY_EXIT)
    status = _auth_status(ssh, claude)
    if not status.get("loggedIn"):
        raise PipelineError(
            f"claude auth status as {SERVICE_USER} on {site.container.network.ip} still says "
            "not logged in",
            hint="run oauth-login again and paste the whole code shown after the browser login",
        )
    console.print(f"[green]logged in[/green] (subscription: {status.get('subscriptionType')})")
    return 0


def _connect(site: Site) -> SSH:
    """SSH as the admin user with the deploy key, pinned to the host key replace-ct saw last."""
    key = site.site_state_dir / "deploy_key"
    if not key.exists():
        raise PipelineError(
            f"no deploy key at {key}",
            hint=f"deploy first: python -m pipeline replace-ct --site {site.source_file}",
        )
    return SSH(site.container.network.ip, key, _known_hosts(site.site_state_dir), site.admin.user)


def _known_hosts(state_dir: Path) -> Path:
    pinned = latest_known_hosts(state_dir)
    if pinned:
        return pinned
    (state_dir / "known_hosts.d").mkdir(mode=0o700, parents=True, exist_ok=True)
    return state_dir / "known_hosts.d" / "oauth-login"


def _claude_command(ssh: SSH) -> list[str]:
    """``claude auth`` as the service user with the service's own environment (PATH, HOME)."""
    # As root: without D-Bus in the image, systemctl needs its private socket.
    out = _text(ssh, ["sudo", "-n", "systemctl", "show", "-p", "Environment", "--value", SERVICE])
    env = dict(item.split("=", 1) for item in shlex.split(out) if "=" in item)
    home = _text(ssh, ["getent", "passwd", SERVICE_USER]).strip().split(":")[5]
    env.update(HOME=home, TERM=os.environ.get("TERM", "xterm-256color"))
    return ["runuser", "-u", SERVICE_USER, "--", "env", "-i",
            *(f"{k}={v}" for k, v in env.items()), "claude", "auth"]


def _auth_status(ssh: SSH, claude: list[str]) -> dict:
    out = _text(ssh, ["sudo", "-n", *claude, "status"], check=(0, 1))
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise PipelineError(
            f"`claude auth status` as {SERVICE_USER} printed no JSON: {out[-300:]!r}",
            hint="is the meridian layer in the template, and meridian.service's PATH right?",
        ) from None


def _text(ssh: SSH, argv: list[str], check: tuple[int, ...] = (0,)) -> str:
    return ssh.run(argv, check=check).stdout.decode(errors="replace")
