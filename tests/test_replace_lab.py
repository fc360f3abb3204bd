"""replace-ct against the lab (real LXC containers behind the emulated Proxmox API).

The module deploys its own container (CT 470, holder 9470, CT templates 9480-9482,
10.157.0.70) from a copy of the lab site with its own state dir, so it shares nothing with
other modules' CT 457. The lab's local-lvm is thin storage: replaces go through a CT
template and a linked clone. In order: first deploy, replace keeping the credentials file, a
failing gate that rolls back, a SIGKILL after each step followed by a rerun that converges,
the errors that must leave everything as it was, and the fallback on storage without clones.
Traffic goes only to the lab API on loopback and to the lab container on mrdlab0.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_site
from pipeline.proxmox import Client
from pipeline.replace.ssh import SSH
from pipeline.replace.state import CT, parse_ct
from pipeline.replace.steps import CRASH_ENV
from pipeline.replace.template_file import SUFFIX, resolve
from pipeline.runner import ANY_EXIT_OR_SIGNAL, run
from tests.plugins.build import LabBuild
from tests.plugins.gatesuite import GateSuite
from tests.plugins.lab import Lab as LabServer
from tests.plugins.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAB_SITE = REPO_ROOT / "sites" / "lab.yml"
VMID, HOLDER, ADDRESS, FOREIGN = 470, 9470, "10.157.0.70/24", 471
TEMPLATE_CTS = [9480, 9481, 9482]
KEEP = "/var/lib/meridian/.claude/replace-ct-keep"
RUN_TIMEOUT = 1800


@dataclass
class Result:
    code: int
    output: str
    report: dict  # {} when replace-ct wrote none (it was killed)


def replace_ct(site_file: Path, tmp: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    log, report = tmp / f"run-{secrets.token_hex(4)}.log", tmp / f"report-{secrets.token_hex(4)}.json"
    proc = run(
        [sys.executable, "-m", "pipeline", "replace-ct", "--site", str(site_file), "--json", str(report),
         *args],
        env={"MERIDIAN_LAB_MASTER_KEY": os.environ["MERIDIAN_LAB_MASTER_KEY"], **(env or {})},
        cwd=REPO_ROOT, timeout=RUN_TIMEOUT, check=ANY_EXIT_OR_SIGNAL, log=log,
    )
    output = log.read_text(errors="replace")
    assert os.environ["MERIDIAN_LAB_MASTER_KEY"] not in output
    data = json.loads(report.read_text()) if report.exists() else {}
    if data:
        assert os.environ["MERIDIAN_LAB_MASTER_KEY"] not in report.read_text()
    return Result(proc.returncode, output, data)


def variant(base: Path, out: Path, n: int) -> Path:
    """The same template with a different sha256: extra zero bytes after the tar's end
    (one more zstd frame), which tar ignores. A new template without a rebuild."""
    path = out / f"{base.name[: -len(SUFFIX)]}-v{n}{SUFFIX}"
    if not path.exists():
        zeros = run(["zstd", "-q", "-c"], input=b"\0" * 512 * n).stdout
        run(["cp", "--reflink=auto", base, path])
        with path.open("ab") as fh:
            fh.write(zeros)
    return path


def site_variant(tmp: Path, *, proxmox: dict | None = None, **container: object) -> Path:
    """The lab site with its own name, state dir and container ids (sites/lab.yml untouched)."""
    data = yaml.safe_load(LAB_SITE.read_text())
    data["name"] = "replace-test"
    data["state_dir"] = str(tmp / "state")
    data["proxmox"].update(proxmox or {})
    data["container"].update({"vmid": VMID, "holder_vmid": HOLDER, "template_vmids": TEMPLATE_CTS, **container})
    data["container"]["network"]["address"] = ADDRESS
    for key in ("source", "lockfile"):  # relative to sites/: make them absolute in the copy
        data["image"]["meridian"][key] = str((LAB_SITE.parent / data["image"]["meridian"][key]).resolve())
    path = tmp / "site.yml"
    path.write_text(yaml.safe_dump(data))
    return path


class Lab:
    def __init__(self, site_file: Path, tmp: Path) -> None:
        self.site_file, self.tmp = site_file, tmp
        self.site = load_site(site_file)
        self.px = Client.from_site(self.site.proxmox)

    def remove(self, vmid: int) -> None:
        """Test cleanup of a CT this module made: stop, then delete with its volumes."""
        ct = self.ct(vmid)
        if ct.running:
            self.px.wait_task(self.px.shutdown(vmid, 30), what=f"cleanup: stop CT {vmid}")
        if ct.exists:
            self.px.wait_task(self.px.delete_ct(vmid), what=f"cleanup: delete CT {vmid}")

    def ct(self, vmid: int) -> CT:
        listed = {int(c["vmid"]): c for c in self.px.containers()}
        if vmid not in listed:
            return CT(vmid)
        return parse_ct(vmid, self.px.ct_config(vmid), str(listed[vmid]["status"]))

    def ssh(self) -> SSH:
        # Every deployment has new host keys: a fresh known_hosts file per connection.
        known = self.tmp / f"known_hosts-{secrets.token_hex(4)}"
        return SSH(self.site.container.network.ip, self.site.site_state_dir / "deploy_key", known)

    def write_keep(self) -> bytes:
        content = secrets.token_hex(16).encode()
        self.ssh().put(KEEP, content, 0o600)
        return content

    def read_keep(self) -> bytes:
        return self.ssh().run(["cat", KEEP]).stdout

    def archives(self) -> set[str]:
        storage = self.site.proxmox.template_storage
        return {str(i["volid"]).split("/", 1)[1] for i in self.px.storage_content(storage, "vztmpl")}

    def archive(self, path: Path) -> str:
        """The volid of ``path`` on the template storage, uploaded here (not by replace-ct) if absent."""
        ref, storage = resolve(path).ref, self.site.proxmox.template_storage
        if ref.name not in self.archives():
            self.px.wait_task(self.px.upload_template(storage, path, ref.name, ref.sha256), what=f"upload {ref.name}")
        return f"{storage}:vztmpl/{ref.name}"

    def assert_volume_safe(self) -> None:
        """Exactly one of the CT and the holder carries the credentials volume."""
        ct, holder = self.ct(self.site.container.vmid), self.ct(self.site.container.holder_vmid)
        assert bool(ct.volume) != bool(holder.volume), (ct, holder)


@pytest.fixture(scope="module")
def lab(lab_server: LabServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("replace-lab")
    lab = Lab(site_variant(tmp), tmp)
    for vmid in (VMID, FOREIGN, HOLDER, *TEMPLATE_CTS):  # leftovers of an interrupted earlier session
        lab.remove(vmid)
    yield lab
    for vmid in (VMID, FOREIGN, HOLDER, *TEMPLATE_CTS):
        lab.remove(vmid)


@pytest.fixture(scope="module")
def templates(lab_build: LabBuild, lab: Lab) -> dict[str, Path]:
    base = lab_build.template
    return {"A": base, "B": variant(base, lab.tmp, 1)}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> GateSuite:
    """A quick gate for the lifecycle tests (the real acceptance suite gates test_first_deploy)."""
    return GateSuite.at(tmp_path_factory.mktemp("gate-suite"))


def deployed(lab: Lab, path: Path) -> None:
    ct = lab.ct(lab.site.container.vmid)
    assert ct.ours and ct.running and ct.template == resolve(path).ref
    assert ct.volume and not lab.ct(lab.site.container.holder_vmid).volume


def test_first_deploy(lab: Lab, templates: dict[str, Path]) -> None:
    result = replace_ct(lab.site_file, lab.tmp, "--template", str(templates["A"]), "--yes")
    assert result.code == 0, result.output
    deployed(lab, templates["A"])
    # No volume to park yet: the holder is the first replace's to make, before its stop.
    assert not lab.ct(lab.site.container.holder_vmid).exists
    assert result.report["outcome"] == "deployed"
    assert result.report["template_after"]["name"] == resolve(templates["A"]).ref.name
    names = [s["name"] for s in result.report["steps"]]
    assert any(n.startswith(f"clone CT {VMID} from the CT template {TEMPLATE_CTS[0]}") for n in names)
    assert any(n.startswith("run the acceptance") for n in names)
    base = lab.ct(TEMPLATE_CTS[0])
    assert base.is_template and base.template == resolve(templates["A"]).ref
    assert lab.ct(VMID).base == TEMPLATE_CTS[0]


def window(report: dict) -> list[str]:
    """The steps between the stop and the seed: the downtime window."""
    names = [s["name"].split(" ")[0] for s in report["steps"]]
    return names[names.index("shut"):names.index("deliver")]


def test_plan_exit_codes(lab: Lab, templates: dict[str, Path]) -> None:
    assert replace_ct(lab.site_file, lab.tmp, "--plan").code == 0
    pending = replace_ct(lab.site_file, lab.tmp, "--plan", "--template", str(templates["B"]))
    assert pending.code == 2 and f"move the credentials volume (mp0) from CT {VMID} to CT {HOLDER}" in pending.output
    deployed(lab, templates["A"])


def test_replace_keeps_the_credentials(lab: Lab, templates: dict[str, Path], suite: GateSuite) -> None:
    content = lab.write_keep()
    result = replace_ct(lab.site_file, lab.tmp, "--template", str(templates["B"]), "--yes",
                        "--acceptance", str(suite.path))
    assert result.code == 0, result.output
    deployed(lab, templates["B"])
    assert lab.read_keep() == content
    assert result.report["template_before"]["sha256"] == resolve(templates["A"]).ref.sha256
    assert result.report["downtime_seconds"] > 0
    # Nothing slow inside the window: the new CT template was made while CT 470 still served.
    assert window(result.report) == ["shut", "move", "delete", "clone", "move", "start"]
    names = [s["name"] for s in result.report["steps"]]
    assert names.index(f"create the holder CT {HOLDER} (never started) for the credentials volume") < names.index(
        f"shut down CT {VMID}")
    holder = lab.ct(lab.site.container.holder_vmid)
    assert holder.exists and holder.holder and not holder.running
    templates_now = {lab.ct(v).template for v in TEMPLATE_CTS if lab.ct(v).exists}
    assert templates_now == {resolve(templates["A"]).ref, resolve(templates["B"]).ref}


def test_no_terminal_and_no_yes_refuses(lab: Lab, templates: dict[str, Path]) -> None:
    result = replace_ct(lab.site_file, lab.tmp, "--template", str(templates["A"]))
    assert result.code == 1 and "there is no terminal to ask; nothing was changed" in result.output
    deployed(lab, templates["B"])


def test_failing_gate_rolls_back(lab: Lab, templates: dict[str, Path], suite: GateSuite) -> None:
    broken = variant(templates["A"], lab.tmp, 2)
    suite.fail_for(resolve(broken).ref.sha256)
    content = lab.write_keep()
    try:
        result = replace_ct(lab.site_file, lab.tmp, "--template", str(broken), "--yes",
                            "--acceptance", str(suite.path))
    finally:
        suite.fail_for(None)
    assert result.code == 1
    assert "test_gate::test_not_the_broken_template" in result.output
    assert f"rolled back: CT {VMID} runs" in result.output
    deployed(lab, templates["B"])
    assert lab.read_keep() == content
    assert result.report["outcome"] == "rolled-back"
    (failed,) = result.report["failed_checks"]
    assert failed.endswith("test_gate::test_not_the_broken_template")
    assert result.report["downtime_seconds"] > sum(
        s["seconds"] for s in result.report["steps"] if s["name"].startswith(f"clone CT {VMID}"))
    assert result.report["template_after"]["name"] == resolve(templates["B"]).ref.name
    # The way back was the same fast path: a clone of B's CT template, kept for this.
    names = [s["name"] for s in result.report["steps"]]
    assert sum(n.startswith(f"clone CT {VMID}") for n in names) == 2
    assert len([v for v in TEMPLATE_CTS if lab.ct(v).exists]) <= 2


CRASH_STEPS = ["upload", "base", "templatize", "stop", "park", "delete", "clone", "unpark", "start", "seed",
               "gate", "prune"]


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_killed_after_a_step_then_rerun_converges(lab: Lab, templates: dict[str, Path], suite: GateSuite,
                                                 step: str) -> None:
    current = lab.ct(lab.site.container.vmid).template
    # Alternate between two uploaded templates; "upload" needs one not yet on the storage.
    nxt = templates["A"] if current == resolve(templates["B"]).ref else templates["B"]
    # These steps only run for a template never seen before (no archive, no CT template yet,
    # a third template CT to prune afterwards): a fresh variant each.
    fresh = {"upload": 3, "base": 4, "templatize": 5, "prune": 6}
    if step in fresh:
        nxt = variant(templates["A"], lab.tmp, fresh[step])
    content = lab.write_keep()
    gate = ("--acceptance", str(suite.path))
    killed = replace_ct(lab.site_file, lab.tmp, "--template", str(nxt), "--yes", *gate, env={CRASH_ENV: step})
    assert killed.code == -9, killed.output
    lab.assert_volume_safe()
    rerun = replace_ct(lab.site_file, lab.tmp, "--template", str(nxt), "--yes", *gate)
    assert rerun.code == 0, rerun.output
    deployed(lab, nxt)
    assert lab.read_keep() == content


def test_older_uploads_and_template_cts_are_pruned_never_anothers(lab: Lab, templates: dict[str, Path],
                                                                   suite: GateSuite) -> None:
    """--keep 1: the archive this state dir uploaded for an older deployment and its CT template go,
    named in the plan; an archive someone else uploaded under the same kind of name stays."""
    foreign = resolve(variant(templates["A"], lab.tmp, 10)).ref
    foreign_volid = lab.archive(variant(templates["A"], lab.tmp, 10))
    older, newer = variant(templates["A"], lab.tmp, 8), variant(templates["A"], lab.tmp, 9)
    gate = ("--acceptance", str(suite.path))
    for path in (older, newer):
        assert replace_ct(lab.site_file, lab.tmp, "--template", str(path), "--yes", *gate).code == 0
    older_ref, newer_ref = resolve(older).ref, resolve(newer).ref
    assert {older_ref.name, newer_ref.name, foreign.name} <= lab.archives()
    (older_ct,) = [v for v in TEMPLATE_CTS if lab.ct(v).template == older_ref]
    plan = replace_ct(lab.site_file, lab.tmp, "--plan", "--keep", "1")
    assert plan.code == 2, plan.output
    assert f"remove CT templates no deployment needs: CT {older_ct}" in plan.output
    assert ("delete archives this pipeline uploaded that no kept deployment needs: "
            f"{lab.site.proxmox.template_storage}:vztmpl/{older_ref.name}") in plan.output
    assert foreign.name not in plan.output
    killed = replace_ct(lab.site_file, lab.tmp, "--keep", "1", "--yes", *gate, env={CRASH_ENV: "prune_uploads"})
    assert killed.code == -9, killed.output
    rerun = replace_ct(lab.site_file, lab.tmp, "--keep", "1", "--yes", *gate)
    assert rerun.code == 0, rerun.output
    on_storage = lab.archives()
    assert newer_ref.name in on_storage and foreign.name in on_storage and older_ref.name not in on_storage
    assert not lab.ct(older_ct).exists and lab.ct(lab.ct(VMID).base or 0).template == newer_ref
    deployed(lab, newer)
    assert replace_ct(lab.site_file, lab.tmp, "--plan", "--keep", "1").code == 0
    storage = lab.site.proxmox.template_storage
    lab.px.wait_task(lab.px.delete_volume(storage, foreign_volid), what="cleanup: delete the foreign archive")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"token_secret": {"env": "REPLACE_TEST_BAD_TOKEN"}},
                     "Proxmox answered 401: authentication failed for API token pipeline@pve!lab",
                     id="bad-token"),
        pytest.param({"node": "pve99"}, "proxmox.node: unknown node 'pve99'", id="unknown-node"),
        pytest.param({"volume_storage": "nope"}, "proxmox.volume_storage: storage 'nope' does not exist",
                     id="missing-storage"),
    ],
)
def test_site_errors_change_nothing(lab: Lab, templates: dict[str, Path], tmp_path: Path,
                                    change: dict, message: str) -> None:
    before = lab.ct(lab.site.container.vmid)
    site = site_variant(tmp_path, proxmox=change)
    result = replace_ct(site, tmp_path, "--template", str(templates["A"]), "--yes",
                        env={"REPLACE_TEST_BAD_TOKEN": "not-the-secret-0000"})
    assert result.code == 1 and message in result.output
    assert "Traceback" not in result.output
    assert lab.ct(lab.site.container.vmid) == before


def test_a_container_not_ours_is_refused(lab: Lab, templates: dict[str, Path], tmp_path: Path) -> None:
    """CT 471 made by someone else (no marker tag): refused, untouched, unless --adopt."""
    volid = lab.archive(templates["A"])  # replace-ct may have pruned its own upload of it
    upid = lab.px.create_ct(FOREIGN, {"ostemplate": volid, "rootfs": f"{lab.site.proxmox.rootfs_storage}:4",
                                      "unprivileged": 1, "hostname": "someone-elses",
                                      "pool": lab.site.proxmox.pool})
    lab.px.wait_task(upid, what=f"create CT {FOREIGN}")
    before = lab.px.ct_config(FOREIGN)
    site = site_variant(tmp_path, vmid=FOREIGN, holder_vmid=HOLDER + 1)
    result = replace_ct(site, tmp_path, "--template", str(templates["A"]), "--yes")
    assert result.code == 1
    assert f"CT {FOREIGN} exists but was not created by this pipeline" in result.output
    assert "--adopt" in result.output
    assert lab.px.ct_config(FOREIGN) == before
    assert not lab.ct(HOLDER + 1).exists


def test_a_locked_container_is_refused(lab: Lab, templates: dict[str, Path], lab_server: LabServer) -> None:
    """A backup holds CT 470's lock: a clear error naming the lock, nothing changed."""
    before = lab.ct(VMID)
    lab.px.call("lock for the test", lambda a: a.nodes(lab.site.proxmox.node).lxc(VMID).config.put(lock="backup"))
    try:
        other = templates["A"] if before.template != resolve(templates["A"]).ref else templates["B"]
        result = replace_ct(lab.site_file, lab.tmp, "--template", str(other), "--yes")
    finally:  # what `pct unlock` does on the node: drop the lock line from the config
        conf = lab_server.state / "etc/pve/lxc" / f"{VMID}.conf"
        conf.write_text("".join(line for line in conf.read_text().splitlines(keepends=True)
                                if not line.startswith("lock:")))
    assert result.code == 1
    assert f"CT {VMID} is running, locked (backup); credentials volume" in result.output
    assert "nothing was changed" in result.output
    assert lab.ct(VMID) == before


def test_storage_without_linked_clones_falls_back_to_create(lab: Lab, templates: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """On a dir storage the plan says so and creates the CT from the archive (inside the window)."""
    site = site_variant(tmp_path, proxmox={"rootfs_storage": "local-dir"}, vmid=474, holder_vmid=9474,
                        template_vmids=[9489, 9490, 9491])
    result = replace_ct(site, tmp_path, "--template", str(templates["A"]), "--plan")
    assert result.code == 2, result.output
    assert "note: rootfs storage local-dir (dir) makes no linked clones" in result.output
    assert "create CT 474 from" in result.output
    assert "convert CT" not in result.output and "clone CT" not in result.output
