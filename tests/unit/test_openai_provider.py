"""The OpenAI-compatible provider's boundary: foreign exceptions map to one class each."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.http_exceptions import LineTooLong
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config import OpenAIDeployment
from gateway.errors import (
    BadUpstreamResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    ProviderUnreachable,
)
from gateway.providers.openai import OpenAIProvider

DEPLOYMENT = OpenAIDeployment.model_validate(
    {
        "name": "d",
        "provider": "openai",
        "model": "m",
        "base_url": "http://127.0.0.1:1/v1",
        "api_key": "sk-unit-secret",
        "query_params": {"key": "q-secret"},
        "timeouts": {"connect": "2s"},
    }
)


def _translate(exc: Exception) -> ProviderError:
    async def run() -> ProviderError:
        async with aiohttp.ClientSession() as session:
            return OpenAIProvider(DEPLOYMENT, session)._translate(exc, "no answer within 9s")

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("exc", "cls", "fragment"),
    [
        (aiohttp.ConnectionTimeoutError("connect timed out"), ProviderUnreachable, "within 2s"),
        (TimeoutError(), ProviderTimeout, "no answer within 9s"),
        (aiohttp.ClientPayloadError("cut"), BadUpstreamResponse, "before the body was complete"),
        (LineTooLong(b"x", "10"), BadUpstreamResponse, "malformed HTTP response"),
        (aiohttp.ServerDisconnectedError(), ProviderConnectionError, "before answering"),
        (ConnectionResetError(104, "Connection reset by peer"), ProviderConnectionError, "reset"),
        (RuntimeError("surprise"), BadUpstreamResponse, "unexpected RuntimeError"),
    ],
)
def test_foreign_exceptions_map_to_one_class_each(
    exc: Exception, cls: type[ProviderError], fragment: str
) -> None:
    """Each exception from the HTTP client becomes the class the executor routes on."""
    err = _translate(exc)
    assert type(err) is cls
    assert fragment in err.message
    assert err.deployment == "d"


def test_messages_never_quote_the_url_or_its_secrets() -> None:
    """aiohttp's own text can contain the URL (with its query); ours never does."""
    url = URL("http://127.0.0.1:1/v1/chat/completions?key=q-secret")
    info: Any = aiohttp.RequestInfo(url, "POST", CIMultiDictProxy(CIMultiDict()), url)
    err = _translate(aiohttp.ClientResponseError(info, (), status=400, message="Bad status line"))
    assert type(err) is BadUpstreamResponse
    assert "q-secret" not in err.message and "127.0.0.1" not in err.message


def test_repr_names_the_deployment_but_no_secret() -> None:
    """A provider's repr is safe to log."""

    async def run() -> str:
        async with aiohttp.ClientSession() as session:
            return repr(OpenAIProvider(DEPLOYMENT, session))

    text = asyncio.run(run())
    assert "'d'" in text
    assert "sk-unit-secret" not in text and "q-secret" not in text
