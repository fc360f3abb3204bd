"""Downtime as a client sees it, for every kind of upgrade, in one run (as root, lab up):

    .venv/bin/python -m benchmarks.bench_downtime [--json FILE]

A poller on this machine asks both APIs of the lab CT every 50 ms, each time on a new
connection: Meridian's ``GET :3456/v1/models`` and LiteLLM's ``GET :4000/v1/models`` with the
master key. Up means HTTP 200; a refused connection, an error status or no answer within the
timeout is down. Per scenario it prints the longest window in which each port (and either
port) failed, how many probes were refused outright (a client without retries fails at once;
one whose timeout outlasts the start only waits), beside the in-place ``systemctl restart``
of the same service measured in the same run, right before the swap of that service (the
Ansible way this pipeline replaces).
Each layer build is synced to disk before the next scenario: a real site builds on another
machine, not on the Proxmox node. Scenarios, in order:

1. first deploy, as on a node that never saw this pipeline: CT 457, its holder and CT
   templates removed, the archive deleted from the template storage, and the lab's
   background deletions finished first; replace-ct's whole run, upload and gate included;
2. full replace (``--full``, same template): a new CT from the CT template;
3. Meridian-only swap: the Meridian stand-in at a new version (only that layer rebuilt);
4. LiteLLM-only swap: a copy of the repo whose litellm recipe differs by a comment (only
   that layer rebuilt, about two minutes);
5. failed gate: a full replace (``--full``) to the first template with a suite that fails on
   that template only, rolled back to the previous one (the LiteLLM variant), whose gate passes.

Traffic goes only to the lab CT's address on the lab bridge.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lab.node import DEFAULT_STATE
from lab.thin import TRASH
from pipeline.config import load_site
from pipeline.polling import wait_until
from pipeline.proxmox import Client
from pipeline.replace.ssh import latest_known_hosts
from pipeline.replace.steps import template_volid
from pipeline.replace.template_file import resolve
from tests.plugins.acceptance import (
    LAB_SITE,
    bumped_site,
    bumped_version,
    lab_ssh,
    pipeline_cli,
    remove_lab_ct,
)
from tests.plugins.paths import REPO_ROOT

POLL_SECONDS = 0.05
PROBE_TIMEOUT = 1.0
IN_FLIGHT = int(PROBE_TIMEOUT / POLL_SECONDS) + 4  # probes that may wait at once
SETTLE_SECONDS = 2.0
QUIET_TIMEOUT = 300
SCENARIO_TIMEOUT = 1800
UP_AGAIN_TIMEOUT = 300


@dataclass
class Poller:
    """Sends a probe of one URL every 50 ms, each on a fresh connection and its own thread, so a
    probe that waits for its timeout does not hold back the next (clients do not wait for each
    other); records (time sent, up) samples and the times of refused connections."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[float, bool]] = field(default_factory=list)
    refused_at: list[float] = field(default_factory=list)  # refused (or the host unreachable)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.monotonic() + SCENARIO_TIMEOUT
        # One client without keep-alive: a new connection per probe, but the client (its TLS
        # context above all) made once. httpx.get() builds a client per call, which kept more
        # than one of this machine's two cores busy and slowed the very start it measured.
        with httpx.Client(headers=self.headers, timeout=PROBE_TIMEOUT,
                          limits=httpx.Limits(max_keepalive_connections=0)) as client, \
                ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="probe") as probes:
            while not self._stop.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                probes.submit(self._probe, client, sent)
                self._stop.wait(max(0.0, POLL_SECONDS - (time.monotonic() - sent)))

    def _probe(self, client: httpx.Client, sent: float) -> None:
        try:
            up = client.get(self.url).status_code == 200
        except httpx.ConnectError:
            up = False
            self.refused_at.append(sent)
        except httpx.HTTPError:
            up = False
        self.samples.append((sent, up))

    def stop(self) -> None:
        self._stop.set()


def longest_outage(samples: list[tuple[float, bool]]) -> float:
    """The longest run of failed probes, from the first failed probe to the next good one (by
    the time each was sent)."""
    longest, down_since = 0.0, None
    samples = sorted(samples)
    for at, up in samples:
        if not up and down_since is None:
            down_since = at
        elif up and down_since is not None:
            longest, down_since = max(longest, at - down_since), None
    if down_since is not None and samples:
        longest = max(longest, samples[-1][0] - down_since)
    return round(longest, 2)


