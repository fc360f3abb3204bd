"""Shared test setup. Fixtures live in tests/plugins/, one module per part of the system."""

from __future__ import annotations

import os
import secrets

import pytest

pytest_plugins = [
    "tests.plugins.build",
    "tests.plugins.lab",
    "tests.plugins.acceptance",
    "tests.plugins.cannedapi",
]

# The lab site reads its LiteLLM master key from this variable. A fresh random key per
# test session: never a literal in the tree, never printed.
os.environ.setdefault("MERIDIAN_LAB_MASTER_KEY", "sk-" + secrets.token_urlsafe(32))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Demo tests take the shared lab down and up: run them after everything that uses it."""
    items.sort(key=lambda item: item.get_closest_marker("demo") is not None)
