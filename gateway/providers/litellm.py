"""Providers with their own wire format (Anthropic, Bedrock, Vertex, Cohere ...) through litellm.

litellm is imported lazily, when the first :class:`LiteLLMProvider` is constructed: the import
costs seconds and ~200 MB, and a call costs milliseconds of CPU where the OpenAI fast path costs a
fraction of one. Before the import, litellm is told to use its bundled tables (model prices,
Anthropic beta headers) instead of downloading them, and not to read a ``.env`` file; after
it, telemetry, debug output and message logging are switched off. litellm never retries: the
gateway does (``num_retries=0`` and ``max_retries=0`` on every call, and ``DEFAULT_MAX_RETRIES``
set to 0, because litellm's OpenAI embeddings path reads ``max_retries or DEFAULT_MAX_RETRIES``).

1. ``chat/completions`` -> ``litellm.acompletion``. Arguments, later ones winning:
   ``drop_params=True`` (a field the upstream lacks, such as ``seed`` for Anthropic, is dropped
   rather than failing the call), the deployment's ``params``, the OpenAI fields present in the
   body (:data:`CHAT_FIELDS`; other keys are ignored), then what nothing may override: the
   deployment's model, ``api_base``, ``api_key``, ``num_retries=0``, ``max_retries=0`` and the
   attempt's ``timeout`` (also enforced around the whole call). The config refuses ``params``
   that name what the gateway sets per request (``stream``, ``timeout``, ``messages`` ...).
2. ``embeddings`` -> ``litellm.aembedding`` the same way (:data:`EMBEDDING_FIELDS`, ``input``).
3. ``completions`` (legacy) -> :class:`ProviderRejected` 400: this provider serves chat and
   embeddings only (translating prompts to chat would change what the caller asked for).
4. A non-streaming answer becomes an OpenAI ``chat.completion`` (or embeddings list) as JSON
   bytes; ``model`` is the upstream model as the upstream reports it.
5. A stream always asks litellm for usage; each chunk is rendered as an SSE ``data:`` line and
   fed to :class:`~gateway.providers.sse.SSEStream`, which checks events, enforces the
   first-token and idle timeouts and decides whether the stream ended well. The usage lands in
   ``stream.state``; the caller sees the usage chunk only if it asked for it
   (``stream_options.include_usage``). ``aclose()`` closes litellm's stream and the upstream
   response under it.
6. Every litellm exception is translated once, at this boundary
   (:func:`gateway.providers.litellm_errors.translate_error`): before the first
   chunk into its most specific class, after it into :class:`StreamBroken`. Any other
   exception (an answer that cannot be rendered, a litellm bug) becomes
   :class:`BadUpstreamResponse` (or :class:`StreamBroken` mid-stream), and a stream litellm
   opened is closed first: nothing foreign leaves :meth:`LiteLLMProvider.send`. Neither the API
   key nor any string of 8+ characters in ``params`` (a header token, a project key) appears
   in a message.

Probes (:meth:`LiteLLMProvider.probe`): kind ``completion`` only, a one-token chat completion
(``max_tokens=1``, one ``ping`` message) with the deployment's ``params``, or a one-word
embedding for a deployment tagged for embeddings but not chat; bounded by the probe's
``timeout`` alone and translated like a request. litellm has no cheap "list models" call that
works across its providers, so kind ``models`` is a programming error (the config refuses it).

Timeouts: a non-streaming call (chat or embeddings) is limited to
``min(call.timeout, timeouts.response)``; opening a stream and its first chunk share one budget
of ``min(call.timeout, timeouts.first_token)`` (what opening took is taken off the first-chunk
limit); later chunks get ``timeouts.idle`` each.

``timeouts.connect`` is **not** enforced for litellm deployments. litellm is given one number,
the limit above: it passes an :class:`httpx.Timeout` through only for its ``openai``, ``azure``
and ``bedrock`` providers and collapses one to a single number (its ``read`` value) for every
other chat provider, Anthropic included, whose handler then applies that number to connect,
read, write and pool alike (checked against a black-holed port with litellm 1.100). So a
connection that cannot be made costs ``timeouts.response`` (non-streaming) or
``timeouts.first_token`` (streams), or what is left of the request's deadline if that is less,
before the gateway fails over.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import orjson

from gateway.config import LiteLLMDeployment
from gateway.errors import ProviderError, ProviderRejected, ProviderTimeout
from gateway.providers.base import ProviderCall, ProviderResponse, StreamState, Usage
from gateway.providers.litellm_errors import secrets_of, translate_error, unexpected_error
from gateway.providers.sse import SSEStream

# OpenAI request fields passed on to litellm (it maps them to the upstream's own names).
CHAT_FIELDS = (
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "n",
    "parallel_tool_calls",
    "presence_penalty",
    "reasoning_effort",
    "response_format",
    "seed",
    "stop",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
)
EMBEDDING_FIELDS = ("dimensions", "encoding_format", "user")

# Set (unless already set) before the import: litellm reads its bundled tables instead of
# fetching them, and does not load a ``.env`` file (the config interpolates the environment once).
_IMPORT_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_MODE": "PRODUCTION",
}
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
_litellm: ModuleType | None = None
_open_providers = 0


def load_litellm() -> ModuleType:
    """Import litellm once, offline and quiet (see the module docstring)."""
    global _litellm
    if _litellm is None:
        for name, value in _IMPORT_ENV.items():
            os.environ.setdefault(name, value)
        module: Any = importlib.import_module("litellm")
        module.telemetry = False
        module.suppress_debug_info = True
        module.turn_off_message_logging = True
        module.set_verbose = False
        module.DEFAULT_MAX_RETRIES = 0  # read as `max_retries or DEFAULT_MAX_RETRIES` in places
        for name in _LITELLM_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        _litellm = module
    return _litellm


class LiteLLMProvider:
    """A deployment reached through litellm (see the module docstring for the steps)."""

    def __init__(self, deployment: LiteLLMDeployment) -> None:
        global _open_providers
        self.deployment = deployment
        self._name = deployment.name
        self._litellm = load_litellm()
        api_key = deployment.api_key.get_secret_value() if deployment.api_key else ""
        self._secrets = secrets_of(api_key, deployment.params)
        fixed: dict[str, Any] = {"model": deployment.model, "num_retries": 0, "max_retries": 0}
        if deployment.base_url is not None:
            fixed["api_base"] = deployment.base_url
        if api_key:
            fixed["api_key"] = api_key
        self._defaults: dict[str, Any] = {"drop_params": True, **deployment.params}
        self._fixed = fixed
        self._timeouts = deployment.timeouts
        self._closed = False
        _open_providers += 1

    def __repr__(self) -> str:
        return f"LiteLLMProvider(deployment={self._name!r}, model={self.deployment.model!r})"

    async def send(self, call: ProviderCall) -> ProviderResponse | SSEStream:
        try:
            if call.endpoint == "chat/completions":
                return await self._chat(call)
            if call.endpoint == "embeddings":
                return await self._embeddings(call)
        except ProviderError:
            raise
        except Exception as exc:  # a bug on this side of litellm: still never a raw exception
            raise self.unexpected(exc, prefix="litellm provider failed with") from None
        raise ProviderRejected(
            f"deployment `{self._name}` (litellm) serves chat/completions and embeddings, "
            f"not {call.endpoint}",
            upstream_status=400,
            deployment=self._name,
        )

    async def probe(self, kind: str, timeout: float) -> float:  # noqa: ASYNC109
        """A one-token completion (see the module docstring): its latency in seconds, or the
        :class:`ProviderError` a request would have raised for the same failure."""
        if kind != "completion":
            raise ValueError("litellm deployments support probe kind completion or none")
        kwargs = {**self._defaults, **self._fixed, "timeout": timeout}
        embeddings = self.deployment.supports("embeddings") and not self.deployment.supports(
            "chat/completions"
        )
        if embeddings:
            function, kwargs["input"] = self._litellm.aembedding, "ping"
        else:
            function = self._litellm.acompletion
            kwargs["messages"] = [{"role": "user", "content": "ping"}]
            kwargs["max_tokens"] = 1
        started = time.monotonic()
        try:
            await self._render(await self._call(function, kwargs, timeout))
        except ProviderError:
            raise
        except Exception as exc:  # as in send: nothing foreign leaves a probe
            raise self.unexpected(exc, prefix="litellm provider failed with") from None
        return time.monotonic() - started

    def _kwargs(self, call: ProviderCall, fields: tuple[str, ...]) -> dict[str, Any]:
        kwargs = dict(self._defaults)
        body = call.body
        for name in fields:
            if name in body:
                kwargs[name] = body[name]
        kwargs.update(self._fixed)
        kwargs["timeout"] = call.timeout
        return kwargs

    async def _chat(self, call: ProviderCall) -> ProviderResponse | SSEStream:
        kwargs = self._kwargs(call, CHAT_FIELDS)
        kwargs["messages"] = call.body.get("messages")
        wants_usage = False
        if call.stream:
            options = call.body.get("stream_options")
            wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}  # usage always lands in the state
        if not call.stream:
            limit = min(call.timeout, self._timeouts.response)
            kwargs["timeout"] = limit
            return await self._render(await self._call(self._litellm.acompletion, kwargs, limit))
        # Opening the stream comes before its first token: both limits apply.
        started = time.monotonic()
        limit = min(call.timeout, self._timeouts.first_token)
        result = await self._call(self._litellm.acompletion, kwargs, limit)
        left = max(0.0, limit - (time.monotonic() - started))
        try:
            source = _ChunkLines(result, self, wants_usage)
            stream = SSEStream(
                source.readline,
                deployment=self._name,
                first_timeout=left,
                idle_timeout=self._timeouts.idle,
                on_close=source.aclose,
            )
        except Exception as exc:  # not a stream after all: release what litellm opened
            await _close_stream(result)
            raise self.unexpected(exc) from None
        source.state = stream.state
        return stream

    async def _embeddings(self, call: ProviderCall) -> ProviderResponse:
        kwargs = self._kwargs(call, EMBEDDING_FIELDS)
        kwargs["input"] = call.body.get("input")
        limit = min(call.timeout, self._timeouts.response)
        kwargs["timeout"] = limit
        return await self._render(await self._call(self._litellm.aembedding, kwargs, limit))

    async def _render(self, result: Any) -> ProviderResponse:
        try:
            return _response(result)
        except Exception as exc:  # e.g. a stream where an answer was expected: release it
            await _close_stream(result)
            raise self.unexpected(exc) from None

    async def _call(self, function: Any, kwargs: dict[str, Any], limit: float) -> Any:
        try:
            async with asyncio.timeout(limit):
                return await function(**kwargs)
        except TimeoutError:
            raise ProviderTimeout(f"no response within {limit:g}s", deployment=self._name) from None
        except Exception as exc:
            raise self.translate(exc) from None

    def translate(self, exc: BaseException, *, after_chunks: int = 0) -> ProviderError:
        """This deployment's view of a litellm exception (see :func:`translate_error`)."""
        return translate_error(
            exc, deployment=self._name, secrets=self._secrets, after_chunks=after_chunks
        )

    def unexpected(
        self,
        exc: BaseException,
        *,
        after_chunks: int = 0,
        prefix: str = "cannot render litellm's answer:",
    ) -> ProviderError:
        """An answer from litellm that cannot be rendered (see :func:`unexpected_error`)."""
        return unexpected_error(
            exc,
            deployment=self._name,
            secrets=self._secrets,
            after_chunks=after_chunks,
            prefix=prefix,
        )

    async def close(self) -> None:
        """Close litellm's pooled HTTP clients once the last litellm provider is closed.

        litellm keeps one client pool per provider kind and event loop, shared by every
        deployment; closing it while another litellm provider is open would cut its requests.
        """
        global _open_providers
        if self._closed:
            return
        self._closed = True
        _open_providers -= 1
        if _open_providers == 0:
            await self._litellm.close_litellm_async_clients()


