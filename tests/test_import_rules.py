"""Who may import whom, read from the code with ``ast`` (nothing is imported or run).

- The lab emulates Proxmox for the pipeline's tests: it shares no code with the pipeline,
  so a bug in shared code cannot hide from the tests, and neither side can change the other.
- Tests and benchmarks share their harness through tests/plugins/; no module imports a test
  module (tests/test_*.py), and benchmarks take nothing else from tests/.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "lab", "tests", "benchmarks", "acceptance")


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) for each import in one file, relative ones made absolute:
    ``from a.b import c`` yields ``a.b.c`` (c may be a module or a name in a.b)."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[:len(package) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def python_files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (REPO / top).rglob("*.py") if ".venv" not in p.parts)


def violations(tops: tuple[str, ...], forbidden) -> list[str]:
    found = []
    for path in python_files(*tops):
        for line, module in imported_modules(path):
            if forbidden(module):
                found.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return sorted(set(found))


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _test_module(module: str) -> bool:
    parts = module.split(".")
    return len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_")


def test_the_scan_sees_imports() -> None:
    """Guards the rules below against a scan that silently finds nothing."""
    modules = {m for p in python_files("tests") for _, m in imported_modules(p)}
    assert {"pytest", "tests.plugins.lab.Lab", "pipeline.proxmox.Client"} <= modules


def test_lab_imports_nothing_from_the_pipeline() -> None:
    found = violations(("lab",), lambda m: _within(m, "pipeline"))
    assert not found, "\n".join(found)


def test_pipeline_imports_nothing_from_the_lab() -> None:
    found = violations(("pipeline",), lambda m: _within(m, "lab"))
    assert not found, "\n".join(found)


def test_no_module_imports_a_test_module() -> None:
    """Shared fixtures and helpers live in tests/plugins/ (registered in tests/conftest.py)."""
    found = violations(PACKAGES, _test_module)
    assert not found, "\n".join(found)


def test_benchmarks_take_only_the_harness_from_tests() -> None:
    def forbidden(module: str) -> bool:
        return _within(module, "tests") and not _within(module, "tests.plugins")

    found = violations(("benchmarks",), forbidden)
    assert not found, "\n".join(found)
