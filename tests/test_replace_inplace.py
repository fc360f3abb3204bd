"""Upgrades without a new container, against the lab: an extension swap when only layers
differ, and a re-seed when only the configuration differs (issue: upgrade downtime).

Its own container (CT 473, holder 9473, CT templates 9486-9488, 10.157.0.73) and state dir;
template A is the lab build, B the same with the Meridian stand-in at a new version (only the
meridian layer differs). In order: first deploy of A; the plan for B is a swap; the swap
keeps the container, restarts only Meridian and leaves LiteLLM running; the swapped
container equals one freshly cloned from B; a failing gate swaps back, but after a full replace
it goes back by clone; a rotated master key and a changed model list are re-seeded in place;
a failing gate restores the previous configuration; a re-seed that restarts LiteLLM never
refuses a client; SIGKILL after each new step, then a rerun converges with the credentials
file intact. Traffic goes only to the lab API on loopback and the lab container on mrdlab0.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from pipeline.config import load_site
from pipeline.contract import (
    BUILD_MANIFEST,
    DEPLOYED_MANIFEST,
    ImageManifest,
    parse_image_manifest,
    read_build_manifest,
)
from pipeline.proxmox import Client
from pipeline.replace.ssh import SSH
from pipeline.replace.state import CT, parse_ct
from pipeline.replace.steps import CRASH_ENV
from pipeline.replace.template_file import resolve
from pipeline.runner import ANY_EXIT_OR_SIGNAL, run
from tests.plugins.acceptance import LAB_SITE, bumped_site, bumped_version
from tests.plugins.build import LabBuild
from tests.plugins.gatesuite import GateSuite
from tests.plugins.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VMID, HOLDER, ADDRESS = 473, 9473, "10.157.0.73"
TEMPLATE_CTS = [9486, 9487, 9488]
KEEP = "/var/lib/meridian/.claude/inplace-keep"
RUN_TIMEOUT = 1800


@dataclass
class Result:
    code: int
    output: str
    report: dict  # {} when replace-ct wrote none (it was killed)


class Lab:
    def __init__(self, tmp: Path, builds: dict[str, Path]) -> None:
        self.tmp, self.builds = tmp, builds
        self.key = "sk-" + secrets.token_urlsafe(32)
        self.models = ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"]
        # A quick gate: fails for a template or a model the test marks broken, passes otherwise.
        self.gate = GateSuite.at(tmp / "gate-suite", check_models=True)

    @property
    def site_file(self) -> Path:
        data = yaml.safe_load(LAB_SITE.read_text())
        data.update(name="inplace-test", state_dir=str(self.tmp / "state"), models=self.models)
        data["container"].update(vmid=VMID, holder_vmid=HOLDER, template_vmids=TEMPLATE_CTS)
        data["container"]["network"]["address"] = f"{ADDRESS}/24"
        for key in ("source", "lockfile"):
            data["image"]["meridian"][key] = str((LAB_SITE.parent / data["image"]["meridian"][key]).resolve())
        path = self.tmp / "site.yml"
        path.write_text(yaml.safe_dump(data))
        return path

    @property
    def px(self) -> Client:
        return Client.from_site(load_site(self.site_file).proxmox)

    def fail_for(self, marker: str | None) -> None:
        self.gate.fail_for(marker)

    def replace_ct(self, *args: str, env: dict[str, str] | None = None) -> Result:
        log, report = self.tmp / f"run-{secrets.token_hex(4)}.log", self.tmp / f"report-{secrets.token_hex(4)}.json"
        proc = run([sys.executable, "-m", "pipeline", "replace-ct", "--site", str(self.site_file),
                    "--json", str(report), "--acceptance", str(self.gate.path), *args],
                   env={"MERIDIAN_LAB_MASTER_KEY": self.key, **(env or {})}, cwd=REPO_ROOT,
                   timeout=RUN_TIMEOUT, check=ANY_EXIT_OR_SIGNAL, log=log)
        output = log.read_text(errors="replace")
        assert self.key not in output
        return Result(proc.returncode, output, json.loads(report.read_text()) if report.exists() else {})

    def ct(self, vmid: int = VMID) -> CT:
        listed = {int(c["vmid"]): c for c in self.px.containers()}
        return parse_ct(vmid, self.px.ct_config(vmid), str(listed[vmid]["status"])) if vmid in listed else CT(vmid)

    def root(self, command: str, stdin: bytes = b"") -> str:
        state = Path(self.tmp / "state" / "inplace-test")
        ssh = SSH(ADDRESS, state / "deploy_key", self.tmp / f"known-{secrets.token_hex(4)}")
        return ssh.run(["sh", "-c", command], input=stdin, timeout=300).stdout.decode()

    def pid(self, unit: str) -> str:
        return self.root(f"systemctl show -p MainPID --value {unit}").strip()

    def manifest(self) -> ImageManifest:
        return parse_image_manifest(self.root(f"cat {DEPLOYED_MANIFEST}"), DEPLOYED_MANIFEST)

    def models_served(self, key: str | None = None) -> httpx.Response:
        return httpx.get(f"http://{ADDRESS}:4000/v1/models", timeout=10,
                         headers={"Authorization": f"Bearer {key or self.key}"})

    def write_keep(self) -> str:
        content = secrets.token_hex(16)
        self.root(f"umask 077; cat > {KEEP}", stdin=content.encode())
        return content

    def remove_all(self) -> None:
        for vmid in (VMID, HOLDER, *TEMPLATE_CTS):
            ct = self.ct(vmid)
            if ct.running:
                self.px.wait_task(self.px.shutdown(vmid, 30), what=f"cleanup: stop CT {vmid}")
            if ct.exists:
                self.px.wait_task(self.px.delete_ct(vmid), what=f"cleanup: delete CT {vmid}")


@pytest.fixture(scope="module")
def lab(lab_server, lab_build: LabBuild, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("inplace")
    bumped = bumped_site(tmp, bumped_version())
    out = tmp / "build-b"
    run([sys.executable, "-m", "pipeline", "build", "--site", str(bumped), "--out", str(out), "--update-lock"],
        cwd=REPO_ROOT, timeout=RUN_TIMEOUT, log=tmp / "build-b.log")
    the_lab = Lab(tmp, {"A": lab_build.out_dir, "B": out})
    the_lab.remove_all()
    yield the_lab
    the_lab.remove_all()


def ref(lab: Lab, name: str):
    return resolve(lab.builds[name]).ref


def image_manifest(lab: Lab, name: str) -> ImageManifest:
    return read_build_manifest(lab.builds[name] / BUILD_MANIFEST).image_manifest


def merged_digest(lab: Lab) -> str:
    """One digest of the merged /usr and /opt: paths, types, modes, owners, links, contents.
    Leaves out .systemd-sysext/dev: systemd-sysext writes the overlay mount's device number
    there, which differs for every mount of the same content."""
    skip = "! -path '*/.systemd-sysext/dev'"
    return lab.root(
        f"cd / && {{ find usr opt -xdev {skip} -printf '%p %y %m %U %G %l\\n' | LC_ALL=C sort; "
        f"find usr opt -xdev -type f {skip} -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; }} "
        "| sha256sum").split()[0]


def test_first_deploy_of_a(lab: Lab) -> None:
    result = lab.replace_ct("--template", str(lab.builds["A"]), "--yes")
    assert result.code == 0, result.output
    assert lab.ct().template == ref(lab, "A")
    assert lab.manifest() == image_manifest(lab, "A")


def test_plan_for_a_layer_only_change_is_a_swap(lab: Lab) -> None:
    result = lab.replace_ct("--template", str(lab.builds["B"]), "--plan")
    assert result.code == 2, result.output
    assert f"copy the changed extensions of {ref(lab, 'B').name} into CT {VMID}" in result.output
    assert f"swap them in place in CT {VMID}: sysext refresh, restart meridian.service" in result.output
    assert "shut down" not in result.output and "clone CT" not in result.output


def test_swap_keeps_the_container_and_restarts_only_meridian(lab: Lab) -> None:
    keep = lab.write_keep()
    deployment = lab.ct().deployment
    meridian, litellm = lab.pid("meridian.service"), lab.pid("litellm.service")
    result = lab.replace_ct("--template", str(lab.builds["B"]), "--yes")
    assert result.code == 0, result.output
    ct = lab.ct()
    assert ct.template == ref(lab, "B") and ct.deployment == deployment
    assert lab.pid("litellm.service") == litellm and lab.pid("meridian.service") != meridian
    assert lab.manifest() == image_manifest(lab, "B")
    assert lab.root(f"cat {KEEP}") == keep
    steps = [s["name"] for s in result.report["steps"]]
    assert not any(s.startswith(("shut down", "clone", "create", "delete")) for s in steps), steps


def test_swapped_container_equals_one_cloned_from_the_new_template(lab: Lab) -> None:
    swapped = merged_digest(lab)
    assert lab.replace_ct("--template", str(lab.builds["B"]), "--yes", "--full").code == 0
    assert lab.ct().template == ref(lab, "B")
    assert merged_digest(lab) == swapped
    assert lab.manifest() == image_manifest(lab, "B")


def rolled_back_from_a(lab: Lab, *extra: str) -> list[str]:
    """Replace B by A with a gate that fails for A: back on B, with B's manifest. The steps taken."""
    lab.fail_for(ref(lab, "A").sha256)
    try:
        result = lab.replace_ct("--template", str(lab.builds["A"]), "--yes", *extra)
    finally:
        lab.fail_for(None)
    assert result.code == 1 and "rolled back" in result.output, result.output
    assert lab.ct().template == ref(lab, "B")
    assert lab.manifest() == image_manifest(lab, "B")
    return [s["name"] for s in result.report["steps"]]