class _ChunkLines:
    """litellm's chunk iterator as SSE lines (``data: {json}`` then a blank line) for SSEStream.

    When the caller did not ask for usage, the usage litellm reports is written to the stream's
    state and removed from what the caller sees.
    """

    __slots__ = ("_blank", "_iterator", "_provider", "_stream", "_wants_usage", "state")

    def __init__(self, stream: Any, provider: LiteLLMProvider, wants_usage: bool) -> None:
        self._stream = stream
        self._iterator: AsyncIterator[Any] = stream.__aiter__()
        self._provider = provider
        self._wants_usage = wants_usage
        self._blank = False
        self.state = StreamState()

    async def readline(self) -> bytes:
        if self._blank:
            self._blank = False
            return b"\n"
        while True:
            try:
                chunk = await self._iterator.__anext__()
            except StopAsyncIteration:
                return b""
            except Exception as exc:
                raise self._provider.translate(exc, after_chunks=self.state.chunks) from None
            try:
                data = _dump(chunk)
            except Exception as exc:
                raise self._provider.unexpected(exc, after_chunks=self.state.chunks) from None
            if not self._wants_usage and data.get("usage"):
                self.state.usage = Usage.from_openai(data.pop("usage"))
                if not _carries_content(data):
                    continue
            self._blank = True
            return b"data: " + orjson.dumps(data, default=str) + b"\n"

    async def aclose(self) -> None:
        await _close_stream(self._stream)


