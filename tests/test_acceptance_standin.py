"""The Meridian stand-in keeps the real contract (docs/services.md) under Node 22, with the real
bundled `claude` deciding the login state. Runs on loopback only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from pipeline.runner import clean_env, run
from tests.plugins.acceptance import STANDIN

pytestmark = pytest.mark.integration

START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(lab_build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Node 22 and the stand-in exactly as the build installs them: the node and meridian
    layers' sysext images, unpacked side by side (usr/bin/node, opt/meridian)."""
    root = tmp_path_factory.mktemp("layers")
    for name in ("node", "meridian"):
        run(["unsquashfs", "-q", "-f", "-d", root, lab_build.out_dir / "sysext" / f"{name}.raw"], timeout=600)
    return root


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path


def node_bin(installed: Path) -> Path:
    return installed / "usr" / "bin"


@contextmanager
def running(installed: Path, home: Path, path: str) -> Iterator[str]:
    """`meridian` under Node 22 with this HOME and PATH on a free loopback port; yields its URL."""
    port = free_port()
    env = clean_env({
        "HOME": str(home), "PATH": path, "MERIDIAN_HOST": "127.0.0.1", "MERIDIAN_PORT": str(port),
        "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    })
    # A server for the test's duration: runner.run only runs tools to completion.
    proc = subprocess.Popen([node_bin(installed) / "node", installed / "opt/meridian/bin/meridian.js"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(int(START_TIMEOUT / 0.2)):
            try:
                httpx.get(f"{base}/v1/models", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        else:
            pytest.fail(f"meridian stand-in did not listen on {base} within {START_TIMEOUT}s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture()
def serve(installed: Path, home: Path) -> Iterator[str]:
    """The stand-in with the real bundled claude first on PATH, as meridian.service has it."""
    path = f"{installed / 'opt/meridian/node_modules/.bin'}:{node_bin(installed)}:/usr/bin:/bin"
    with running(installed, home, path) as base:
        yield base


def fake_login(home: Path) -> None:
    """What tests/fixtures/meridian-standin/fake-login writes, for a HOME of our own."""
    creds = home / ".claude" / ".credentials.json"
    creds.parent.mkdir(mode=0o700)
    expires = int((time.time() + 3600) * 1000)
    creds.write_text(json.dumps({"claudeAiOauth": {
        "accessToken": "sk-ant-oat01-STANDIN-FAKE", "refreshToken": "sk-ant-ort01-STANDIN-FAKE",
        "expiresAt": expires, "scopes": ["user:inference"], "subscriptionType": "max"}}))
    os.chmod(creds, 0o600)


PING = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "ping"}]}


def test_package_names_itself_a_standin():
    meta = json.loads((STANDIN / "package.json").read_text())
    assert "standin" in meta["name"] and "standin" in meta["version"]
    assert meta["bin"] == {"meridian": "bin/meridian.js"}
    assert meta["dependencies"] == {"@anthropic-ai/claude-code": "2.1.119"}


def test_logged_out_health_is_degraded(serve):
    response = httpx.get(f"{serve}/health", timeout=20)
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["error"] == "Could not verify auth status"


def test_logged_out_messages_are_401(serve):
    response = httpx.post(f"{serve}/v1/messages", json=PING, timeout=20)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_models_fixed_list(serve):
    ids = [m["id"] for m in httpx.get(f"{serve}/v1/models", timeout=5).json()["data"]]
    assert ids == ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"]


def test_logged_in_health_is_healthy(serve, home):
    fake_login(home)
    body = httpx.get(f"{serve}/health", timeout=20).json()
    assert body["status"] == "healthy"
    assert body["auth"] == {"loggedIn": True, "subscriptionType": "max"}


def test_logged_in_ping_gets_pong(serve, home):
    fake_login(home)
    body = httpx.post(f"{serve}/v1/messages", json=PING, timeout=20).json()
    assert (body["type"], body["content"][0]["text"]) == ("message", "pong")


def test_logged_in_stream_is_anthropic_sse(serve, home):
    fake_login(home)
    events, text = [], ""
    with httpx.stream("POST", f"{serve}/v1/messages", json={**PING, "stream": True}, timeout=20) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line[len("event: "):])
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
                text += data.get("delta", {}).get("text", "")
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_delta" in events
    assert text == "pong"


def test_claude_missing_from_path_is_degraded(installed, home):
    """Meridian runs `claude` from PATH: without it, health is degraded even with credentials."""
    fake_login(home)
    with running(installed, home, "/usr/bin:/bin") as base:
        assert httpx.get(f"{base}/health", timeout=20).json()["status"] == "degraded"
