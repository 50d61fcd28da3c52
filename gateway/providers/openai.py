"""The fast path: any upstream that speaks the OpenAI dialect.

OpenAI, Azure-style base URLs (``api_key_header: api-key`` plus ``query_params``), Groq, Together,
vLLM, Ollama or another gateway. One pooled aiohttp session serves every deployment; the request
body goes upstream exactly as received unless the upstream model name differs from the one the
caller used, in which case only ``model`` is replaced. The request's ``x-request-id`` goes
upstream too, so one id follows a request through both logs. SSE is relayed event by event
through :class:`~gateway.providers.sse.SSEStream`.

Foreign exceptions (aiohttp, asyncio) are translated here into the gateway's error tree.

Active probes (:meth:`OpenAIProvider.probe`) use the same session, headers, query parameters and
error translation as requests:

1. ``models``: ``GET {base_url}/models``; it passes on a 2xx whose body is a JSON object.
2. ``completion``: ``POST chat/completions`` with ``max_tokens: 1`` and one ``ping`` message, or
   ``POST embeddings`` with ``input: "ping"`` for a deployment tagged for embeddings but not
   chat; it passes on a 2xx that a request would accept (a ``choices`` / ``data`` list).
3. The whole probe, connection included, is bounded by its ``timeout``; the connection alone
   also by ``timeouts.connect``. The latency returned is the wall time of the whole exchange.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from gateway.config import OpenAIDeployment
from gateway.errors import (
    BadUpstreamResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    ProviderUnreachable,
    error_for_status,
    parse_retry_after,
)
from gateway.providers.base import ProviderCall, ProviderResponse, Usage
from gateway.providers.sse import SSEStream

_ERROR_BODY_LIMIT = 64 * 1024
_PUSH_BACK = frozenset({429, 503, 529})


class OpenAIProvider:
    """A deployment reached over HTTP in the OpenAI dialect."""

    def __init__(self, deployment: OpenAIDeployment, session: aiohttp.ClientSession) -> None:
        self.deployment = deployment
        self._session = session
        self._name = deployment.name
        base = deployment.base_url.rstrip("/")
        query = {k: v.get_secret_value() for k, v in deployment.query_params.items()} or None
        self._urls = {
            ep: URL(f"{base}/{ep}").update_query(query)
            for ep in ("chat/completions", "completions", "embeddings")
        }
        self._models_url = URL(f"{base}/models").update_query(query)
        # identity: bodies are relayed as the bytes received, so they must not come compressed
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        for key, value in deployment.headers.items():
            headers[key] = value.get_secret_value()
        if deployment.api_key is not None:
            secret = deployment.api_key.get_secret_value()
            if deployment.api_key_header == "api-key":
                headers["api-key"] = secret
            else:
                headers["Authorization"] = f"Bearer {secret}"
        self._secrets = [v for v in _secret_values(deployment) if v]
        self._headers = headers
        self._stream_headers = {**headers, "Accept": "text/event-stream"}
        self._get_headers = {k: v for k, v in headers.items() if k != "Content-Type"}
        self._probe_endpoint = _probe_endpoint(deployment)
        self._probe_payload = _probe_payload(self._probe_endpoint, deployment.model)
        t = deployment.timeouts
        self._connect_timeout = t.connect
        self._client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect)
        self._first_token_timeout = t.first_token
        self._response_timeout = t.response
        self._idle_timeout = t.idle

    def __repr__(self) -> str:
        return f"OpenAIProvider(deployment={self._name!r}, base_url={self.deployment.base_url!r})"

    def _payload(self, call: ProviderCall) -> bytes:
        upstream_model = self.deployment.model
        if call.body.get("model") == upstream_model:
            return call.raw
        return orjson.dumps({**call.body, "model": upstream_model})

    async def send(self, call: ProviderCall) -> ProviderResponse | SSEStream:
        timeout = self._client_timeout
        if call.timeout < self._connect_timeout:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=call.timeout)
        limit = min(
            call.timeout, self._first_token_timeout if call.stream else self._response_timeout
        )
        resp: aiohttp.ClientResponse | None = None
        loop = asyncio.get_running_loop()
        first_token_deadline = loop.time() + limit
        try:
            async with asyncio.timeout(limit):
                resp = await self._session.post(
                    self._urls[call.endpoint],
                    data=self._payload(call),
                    headers={
                        **(self._stream_headers if call.stream else self._headers),
                        "x-request-id": call.request_id,
                    },
                    timeout=timeout,
                )
                if resp.status >= 300:
                    raise await self._error(resp)
                if not call.stream:
                    body = await resp.read()
                    resp.release()
                    return self._complete(call.endpoint, body)
        except ProviderError:
            if resp is not None:
                resp.release()
            raise
        except Exception as exc:  # translated once, here; cancellation passes through
            if resp is not None:
                resp.close()
            what = "a response" if not call.stream else "the stream to start"
            raise self._translate(exc, f"no {what} within {limit:g}s") from None
        return self._stream(resp, max(first_token_deadline - loop.time(), 0.0))

    async def probe(self, kind: str, timeout: float) -> float:  # noqa: ASYNC109
        """One cheap request (see the module docstring): its latency in seconds, or the
        :class:`ProviderError` a request would have raised for the same failure."""
        if kind == "models":
            endpoint, url, data, headers = "models", self._models_url, None, self._get_headers
        elif kind == "completion":
            endpoint, data, headers = self._probe_endpoint, self._probe_payload, self._headers
            url = self._urls[endpoint]
        else:
            raise ValueError(f"unknown probe kind {kind!r} (expected models or completion)")
        client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(timeout, self._connect_timeout)
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(timeout):
                resp = await self._session.request(
                    "GET" if data is None else "POST",
                    url,
                    data=data,
                    headers=headers,
                    timeout=client_timeout,
                )
                if resp.status >= 300:
                    raise await self._error(resp)
                raw = await resp.read()
                resp.release()
        except ProviderError:
            if resp is not None:
                resp.release()
            raise
        except Exception as exc:  # translated once, here; cancellation passes through
            if resp is not None:
                resp.close()
            raise self._translate(exc, f"probe got no answer within {timeout:g}s") from None
        elapsed = loop.time() - started
        if endpoint == "models":
            self._check_models(raw)
        else:
            self._complete(endpoint, raw)
        return elapsed

    def _json_object(self, body: bytes, answered: str) -> dict[str, Any]:
        """``body`` as a JSON object, or BadUpstreamResponse saying what it was instead."""
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadUpstreamResponse(
                f"upstream answered {answered} with a body that is not JSON ({len(body)} bytes)",
                deployment=self._name,
            ) from None
        if not isinstance(parsed, dict):
            raise BadUpstreamResponse(
                f"upstream answered {answered} with JSON that is not an object",
                deployment=self._name,
            )
        return parsed

    def _check_models(self, body: bytes) -> None:
        """A models listing must be a JSON object (an error object in it counts as an error)."""
        parsed = self._json_object(body, "/models")
        if "error" in parsed and not isinstance(parsed.get("data"), list):
            raise self._error_from_body(200, parsed, None)

    def _translate(self, exc: Exception, timeout_message: str) -> ProviderError:
        """A foreign exception from sending or reading as the gateway's error class."""
        name = self._name
        if isinstance(exc, aiohttp.ConnectionTimeoutError):  # before TimeoutError: a subclass
            return ProviderUnreachable(
                f"no connection within {self._connect_timeout:g}s (timeouts.connect)",
                deployment=name,
            )
        if isinstance(exc, TimeoutError):
            return ProviderTimeout(timeout_message, deployment=name)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ProviderUnreachable(f"cannot reach upstream: {_describe(exc)}", deployment=name)
        if isinstance(exc, aiohttp.ClientPayloadError):
            return BadUpstreamResponse(
                "upstream closed the connection before the body was complete", deployment=name
            )
        if isinstance(exc, aiohttp.ClientResponseError | HttpProcessingError | ValueError):
            return BadUpstreamResponse(
                f"upstream sent a malformed HTTP response ({type(exc).__name__})", deployment=name
            )
        if isinstance(exc, aiohttp.ClientError | OSError):
            return ProviderConnectionError(
                f"connection to upstream lost before an answer: {_describe(exc)}", deployment=name
            )
        return BadUpstreamResponse(
            f"unexpected {type(exc).__name__} while talking to the upstream", deployment=name
        )

    def _complete(self, endpoint: str, body: bytes) -> ProviderResponse:
        parsed = self._json_object(body, "200")
        key = "data" if endpoint == "embeddings" else "choices"
        if not isinstance(parsed.get(key), list):
            if "error" in parsed:
                raise self._error_from_body(200, parsed, None)
            raise BadUpstreamResponse(
                f"upstream answered 200 without a `{key}` list", deployment=self._name
            )
        return ProviderResponse(body=body, usage=Usage.from_openai(parsed.get("usage")))

    def _stream(self, resp: aiohttp.ClientResponse, first_timeout: float) -> SSEStream:
        """The response as an SSE stream; the first event must come within what is left of the
        first-token limit (the wait for the headers already used part of it)."""
        content_type = resp.headers.get("Content-Type", "")
        if not content_type.startswith("text/event-stream"):
            resp.close()
            raise BadUpstreamResponse(
                f"asked for a stream, upstream answered with content type {content_type!r}",
                deployment=self._name,
            )
        return SSEStream(
            resp.content.readline,
            deployment=self._name,
            first_timeout=first_timeout,
            idle_timeout=self._idle_timeout,
            on_close=resp.close,
        )

    async def _error(self, resp: aiohttp.ClientResponse) -> ProviderError:
        # A pause counts only where HTTP means "come back later" (429, 503, Anthropic's 529):
        # OpenAI sends x-ratelimit-reset-* on every answer, a 500 included.
        retry_after = parse_retry_after(resp.headers) if resp.status in _PUSH_BACK else None
        try:
            raw = await resp.content.read(_ERROR_BODY_LIMIT)
        except (aiohttp.ClientError, OSError, HttpProcessingError, ValueError):
            raw = b""
        try:
            parsed: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return self._error_from_body(resp.status, parsed, retry_after)
        text = raw[:200].decode("utf-8", "replace").strip() or resp.reason or "no body"
        return error_for_status(
            resp.status,
            self._redact(f"upstream {resp.status}: {text}"),
            deployment=self._name,
            retry_after=retry_after,
        )

    def _error_from_body(
        self, status: int, parsed: dict[str, Any], retry_after: float | None
    ) -> ProviderError:
        """The provider's own error object (``{"error": {...}}``) with its message and code."""
        if status == 200:
            status = 502  # an error object in a 200: a server-side failure
        error = parsed.get("error")
        code = param = None
        if isinstance(error, dict):
            message = str(error.get("message") or f"upstream error {status}")
            code = error.get("code")
            param = error.get("param")
        else:
            message = str(error or parsed.get("message") or f"upstream error {status}")
        return error_for_status(
            status,
            self._redact(message),
            deployment=self._name,
            retry_after=retry_after,
            code=str(code) if code is not None else None,
            param=str(param) if param is not None else None,
        )

    def _redact(self, text: str) -> str:
        """Upstreams sometimes echo a key back; no configured secret reaches the caller."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    async def close(self) -> None:
        """The shared session is closed by its owner."""


def _probe_endpoint(deployment: OpenAIDeployment) -> str:
    """Where a completion probe goes: embeddings for an embeddings-only deployment, else chat."""
    if deployment.supports("embeddings") and not deployment.supports("chat/completions"):
        return "embeddings"
    return "chat/completions"


def _probe_payload(endpoint: str, model: str) -> bytes:
    """The smallest request a real upstream answers: one word in, at most one token out."""
    if endpoint == "embeddings":
        return orjson.dumps({"model": model, "input": "ping"})
    return orjson.dumps(
        {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    )


def _secret_values(deployment: OpenAIDeployment) -> list[str]:
    values = [v.get_secret_value() for v in deployment.headers.values()]
    values += [v.get_secret_value() for v in deployment.query_params.values()]
    if deployment.api_key is not None:
        values.append(deployment.api_key.get_secret_value())
    return values


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return (
            f"connection to {exc.host}:{exc.port} failed ({exc.os_error.strerror or exc.os_error})"
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection before answering"
    # Only the class and the OS error: aiohttp's own text can quote the URL with its query.
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__
