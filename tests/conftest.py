"""Shared test setup. Fixtures live in tests/plugins/, one module per part of the system."""

from __future__ import annotations

import os
import secrets

pytest_plugins = [
    "tests.plugins.build",
    "tests.plugins.lab",
    "tests.plugins.acceptance",
]

# The lab site reads its LiteLLM master key from this variable. A fresh random key per
# test session: never a literal in the tree, never printed.
os.environ.setdefault("MERIDIAN_LAB_MASTER_KEY", "sk-" + secrets.token_urlsafe(32))
