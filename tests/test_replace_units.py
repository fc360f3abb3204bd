"""Journal, lock, template resolution, CT parsing and JUnit reading: real files, no lab."""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_site
from pipeline.contract import manifest_json, write_manifest
from pipeline.digest import file_sha256
from pipeline.errors import PipelineError
from pipeline.proxmox import ProxmoxError
from pipeline.replace import template_file
from pipeline.replace.gate import failed_checks
from pipeline.replace.journal import Journal, locked
from pipeline.replace.state import CT, MARKER_TAG, ROLE_TEMPLATE, World, description, parse_ct
from pipeline.replace.steps import ReplaceContext, kept_templates, stale_uploads, template_volid
from pipeline.replace.template_file import TemplateRef
from tests.plugins.manifests import build_manifest
from tests.plugins.paths import REPO_ROOT

OLD = TemplateRef("old.tar.zst", "a" * 64)
NEW = TemplateRef("new.tar.zst", "b" * 64)


def test_journal_survives_a_new_process_and_tracks_a_rollback(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    op = journal.begin(NEW, OLD)
    journal.event("stop", "done")
    again = Journal(tmp_path)
    assert again.op == op and again.data["events"][-1]["step"] == "stop"
    again.start_rollback(["test_litellm.py::test_models"])
    assert Journal(tmp_path).begin(NEW, None)["target"] == {"name": OLD.name, "sha256": OLD.sha256}
    last = Journal(tmp_path).finish("rolled-back")
    assert last["wanted"]["name"] == NEW.name and last["failed_checks"] == ["test_litellm.py::test_models"]
    assert Journal(tmp_path).op is None


def test_journal_keeps_the_previous_template_when_resumed_after_delete(tmp_path: Path) -> None:
    Journal(tmp_path).begin(NEW, OLD)
    assert Journal(tmp_path).begin(NEW, None)["previous"]["name"] == OLD.name


def test_unreadable_journal_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "replace-journal.json").write_text("{not json")
    with pytest.raises(PipelineError, match=r"replace-journal\.json: cannot read the replace journal"):
        Journal(tmp_path)


def _hold(state_dir: str, ready: Any, release: Any) -> None:
    with locked(Path(state_dir)):
        ready.set()
        release.wait(10)


def test_lock_refuses_a_second_run_and_names_the_holder(tmp_path: Path) -> None:
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    proc = multiprocessing.Process(target=_hold, args=(str(tmp_path), ready, release))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(PipelineError, match=rf"another replace-ct holds .* \(PID {proc.pid}\)"), \
                locked(tmp_path):
            pass
    finally:
        release.set()
        proc.join(10)
    with locked(tmp_path):  # released when the holder ended
        pass


def test_template_from_build_dir_is_named_after_its_content(tmp_path: Path) -> None:
    (tmp_path / "meridian_1.0_amd64.tar.zst").write_bytes(b"x" * 10)
    sha = file_sha256(tmp_path / "meridian_1.0_amd64.tar.zst")
    write_manifest(build_manifest("meridian_1.0_amd64.tar.zst", sha), tmp_path / "manifest.json")
    found = template_file.resolve(tmp_path)
    assert found.ref.sha256 == file_sha256(tmp_path / "meridian_1.0_amd64.tar.zst")
    assert found.ref.name == f"meridian_1.0_amd64-{found.ref.sha256[:12]}.tar.zst" and found.size == 10


def test_template_changed_after_the_build_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m_1_amd64.tar.zst").write_bytes(b"rebuilt by hand")
    write_manifest(build_manifest("m_1_amd64.tar.zst", "0" * 64), tmp_path / "manifest.json")
    with pytest.raises(PipelineError, match=r"m_1_amd64\.tar\.zst: sha256 .* differs from 000000000000"):
        template_file.resolve(tmp_path)


