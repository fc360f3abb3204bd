"""Lab API numbers with the small test template (as root, lab up: `python -m lab up`):

    .venv/bin/python -m benchmarks.bench_lab

template build (mmdebstrap), upload, create (extraction with the uid shift), start until
SSH answers, shutdown and delete, each through the lab's API with proxmoxer. Uses CT 9199
and 10.157.0.205 and deletes the CT; the template stays on `local` (the lab token,
like the pipeline's, has no Datastore.Allocate to delete it).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pipeline.runner import run
from tests.plugins.lab import Lab
from tests.plugins.pveapi import NET, NODE, ok, sha256, ssh_when_up, upload
from tests.plugins.smalltemplate import build_small_template

STATE = Path("/var/lib/meridian-lab")
VMID, IP = 9199, "10.157.0.205"


def main() -> None:
    px = Lab.at(STATE, 8006).client()
    node = px.nodes(NODE)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        clock = time.monotonic()
        template = build_small_template(work / "bench.tar.zst")
        lap("template build", clock)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", work / "key"])
        clock = time.monotonic()
        ok(px, upload(px, template, "bench-lab_amd64.tar.zst", sha256(template)))
        lap(f"upload ({template.stat().st_size / 2**20:.0f} MiB, checksum verified)", clock)
        clock = time.monotonic()
        ok(px, node.lxc.post(vmid=VMID, ostemplate="local:vztmpl/bench-lab_amd64.tar.zst",
                             rootfs="local-lvm:2", unprivileged=1, pool="meridian", features="nesting=1",
                             net0=NET.format(ip=IP), **{"ssh-public-keys": (work / "key.pub").read_text()}))
        lap("create (extract + Proxmox setup)", clock)
        clock = time.monotonic()
        ok(px, node.lxc(VMID).status.start.post())
        ssh_when_up(work / "key", IP, "true")
        lap("start until SSH answers", clock)
        clock = time.monotonic()
        ok(px, node.lxc(VMID).status.shutdown.post(timeout=30, forceStop=1))
        lap("shutdown", clock)
        clock = time.monotonic()
        ok(px, node.lxc(VMID).delete(purge=1))
        lap("delete (frees the volumes)", clock)


def lap(what: str, since: float) -> None:
    print(f"{what:45s} {time.monotonic() - since:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
