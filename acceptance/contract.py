"""The in-container contract the suite checks (docs/ARCHITECTURE.md), in one place."""

from __future__ import annotations

UNITS = {
    "meridian": "meridian.service",
    "litellm": "litellm.service",
    "node_exporter": "prometheus-node-exporter.service",
}
LAYERS = ("litellm", "meridian", "node")
USERS = (("meridian", 901, "/var/lib/meridian"), ("litellm", 902, "/var/lib/litellm"))
CREDENTIALS_DIR = "/var/lib/meridian/.claude"
CREDENTIALS_FILE = f"{CREDENTIALS_DIR}/.credentials.json"
MASTER_KEY_ENV = "/etc/litellm/litellm.env"
MANIFEST = "/etc/meridian-appliance/manifest.json"
DEFAULT_MODELS = ("claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7")
