"""A bug inside the gateway still gives the caller a JSON error with the request id."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from gateway.config import parse_config
from gateway.executor import Deployment
from gateway.providers.base import ProviderCall
from gateway.server import Gateway

CONFIG = parse_config("deployments:\n  - {name: boom, provider: simulated, model: m}\n")


class Exploding:
    """A provider with a bug: it raises something no boundary translated."""

    deployment = CONFIG.deployments[0]

    async def send(self, call: ProviderCall) -> Any:
        raise RuntimeError("a bug, not a provider failure")

    async def close(self) -> None:
        pass


def test_unexpected_exception_is_a_json_500_naming_the_request_id(serve_app: Any) -> None:
    """No traceback and no text page: an OpenAI-shaped 500 that points at the log."""

    async def make() -> web.Application:
        return Gateway(CONFIG, {"boom": Deployment(Exploding())}).app()

    server = serve_app(make)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "req-42"},
        )
    assert info.value.status_code == 500
    assert "request id req-42" in info.value.message
    assert "RuntimeError" not in info.value.message
    assert info.value.response.headers["x-request-id"] == "req-42"


class _StreamThatFailsToClose:
    """A complete stream whose ``aclose`` raises (a provider library's bug on cleanup)."""

    def __init__(self) -> None:
        from gateway.providers.base import StreamState

        self.state = StreamState()
        self.events = [
            b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
            b'"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n',
            b"data: [DONE]\n\n",
        ]

    def __aiter__(self) -> _StreamThatFailsToClose:
        return self

    async def __anext__(self) -> bytes:
        if not self.events:
            raise StopAsyncIteration
        return self.events.pop(0)

    async def aclose(self) -> None:
        raise RuntimeError("cleanup bug")


class ClosesBadly:
    deployment = CONFIG.deployments[0]

    async def send(self, call: ProviderCall) -> Any:
        return _StreamThatFailsToClose()

    async def close(self) -> None:
        pass


def test_stream_whose_close_fails_still_gives_back_its_slot_and_is_recorded(
    serve_app: Any,
) -> None:
    """Even when closing the upstream stream raises, the concurrency slot comes back and the
    attempt is recorded in the deployment's window."""
    dep = Deployment(ClosesBadly())  # type: ignore[arg-type]

    async def make() -> web.Application:
        return Gateway(CONFIG, {"boom": dep}).app()

    server = serve_app(make)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    try:
        for _ in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
    except openai.APIError:
        pass  # how the connection ends after the bug is not the point here
    deadline = time.monotonic() + 5
    while dep.window.stats().requests == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dep.inflight == 0
    assert dep.window.stats().successes == 1
    # the embedded Gateway (no monitor given) reports the deployment's own window
    report = httpx.get(f"{server.url}/admin/deployments", timeout=5).json()
    assert report["deployments"][0]["window"]["successes"] == 1
