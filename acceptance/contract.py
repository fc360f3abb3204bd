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
# Every service unit the appliance runs is sandboxed (issue 12): `systemd-analyze security`
# rates each at most MAX_EXPOSURE. ssh-hostkeys is a oneshot (skipped once keys exist).
HARDENED_UNITS = {**UNITS, "ssh_hostkeys": "ssh-hostkeys.service"}
MAX_EXPOSURE = 3.0
# What each long-running service may write, seen from inside its own sandbox: its state and
# cache (its private /tmp, /var/tmp and /dev/shm are checked apart).
SERVICE_USERS = {"meridian": "meridian", "litellm": "litellm", "node_exporter": "prometheus"}
OWN_DIRS = {
    "meridian": ("/var/lib/meridian", "/var/cache/meridian"),
    "litellm": ("/var/lib/litellm", "/var/cache/litellm"),
    "node_exporter": (),
}
