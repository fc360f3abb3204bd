"""Acceptance suite for a deployed appliance: testinfra over SSH plus httpx to its ports.

    pytest acceptance/ --site sites/lab.yml -m image      # before the OAuth login
    pytest acceptance/ --site sites/meridian.yml          # both tiers, against CT 457
    pytest acceptance/ --hosts paramiko://ops@10.157.0.57 --ssh-identity-file KEY

With --site the target is the site's container address, reached as the site's admin user
with the deploy key in the site's state directory; --hosts (testinfra's option) overrides
the connection. The suite never learns whether it talks to a lab or a real Proxmox host.
Test ids carry no host part, so a failed check has the same name everywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import shlex
import time
from collections.abc import Generator, Iterator
from typing import Any

import httpx
import paramiko
import pytest
import testinfra

from pipeline.config import Services, Site, load_site
from pipeline.contract import (
    DEFAULT_MODELS,
    DEPLOYED_MANIFEST,
    MASTER_KEY_ENV,
    UNITS,
    ImageManifest,
    parse_image_manifest,
)
from pipeline.errors import PipelineError
from pipeline.replace.ssh import latest_known_hosts

SSH_TIMEOUT = 15  # seconds for the SSH connect (testinfra's own wait is unbounded)
HTTP_TIMEOUT = 15.0
# A fresh connection per request: uvicorn drops idle keep-alive connections after 5 s, and a
# request racing that close fails with "connection reset" although the service is fine.
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)
SETTLE_SECONDS = 180  # longest wait for a freshly started container to settle
MASKED = "********"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--site", help="site file (sites/*.yml) describing the deployed container")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "image: checks that hold before the OAuth login")
    config.addinivalue_line("markers", "oauth: checks that need the OAuth login (a real request)")
    config.addinivalue_line("markers", "scan: walks the container's whole filesystem (seconds): runs first")
    if not config.option.collectonly and not config.option.help:
        config.stash[_SITE] = _site(config)
        config.stash[_SPEC] = _spec(config, config.stash[_SITE])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The filesystem scans first: with several workers (replace-ct's gate runs two) the quick
    checks then share the time of the scans instead of queueing behind them at the end
    (lab, two workers fed one test at a time: gate 9.8 -> 7.4 s)."""
    items.sort(key=lambda item: item.get_closest_marker("scan") is None)


class MasterKey:
    """The LiteLLM master key; its repr never shows the value (pytest prints reprs)."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"MasterKey({MASKED})"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.value.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Target:
    """What the suite checks against: address, ports and expected model aliases."""

    address: str
    services: Services
    models: tuple[str, ...]
    site: Site | None


def _site(config: pytest.Config) -> Site | None:
    path = config.getoption("--site")
    if not path:
        return None
    try:
        return load_site(path)
    except PipelineError as exc:
        raise pytest.UsageError(str(exc)) from None


def _spec(config: pytest.Config, site: Site | None) -> tuple[str, str | None]:
    """(testinfra host spec, identity file) from --hosts, or from the site."""
    hosts = config.getoption("hosts")
    identity = config.getoption("ssh_identity_file")
    if hosts:
        spec = hosts if "://" in hosts else f"paramiko://{hosts}"
        if "," in hosts or not spec.startswith("paramiko://"):
            raise pytest.UsageError("--hosts: give one target, as USER@ADDRESS or paramiko://USER@ADDRESS")
        return spec, identity
    if site:
        key = identity or str(site.site_state_dir / "deploy_key")
        return f"paramiko://{site.admin.user}@{site.container.network.ip}", key
    raise pytest.UsageError("give --site FILE (or --hosts USER@ADDRESS for a direct target)")


_SITE = pytest.StashKey[Site | None]()
_SPEC = pytest.StashKey[tuple[str, str | None]]()


@pytest.fixture(scope="session")
def site(pytestconfig: pytest.Config) -> Site | None:
    return pytestconfig.stash[_SITE]


@pytest.fixture(scope="session")
def host(pytestconfig: pytest.Config) -> testinfra.host.Host:
    """The container, as root (sudo) over SSH; the connect timeout is bounded."""
    spec, identity = pytestconfig.stash[_SPEC]
    host = testinfra.get_host(
        spec,
        ssh_identity_file=identity,
        ssh_config=pytestconfig.getoption("ssh_config"),
        timeout=SSH_TIMEOUT,
        sudo=True,
    )
    try:
        client = host.backend.client  # connects now, so one clear message for every test
    except (paramiko.SSHException, OSError) as exc:
        pytest.fail(f"SSH to {spec} (key {identity}) failed: {exc}", pytrace=False)
    site = pytestconfig.stash[_SITE]
    if site is not None:
        check_pinned_host_key(site, host.backend.host.name, client.get_transport().get_remote_server_key())
    return host


def check_pinned_host_key(site: Site, address: str, server_key: paramiko.PKey) -> None:
    """Testinfra only warns on unknown host keys: compare with the key replace-ct pinned at deploy.

    Runs before any test sends anything (the leak check sends the master key over SSH).
    """
    pinned = latest_known_hosts(site.site_state_dir)
    if pinned is None:
        return  # never deployed from this state dir: nothing to compare with (testinfra warns)
    if not paramiko.HostKeys(str(pinned)).check(address, server_key):
        pytest.fail(
            f"SSH host key of {address} is not the one pinned when it was deployed ({pinned}): "
            "refusing to talk to it", pytrace=False,
        )


@pytest.fixture(scope="session")
def target(site: Site | None, host: testinfra.host.Host) -> Target:
    """The address is the one SSH connects to: the site's container, or the --hosts name."""
    return Target(
        address=host.backend.host.name,
        services=site.services if site else Services(),
        models=tuple(site.models) if site else DEFAULT_MODELS,
        site=site,
    )


