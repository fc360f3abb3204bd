"""The Proxmox client over real HTTPS on loopback: TLS verification, error texts, task waits.

A tiny canned-response server (tests/plugins/cannedapi.py) stands in for single API answers
(status codes, bodies, task states) so each error path is exercised exactly; behaviour against a whole API is
covered by the lab integration tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline import polling, proxmox
from pipeline.config import TLS
from pipeline.proxmox import Client, ProxmoxError, TaskError
from tests.plugins.cannedapi import SECRET, UPID, Api, proxmox_config


def test_token_header_and_nodes(client: tuple[Client, Api]) -> None:
    px, state = client
    state.on("GET", "/nodes", (200, "OK", {"data": [{"node": "pve01"}]}))
    assert px.nodes() == ["pve01"]
    headers = state.requests[-1][2]
    assert headers["Authorization"] == f"PVEAPIToken=pipeline@pve!lab={SECRET}"


@pytest.mark.parametrize(
    ("tls", "ok"),
    [
        pytest.param("ca", True, id="ca-file"),
        pytest.param("fingerprint", True, id="fingerprint-pin"),
        pytest.param("other-ca", False, id="wrong-ca"),
        pytest.param("wrong-fingerprint", False, id="wrong-pin"),
    ],
)
def test_tls_is_always_verified(api: tuple[Api, int], pki: dict, tmp_path: Path, tls: str, ok: bool) -> None:
    state, port = api
    state.on("GET", "/nodes", (200, "OK", {"data": [{"node": "pve01"}]}))
    wrong = ":".join(["AB"] * 32)
    chosen = {
        "ca": TLS(ca_file=pki["dir"] / "ca.pem"),
        "other-ca": TLS(ca_file=pki["dir"] / "other-ca.pem"),
        "fingerprint": TLS(fingerprint=pki["fingerprint"]),
        "wrong-fingerprint": TLS(fingerprint=wrong),
    }[tls]
    px = Client.from_site(proxmox_config(port, chosen, tmp_path))
    if ok:
        assert px.nodes() == ["pve01"]
        return
    with pytest.raises(ProxmoxError) as err:
        px.nodes()
    assert f"list nodes: TLS verification of https://127.0.0.1:{port} failed" in str(err.value)
    assert "proxmox.tls" in str(err.value)
    assert not state.requests, "no request may reach an unverified server"


@pytest.mark.parametrize(
    ("status", "reason", "body", "expected"),
    [
        pytest.param(401, "authentication failure", {}, "read config of CT 457: Proxmox answered 401: "
                     "authentication failed for API token pipeline@pve!lab", id="bad-token"),
        pytest.param(403, "Permission check failed (/vms/457, VM.Audit)", {"data": None},
                     "read config of CT 457: Proxmox answered 403: Permission check failed "
                     "(/vms/457, VM.Audit)", id="forbidden"),
        pytest.param(400, "Parameter verification failed.",
                     {"data": None, "errors": {"vmid": "invalid format - value does not look like a valid VM ID\n"}},
                     "Proxmox answered 400: Parameter verification failed. "
                     "(vmid: invalid format - value does not look like a valid VM ID)", id="bad-parameter"),
        pytest.param(500, "Configuration file 'nodes/pve01/lxc/457.conf' does not exist", {"data": None},
                     "read config of CT 457: Proxmox answered 500: Configuration file "
                     "'nodes/pve01/lxc/457.conf' does not exist", id="missing"),
    ],
)
def test_api_errors_name_what_failed(client: tuple[Client, Api], status: int, reason: str, body: dict,
                                     expected: str) -> None:
    px, state = client
    state.on("GET", "/lxc/457/config", (status, reason, body))
    with pytest.raises(ProxmoxError) as err:
        px.ct_config(457)
    assert expected in str(err.value)
    assert err.value.status == status
    assert SECRET not in str(err.value)


def test_bad_token_hint_names_the_secret_source(client: tuple[Client, Api]) -> None:
    px, state = client
    state.on("GET", "/nodes", (401, "authentication failure", {}))
    with pytest.raises(ProxmoxError) as err:
        px.nodes()
    assert "check the token secret (file " in str(err.value)


def _status(*states: tuple[str, str | None]) -> list[tuple[int, str, dict]]:
    return [(200, "OK", {"data": {"status": s, "exitstatus": e}}) for s, e in states]


@pytest.mark.parametrize(
    "exitstatus", ["OK", "WARNINGS: 1"],
)
def test_wait_task_success(client: tuple[Client, Api], monkeypatch: pytest.MonkeyPatch, exitstatus: str) -> None:
    px, state = client
    monkeypatch.setattr(proxmox, "POLL_MAX_SECONDS", 0.05)
    state.on("GET", "/status", *_status(("running", None), ("stopped", exitstatus)))
    assert px.wait_task(UPID, what="create CT 457") == exitstatus


def test_wait_task_failure_carries_the_log(client: tuple[Client, Api], monkeypatch: pytest.MonkeyPatch) -> None:
    px, state = client
    monkeypatch.setattr(proxmox, "POLL_MAX_SECONDS", 0.05)
    state.on("GET", "/status", *_status(("stopped", "CT is locked (backup)")))
    lines = [{"n": i, "t": f"line {i}"} for i in range(1, 31)] + [{"n": 31, "t": "TASK ERROR: CT is locked (backup)"}]
    state.on("GET", "/log", (200, "OK", {"data": lines}))
    with pytest.raises(TaskError) as err:
        px.wait_task(UPID, what="start of CT 457")
    text = str(err.value)
    assert text.startswith("start of CT 457 failed: CT is locked (backup)")
    assert "TASK ERROR: CT is locked (backup)" in text and "line 17" in text and "line 16\n" not in text
    assert err.value.exitstatus == "CT is locked (backup)"


def test_wait_task_times_out(client: tuple[Client, Api], monkeypatch: pytest.MonkeyPatch) -> None:
    px, state = client
    monkeypatch.setattr(proxmox, "POLL_MAX_SECONDS", 0.1)
    state.on("GET", "/status", *_status(("running", None)))
    state.on("GET", "/log", (200, "OK", {"data": [{"n": 1, "t": "extracting archive"}]}))
    with pytest.raises(TaskError) as err:
        px.wait_task(UPID, what="create CT 457", timeout=0.5)
    assert str(err.value).startswith(f"create CT 457: task still running after 0s ({UPID})")
    assert "extracting archive" in str(err.value)


def test_task_polls_are_fast_for_the_short_tasks_of_a_window_then_back_off() -> None:
    pauses = list(polling.pauses(60, proxmox.POLL_FIRST_SECONDS, proxmox.POLL_FAST_FOR_SECONDS,
                                 proxmox.POLL_MAX_SECONDS))
    fast = [p for p in pauses if p == proxmox.POLL_FIRST_SECONDS]
    assert len(fast) == round(proxmox.POLL_FAST_FOR_SECONDS / proxmox.POLL_FIRST_SECONDS)
    assert pauses[:len(fast)] == fast  # a 1.5 s clone is seen done within one pause
    assert pauses[-1] == proxmox.POLL_MAX_SECONDS and pauses == sorted(pauses)
    assert len(pauses) == int(60 / proxmox.POLL_FIRST_SECONDS) + 1  # bounded in count


@pytest.mark.parametrize("bad", ["", "not-a-upid", "UPID"])
def test_wait_task_rejects_non_upids(client: tuple[Client, Api], bad: str) -> None:
    with pytest.raises(ProxmoxError, match="is not a task id"):
        client[0].wait_task(bad, what="x")


def test_upload_sends_checksum_fields_before_the_file(client: tuple[Client, Api], tmp_path: Path) -> None:
    px, state = client
    state.on("POST", "/storage/local/upload", (200, "OK", {"data": UPID}))
    path = tmp_path / "t.tar.zst"
    path.write_bytes(b"template bytes")
    assert px.upload_template("local", path, "meridian_1-abc.tar.zst", "ab" * 32) == UPID
    method, url, headers = state.requests[-1]
    assert method == "POST" and url.endswith("/nodes/pve01/storage/local/upload")
    assert headers["Content-Type"].startswith("multipart/form-data")
    body = state.bodies[-1]
    order = [body.index(f'name="{n}"'.encode()) for n in ("content", "checksum-algorithm", "checksum")]
    file_part = body.index(b'name="filename"; filename="meridian_1-abc.tar.zst"')
    assert order == sorted(order) and max(order) < file_part
    assert b"template bytes" in body and ("ab" * 32).encode() in body


def test_wait_until_returns_the_first_answer_and_is_bounded_in_count_and_time() -> None:
    answers = iter([None, None, {"status": "stopped"}])
    assert polling.wait_until(lambda: next(answers), timeout=5, pause=0.01) == {"status": "stopped"}
    calls: list[float] = []
    started = time.monotonic()
    assert polling.wait_until(lambda: calls.append(time.monotonic()), timeout=0.3, pause=0.05) is None
    assert time.monotonic() - started < 1.0 and 2 <= len(calls) <= int(0.3 / 0.05) + 1
