"""The acceptance suite catches breakage: break one thing on a deployed lab container, and
the suite must fail on exactly the checks that cover it (and pass again once restored)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.plugins.acceptance import LAB_SITE, DeployedLab, acceptance

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Bounded wait until LiteLLM (the lab site's port 4000) is ready again; the base has python3.
WAIT_LITELLM = (
    "for i in $(seq 60); do python3 -c \"import urllib.request as u; "
    "u.urlopen('http://127.0.0.1:4000/health/readiness', timeout=3)\" 2>/dev/null && exit 0; "
    "sleep 2; done; exit 1"
)
CONFIG = "/etc/litellm/config.yaml"
# Drops the model_list entry of one alias: from its `- model_name:` line to the next entry
# or top-level key.
DROP_ALIAS = (
    "awk -v m='\"claude-opus-4-7\"' "
    "'/- model_name:/{skip = index($0, m) > 0} /^[^ #]/{skip = 0} !skip' "
    f"{CONFIG}.catches > {CONFIG}"
)


@dataclass(frozen=True)
class Break:
    apply: str
    restore: str
    fails: frozenset[str]


BREAKS = {
    "litellm-stopped": Break(
        apply="systemctl stop litellm.service",
        restore=f"systemctl start litellm.service && {WAIT_LITELLM}",
        fails=frozenset({
            "test_service_active[litellm]",
            "test_port_listens_on_all_addresses[litellm]",
            "test_litellm_rejects_missing_key",
            "test_litellm_rejects_wrong_key",
            "test_litellm_models_are_site_aliases",
            "test_litellm_liveliness",
            "test_litellm_readiness",
            # The hardening checks probe the running service's own sandbox: none to probe.
            "test_litellm_cannot_reach_meridian_credentials",
            "test_service_writes_only_its_own_dirs[litellm]",
        }),
    ),
    "env-file-0644": Break(
        apply="chmod 0644 /etc/litellm/litellm.env",
        restore="chmod 0600 /etc/litellm/litellm.env",
        fails=frozenset({"test_litellm_env_file_private_to_litellm"}),
    ),
    "alias-removed": Break(
        apply=f"cp -p {CONFIG} {CONFIG}.catches && {DROP_ALIAS} && "
              f"systemctl restart litellm.service && {WAIT_LITELLM}",
        restore=f"mv -f {CONFIG}.catches {CONFIG} && systemctl restart litellm.service && "
                f"{WAIT_LITELLM}",
        fails=frozenset({"test_litellm_models_are_site_aliases"}),
    ),
    "node-exporter-masked": Break(
        apply="systemctl mask prometheus-node-exporter.service",
        restore="systemctl unmask prometheus-node-exporter.service",
        # A masked unit has no settings left for systemd-analyze security to score.
        fails=frozenset({"test_service_enabled[node_exporter]",
                         "test_unit_exposure_within_threshold[node_exporter]"}),
    ),
}


@pytest.fixture(scope="module")
def healthy_lab(lab_deployed: DeployedLab, tmp_path_factory: pytest.TempPathFactory) -> DeployedLab:
    """The deployed container passes the image tier before anything is broken."""
    failed = acceptance(LAB_SITE, "image", tmp_path_factory.mktemp("baseline"))
    assert failed == [], "the freshly deployed lab container must pass before it is broken"
    return lab_deployed


@pytest.mark.parametrize("name", list(BREAKS))
def test_suite_fails_on_exactly_the_broken_check(healthy_lab: DeployedLab, name: str, tmp_path):
    broken = BREAKS[name]
    healthy_lab.root(broken.apply, timeout=180)
    try:
        failed = acceptance(LAB_SITE, "image", tmp_path)
    finally:
        healthy_lab.root(broken.restore, timeout=180)
    assert set(failed) == broken.fails
    assert len(failed) == len(broken.fails)


def test_suite_passes_again_after_every_restore(healthy_lab: DeployedLab, tmp_path):
    assert acceptance(LAB_SITE, "image", tmp_path) == []
