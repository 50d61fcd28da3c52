"""Concurrency slots, callers that leave, and what the request log says about them."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from polling import wait_for
from structlog.testing import capture_logs

USER = [{"role": "user", "content": "hello"}]


def _config(primary: str, fallback: str | None = None, *, max_concurrency: int = 1) -> str:
    text = f"""
server:
  request_timeout: 10s
deployments:
  - name: primary
    provider: openai
    model: up-model
    aliases: [chat]
    base_url: {primary}/v1
    max_concurrency: {max_concurrency}
    timeouts: {{response: 5s, first_token: 5s}}
"""
    if fallback:
        text += f"""
  - name: fallback
    provider: openai
    model: fb-model
    aliases: [chat]
    base_url: {fallback}/v1
"""
    return text


def _client(url: str, timeout: float = 20) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=timeout)


def _requests(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "request"]


def test_concurrency_slot_is_given_back_after_every_request(
    gateway: Any, scripted_upstream: Any
) -> None:
    """With max_concurrency 1, sequential plain and streamed requests all reach the primary."""
    up, server = scripted_upstream()
    gw = gateway(_config(server.url))
    client = _client(gw.url)
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="chat", messages=USER)
        assert raw.headers["x-gateway-deployment"] == "primary"
        chunks = list(client.chat.completions.create(model="chat", messages=USER, stream=True))
        assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(up.received) == 6


def test_caller_that_gives_up_frees_its_slot_and_is_logged_as_499(
    gateway: Any, scripted_upstream: Any
) -> None:
    """A caller's timeout cancels its request: the slot is free at once and the log says 499."""
    up, server = scripted_upstream()
    up.script = ["hang"]
    gw = gateway(_config(server.url))
    with capture_logs() as logs:
        with pytest.raises(openai.APITimeoutError):
            _client(gw.url, timeout=0.3).chat.completions.create(model="chat", messages=USER)
        wait_for(lambda: len(_requests(logs)) == 1)
        raw = _client(gw.url).chat.completions.with_raw_response.create(model="chat", messages=USER)
    assert raw.headers["x-gateway-deployment"] == "primary"  # not skipped as saturated
    first = _requests(logs)[0]
    assert (first["status"], first["outcome"]) == (499, "caller_disconnected")
    assert not any(e["event"] == "unexpected error" for e in logs)


def test_caller_closing_a_stream_early_is_not_an_error(
    gateway: Any, scripted_upstream: Any
) -> None:
    """Stopping a stream half way is a normal disconnect (499), never a 500 with a traceback."""
    up, server = scripted_upstream()
    up.script = ["stream_slow"]
    gw = gateway(_config(server.url))
    with capture_logs() as logs:
        stream = _client(gw.url).chat.completions.create(model="chat", messages=USER, stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
        wait_for(lambda: len(_requests(logs)) == 1)
    event = _requests(logs)[0]
    assert (event["status"], event["outcome"]) == (499, "caller_disconnected")
    assert event["log_level"] == "info"
    assert not any(e["log_level"] == "error" for e in logs)
    wait_for(up.abandoned.is_set)
    assert up.abandoned.is_set()


def test_log_of_a_request_saved_by_fail_over_lists_the_failed_attempt(
    gateway: Any, scripted_upstream: Any
) -> None:
    """A success after a fail-over still records which deployment failed and why."""
    up, server = scripted_upstream()
    _, fb_server = scripted_upstream()
    up.script = [("status", 503, None)]
    gw = gateway(_config(server.url, fb_server.url))
    with capture_logs() as logs:
        _client(gw.url).chat.completions.create(model="chat", messages=USER)
    event = _requests(logs)[0]
    assert (event["status"], event["deployment"], event["attempts"]) == (200, "fallback", 2)
    assert event["failed_attempts"] == ["primary:unavailable"]


def test_raw_client_disconnect_before_any_answer_releases_the_slot(
    gateway: Any, scripted_upstream: Any
) -> None:
    """An HTTP client that drops the connection mid-wait frees the deployment for the next one."""
    up, server = scripted_upstream()
    up.script = ["hang"]
    gw = gateway(_config(server.url))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "chat", "messages": USER},
            timeout=httpx.Timeout(5, read=0.3),
        )
    deadline = time.monotonic() + 5
    status = 0
    while time.monotonic() < deadline:
        resp = httpx.get(f"{gw.url}/readyz", timeout=5)
        status = resp.status_code
        if status == 200:
            break
        time.sleep(0.05)
    assert status == 200
