"""`python -m pipeline seed`: the master key from env, command or file; bad keys stop before any write."""

from __future__ import annotations

import hashlib
import secrets
import stat

import pytest
import yaml

from pipeline.__main__ import EXIT_USER_ERROR, main
from tests.plugins.paths import REPO_ROOT

LAB_SITE = REPO_ROOT / "sites" / "lab.yml"


def site_with_key_source(tmp_path, source: dict):
    data = yaml.safe_load(LAB_SITE.read_text())
    data["litellm"]["master_key"] = source
    data["image"]["meridian"]["source"] = str(REPO_ROOT / "tests/fixtures/meridian-standin")
    data["image"]["meridian"]["lockfile"] = str(REPO_ROOT / "sysext/meridian/locks/standin.json")
    path = tmp_path / "site.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def seed(site, out, capfd) -> tuple[int, str]:
    code = main(["seed", "--site", str(site), "--out", str(out)])
    captured = capfd.readouterr()
    return code, captured.out + captured.err


def leaked(key: str, output: str) -> bool:
    """The terminal may fold a long word: compare with all whitespace removed."""
    return key in "".join(output.split())


def env_file_digest(out) -> str:
    data = yaml.safe_load((out / "user-data").read_text())
    (entry,) = [f for f in data["write_files"] if f["path"] == "/etc/litellm/litellm.env"]
    return hashlib.sha256(entry["content"].encode()).hexdigest()


def expected_digest(key: str) -> str:
    return hashlib.sha256(f"LITELLM_MASTER_KEY={key}\n".encode()).hexdigest()


@pytest.fixture
def key():
    return "sk-" + secrets.token_urlsafe(32)


@pytest.mark.parametrize("kind", ["env", "command", "file"])
def test_key_from_each_source_lands_only_in_the_seed(kind, key, tmp_path, monkeypatch, capfd):
    key_file = tmp_path / "key.txt"
    key_file.write_text(key + "\n")
    monkeypatch.setenv("SEED_TEST_KEY", key)
    source = {
        "env": {"env": "SEED_TEST_KEY"},
        "command": {"command": f"cat {key_file}"},
        "file": {"file": str(key_file)},
    }[kind]
    out = tmp_path / "out"
    code, output = seed(site_with_key_source(tmp_path, source), out, capfd)
    assert code == 0, output
    assert env_file_digest(out) == expected_digest(key)
    assert stat.S_IMODE((out / "user-data").stat().st_mode) == 0o600
    assert leaked(key, output) is False
    assert f"wrote {out / 'seed.iso'}" in " ".join(output.split())


@pytest.mark.parametrize(
    ("source", "key_text", "message"),
    [
        ({"env": "SEED_TEST_UNSET_KEY"}, None, "environment variable SEED_TEST_UNSET_KEY is not set"),
        ({"file": "KEYFILE"}, "", "gave an empty value"),
        ({"file": "KEYFILE"}, "  \n", "gave an empty value"),
        ({"file": "KEYFILE"}, "sk-1234", "known placeholder value, which LiteLLM refuses"),
        ({"file": "KEYFILE"}, "sk-short", "shorter than 16 characters"),
        ({"command": "false"}, None, "`false` exited with 1"),
        ({"command": "/nonexistent/infisical get"}, None, "command not found: /nonexistent/infisical"),
        ({"file": "/nonexistent/key"}, None, "cannot read file /nonexistent/key"),
    ],
)
def test_missing_empty_or_unsafe_key_stops_before_writing(source, key_text, message, tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("SEED_TEST_UNSET_KEY", raising=False)
    if key_text is not None:
        (tmp_path / "key.txt").write_text(key_text)
        source = {"file": str(tmp_path / "key.txt")}
    out = tmp_path / "out"
    code, output = seed(site_with_key_source(tmp_path, source), out, capfd)
    assert code == EXIT_USER_ERROR
    assert "litellm.master_key: " in output
    assert message in " ".join(output.split())
    assert "Traceback" not in output
    assert not out.exists()
    if key_text and key_text.strip():
        assert leaked(key_text.strip(), output) is False


def test_deploy_key_is_authorized_for_the_admin(key, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("SEED_TEST_KEY", key)
    pub = tmp_path / "deploy_key.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDEPLOYxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx deploy\n")
    out = tmp_path / "out"
    site = site_with_key_source(tmp_path, {"env": "SEED_TEST_KEY"})
    code = main(["seed", "--site", str(site), "--out", str(out), "--deploy-key", str(pub),
                 "--instance-id", "iid-fixed"])
    assert code == 0, capfd.readouterr().err
    (admin,) = yaml.safe_load((out / "user-data").read_text())["users"]
    assert admin["ssh_authorized_keys"][-1] == pub.read_text().strip()
    assert yaml.safe_load((out / "meta-data").read_text())["instance-id"] == "iid-fixed"


def test_private_key_given_as_deploy_key_is_refused(key, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("SEED_TEST_KEY", key)
    private = tmp_path / "deploy_key"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    site = site_with_key_source(tmp_path, {"env": "SEED_TEST_KEY"})
    code = main(["seed", "--site", str(site), "--out", str(tmp_path / "out"), "--deploy-key", str(private)])
    assert code == EXIT_USER_ERROR
    assert "not an OpenSSH public key" in " ".join(capfd.readouterr().err.split())
    assert not (tmp_path / "out").exists()
