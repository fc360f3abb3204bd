"""Journal, lock, template resolution, CT parsing and JUnit reading: real files, no lab."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import PipelineError
from pipeline.replace import template
from pipeline.replace.gate import failed_checks
from pipeline.replace.journal import Journal, locked
from pipeline.replace.state import description, parse_ct
from pipeline.replace.template import TemplateRef

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
    (tmp_path / "manifest.json").write_text(json.dumps({"template": "meridian_1.0_amd64.tar.zst"}))
    found = template.resolve(tmp_path)
    assert found.ref.sha256 == template.sha256_of(tmp_path / "meridian_1.0_amd64.tar.zst")
    assert found.ref.name == f"meridian_1.0_amd64-{found.ref.sha256[:12]}.tar.zst" and found.size == 10


def test_template_changed_after_the_build_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m_1_amd64.tar.zst").write_bytes(b"rebuilt by hand")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "template": {"file": "m_1_amd64.tar.zst"},
        "artifacts": [{"kind": "template", "path": "m_1_amd64.tar.zst", "sha256": "0" * 64}],
    }))
    with pytest.raises(PipelineError, match=r"m_1_amd64\.tar\.zst: sha256 .* differs from 000000000000"):
        template.resolve(tmp_path)


@pytest.mark.parametrize(
    ("files", "given", "message"),
    [
        pytest.param({}, "missing.tar.zst", "--template {d}/missing.tar.zst: no such file", id="missing"),
        pytest.param({"t.tar.gz": "x"}, "t.tar.gz", "not a .tar.zst file", id="wrong-suffix"),
        pytest.param({}, ".", "cannot read {d}/manifest.json", id="no-manifest"),
        pytest.param({"manifest.json": "{"}, ".", "{d}/manifest.json: not valid JSON", id="bad-json"),
        pytest.param({"manifest.json": '{"template": "gone.tar.zst"}'}, ".",
                     "template 'gone.tar.zst' is not in {d}", id="manifest-names-missing-file"),
    ],
)
def test_template_errors(tmp_path: Path, files: dict[str, str], given: str, message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(PipelineError) as err:
        template.resolve(tmp_path / given if given != "." else tmp_path)
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