def test_failing_gate_swaps_back(lab: Lab) -> None:
    steps = rolled_back_from_a(lab)
    assert sum(s.startswith("swap them in place") for s in steps) == 2
    assert not any(s.startswith("shut down") for s in steps)


def test_failing_gate_after_a_full_replace_goes_back_by_clone(lab: Lab) -> None:
    """--full to a template that differs only in layers: the new CT never held the previous
    template's layers, so the way back is a clone of that template's CT template, not a swap
    (which would need a build of it)."""
    steps = rolled_back_from_a(lab, "--full")
    assert sum(s.startswith(f"clone CT {VMID}") for s in steps) == 2, steps
    assert not any(s.startswith(("copy the changed", "swap them")) for s in steps), steps


def test_rotated_key_and_new_models_are_reseeded_in_place(lab: Lab) -> None:
    old_key = lab.key
    meridian = lab.pid("meridian.service")
    lab.key = "sk-" + secrets.token_urlsafe(32)
    lab.models = ["claude-haiku-4-5", "claude-sonnet-4-6"]
    plan = lab.replace_ct("--plan")
    assert plan.code == 2 and f"re-seed CT {VMID} in place" in plan.output, plan.output
    assert "restart litellm.service" in plan.output and "meridian.service" not in plan.output.split("re-seed")[1]
    result = lab.replace_ct("--yes")
    assert result.code == 0, result.output
    assert lab.models_served(old_key).status_code in (400, 401)
    served = lab.models_served()
    assert served.status_code == 200 and {m["id"] for m in served.json()["data"]} == set(lab.models)
    assert lab.pid("meridian.service") == meridian
    assert lab.replace_ct("--plan").code == 0


