"""LiteLLM start-up time: `import litellm.proxy.proxy_server` and `litellm --config` from
spawn to the first 200 from /health/readiness, several runs each, median (issue 11, ≤ 4 s).

    sudo .venv/bin/python -m benchmarks.bench_litellm_start [--runs 5] [--check] \\
        [before=/path/to/old/litellm.raw] [after=build/lab/sysext/litellm.raw]

Each target is a litellm.raw (unpacked into a scratch folder, as the template holds it)
or a venv folder; without one, build/lab/sysext/litellm.raw. Runs alternate between the
targets, so a busy machine slows all of them alike. The proxy runs with the environment
of image/rootfs/etc/systemd/system/litellm.service and the config.yaml that
cloudinit/user-data.j2 renders for the lab site, inside a fresh network namespace that
has only loopback: nothing leaves the machine. --check also runs the acceptance
contract against each target (401 without key, 4xx for a wrong key, /v1/models lists the
aliases, liveliness, readiness, chat completion with and without streaming through
anthropic/<alias>) with a loopback Anthropic stand-in in place of Meridian.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import yaml

from pipeline.cloudinit.render import render_seed
from pipeline.config import load_site
from tests.plugins.paths import REPO_ROOT

UNIT = REPO_ROOT / "image" / "rootfs" / "etc" / "systemd" / "system" / "litellm.service"
DEFAULT_RAW = REPO_ROOT / "build" / "lab" / "sysext" / "litellm.raw"
VENV_IN_RAW = "opt/litellm"
MASTER_KEY = "sk-bench-master-key"
START_TIMEOUT = 120.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="[NAME=]PATH",
                        help="litellm.raw or venv folder (default build/lab/sysext/litellm.raw)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--site", type=Path, default=REPO_ROOT / "sites" / "lab.yml")
    parser.add_argument("--check", action="store_true", help="also check the HTTP contract")
    args = parser.parse_args()
    if os.environ.get("BENCH_IN_NETNS") != "1":
        return reexec_in_loopback_netns()
    targets = [parse_target(t) for t in args.targets or [str(DEFAULT_RAW)]]
    with tempfile.TemporaryDirectory(prefix="bench-litellm-") as scratch, ExitStack() as stack:
        work = Path(scratch)
        venvs = {name: stack.enter_context(venv_of(path, work / f"layer-{name}"))
                 for name, path in targets}
        site = load_site(args.site)
        stub = stack.enter_context(anthropic_stand_in())
        config = work / "config.yaml"
        config.write_text(rendered_config(site, stub_port=stub.server_address[1]))
        results: dict[str, dict[str, list[tuple[float, float]]]] = {
            n: {"import": [], "ready": []} for n in venvs}
        for run in range(args.runs):
            for name, venv in venvs.items():
                results[name]["import"].append(import_seconds(venv, work))
                check = args.check and run == args.runs - 1
                results[name]["ready"].append(ready_seconds(venv, work, config, site, check))
        print(f"LiteLLM start on {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
              f"{args.runs} runs each: median wall (min-max) and median CPU seconds")
        for name, times in results.items():
            print(f"  {name}: {dict(targets)[name]}")
            for what, label in (("import", "import litellm.proxy.proxy_server"),
                                ("ready", "spawn -> /health/readiness 200")):
                wall, cpu = [x for x, _ in times[what]], [c for _, c in times[what]]
                print(f"    {label:34s} {statistics.median(wall):6.2f}s ({min(wall):.2f}-"
                      f"{max(wall):.2f})  cpu {statistics.median(cpu):5.2f}s  "
                      f"runs: {' '.join(f'{x:.2f}' for x in wall)}")
    return 0


def reexec_in_loopback_netns() -> int:
    """Run this script again in a new network namespace with only `lo` up."""
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark uses a private network namespace")
    argv = [sys.executable, "-m", "benchmarks.bench_litellm_start", *sys.argv[1:]]
    script = 'ip link set lo up && exec "$@"'
    env = {**os.environ, "BENCH_IN_NETNS": "1"}
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    return subprocess.run(["unshare", "--net", "--", "sh", "-c", script, "sh", *argv],
                          env=env, cwd=REPO_ROOT, check=False).returncode


def parse_target(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text).stem, text
    return name, Path(path).resolve()


@contextmanager
def venv_of(path: Path, scratch: Path):
    """The venv of a layer: a folder as given, or a litellm.raw unpacked into a folder, as
    the template holds it (/var/lib/extensions/litellm is a directory extension)."""
    if path.is_dir():
        yield path
        return
    subprocess.run(["unsquashfs", "-q", "-n", "-d", scratch, path], check=True,
                   stdout=subprocess.DEVNULL)
    yield scratch / VENV_IN_RAW


def rendered_config(site, *, stub_port: int) -> str:
    """/etc/litellm/config.yaml as the seed writes it, Meridian replaced by the stand-in."""
    seed = render_seed(site, master_key=MASTER_KEY, instance_id="bench-litellm")
    user_data = yaml.safe_load(seed.files["user-data"])
    text = next(f["content"] for f in user_data["write_files"]
                if f["path"] == "/etc/litellm/config.yaml")
    meridian = f"127.0.0.1:{site.services.meridian_port}"
    assert meridian in text, "config.yaml no longer points at Meridian on loopback"
    return text.replace(meridian, f"127.0.0.1:{stub_port}")


def unit_environment(home: Path) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / "cache"), TMPDIR=str(home / "tmp"),
               LITELLM_MASTER_KEY=MASTER_KEY, PYTHONDONTWRITEBYTECODE="1")
    return env


def fresh_home(work: Path) -> Path:
    home = Path(tempfile.mkdtemp(dir=work, prefix="home-"))
    (home / "tmp").mkdir()
    return home


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def import_seconds(venv: Path, work: Path) -> tuple[float, float]:
    """Wall and CPU seconds of a bare import (CPU time hardly depends on other load)."""
    home, cpu = fresh_home(work), children_cpu()
    start = time.monotonic()
    subprocess.run([venv / "bin" / "python", "-c", "import litellm.proxy.proxy_server"],
                   env=unit_environment(home), cwd=home, check=True, timeout=START_TIMEOUT)
    return time.monotonic() - start, children_cpu() - cpu


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ready_seconds(venv: Path, work: Path, config: Path, site, check: bool) -> tuple[float, float]:
    home, port = fresh_home(work), free_port()
    env = unit_environment(home) | {"LITELLM_PORT": str(port)}
    log = home / "litellm.log"
    argv = [str(venv / "bin" / "python"), str(venv / "bin" / "litellm"), "--config", str(config),
            "--host", "127.0.0.1", "--port", str(port)]
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while True:
                if proc.poll() is not None:
                    sys.exit(f"litellm exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                if time.monotonic() - start > START_TIMEOUT:
                    sys.exit(f"litellm not ready after {START_TIMEOUT}s:\n{log.read_text()[-3000:]}")
                try:
                    if client.get("/health/readiness").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
            elapsed, cpu = time.monotonic() - start, process_cpu(proc.pid)
            if check:
                check_contract(client, site.models)
                print(f"  contract ok: {venv}", flush=True)
        return elapsed, cpu
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_contract(client: httpx.Client, models: list[str]) -> None:
    """What acceptance/test_http.py and test_oauth.py ask of LiteLLM."""
    authed = {"Authorization": f"Bearer {MASTER_KEY}"}
    assert client.get("/v1/models").status_code == 401
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"}).status_code
    assert 400 <= wrong < 500, wrong
    listed = client.get("/v1/models", headers=authed)
    assert listed.status_code == 200, listed.text
    assert sorted(m["id"] for m in listed.json()["data"]) == sorted(models)
    assert client.get("/health/liveliness").status_code == 200
    assert client.get("/health/readiness").json()["status"] == "healthy"
    body = {"model": models[0], "max_tokens": 32, "messages": [{"role": "user", "content": "ping"}]}
    reply = client.post("/v1/chat/completions", json=body, headers=authed, timeout=60)
    assert reply.status_code == 200, reply.text[:500]
    assert "pong" in reply.json()["choices"][0]["message"]["content"].lower()
    pieces, done = [], False
    with client.stream("POST", "/v1/chat/completions", json=body | {"stream": True},
                       headers=authed, timeout=60) as streamed:
        assert streamed.status_code == 200
        for line in streamed.iter_lines():
            if line == "data: [DONE]":
                done = True
                break
            if line.startswith("data: "):
                pieces.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
    assert done and "pong" in "".join(pieces).lower(), pieces


class AnthropicStandIn(BaseHTTPRequestHandler):
    """POST /v1/messages answering "pong", plain or as Anthropic's SSE events."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/messages":
            self.send_error(404)
            return
        model = request["model"]
        message = {"id": "msg_bench", "type": "message", "role": "assistant", "model": model,
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": 5, "output_tokens": 1}}
        if not request.get("stream"):
            self.reply("application/json", json.dumps(
                message | {"content": [{"type": "text", "text": "pong"}]}).encode())
            return
        events = [
            ("message_start", {"type": "message_start", "message": message | {
                "content": [], "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 0}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "pong"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                               "stop_sequence": None}, "usage": {"output_tokens": 1}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        self.reply("text/event-stream", b"".join(
            f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events))

    def reply(self, content_type: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def anthropic_stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), AnthropicStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