def either(a: list[tuple[float, bool]], b: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
    """Merge two sample series: at each sample time, up only if the other port's last sample was up."""
    merged, last = [], {0: True, 1: True}
    for at, which, up in sorted([(t, 0, u) for t, u in a] + [(t, 1, u) for t, u in b]):
        last[which] = up
        merged.append((at, last[0] and last[1]))
    return merged


def wait_until_up(pollers: Iterable[Poller], timeout: float = UP_AGAIN_TIMEOUT) -> None:
    """Until every poller's latest probe succeeded (bounded)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_SECONDS) + 1):
        if all(p.samples and p.samples[-1][1] for p in pollers) or time.monotonic() >= deadline:
            return
        time.sleep(POLL_SECONDS)


@contextmanager
def polling(address: str, key: str) -> Iterator[dict[str, Poller]]:
    pollers = {
        "3456": Poller(f"http://{address}:3456/v1/models"),
        "4000": Poller(f"http://{address}:4000/v1/models", {"Authorization": f"Bearer {key}"}),
    }
    threads = [threading.Thread(target=p.run, daemon=True) for p in pollers.values()]
    for thread in threads:
        thread.start()
    try:
        time.sleep(SETTLE_SECONDS)
        yield pollers
        time.sleep(SETTLE_SECONDS)
    finally:
        for poller in pollers.values():
            poller.stop()
        for thread in threads:
            thread.join(timeout=5)


def measure(address: str, key: str, action: Callable[[], object]) -> dict[str, float]:
    """Poll while ``action`` runs and until both ports answer again: an in-place
    ``systemctl restart`` returns long before the service is back, and its outage counts whole."""
    with polling(address, key) as pollers:
        started = time.monotonic()
        action()
        took = time.monotonic() - started
        wait_until_up(pollers.values())
    a, b = pollers["3456"].samples, pollers["4000"].samples
    return {"3456": longest_outage(a), "4000": longest_outage(b), "either": longest_outage(either(a, b)),
            "command_seconds": round(took, 1),
            "refused_3456": len(pollers["3456"].refused_at), "refused_4000": len(pollers["4000"].refused_at)}


def fresh_node(site_file: Path, template: Path) -> None:
    """Nothing of the site on the lab node: its CTs (remove_lab_ct), the template's archive.
    Then wait (bounded) until the lab has deleted what was removed: it deletes in the
    background (lab/README.md, "Cost model"), and 3 GiB of CT templates being deleted beside
    an extraction made it 2-4 times slower, which a fresh node does not see."""
    site = load_site(site_file)
    remove_lab_ct(site_file)
    client = Client.from_site(site.proxmox)
    storage, volid = site.proxmox.template_storage, template_volid(site, resolve(template).ref)
    if any(item.get("volid") == volid for item in client.storage_content(storage, "vztmpl")):
        client.wait_task(client.delete_volume(storage, volid), what=f"delete {volid}")
    trash = list((DEFAULT_STATE / "storage").glob(f"*/{TRASH}"))
    wait_until(lambda: not any(t.is_dir() and any(t.iterdir()) for t in trash),
               timeout=QUIET_TIMEOUT, pause=POLL_SECONDS)
    os.sync()  # nor is earlier runs' writeback pending on a fresh node


def replace_ct(site: Path, template: Path, log: Path, *extra: str, acceptance: Path | None = None,
               check: bool = True) -> None:
    args = ["replace-ct", "--site", str(site), "--template", str(template), "--yes", *extra]
    if acceptance:
        args += ["--acceptance", str(acceptance)]
    try:
        pipeline_cli(args, log=log)
    except Exception:
        if check:
            raise


def build(site: Path, out: Path, log: Path, *extra: str, repo: Path = REPO_ROOT) -> Path:
    subprocess.run([sys.executable, "-m", "pipeline", "build", "--site", str(site), "--out", str(out), *extra],
                   cwd=repo, check=True, stdout=log.open("w"), stderr=subprocess.STDOUT,
                   env={**os.environ, "PYTHONPATH": str(repo)}, timeout=SCENARIO_TIMEOUT)
    os.sync()  # a real site builds elsewhere: the build's writeback is not the Proxmox node's
    return out


def restart(service: str) -> Callable[[], object]:
    site = load_site(LAB_SITE)
    known = latest_known_hosts(site.site_state_dir)
    assert known is not None, "no deployment of the lab site to restart a service in"
    return lambda: lab_ssh(LAB_SITE, known).root(f"systemctl restart {service}")


def litellm_variant(tmp: Path) -> Path:
    """A copy of the repo whose litellm recipe differs by a comment: a new litellm layer key."""
    copy = tmp / "repo-litellm-variant"
    shutil.copytree(REPO_ROOT, copy, ignore=shutil.ignore_patterns(".git", ".venv", "build", "__pycache__"))
    recipe = copy / "sysext" / "litellm" / "recipe.toml"
    recipe.write_text(recipe.read_text() + f"\n# downtime benchmark variant {time.time()}\n")
    return copy


FAILS_ON = """import pytest

from pipeline.config import load_site
from pipeline.proxmox import Client

BROKEN = {sha256!r}


@pytest.mark.image
def test_benchmark_fails_the_gate_on_its_template(pytestconfig):
    site = load_site(pytestconfig.getoption("--site"))
    description = Client.from_site(site.proxmox).ct_config(site.container.vmid)["description"]
    assert BROKEN not in description, "the downtime benchmark fails the gate of this template on purpose"
"""


def failing_suite(tmp: Path, template: Path) -> Path:
    """The acceptance suite plus a check that fails on ``template`` only (CT 457's description
    names its template's sha256): the rollback's own gate passes, as after a real bad upgrade."""
    suite = tmp / "acceptance-failing"
    shutil.copytree(REPO_ROOT / "acceptance", suite, ignore=shutil.ignore_patterns("__pycache__"))
    (suite / "test_benchmark_failure.py").write_text(FAILS_ON.format(sha256=resolve(template).ref.sha256))
    return suite


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("MERIDIAN_LAB_MASTER_KEY", "sk-" + os.urandom(24).hex())
    key = os.environ["MERIDIAN_LAB_MASTER_KEY"]
    site = load_site(LAB_SITE)
    address = site.container.network.ip
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-downtime-") as name:
        tmp = Path(name)
        base = build(LAB_SITE, tmp / "base", tmp / "build-base.log")
        fresh_node(LAB_SITE, base)
        results["first deploy (with gate)"] = measure(
            address, key, lambda: replace_ct(LAB_SITE, base, tmp / "first.log"))
        results["full replace (--full)"] = measure(
            address, key, lambda: replace_ct(LAB_SITE, base, tmp / "full.log", "--full"))
        bumped = bumped_site(tmp, bumped_version())
        meridian_build = build(bumped, tmp / "meridian", tmp / "build-meridian.log", "--update-lock")
        # Each in-place restart right before the swap of the same service: the same machine state.
        results["in-place restart meridian"] = measure(address, key, restart("meridian.service"))
        results["Meridian-only swap"] = measure(
            address, key, lambda: replace_ct(bumped, meridian_build, tmp / "swap-meridian.log"))
        variant = litellm_variant(tmp)
        litellm_build = build(bumped, tmp / "litellm", tmp / "build-litellm.log", repo=variant)
        results["in-place restart litellm"] = measure(address, key, restart("litellm.service"))
        results["LiteLLM-only swap"] = measure(
            address, key, lambda: replace_ct(bumped, litellm_build, tmp / "swap-litellm.log"))
        results["failed gate, rolled back (--full)"] = measure(
            address, key, lambda: replace_ct(LAB_SITE, base, tmp / "rollback.log", "--full",
                                             acceptance=failing_suite(tmp, base), check=False))
        assert "rolled back: CT" in (tmp / "rollback.log").read_text(), "the failed gate did not roll back"
    print(f"{'scenario':36} {'3456 down':>10} {'4000 down':>10} {'either':>8} {'command':>8} "
          f"{'refused 3456/4000':>18}")
    for name, row in results.items():
        print(f"{name:36} {row['3456']:>9.2f}s {row['4000']:>9.2f}s {row['either']:>7.2f}s "
              f"{row['command_seconds']:>7.1f}s {row['refused_3456']:>9}/{row['refused_4000']}")
    meridian_ratio = results["Meridian-only swap"]["either"] / max(results["in-place restart meridian"]["either"], 0.05)
    litellm_ratio = results["LiteLLM-only swap"]["4000"] / max(results["in-place restart litellm"]["4000"], 0.05)
    print(f"Meridian-only swap vs in-place restart (either port): {meridian_ratio:.2f}x")
    print(f"LiteLLM-only swap vs in-place restart (port 4000): {litellm_ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