def test_failing_gate_restores_the_previous_configuration(lab: Lab) -> None:
    before = list(lab.models)
    lab.models = [*before, "claude-broken-model"]
    lab.fail_for("claude-broken-model")
    try:
        result = lab.replace_ct("--yes")
    finally:
        lab.fail_for(None)
    assert result.code == 1 and "restoring the previous configuration" in result.output, result.output
    assert {m["id"] for m in lab.models_served().json()["data"]} == set(before)
    assert lab.replace_ct("--plan").code == 2  # the site still asks for the change
    lab.models = before
    assert lab.replace_ct("--plan").code == 0


def test_litellm_restarts_without_refusing_a_client(lab: Lab) -> None:
    """LiteLLM's listening socket outlives its restart (systemd's fd store, launcher.py): a client
    asking all through a re-seed that restarts it is answered, later, never refused. A stopped
    LiteLLM does not keep its port."""
    litellm, before = lab.pid("litellm.service"), list(lab.models)
    answers: list[int | str] = []
    done = threading.Event()

    def ask_until_done() -> None:
        with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not done.is_set():
                try:
                    answers.append(client.get(f"http://{ADDRESS}:4000/health/liveliness").status_code)
                except httpx.HTTPError as exc:
                    answers.append(type(exc).__name__)
                done.wait(0.1)

    asking = threading.Thread(target=ask_until_done)
    lab.models = before[:1]
    asking.start()
    try:
        result = lab.replace_ct("--yes")
    finally:
        done.set()
        asking.join(60)
        lab.models = before
    assert result.code == 0 and f"re-seed CT {VMID} in place" in result.output, result.output
    assert lab.pid("litellm.service") != litellm
    assert answers and set(answers) == {200}, [a for a in answers if a != 200][:5]
    lab.root("systemctl stop litellm.service")
    try:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{ADDRESS}:4000/health/liveliness", timeout=5)
    finally:
        lab.root("systemctl start litellm.service")
    assert lab.replace_ct("--yes").code == 0  # the site's models again, gated


@pytest.mark.parametrize("step", ["stage", "switch", "reseed"])
def test_killed_after_a_new_step_then_rerun_converges(lab: Lab, step: str) -> None:
    keep = lab.write_keep()
    if step == "reseed":
        lab.key = "sk-" + secrets.token_urlsafe(32)
        args: tuple[str, ...] = ("--yes",)
        wanted = lab.ct().template
    else:
        wanted = ref(lab, "A") if lab.ct().template == ref(lab, "B") else ref(lab, "B")
        args = ("--template", str(lab.builds["A" if wanted == ref(lab, "A") else "B"]), "--yes")
    killed = lab.replace_ct(*args, env={CRASH_ENV: step})
    assert killed.code == -9, killed.output
    rerun = lab.replace_ct(*args)
    assert rerun.code == 0, rerun.output
    assert lab.ct().template == wanted
    assert lab.root(f"cat {KEEP}") == keep
    assert lab.models_served().status_code == 200
    assert os.environ.get(CRASH_ENV) is None