@pytest.mark.parametrize(
    ("files", "given", "message"),
    [
        pytest.param({}, "missing.tar.zst", "--template {d}/missing.tar.zst: no such file", id="missing"),
        pytest.param({"t.tar.gz": "x"}, "t.tar.gz", "not a .tar.zst file", id="wrong-suffix"),
        pytest.param({}, ".", "cannot read {d}/manifest.json", id="no-manifest"),
        pytest.param({"manifest.json": "{"}, ".", "{d}/manifest.json: not valid JSON", id="bad-json"),
        pytest.param({"manifest.json": manifest_json(build_manifest("gone.tar.zst", "0" * 64))}, ".",
                     "template 'gone.tar.zst' is not in {d}", id="manifest-names-missing-file"),
        pytest.param({"manifest.json": '{"template": "gone.tar.zst"}'}, ".",
                     "{d}/manifest.json: template: expected a mapping", id="manifest-of-another-shape"),
    ],
)
def test_template_errors(tmp_path: Path, files: dict[str, str], given: str, message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(PipelineError) as err:
        template_file.resolve(tmp_path / given if given != "." else tmp_path)
    assert message.format(d=tmp_path) in str(err.value)


def test_ct_parsing_reads_marker_template_and_credentials_volume() -> None:
    config = {
        "tags": "meridian-pipeline", "description": description(NEW, "lab-x-1"), "lock": "backup",
        "mp0": "local-lvm:vm-457-disk-1,mp=/var/lib/meridian,backup=1,size=1G",
        "unused0": "local-lvm:vm-457-disk-7",
    }
    ct = parse_ct(457, config, "running")
    assert (ct.ours, ct.running, ct.lock, ct.template, ct.deployment) == (True, True, "backup", NEW, "lab-x-1")
    assert ct.volume == "local-lvm:vm-457-disk-1" and ct.other_volumes == ("unused0=local-lvm:vm-457-disk-7",)
    foreign = parse_ct(457, {"mp0": "local-lvm:vm-457-disk-1,mp=/srv/data"})
    assert not foreign.ours and foreign.volume is None and foreign.mp0_elsewhere == "/srv/data"


def test_junit_failed_checks(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="acceptance.test_http" name="test_models"><failure message="x"/></testcase>'
        '<testcase classname="acceptance.test_units" name="test_ok"/>'
        '<testcase classname="acceptance.test_units" name="test_err"><error message="y"/></testcase>'
        "</testsuite></testsuites>"
    )
    assert failed_checks(xml) == ["acceptance.test_http::test_models", "acceptance.test_units::test_err"]


# -- which uploaded archives are pruned ------------------------------------------------------

A, B, C = (TemplateRef(f"meridian_{n}_amd64-{n * 12}.tar.zst", n * 64) for n in "abc")
ELSEWHERE = TemplateRef("meridian_e_amd64-eeeeeeeeeeee.tar.zst", "e" * 64)  # another site deploys it
FOREIGN = TemplateRef("meridian_f_amd64-ffffffffffff.tar.zst", "f" * 64)  # on the storage, not ours


class Configs:
    """The one Proxmox call the pruning rule makes: GET .../config of a listed CT."""

    def __init__(self, configs: dict[int, dict[str, Any]]) -> None:
        self.configs = configs

    def ct_config(self, vmid: int) -> dict[str, Any]:
        if vmid not in self.configs:  # listed, but its config cannot be read (403 while it is created)
            raise ProxmoxError(f"read config of CT {vmid}: Proxmox answered 403")
        return self.configs[vmid]


def pruning(tmp_path: Path, keep: int, other_site: bool = True) -> tuple[ReplaceContext, dict[int, dict[str, Any]]]:
    """A journal that uploaded A, B, C and ELSEWHERE and deployed A, B, C in turn; CT 457 runs C."""
    configs = {457: {"tags": MARKER_TAG, "description": description(C, "d3")}}
    if other_site:
        configs[460] = {"tags": MARKER_TAG, "description": description(ELSEWHERE, "x1")}
    journal = Journal(tmp_path)
    journal.set("uploads", [{"name": r.name, "sha256": r.sha256} for r in (A, B, C, ELSEWHERE)])
    journal.set("deployed", [{"name": r.name, "sha256": r.sha256} for r in (A, B, C)])
    ctx = ReplaceContext(site=load_site(REPO_ROOT / "sites" / "lab.yml"), px=Configs(configs),  # type: ignore[arg-type]
                  journal=journal, master_key="", suite=tmp_path, keep=keep)
    return ctx, {v: {"vmid": v, "tags": c["tags"]} for v, c in configs.items()}


def stale(ctx: ReplaceContext, listed: dict[int, dict[str, Any]], bases: tuple[CT, ...] = (),
          cloned_from: int | None = None) -> list[str]:
    ct = dataclasses.replace(parse_ct(457, ctx.px.ct_config(457), "running"), base=cloned_from)
    world = World(ct=ct, holder=CT(9457), bases=bases, keep=frozenset(kept_templates(ctx, C)))
    archives = {template_volid(ctx.site, r): 1 for r in (A, B, C, ELSEWHERE, FOREIGN)}
    return [v.split("/")[-1] for v in stale_uploads(ctx, world, archives, listed)]


def test_only_our_uploads_that_no_kept_deployment_or_other_site_needs_are_pruned(tmp_path: Path) -> None:
    ctx, listed = pruning(tmp_path, keep=2)
    assert stale(ctx, listed) == [A.name]  # B: the previous deployment; FOREIGN: not our upload
    assert stale(*pruning(tmp_path, keep=1)) == [A.name, B.name]
    assert stale(*pruning(tmp_path, keep=3)) == [] == stale(*pruning(tmp_path, keep=4))
    assert stale(*pruning(tmp_path, keep=1, other_site=False)) == [A.name, B.name, ELSEWHERE.name]


def test_an_archive_whose_ct_template_stays_or_whose_delete_failed_is_kept(tmp_path: Path) -> None:
    ctx, listed = pruning(tmp_path, keep=1)
    base_of_a = CT(9458, exists=True, ours=True, role=ROLE_TEMPLATE, template=A, is_template=True)
    assert stale(ctx, listed, bases=(base_of_a,)) == [A.name, B.name]  # its CT template is pruned too
    assert stale(ctx, listed, bases=(base_of_a,), cloned_from=9458) == [B.name]  # 457 stands on it
    ctx.undeletable.add(template_volid(ctx.site, B))
    assert stale(ctx, listed) == [A.name]


def test_nothing_is_pruned_while_a_listed_container_cannot_be_read(tmp_path: Path) -> None:
    ctx, listed = pruning(tmp_path, keep=1)
    listed[461] = {"vmid": 461, "tags": MARKER_TAG}  # another site's CT, its config not readable yet
    assert stale(ctx, listed) == []
