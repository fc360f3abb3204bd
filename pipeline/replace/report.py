"""The JSON report of one replace-ct run: steps with durations, downtime, templates. No secrets."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.progress import timeline
from pipeline.replace.template_file import TemplateRef


def build(
    *, site: str, vmid: int, outcome: str, before: TemplateRef | None, after: TemplateRef | None,
    down_since: float | None, up_at: float | None, failed_checks: list[str],
) -> dict[str, Any]:
    downtime = round(up_at - down_since, 2) if down_since and up_at else None
    return {
        "site": site,
        "vmid": vmid,
        "outcome": outcome,
        "template_before": asdict(before) if before else None,
        "template_after": asdict(after) if after else None,
        "downtime_seconds": downtime,
        "failed_checks": failed_checks,
        "steps": [asdict(s) for s in timeline.steps],
    }


def write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