@pytest.fixture(scope="session")
def master_key(target: Target, host: testinfra.host.Host) -> MasterKey:
    """From the site's secret source; for a bare --hosts target, from the container's env file."""
    if target.site:
        return MasterKey(target.site.litellm.master_key.read(label="litellm.master_key"))
    out = host.run(f"sed -n 's/^LITELLM_MASTER_KEY=//p' {MASTER_KEY_ENV}")
    assert out.rc == 0 and out.stdout.strip(), f"no LITELLM_MASTER_KEY in {MASTER_KEY_ENV}"
    return MasterKey(out.stdout.strip())


@pytest.fixture(scope="session")
def wrong_key() -> str:
    return "sk-wrong-" + secrets.token_urlsafe(24)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, Any, None]:
    """Mask the master key in every report (failure text, captured output, junit xml)."""
    outcome = yield
    report = outcome.get_result()
    key = getattr(item, "funcargs", {}).get("master_key")
    if not isinstance(key, MasterKey):
        return
    if report.longrepr is not None and key.value in str(report.longrepr):
        report.longrepr = str(report.longrepr).replace(key.value, MASKED)
    report.sections = [(name, text.replace(key.value, MASKED)) for name, text in report.sections]


@pytest.fixture(scope="session")
def meridian(target: Target) -> Iterator[httpx.Client]:
    """Meridian's Anthropic-format API (no auth at this layer)."""
    base = f"http://{target.address}:{target.services.meridian_port}"
    with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT, limits=NO_KEEPALIVE) as client:
        yield client


@pytest.fixture(scope="session")
def litellm(target: Target) -> Iterator[httpx.Client]:
    """LiteLLM's OpenAI-format API without credentials; tests add the header they need."""
    base = f"http://{target.address}:{target.services.litellm_port}"
    with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT, limits=NO_KEEPALIVE) as client:
        yield client


@pytest.fixture(scope="session")
def litellm_authed(target: Target, master_key: MasterKey) -> Iterator[httpx.Client]:
    """LiteLLM with the master key preset (the key never appears in a test's locals)."""
    base = f"http://{target.address}:{target.services.litellm_port}"
    headers = {"Authorization": f"Bearer {master_key.value}"}
    with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT, headers=headers, limits=NO_KEEPALIVE) as client:
        yield client


def _port_of(target: Target, name: str) -> int:
    return {
        "meridian": target.services.meridian_port,
        "litellm": target.services.litellm_port,
        "node_exporter": target.services.node_exporter_port,
    }[name]


def _listeners(host: testinfra.host.Host, port: int) -> list[str]:
    out = host.check_output(f"ss -Htln sport = :{port}")
    return [line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()]


def _unsettled(host: testinfra.host.Host, target: Target) -> list[str]:
    """What is still starting: the system, a unit, or an active unit whose port is not open."""
    waiting = []
    state = host.run("systemctl is-system-running").stdout.strip()
    if state in ("initializing", "starting"):
        waiting.append(f"system {state}")
    for name, unit in UNITS.items():
        active = host.run(f"systemctl is-active {unit}").stdout.strip()
        if active in ("activating", "reloading"):
            waiting.append(f"{unit} {active}")
        elif active == "active" and not _listeners(host, _port_of(target, name)):
            waiting.append(f"{unit} port {_port_of(target, name)}")
    return waiting


@pytest.fixture(scope="session", autouse=True)
def settled(host: testinfra.host.Host, target: Target) -> None:
    """Give a container that just booted a bounded time to finish starting; never fails.

    The checks themselves then say what is wrong; this only avoids racing a start.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    while _unsettled(host, target) and time.monotonic() < deadline:
        time.sleep(2)


@pytest.fixture(scope="session")
def port_of(target: Target):
    """port_of("litellm") -> the site's LiteLLM port."""
    return lambda name: _port_of(target, name)


@pytest.fixture(scope="session")
def listeners(host: testinfra.host.Host):
    """listeners(4000) -> local addresses listening on that TCP port (0.0.0.0, [::], *)."""
    return lambda port: _listeners(host, port)


@pytest.fixture(scope="session")
def claude_status(host: testinfra.host.Host) -> tuple[int, dict]:
    """(exit code, JSON) of `claude auth status` run as meridian with its service environment."""
    out = host.check_output(f"systemctl show -p Environment --value {UNITS['meridian']}")
    env = dict(item.split("=", 1) for item in shlex.split(out) if "=" in item)
    env["HOME"] = host.user("meridian").home
    assigns = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    result = host.run(f"runuser -u meridian -- env -i {assigns} claude auth status")
    try:
        return result.rc, json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"`claude auth status` printed no JSON (exit {result.rc}): {result.stderr[-500:]}")


@pytest.fixture(scope="session")
def manifest(host: testinfra.host.Host) -> ImageManifest:
    """The deployed manifest (pipeline.contract.DEPLOYED_MANIFEST), read strictly."""
    return parse_image_manifest(host.check_output(f"cat {DEPLOYED_MANIFEST}"), DEPLOYED_MANIFEST)


@pytest.fixture(scope="session")
def root_exec(host: testinfra.host.Host):
    """root_exec(cmd, stdin) -> (rc, stdout): data goes on stdin, never on a command line
    (sudo logs command lines to the journal)."""

    def run(command: str, stdin: str, timeout: float = 300) -> tuple[int, str]:
        client = host.backend.client
        wrapped = f"sudo -n sh -c {shlex.quote(command)}"
        stdin_f, stdout_f, _ = client.exec_command(wrapped, timeout=timeout)
        stdin_f.write(stdin)
        stdin_f.channel.shutdown_write()
        out = stdout_f.read().decode(errors="replace")
        return stdout_f.channel.recv_exit_status(), out

    return run
