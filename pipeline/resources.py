"""Where the tool's data is: the image/, sysext/ and cloudinit/ folders and the acceptance suite.

In a source checkout they sit beside pipeline/. An installed package (``pip install .``) carries
the folders as pipeline/_data/NAME (pyproject.toml maps them) and the suite as the package
``acceptance``. Nothing else in the code knows where the tool is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pipeline.errors import PipelineError

_PACKAGE = Path(__file__).resolve().parent
DataFolder = Literal["image", "sysext", "cloudinit"]

# What the acceptance gate imports, by distribution name (module name).
ACCEPTANCE_EXTRA = "meridian-pipeline[acceptance]"
ACCEPTANCE_NEEDS = {"pytest": "pytest", "pytest-testinfra": "testinfra", "paramiko": "paramiko",
                    "pytest-xdist": "xdist"}


def data_dir(name: DataFolder) -> Path:
    installed = _PACKAGE / "_data" / name
    return installed if installed.is_dir() else _PACKAGE.parent / name


def acceptance_dir() -> Path:
    """Beside pipeline/ in both cases (not found through sys.path, which starts at the cwd)."""
    suite = _PACKAGE.parent / "acceptance"
    if not (suite / "conftest.py").is_file():
        raise PipelineError(f"the acceptance suite is not where the tool is installed ({suite})",
                            hint="reinstall the tool (pip install .)")
    return suite


def require_acceptance_extra() -> None:
    """replace-ct gates on the acceptance suite: say by name what is missing to run it."""
    missing = [dist for dist, module in ACCEPTANCE_NEEDS.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise PipelineError(f"the acceptance gate needs {', '.join(missing)}, which is not installed",
                            hint=f"pip install '{ACCEPTANCE_EXTRA}' (or from a checkout: pip install '.[acceptance]')")
