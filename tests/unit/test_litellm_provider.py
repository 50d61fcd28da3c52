"""LiteLLMProvider without sockets: request building, rendering and the exception mapping.

litellm is really imported here (once, a few seconds) so that the mapping is tested against its
real exception classes; ``acompletion`` / ``aembedding`` are replaced by recorders.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

import gateway.providers.litellm as litellm_provider
from gateway.config import LiteLLMDeployment, Timeouts
from gateway.errors import (
    BadUpstreamResponse,
    ContextLengthExceeded,
    ProviderConnectionError,
    ProviderError,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUnreachable,
    RateLimited,
    StreamBroken,
)
from gateway.providers.base import ProviderCall, ProviderResponse
from gateway.providers.litellm import LiteLLMProvider, load_litellm, translate_error
from gateway.providers.litellm_errors import secrets_of
from gateway.providers.sse import SSEStream

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-ant-unit-secret-42"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def litellm() -> ModuleType:
    return load_litellm()


@pytest.fixture
def make_provider(litellm: ModuleType) -> Iterator[Callable[..., LiteLLMProvider]]:
    """Factory: providers built from deployment overrides; all closed at the end."""
    made: list[LiteLLMProvider] = []

    def make(**overrides: Any) -> LiteLLMProvider:
        fields: dict[str, Any] = {
            "name": "claude",
            "provider": "litellm",
            "model": "anthropic/claude-3-5-haiku-20241022",
            "base_url": "http://127.0.0.1:9",
            "api_key": SECRET,
            **overrides,
        }
        provider = LiteLLMProvider(LiteLLMDeployment(**fields))
        made.append(provider)
        return provider

    yield make

    async def close_all() -> None:
        for provider in made:
            await provider.close()

    asyncio.run(close_all())


def _answer(litellm: ModuleType) -> Any:
    return litellm.ModelResponse(
        id="chatcmpl-1",
        model="claude-3-5-haiku-20241022",
        choices=[
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}
        ],
        usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    )


def _record(
    litellm: ModuleType, monkeypatch: pytest.MonkeyPatch, name: str, answer: Any
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    async def fake(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return answer

    monkeypatch.setattr(litellm, name, fake)
    return seen


def _call(endpoint: str = "chat/completions", stream: bool = False, **body: Any) -> ProviderCall:
    payload = {"model": "claude", "messages": USER, **body}
    return ProviderCall(endpoint, payload, orjson.dumps(payload), stream, "req-1", 7.5)


# --- import isolation --------------------------------------------------------------------------


def test_importing_the_gateway_does_not_import_litellm() -> None:
    """``gateway.providers.litellm`` and ``gateway.config`` load without importing litellm."""
    code = (
        "import sys, gateway.config, gateway.providers.base, gateway.providers.litellm; "
        "print('litellm' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_litellm_is_loaded_offline_and_quiet(litellm: ModuleType) -> None:
    """After the lazy import: no telemetry, no debug output, bundled tables, no ``.env``."""
    assert litellm.telemetry is False
    assert litellm.suppress_debug_info is True
    assert litellm.turn_off_message_logging is True
    assert litellm.DEFAULT_MAX_RETRIES == 0  # its OpenAI embeddings path reads `0 or DEFAULT`
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"].lower() == "true"
    assert os.environ["LITELLM_MODE"] != "DEV"  # DEV makes litellm load a .env file
    assert load_litellm() is litellm


# --- request building --------------------------------------------------------------------------


def test_chat_call_passes_openai_fields_and_never_lets_litellm_retry(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """acompletion gets the deployment's model/key/base, OpenAI fields, no retries, no extras."""
    seen = _record(litellm, monkeypatch, "acompletion", _answer(litellm))
    provider = make_provider(params={"vertex_project": "p", "temperature": 0})
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    call = _call(temperature=0.5, tools=tools, max_tokens=9, custom_thing=1, model="alias")
    asyncio.run(provider.send(call))
    kwargs = seen[0]
    assert kwargs["model"] == "anthropic/claude-3-5-haiku-20241022"
    assert kwargs["messages"] == USER
    assert kwargs["api_base"] == "http://127.0.0.1:9"
    assert kwargs["api_key"] == SECRET
    assert (kwargs["num_retries"], kwargs["max_retries"]) == (0, 0)
    assert kwargs["timeout"] == 7.5
    assert kwargs["drop_params"] is True
    assert kwargs["vertex_project"] == "p"
    assert kwargs["temperature"] == 0.5  # the request wins over a deployment default
    assert kwargs["tools"] == tools and kwargs["max_tokens"] == 9
    assert "custom_thing" not in kwargs and "stream" not in kwargs


