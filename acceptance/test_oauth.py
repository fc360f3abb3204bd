"""After the one-time OAuth login: real requests through both endpoints.

The prompt asks for "pong"; a real model and the test stand-in both answer with it.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.oauth

PROMPT = "This is a connectivity ping. Reply with exactly one word: pong"
COMPLETION_TIMEOUT = 120.0  # one real upstream request


def test_claude_logged_in_as_meridian(claude_status):
    rc, status = claude_status
    assert (rc, status.get("loggedIn")) == (0, True)


def test_meridian_health_healthy_with_subscription(meridian):
    body = meridian.get("/health").json()
    assert body["status"] == "healthy"
    assert body["auth"]["loggedIn"] is True
    assert isinstance(body["auth"]["subscriptionType"], str) and body["auth"]["subscriptionType"]


def test_meridian_messages_pong(meridian, target):
    request = {
        "model": target.models[0],
        "max_tokens": 32,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    response = meridian.post("/v1/messages", json=request, timeout=COMPLETION_TIMEOUT)
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert (body["type"], body["role"]) == ("message", "assistant")
    text = "".join(block.get("text", "") for block in body["content"])
    assert "pong" in text.lower()


def _chat(model: str, stream: bool) -> dict:
    return {
        "model": model,
        "max_tokens": 32,
        "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}],
    }


def test_litellm_chat_completion_pong(litellm_authed, target):
    response = litellm_authed.post(
        "/v1/chat/completions", json=_chat(target.models[0], False), timeout=COMPLETION_TIMEOUT
    )
    assert response.status_code == 200, response.text[:500]
    assert "pong" in response.json()["choices"][0]["message"]["content"].lower()


def test_litellm_chat_completion_stream_pong(litellm_authed, target):
    pieces, done = [], False
    request = _chat(target.models[0], True)
    with litellm_authed.stream(
        "POST", "/v1/chat/completions", json=request, timeout=COMPLETION_TIMEOUT
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            delta = json.loads(line[len("data: "):])["choices"][0]["delta"]
            pieces.append(delta.get("content") or "")
    assert done
    assert "pong" in "".join(pieces).lower()
