"""The acceptance gate: the acceptance suite's pre-login tier against the new container.

Runs ``pytest acceptance/ --site FILE -m image -n 2 --maxschedchunk=1`` as a subprocess and
reads its JUnit XML to name the failed checks. Two pytest-xdist workers, handed one test at
a time (the suite puts its filesystem scans first): the checks wait on SSH round trips and on
the container more than on this machine, and the gate is part of every deploy (measured in
the lab: 12.1 s in one process, 9.8 s with two workers, 7.4 s with the scans first and one
test at a time, 7.3 s with three workers). Its output goes to a log in the state dir (the
suite masks the master key; the key reaches it through the site's own secret source).
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from pipeline.config import Site
from pipeline.runner import ANY_EXIT, run, tail

GATE_TIMEOUT = 1200
GATE_WORKERS = 2


def _secret_env(site: Site) -> dict[str, str]:
    """Pass through the variables the site's secret sources name (runner drops the rest)."""
    names = [s.env for s in (site.litellm.master_key, site.proxmox.token_secret) if s.env]
    return {n: os.environ[n] for n in names if n in os.environ}


def run_gate(site: Site, suite: Path, log_dir: Path, tag: str) -> list[str]:
    """Return the failed checks' names (empty when the gate passed)."""
    junit = log_dir / f"acceptance-{tag}.xml"
    log = log_dir / f"acceptance-{tag}.log"
    junit.unlink(missing_ok=True)
    log.write_text("")
    assert site.source_file is not None
    proc = run(
        [sys.executable, "-m", "pytest", str(suite), "--site", str(site.source_file), "-m", "image",
         f"--junitxml={junit}", "-p", "no:cacheprovider", "-q", "-n", str(GATE_WORKERS), "--maxschedchunk=1"],
        env=_secret_env(site), cwd=suite.parent, timeout=GATE_TIMEOUT, check=ANY_EXIT, log=log,
    )
    if proc.returncode == 0:
        return []
    failed = failed_checks(junit) if junit.exists() else []
    if not failed:
        last = tail(log.read_text(errors="replace"), 1)
        failed = [f"acceptance suite exited with {proc.returncode} ({last or 'no output'})"]
    return failed


def failed_checks(junit: Path) -> list[str]:
    """``file::test`` ids of the failed or errored test cases in a JUnit XML report."""
    root = ET.parse(junit).getroot()
    out = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            classname = case.get("classname", "")
            out.append(f"{classname}::{case.get('name', '?')}" if classname else case.get("name", "?"))
    return out
