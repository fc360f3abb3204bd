"""Where the checkout is: tests and benchmarks read sites/, fixtures and the data folders from it
(the tool itself finds its data through pipeline/resources.py)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