async def _close_stream(stream: Any) -> None:
    """Release a litellm stream and the upstream response under it; anything without
    ``aclose`` is left alone.

    litellm's own ``aclose`` closes its line generator (``response.aiter_lines()``), which
    releases the HTTP response only if iteration had started: a stream closed before its first
    chunk would keep its connection until the GC. So the httpx response is also closed
    directly, found as the ``self`` of that generator's frame.
    """
    lines = getattr(getattr(stream, "completion_stream", None), "streaming_response", None)
    frame = getattr(lines, "ag_frame", None)  # None once the generator has finished
    response = frame.f_locals.get("self") if frame is not None else None
    if not hasattr(response, "is_closed"):  # not an httpx response: leave it alone
        response = None
    for target in (lines, stream, response):
        close = getattr(target, "aclose", None)
        if close is None:
            continue
        with contextlib.suppress(Exception):  # cleanup of a stream that may have failed
            await close()


def _dump(obj: Any) -> dict[str, Any]:
    """An OpenAI-shaped dict of a litellm response object, without litellm's empty extras."""
    data: dict[str, Any] = obj.model_dump(exclude_none=True)
    choices = data.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            choice.setdefault("finish_reason", None)
            for key in ("message", "delta"):
                part = choice.get(key)
                if isinstance(part, dict) and "provider_specific_fields" in part:
                    extras = part["provider_specific_fields"]
                    if not extras or (
                        isinstance(extras, dict) and all(v is None for v in extras.values())
                    ):
                        del part["provider_specific_fields"]
            message = choice.get("message")
            if isinstance(message, dict):
                message.setdefault("content", None)
    return data


def _carries_content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason") or choice.get("delta"):
            return True
    return False


def _response(result: Any) -> ProviderResponse:
    data = _dump(result)
    return ProviderResponse(
        body=orjson.dumps(data, default=str), usage=Usage.from_openai(data.get("usage"))
    )
