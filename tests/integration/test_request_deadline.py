"""`x-gateway-timeout`: a caller may ask for a shorter overall deadline, never a longer one."""

from __future__ import annotations

import time
from typing import Any

import httpx

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def _config(upstream: str) -> str:
    return f"""
server: {{request_timeout: 5s}}
health: {{probes: {{kind: none}}}}
deployments:
  - name: slow
    provider: openai
    model: chat
    base_url: {upstream}/v1
    timeouts: {{response: 5s}}
"""


def test_a_shorter_deadline_from_the_caller_is_honoured(
    gateway: Any, scripted_upstream: Any
) -> None:
    """An upstream that never answers costs the caller's 300 ms, not the config's 5 s."""
    up, server = scripted_upstream()
    up.script = ["hang"]
    gw = gateway(_config(server.url))
    started = time.monotonic()
    resp = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json=BODY,
        headers={"x-gateway-timeout": "300ms"},
        timeout=10,
    )
    elapsed = time.monotonic() - started
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "upstream_timeout"
    assert 0.25 <= elapsed < 3.0


def test_a_longer_or_bad_deadline_is_refused_or_capped(
    gateway: Any, scripted_upstream: Any
) -> None:
    """A bad value is a 400 naming the header; a longer one is capped at request_timeout."""
    up, server = scripted_upstream()
    gw = gateway(_config(server.url))
    bad = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json=BODY,
        headers={"x-gateway-timeout": "soon"},
        timeout=10,
    )
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["param"] == "x-gateway-timeout" and "250ms" in error["message"]
    zero = httpx.post(
        f"{gw.url}/v1/chat/completions", json=BODY, headers={"x-gateway-timeout": "0"}, timeout=10
    )
    assert zero.status_code == 400 and "greater than zero" in zero.json()["error"]["message"]
    ok = httpx.post(
        f"{gw.url}/v1/chat/completions", json=BODY, headers={"x-gateway-timeout": "1h"}, timeout=10
    )
    assert ok.status_code == 200
    assert up.received  # it reached the upstream (a 1 h ask is capped at 5 s, not refused)
