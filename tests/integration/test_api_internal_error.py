"""A bug inside the gateway still gives the caller a JSON error with the request id."""

from __future__ import annotations

from typing import Any

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
