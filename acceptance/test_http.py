"""The three HTTP endpoints as clients see them, before the OAuth login."""

from __future__ import annotations

import httpx
import pytest

from pipeline.contract import CREDENTIALS_FILE

pytestmark = pytest.mark.image


def test_litellm_rejects_missing_key(litellm):
    assert litellm.get("/v1/models").status_code == 401


def test_litellm_rejects_wrong_key(litellm, wrong_key):
    response = litellm.get("/v1/models", headers={"Authorization": f"Bearer {wrong_key}"})
    assert 400 <= response.status_code < 500


def test_litellm_models_are_site_aliases(litellm_authed, target):
    response = litellm_authed.get("/v1/models")
    assert response.status_code == 200
    assert sorted(m["id"] for m in response.json()["data"]) == sorted(target.models)


def test_litellm_liveliness(litellm):
    assert litellm.get("/health/liveliness").status_code == 200


def test_litellm_readiness(litellm):
    response = litellm.get("/health/readiness")
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"


def test_meridian_health_matches_login_state(meridian, claude_status):
    _, status = claude_status
    response = meridian.get("/health")
    assert response.status_code == 200
    expected = "healthy" if status.get("loggedIn") is True else "degraded"
    assert response.json()["status"] == expected


def test_meridian_models(meridian):
    response = meridian.get("/v1/models")
    assert response.status_code == 200
    assert all(isinstance(m["id"], str) for m in response.json()["data"])
    assert response.json()["data"]


def test_node_exporter_metrics(target):
    url = f"http://{target.address}:{target.services.node_exporter_port}/metrics"
    response = httpx.get(url, timeout=15)
    assert response.status_code == 200
    assert "node_exporter_build_info" in response.text


def test_claude_auth_status_runs_as_meridian(host, claude_status):
    """Logged in exactly when credentials exist; before the login it must say logged out."""
    rc, status = claude_status
    credentials = host.file(CREDENTIALS_FILE).exists
    assert isinstance(status.get("loggedIn"), bool)
    assert (status["loggedIn"], rc == 0) == (credentials, credentials)
