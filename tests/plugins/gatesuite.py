"""A quick stand-in for the acceptance suite in replace-ct's lifecycle tests: it fails only for
what a test marks broken (a template's sha256 in the CT's description and, when asked, a model
name LiteLLM serves), so a test decides when the gate fails. The real suite gates the first
deploys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFTEST = (
    "def pytest_addoption(parser):\n    parser.addoption('--site')\n\n"
    "def pytest_configure(config):\n    config.addinivalue_line('markers', 'image: pre-login')\n"
)
GATE_CHECKS = '''
@pytest.mark.image
def test_not_the_broken_template(pytestconfig):
    site = load_site(pytestconfig.getoption("--site"))
    config = Client.from_site(site.proxmox).ct_config(site.container.vmid)
    assert BROKEN not in config["description"]
    if CHECK_MODELS:
        key = os.environ["MERIDIAN_LAB_MASTER_KEY"]
        models = httpx.get(f"http://{site.container.network.ip}:4000/v1/models", timeout=10,
                           headers={"Authorization": "Bearer " + key}).json()
        assert BROKEN not in json.dumps(models)
'''


@dataclass(frozen=True)
class GateSuite:
    path: Path
    check_models: bool = False

    @classmethod
    def at(cls, path: Path, *, check_models: bool = False) -> GateSuite:
        path.mkdir(parents=True, exist_ok=True)
        (path / "conftest.py").write_text(CONFTEST)
        suite = cls(path, check_models)
        suite.fail_for(None)
        return suite

    def fail_for(self, marker: str | None) -> None:
        """Fail the gate for ``marker`` from now on (None: nothing is broken)."""
        head = ("import json, os, httpx, pytest\nfrom pipeline.config import load_site\n"
                "from pipeline.proxmox import Client\n\n"
                f"BROKEN = {marker or 'nothing is marked broken'!r}\nCHECK_MODELS = {self.check_models!r}\n")
        (self.path / "test_gate.py").write_text(head + GATE_CHECKS)