def test_deployment_without_key_or_base_url_lets_litellm_use_its_defaults(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No ``api_key`` / ``base_url`` configured: neither is sent (litellm reads its env vars)."""
    seen = _record(litellm, monkeypatch, "acompletion", _answer(litellm))
    provider = make_provider(api_key=None, base_url=None)
    asyncio.run(provider.send(_call()))
    assert "api_key" not in seen[0] and "api_base" not in seen[0]


def test_non_stream_answer_is_rendered_as_openai_json(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The litellm ModelResponse becomes chat.completion JSON without litellm's empty extras."""
    _record(litellm, monkeypatch, "acompletion", _answer(litellm))
    result = asyncio.run(make_provider().send(_call()))
    assert isinstance(result, ProviderResponse)
    body = orjson.loads(result.body)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (3, 1)


def test_embeddings_call_aembedding_with_input_and_its_fields(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``embeddings`` -> aembedding(input, dimensions ...), rendered as an OpenAI list."""
    answer = litellm.EmbeddingResponse(
        model="embed-1",
        data=[{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
        usage=litellm.Usage(prompt_tokens=2, total_tokens=2),
    )
    seen = _record(litellm, monkeypatch, "aembedding", answer)
    provider = make_provider(model="cohere/embed-english-v3.0")
    result = asyncio.run(
        provider.send(_call("embeddings", input=["a"], dimensions=2, temperature=1))
    )
    assert isinstance(result, ProviderResponse)
    assert seen[0]["input"] == ["a"] and seen[0]["dimensions"] == 2
    assert seen[0]["model"] == "cohere/embed-english-v3.0"
    assert "temperature" not in seen[0] and "messages" not in seen[0]
    body = orjson.loads(result.body)
    assert body["data"][0]["embedding"] == [0.5, 0.25]
    assert result.usage is not None and result.usage.prompt_tokens == 2


def test_legacy_completions_endpoint_is_rejected_without_calling_litellm(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``completions`` raises ProviderRejected 400 naming what the provider does serve."""
    seen = _record(litellm, monkeypatch, "acompletion", _answer(litellm))
    with pytest.raises(ProviderRejected, match="serves chat/completions and embeddings") as caught:
        asyncio.run(make_provider().send(_call("completions", prompt="x")))
    assert caught.value.status == 400 and caught.value.deployment == "claude"
    assert seen == []


def test_slow_litellm_call_is_a_provider_timeout(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attempt's timeout is enforced around litellm too (its own timeouts are per phase)."""

    async def slow(**kwargs: Any) -> Any:
        await asyncio.sleep(5)

    monkeypatch.setattr(litellm, "acompletion", slow)
    call = ProviderCall("chat/completions", {"messages": USER}, b"", False, "r", 0.05)
    with pytest.raises(ProviderTimeout, match=r"within 0\.05s"):
        asyncio.run(make_provider().send(call))


def _slow(seconds: float) -> Callable[..., Any]:
    async def slow(**kwargs: Any) -> Any:
        await asyncio.sleep(seconds)

    return slow


async def _timed_error(
    provider: LiteLLMProvider, call: ProviderCall
) -> tuple[ProviderError, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProviderError) as caught:
        await provider.send(call)
    return caught.value, loop.time() - started


@pytest.mark.parametrize(
    ("endpoint", "function"),
    [("chat/completions", "acompletion"), ("embeddings", "aembedding")],
    ids=["chat", "embeddings"],
)
def test_timeouts_response_limits_a_non_streaming_call_below_the_attempt_timeout(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    function: str,
) -> None:
    """An answer slower than ``timeouts.response`` but within call.timeout: ProviderTimeout
    after ~response, and litellm was told the same limit."""
    seen: list[float] = []

    async def slow(**kwargs: Any) -> Any:
        seen.append(kwargs["timeout"])
        await asyncio.sleep(5)

    monkeypatch.setattr(litellm, function, slow)
    provider = make_provider(timeouts=Timeouts(response=0.05))
    call = _call(endpoint, input=["a"])
    error, elapsed = asyncio.run(_timed_error(provider, call))
    assert type(error) is ProviderTimeout
    assert "within 0.05s" in error.message
    assert 0.05 <= elapsed < 1.0
    assert seen == [0.05]


class _Chunks:
    """A stand-in for litellm's stream: chunks after a delay each; records ``aclose``."""

    def __init__(self, chunks: list[Any], delay: float = 0.0) -> None:
        self._chunks = list(chunks)
        self._delay = delay
        self.closed = False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(self._delay)
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)

    async def aclose(self) -> None:
        self.closed = True


def _chunk(litellm: ModuleType, text: str) -> Any:
    return litellm.ModelResponseStream(
        id="c1",
        model="claude",
        choices=[{"index": 0, "delta": {"role": "assistant", "content": text}}],
    )


def test_stream_opening_time_is_taken_off_the_first_chunk_limit(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Opening (0.2s) and the first chunk (0.2s) each fit in ``timeouts.first_token`` (0.3s)
    but together do not: ProviderTimeout at ~0.3s, and the stream litellm opened is closed."""
    chunks = _Chunks([_chunk(litellm, "hi")], delay=0.2)

    async def opening(**kwargs: Any) -> Any:
        await asyncio.sleep(0.2)
        return chunks

    monkeypatch.setattr(litellm, "acompletion", opening)
    provider = make_provider(timeouts=Timeouts(first_token=0.3))

    async def run() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream = await provider.send(_call(stream=True))
        assert isinstance(stream, SSEStream)
        with pytest.raises(ProviderTimeout, match="first token"):
            async for _ in stream:
                pass
        return loop.time() - started

    elapsed = asyncio.run(run())
    assert 0.3 <= elapsed < 1.0
    assert chunks.closed


def test_an_answer_that_cannot_be_rendered_is_bad_upstream_response(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A non-streaming call that gets something other than a response (here a stream) raises
    BadUpstreamResponse, not a raw AttributeError, and the stream is closed."""
    chunks = _Chunks([_chunk(litellm, "hi")])
    _record(litellm, monkeypatch, "acompletion", chunks)
    with pytest.raises(BadUpstreamResponse, match="cannot render litellm's answer: Attribute"):
        asyncio.run(make_provider().send(_call()))
    assert chunks.closed


def test_a_stream_that_is_not_iterable_is_closed_and_bad_upstream_response(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A streaming call that gets something that cannot be iterated: BadUpstreamResponse, and
    what litellm opened is closed."""

    class NotAStream:
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    answer = NotAStream()
    _record(litellm, monkeypatch, "acompletion", answer)
    with pytest.raises(BadUpstreamResponse, match="cannot render"):
        asyncio.run(make_provider().send(_call(stream=True)))
    assert answer.closed


def test_a_chunk_that_cannot_be_rendered_breaks_the_stream(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chunk that is not a litellm object after a good one: StreamBroken (not a raw error),
    and the stream is closed."""
    chunks = _Chunks([_chunk(litellm, "hi"), object()])
    _record(litellm, monkeypatch, "acompletion", chunks)

    async def run() -> list[bytes]:
        stream = await make_provider().send(_call(stream=True))
        assert isinstance(stream, SSEStream)
        seen: list[bytes] = []
        with pytest.raises(StreamBroken, match="after 1 chunks: cannot render"):
            async for event in stream:
                seen.append(event)
        return seen

    assert len(asyncio.run(run())) == 1
    assert chunks.closed


def test_any_exception_from_litellm_leaves_as_a_gateway_error(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A non-litellm exception raised inside litellm is BadUpstreamResponse naming its type."""

    async def broken(**kwargs: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'choices'")

    monkeypatch.setattr(litellm, "acompletion", broken)
    with pytest.raises(BadUpstreamResponse, match="litellm raised AttributeError"):
        asyncio.run(make_provider().send(_call()))


def test_a_failure_on_this_side_of_litellm_is_still_a_gateway_error(
    make_provider: Callable[..., LiteLLMProvider],
) -> None:
    """Even a bug before litellm is called (here a body that is not a mapping) leaves send()
    as BadUpstreamResponse, never as a raw exception."""
    body: Any = ["not", "a", "mapping"]
    call = ProviderCall("chat/completions", body, b"[]", False, "r", 5.0)
    with pytest.raises(BadUpstreamResponse, match="litellm provider failed with AttributeError"):
        asyncio.run(make_provider().send(call))


def test_reserved_params_are_refused_before_a_provider_exists() -> None:
    """``params: {stream: true}`` would turn every answer into a stream: the config refuses it."""
    with pytest.raises(ValidationError, match="`stream` is set by the gateway per request"):
        LiteLLMDeployment(name="c", provider="litellm", model="m", params={"stream": True})


def test_repr_names_the_deployment_and_hides_the_key(
    make_provider: Callable[..., LiteLLMProvider],
) -> None:
    """repr() is useful in logs and never contains the key."""
    text = repr(make_provider())
    assert "claude" in text and SECRET not in text


def test_litellm_clients_close_when_the_last_provider_closes(
    litellm: ModuleType,
    make_provider: Callable[..., LiteLLMProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """litellm's shared client pools close once, after the last open litellm provider."""
    closed: list[int] = []

    async def close_clients() -> None:
        closed.append(1)

    monkeypatch.setattr(litellm, "close_litellm_async_clients", close_clients)
    monkeypatch.setattr(litellm_provider, "_open_providers", 0)
    first, second = make_provider(), make_provider(name="other")
    asyncio.run(first.close())
    assert closed == []
    asyncio.run(second.close())
    asyncio.run(second.close())
    assert closed == [1]


# --- exception mapping --------------------------------------------------------------------------


def _response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("POST", "http://up"))


def _anthropic(kind: str, message: str) -> str:
    """litellm's message for an Anthropic error: the upstream JSON body, quoted."""
    return "AnthropicException - " + json.dumps(
        {"type": "error", "error": {"type": kind, "message": message}}
    )


CASES: list[tuple[str, Callable[[Any], BaseException], type[ProviderError], int | None]] = [
    (
        "rate-limit",
        lambda m: m.RateLimitError(
            _anthropic("rate_limit_error", "slow down"),
            "anthropic",
            "m",
            response=_response(429, {"retry-after": "3"}),
        ),
        RateLimited,
        429,
    ),
    (
        "context-window",
        lambda m: m.ContextWindowExceededError("prompt is too long", "m", "anthropic"),
        ContextLengthExceeded,
        400,
    ),
    (
        "content-policy",
        lambda m: m.ContentPolicyViolationError("unsafe", "m", "anthropic"),
        ProviderRejected,
        400,
    ),
    (
        "bad-request",
        lambda m: m.BadRequestError(_anthropic("invalid_request_error", "bad"), "m", "anthropic"),
        ProviderRejected,
        400,
    ),
    (
        "auth",
        lambda m: m.AuthenticationError("invalid x-api-key", "anthropic", "m"),
        ProviderMisconfigured,
        401,
    ),
    (
        "permission",
        lambda m: m.PermissionDeniedError("no", "anthropic", "m", response=_response(403)),
        ProviderMisconfigured,
        403,
    ),
    (
        "not-found",
        lambda m: m.NotFoundError("no model", "m", "anthropic"),
        ProviderMisconfigured,
        404,
    ),
    (
        "unavailable",
        lambda m: m.ServiceUnavailableError("down", "anthropic", "m"),
        ProviderUnavailable,
        503,
    ),
    (
        "internal",
        lambda m: m.InternalServerError("oops", "anthropic", "m"),
        ProviderServerError,
        500,
    ),
    ("bad-gateway", lambda m: m.BadGatewayError("bad", "anthropic", "m"), ProviderServerError, 502),
    ("api-error-504", lambda m: m.APIError(504, "late", "anthropic", "m"), ProviderTimeout, 504),
    ("timeout", lambda m: m.Timeout("timed out", "m", "anthropic"), ProviderTimeout, None),
    (
        "connection",
        lambda m: m.APIConnectionError("reset by peer", "anthropic", "m"),
        ProviderConnectionError,
        None,
    ),
    (
        "mid-stream-fallback",
        lambda m: m.exceptions.MidStreamFallbackError(
            "fallback",
            "m",
            "anthropic",
            original_exception=m.ServiceUnavailableError("down", "anthropic", "m"),
        ),
        ProviderUnavailable,
        503,
    ),
    ("unexpected", lambda m: ValueError("weird"), BadUpstreamResponse, None),
]


@pytest.mark.parametrize(
    ("make", "expected", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_litellm_exceptions_map_to_the_most_specific_gateway_class(
    litellm: ModuleType,
    make: Callable[[Any], BaseException],
    expected: type[ProviderError],
    status: int | None,
) -> None:
    """Each litellm exception type becomes the gateway class the executor routes on."""
    error = translate_error(make(litellm), deployment="claude", secrets=[SECRET])
    assert type(error) is expected
    assert error.upstream_status == status
    assert error.deployment == "claude"
    assert error.message


def test_rate_limit_keeps_the_retry_after_and_the_provider_message(litellm: ModuleType) -> None:
    """The upstream's Retry-After and its own message survive the translation."""
    exc = litellm.RateLimitError(
        _anthropic("rate_limit_error", "slow down"),
        "anthropic",
        "m",
        response=_response(429, {"Retry-After": "3"}),
    )
    error = translate_error(exc, deployment="claude")
    assert isinstance(error, RateLimited)
    assert error.retry_after == 3.0
    assert error.message == "slow down"
    assert error.headers() == {"retry-after": "3"}


def test_content_policy_violation_carries_its_code(litellm: ModuleType) -> None:
    """A content-policy refusal is don't-retry with code content_policy_violation."""
    exc = litellm.ContentPolicyViolationError("unsafe", "m", "anthropic")
    error = translate_error(exc, deployment="claude")
    assert error.code == "content_policy_violation"


def test_unexpected_exception_names_its_type_without_a_traceback() -> None:
    """An exception litellm should not raise becomes BadUpstreamResponse naming the type."""
    error = translate_error(KeyError("choices"), deployment="claude")
    assert isinstance(error, BadUpstreamResponse)
    assert error.message.startswith("litellm raised KeyError")
    assert "Traceback" not in error.message


def test_error_after_relayed_chunks_is_stream_broken(litellm: ModuleType) -> None:
    """Once chunks were relayed, any failure is StreamBroken (the answer would be truncated)."""
    exc = litellm.RateLimitError("slow down", "anthropic", "m")
    error = translate_error(exc, deployment="claude", after_chunks=3)
    assert isinstance(error, StreamBroken)
    assert "after 3 chunks" in error.message


def test_connect_failures_are_unreachable(litellm: ModuleType) -> None:
    """Connection refused or a connect timeout (found on the cause chain) is ProviderUnreachable."""
    for cause in (httpx.ConnectError("refused"), httpx.ConnectTimeout("slow connect")):
        try:
            try:
                raise cause
            except httpx.HTTPError as inner:
                raise litellm.InternalServerError("Cannot connect", "anthropic", "m") from inner
        except Exception as exc:
            error = translate_error(exc, deployment="claude")
        assert isinstance(error, ProviderUnreachable), cause


def test_provider_errors_pass_through_unchanged() -> None:
    """An error already in the gateway's tree is returned as it is."""
    original = RateLimited("x", deployment="claude")
    assert translate_error(original, deployment="other") is original


def test_secrets_are_the_key_and_every_long_string_leaf_of_params() -> None:
    """Strings of 8+ characters anywhere in params (dicts, lists) count; short ones, numbers
    and keys do not."""
    params = {
        "extra_headers": {"x-proxy-token": "hdr-SECRET-abc", "x-short": "abc"},
        "vertex_credentials": ["first-credential", {"nested": "second-credential"}],
        "temperature": 12345678,
        "a-long-key-name": "v1",
    }
    assert secrets_of(SECRET, params) == (
        "first-credential",
        "hdr-SECRET-abc",
        "second-credential",
        SECRET,
    )
    assert secrets_of("", {}) == ()


def test_every_secret_is_redacted_even_one_inside_another(litellm: ModuleType) -> None:
    """All secrets go, the longest first, so a secret containing another leaves no part."""
    inner, outer = "token-1234", "prefix-token-1234-suffix"
    exc = litellm.BadRequestError(f"bad {outer} and {inner} and {SECRET}", "m", "anthropic")
    error = translate_error(exc, deployment="claude", secrets=[inner, SECRET, outer])
    assert error.message.count("[redacted]") == 3
    assert "prefix" not in error.message and "suffix" not in error.message


def test_a_secret_at_the_length_limit_is_redacted_before_the_cut(litellm: ModuleType) -> None:
    """A long message is cut after redaction, so no half of a secret survives at the cut."""
    exc = RuntimeError("x" * 995 + SECRET)
    error = translate_error(exc, deployment="claude", secrets=[SECRET])
    assert SECRET[:5] not in error.message


def test_the_key_is_redacted_from_every_message(litellm: ModuleType) -> None:
    """A provider message that echoes the key is redacted before anyone can log it."""
    exceptions = [
        litellm.AuthenticationError(f"Incorrect API key provided: {SECRET}", "anthropic", "m"),
        litellm.BadRequestError(_anthropic("invalid_request_error", f"key {SECRET}"), "m", "x"),
        litellm.APIConnectionError(f"failed with {SECRET}", "anthropic", "m"),
        RuntimeError(f"boom {SECRET}"),
    ]
    for exc in exceptions:
        error = translate_error(exc, deployment="claude", secrets=[SECRET])
        for text in (error.message, str(error), repr(error), str(error.to_openai())):
            assert SECRET not in text
        assert "[redacted]" in error.message
