"""Deliver a seed into a running container (replace-ct does this as root over SSH).

A fresh container from the template boots without a seed, so cloud-init's generator
disabled cloud-init for that boot (and ds-identify cached that verdict in /run/cloud-init).
Activation runs cloud-init in place rather than rebooting: drop the cached verdict, re-run
the generator (``systemctl daemon-reload``), which now finds seed and pin and enables
cloud-init, then run its four stages in boot order as one blocking systemd transaction.
One SSH session, no reconnect, and the same code path as a boot with the seed baked in.
"""

from __future__ import annotations

from pipeline.cloudinit.render import PIN_PATH, SEED_DIR, SEED_FILES, Seed, pin_file

SEED_MODE = 0o600
PIN_MODE = 0o644

# Run in order, each must exit 0. `clean` drops any earlier instance's state (a rerun of
# replace-ct on the same container) but keeps the seed directory. The `test` fails
# activation when the generator does not find the seed (rather than running without it).
ACTIVATE_COMMANDS: tuple[str, ...] = (
    "rm -f /etc/cloud/cloud-init.disabled",
    "cloud-init clean --logs",
    "rm -rf /run/cloud-init",
    "systemctl daemon-reload",
    "test -f /run/cloud-init/enabled",
    "systemctl restart cloud-init-local.service cloud-init.service"
    " cloud-config.service cloud-final.service",
)
# Exit 0 when cloud-init finished without errors, 1 when a stage reported errors. After
# the first-boot finish it says "status: disabled" (the marker file): the exit code counts.
# Bounded: a stage that dies before writing status.json leaves `--wait` polling forever.
WAIT_SECONDS = 600
WAIT_COMMAND = f"timeout {WAIT_SECONDS} cloud-init status --wait --long"


def container_files(seed: Seed) -> list[tuple[str, bytes, int]]:
    """Every (absolute path, content, mode) to put into the container, owner root."""
    files = [(f"{SEED_DIR}/{name}", seed.files[name], SEED_MODE) for name in SEED_FILES]
    return [*files, (PIN_PATH, pin_file(), PIN_MODE)]
