"""Deliver a seed into a running container (replace-ct does this as root over SSH).

A fresh container from the template boots without a seed, so cloud-init's generator
disabled itself for that boot. Activation runs cloud-init in place rather than rebooting:
it re-runs the generator (``systemctl daemon-reload``), which now finds the seed and
enables cloud-init, then starts its four stages in their boot order in one blocking
transaction. One SSH session, no reconnect.
"""

from __future__ import annotations

from pipeline.cloudinit.render import PIN_PATH, SEED_DIR, SEED_FILES, Seed, pin_file

SEED_MODE = 0o600
PIN_MODE = 0o644

# Run in order, each must exit 0. `clean` drops any earlier instance's state (a rerun of
# replace-ct on the same container) but keeps the seed directory.
ACTIVATE_COMMANDS: tuple[str, ...] = (
    "rm -f /etc/cloud/cloud-init.disabled",
    "cloud-init clean --logs",
    "systemctl daemon-reload",
    "systemctl restart cloud-init-local.service cloud-init.service"
    " cloud-config.service cloud-final.service",
)
# Exit 0 when cloud-init finished without errors, 1 when a stage reported errors.
WAIT_COMMAND = "cloud-init status --wait --long"


def container_files(seed: Seed) -> list[tuple[str, bytes, int]]:
    """Every (absolute path, content, mode) to put into the container, owner root."""
    files = [(f"{SEED_DIR}/{name}", seed.files[name], SEED_MODE) for name in SEED_FILES]
    return [*files, (PIN_PATH, pin_file(), PIN_MODE)]
