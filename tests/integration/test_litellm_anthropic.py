"""LiteLLMProvider against a fake Anthropic Messages API on a real socket (real litellm inside)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from fakes.anthropic import (
    PROMPT_TOO_LONG,
    AnthropicFake,
    FakeError,
    invalid_request,
    overloaded,
    prompt_too_long,
    rate_limit,
)

from gateway.config import LiteLLMDeployment, Timeouts
from gateway.errors import (
    BadUpstreamResponse,
    ContextLengthExceeded,
    ProviderError,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUnreachable,
    RateLimited,
    StreamBroken,
)
from gateway.providers.base import DONE_EVENT, ProviderCall, ProviderResponse
from gateway.providers.litellm import LiteLLMProvider

pytestmark = pytest.mark.integration

KEY = "sk-ant-test"
MODEL = "anthropic/claude-3-5-haiku-20241022"
USER = [{"role": "user", "content": "Say hello"}]
ROOT = Path(__file__).resolve().parents[2]


def _deployment(url: str, key: str = KEY, **extra: Any) -> LiteLLMDeployment:
    return LiteLLMDeployment(
        name="claude", provider="litellm", model=MODEL, base_url=url, api_key=key, **extra
    )


def _call(stream: bool = False, timeout: float = 10.0, **body: Any) -> ProviderCall:
    payload = {"model": "claude", "messages": USER, "max_tokens": 64, **body}
    if stream:
        payload["stream"] = True
    return ProviderCall(
        "chat/completions", payload, orjson.dumps(payload), stream, "req-1", timeout
    )


@asynccontextmanager
async def _setup(
    key: str = KEY,
    timeouts: Timeouts | None = None,
    params: dict[str, Any] | None = None,
    **fake_settings: Any,
) -> AsyncIterator[tuple[AnthropicFake, LiteLLMProvider]]:
    async with AnthropicFake(api_key=KEY, **fake_settings) as fake:
        extra: dict[str, Any] = {"timeouts": timeouts} if timeouts is not None else {}
        if params is not None:
            extra["params"] = params
        provider = LiteLLMProvider(_deployment(fake.url, key, **extra))
        try:
            yield fake, provider
        finally:
            await provider.close()


async def _collect(stream: Any) -> list[bytes]:
    events: list[bytes] = []
    try:
        async for event in stream:
            events.append(event)
    finally:
        await stream.aclose()
    return events


def _content(events: list[bytes]) -> str:
    text = ""
    for event in events:
        if event == DONE_EVENT:
            continue
        for choice in orjson.loads(event.removeprefix(b"data: "))["choices"]:
            text += choice.get("delta", {}).get("content") or ""
    return text


def test_non_stream_answer_is_an_openai_chat_completion_with_usage() -> None:
    """A non-streaming call returns an OpenAI chat.completion (upstream model, text, usage)."""

    async def run() -> None:
        async with _setup() as (fake, provider):
            result = await provider.send(_call(temperature=0.3, foo="not an OpenAI field"))
            assert isinstance(result, ProviderResponse)
            body = orjson.loads(result.body)
            assert body["object"] == "chat.completion"
            assert body["model"] == "claude-3-5-haiku-20241022"
            choice = body["choices"][0]
            assert choice["message"] == {"role": "assistant", "content": fake.text}
            assert choice["finish_reason"] == "stop"
            assert body["usage"]["prompt_tokens"] == fake.input_tokens
            assert body["usage"]["completion_tokens"] == fake.output_tokens
            assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (12, 4)
            seen = fake.requests[-1]
            assert seen.path == "/v1/messages"
            assert seen.headers["x-api-key"] == KEY
            assert seen.headers["anthropic-version"]
            assert seen.body["model"] == "claude-3-5-haiku-20241022"
            assert seen.body["max_tokens"] == 64
            assert seen.body["temperature"] == 0.3
            assert "foo" not in seen.body
            assert "stream" not in seen.body

    asyncio.run(run())


def test_unsupported_openai_fields_are_dropped_not_rejected() -> None:
    """A field Anthropic lacks (``seed``) is dropped by default instead of failing the call."""

    async def run() -> None:
        async with _setup() as (fake, provider):
            result = await provider.send(_call(seed=7))
            assert isinstance(result, ProviderResponse)
            assert "seed" not in fake.requests[-1].body

    asyncio.run(run())


def test_stream_relays_openai_chunks_and_ends_with_done() -> None:
    """A stream reassembles to the answer, ends with [DONE] and records usage in its state."""

    async def run() -> None:
        async with _setup() as (fake, provider):
            stream = await provider.send(_call(stream=True))
            events = await _collect(stream)
            assert events[-1] == DONE_EVENT
            assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
            assert _content(events) == fake.text
            assert fake.requests[-1].body["stream"] is True
            state = stream.state  # type: ignore[union-attr]
            assert state.done and state.finish_reason == "stop"
            assert state.usage is not None
            assert (state.usage.prompt_tokens, state.usage.completion_tokens) == (12, 4)
            # The caller did not ask for usage: no chunk carries it.
            assert not any(b'"usage"' in e for e in events)

    asyncio.run(run())


def test_stream_includes_usage_chunk_when_the_caller_asks() -> None:
    """With ``stream_options.include_usage`` the caller receives the usage chunk too."""

    async def run() -> None:
        async with _setup() as (_, provider):
            stream = await provider.send(_call(stream=True, stream_options={"include_usage": True}))
            events = await _collect(stream)
            usage_events = [orjson.loads(e[6:]) for e in events[:-1] if b'"usage"' in e]
            assert len(usage_events) == 1
            assert usage_events[0]["usage"]["completion_tokens"] == 4
            assert events[-1] == DONE_EVENT

    asyncio.run(run())


ERRORS = [
    pytest.param(rate_limit("7"), RateLimited, 429, "rate limit", id="429-rate-limit"),
    pytest.param(overloaded(), ProviderUnavailable, 529, "Overloaded", id="529-overloaded"),
    pytest.param(
        invalid_request("max_tokens: Field required"),
        ProviderRejected,
        400,
        "max_tokens: Field required",
        id="400-invalid-request",
    ),
    pytest.param(prompt_too_long(), ContextLengthExceeded, 400, PROMPT_TOO_LONG, id="400-too-long"),
    pytest.param(
        FakeError(500, "api_error", "Internal server error"),
        ProviderError,
        500,
        "Internal server error",
        id="500-api-error",
    ),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("error", "expected", "upstream_status", "message"), ERRORS)
def test_upstream_errors_map_to_the_gateway_error_tree(
    error: FakeError,
    expected: type[ProviderError],
    upstream_status: int,
    message: str,
    stream: bool,
) -> None:
    """Each Anthropic error becomes the right gateway class with the provider's own message."""

    async def run() -> None:
        async with _setup() as (fake, provider):
            fake.fail_next(error)
            with pytest.raises(expected) as caught:
                await provider.send(_call(stream=stream))
            exc = caught.value
            assert exc.upstream_status == upstream_status
            assert message in exc.message
            assert exc.deployment == "claude"
            assert exc.__cause__ is None and exc.__suppress_context__
            if isinstance(exc, RateLimited):
                assert exc.retry_after == 7.0
            if upstream_status == 500:
                assert type(exc).__name__ == "ProviderServerError"

    asyncio.run(run())


def test_prompt_too_long_is_context_length_exceeded() -> None:
    """litellm recognises Anthropic's 'prompt is too long': the gateway fails over to a larger
    context window (ContextLengthExceeded, status 400, code context_length_exceeded)."""

    async def run() -> None:
        async with _setup() as (fake, provider):
            fake.fail_next(prompt_too_long())
            with pytest.raises(ContextLengthExceeded) as caught:
                await provider.send(_call())
            assert caught.value.status == 400
            assert caught.value.code == "context_length_exceeded"

    asyncio.run(run())


def test_wrong_key_is_rejected_401_and_the_key_never_leaks() -> None:
    """A refused key is the deployment's fault (fail over, 502); the echoed key is redacted."""
    wrong = "sk-ant-wrong-key-0123456789"

    async def run() -> None:
        async with _setup(key=wrong) as (fake, provider):
            for stream in (False, True):
                with pytest.raises(ProviderMisconfigured) as caught:
                    await provider.send(_call(stream=stream))
                exc = caught.value
                assert exc.status == 502 and exc.upstream_status == 401
                assert "invalid" in exc.message  # litellm masks the echoed key itself
                assert fake.requests[-1].headers["x-api-key"] == wrong  # the fake saw it
                for text in (exc.message, str(exc), repr(exc), str(exc.to_openai())):
                    assert wrong not in text
            assert wrong not in repr(provider)

    asyncio.run(run())


def test_the_key_never_appears_in_any_mapped_error() -> None:
    """Across every error kind, neither message, str nor repr contains the deployment's key."""

    async def run() -> None:
        async with _setup() as (fake, provider):
            for error in (rate_limit(), overloaded(), invalid_request(), prompt_too_long()):
                for stream in (False, True):
                    fake.fail_next(error)
                    with pytest.raises(ProviderError) as caught:
                        await provider.send(_call(stream=stream))
                    exc = caught.value
                    for text in (exc.message, str(exc), repr(exc), repr(exc.args)):
                        assert KEY not in text

    asyncio.run(run())


def test_secrets_in_params_are_redacted_from_upstream_errors() -> None:
    """A header token from ``params`` that the upstream echoes never reaches the caller."""
    token = "hdr-SECRET-abc"
    params = {"extra_headers": {"x-proxy-token": token}, "metadata": {"tags": ["short"]}}

    async def run() -> None:
        async with _setup(params=params, echo_header="x-proxy-token") as (fake, provider):
            for stream in (False, True):
                fake.fail_next(invalid_request("proxy refused the token"))
                with pytest.raises(ProviderRejected) as caught:
                    await provider.send(_call(stream=stream))
                assert fake.requests[-1].headers["x-proxy-token"] == token  # it was sent
                exc = caught.value
                assert "proxy refused the token (x-proxy-token: [redacted])" in exc.message
                for text in (exc.message, str(exc), repr(exc), str(exc.to_openai())):
                    assert token not in text

    asyncio.run(run())


def test_in_band_error_mid_stream_is_stream_broken() -> None:
    """An Anthropic ``error`` event after some deltas ends the stream with StreamBroken."""

    async def run() -> None:
        async with _setup(stream_error_after=2) as (_, provider):
            stream = await provider.send(_call(stream=True))
            with pytest.raises(StreamBroken) as caught:
                await _collect(stream)
            assert "after 2 chunks" in caught.value.message
            assert "Overloaded" in caught.value.message
            assert not stream.state.done  # type: ignore[union-attr]

    asyncio.run(run())


def test_connection_cut_mid_stream_is_stream_broken_not_success() -> None:
    """A stream whose connection drops before message_stop is never passed off as complete."""

    async def run() -> None:
        async with _setup(stream_cut_after=2) as (_, provider):
            stream = await provider.send(_call(stream=True))
            seen: list[bytes] = []
            with pytest.raises(StreamBroken):
                async for event in stream:
                    seen.append(event)
            await stream.aclose()
            assert DONE_EVENT not in seen
            assert len(seen) == 2

    asyncio.run(run())


def test_stalled_stream_is_stream_broken_after_the_idle_timeout() -> None:
    """No delta within ``timeouts.idle`` after the first one: StreamBroken (stalled)."""

    async def run() -> None:
        timeouts = Timeouts(first_token=5.0, idle=0.2)
        async with _setup(timeouts=timeouts, stream_stall_after=1) as (_, provider):
            stream = await provider.send(_call(stream=True))
            with pytest.raises(StreamBroken, match="stalled") as caught:
                await _collect(stream)
            assert "after 1 chunks" in caught.value.message

    asyncio.run(run())


def test_slow_first_token_is_a_provider_timeout() -> None:
    """No first delta within ``timeouts.first_token``: ProviderTimeout."""

    async def run() -> None:
        timeouts = Timeouts(first_token=0.2, idle=5.0)
        async with _setup(timeouts=timeouts, chunk_delay=2.0) as (_, provider):
            stream = await provider.send(_call(stream=True))
            with pytest.raises(ProviderTimeout, match="first token"):
                await _collect(stream)

    asyncio.run(run())


def test_slow_answer_is_a_provider_timeout() -> None:
    """A non-streaming answer slower than the attempt's timeout: ProviderTimeout."""

    async def run() -> None:
        async with _setup(delay=2.0) as (_, provider):
            with pytest.raises(ProviderTimeout):
                await provider.send(_call(timeout=0.3))

    asyncio.run(run())


def test_answer_slower_than_timeouts_response_times_out_before_the_attempt_limit() -> None:
    """A non-streaming answer is limited by ``timeouts.response`` when that is shorter than
    what is left of the attempt: ProviderTimeout after ~response, not after call.timeout."""

    async def run() -> None:
        async with _setup(timeouts=Timeouts(response=0.3), delay=2.0) as (_, provider):
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ProviderTimeout):
                await provider.send(_call(timeout=10.0))
            assert 0.25 <= loop.time() - started < 1.5

    asyncio.run(run())


def test_stream_opening_and_first_chunk_share_the_first_token_budget() -> None:
    """Opening late plus a late first chunk, each under ``timeouts.first_token`` but together
    over it, is a first-token ProviderTimeout at ~first_token."""

    async def run() -> None:
        timeouts = Timeouts(first_token=1.0, idle=5.0)
        async with _setup(timeouts=timeouts, delay=0.6, chunk_delay=0.6) as (_, provider):
            loop = asyncio.get_running_loop()
            started = loop.time()
            stream = await provider.send(_call(stream=True))
            assert loop.time() - started >= 0.55  # opening took the delay
            with pytest.raises(ProviderTimeout, match="first token"):
                await _collect(stream)
            assert loop.time() - started < 1.5  # at ~1.0s; unshared, the stream would succeed

    asyncio.run(run())


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A base URL whose connections never complete: a listener with a full backlog (the kernel
    drops further SYNs), closed at the end."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        probe = socket.create_connection  # the backlog is full once a connect attempt hangs
        with pytest.raises(TimeoutError):
            probe(("127.0.0.1", port), timeout=0.2).close()
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_connect_to_a_black_hole_is_bounded_by_response_or_first_token(
    black_hole: str, stream: bool
) -> None:
    """``timeouts.connect`` is not enforced for litellm's Anthropic path (litellm collapses its
    timeout to one number): a connection that never completes costs ``timeouts.response``
    (plain) or ``timeouts.first_token`` (stream), as the module docstring says."""

    async def run() -> None:
        timeouts = Timeouts(connect=0.05, response=0.6, first_token=0.6)
        provider = LiteLLMProvider(_deployment(black_hole, timeouts=timeouts))
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises((ProviderTimeout, ProviderUnreachable)):
                await provider.send(_call(stream=stream, timeout=10.0))
            assert 0.55 <= loop.time() - started < 2.0
        finally:
            await provider.close()

    asyncio.run(run())


def test_refused_connection_is_provider_unreachable() -> None:
    """Nothing listening at the base URL: ProviderUnreachable (fail over at once)."""

    async def run() -> None:
        fake = AnthropicFake()
        url = await fake.start()
        await fake.close()
        provider = LiteLLMProvider(_deployment(url))
        try:
            with pytest.raises(ProviderUnreachable) as caught:
                await provider.send(_call())
            assert KEY not in str(caught.value)
        finally:
            await provider.close()

    asyncio.run(run())


def test_closing_a_stream_early_releases_the_upstream_connection() -> None:
    """``aclose()`` in the middle of a stream hangs up on the upstream."""

    async def run() -> None:
        chunks = tuple(f"w{i} " for i in range(100))
        async with _setup(text_chunks=chunks, chunk_delay=0.01) as (fake, provider):
            stream = await provider.send(_call(stream=True))
            await stream.__aiter__().__anext__()
            await stream.aclose()
            await stream.aclose()  # idempotent
            for _ in range(200):
                if fake.disconnects:
                    break
                await asyncio.sleep(0.01)
            assert fake.disconnects == 1

    asyncio.run(run())


def test_a_stream_where_an_answer_was_expected_is_closed_and_bad_upstream_response() -> None:
    """``params: {stream: true}`` (refused by the config; forced here) makes litellm return a
    stream to a non-streaming call: BadUpstreamResponse, not a raw AttributeError, and the
    upstream stream is hung up on."""

    async def run() -> None:
        chunks = tuple(f"w{i} " for i in range(100))
        async with AnthropicFake(api_key=KEY, text_chunks=chunks, chunk_delay=0.01) as fake:
            forced = _deployment(fake.url).model_copy(update={"params": {"stream": True}})
            provider = LiteLLMProvider(forced)
            try:
                with pytest.raises(BadUpstreamResponse, match="cannot render litellm's answer"):
                    await provider.send(_call())
                for _ in range(200):
                    if fake.disconnects:
                        break
                    await asyncio.sleep(0.01)
                assert fake.disconnects == 1
            finally:
                await provider.close()

    asyncio.run(run())


def test_closing_a_stream_before_its_first_event_releases_the_upstream_connection() -> None:
    """``aclose()`` before anything was read hangs up on the upstream too (litellm's own close
    leaves an unstarted response open until the GC)."""

    async def run() -> None:
        chunks = tuple(f"w{i} " for i in range(100))
        async with _setup(text_chunks=chunks, chunk_delay=0.01) as (fake, provider):
            stream = await provider.send(_call(stream=True))
            await stream.aclose()
            for _ in range(200):
                if fake.disconnects:
                    break
                await asyncio.sleep(0.01)
            assert fake.disconnects == 1

    asyncio.run(run())


def test_legacy_completions_are_rejected_with_400() -> None:
    """The litellm provider serves chat and embeddings; /v1/completions is refused (400)."""

    async def run() -> None:
        async with _setup() as (fake, provider):
            call = ProviderCall("completions", {"prompt": "hi"}, b"{}", False, "r", 5.0)
            with pytest.raises(ProviderRejected, match="chat/completions and embeddings") as c:
                await provider.send(call)
            assert c.value.status == 400
            assert fake.requests == []

    asyncio.run(run())


@asynccontextmanager
async def _embeddings_provider(handler: Any) -> AsyncIterator[LiteLLMProvider]:
    """A litellm deployment of an OpenAI-style embeddings upstream served by ``handler``."""
    app = web.Application()
    app.router.add_post("/v1/embeddings", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    provider = LiteLLMProvider(
        LiteLLMDeployment(
            name="emb",
            provider="litellm",
            model="openai/text-embedding-3-small",
            base_url=f"http://127.0.0.1:{runner.addresses[0][1]}/v1",
            api_key="sk-emb-test",
            tags=("embeddings",),
        )
    )
    try:
        yield provider
    finally:
        await provider.close()
        await runner.cleanup()


def _embeddings_call(body: dict[str, Any]) -> ProviderCall:
    return ProviderCall("embeddings", body, orjson.dumps(body), False, "r", 10.0)


def test_embeddings_go_through_litellm_aembedding() -> None:
    """``embeddings`` reaches an OpenAI-style upstream through litellm and returns its vectors."""
    received: list[dict[str, Any]] = []

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        received.append(body)
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
                "model": body["model"],
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )

    async def run() -> None:
        async with _embeddings_provider(embeddings) as provider:
            call = _embeddings_call({"model": "emb", "input": ["hello"], "dimensions": 2})
            result = await provider.send(call)
        assert isinstance(result, ProviderResponse)
        parsed = orjson.loads(result.body)
        assert parsed["data"][0]["embedding"] == [0.25, -0.5]
        assert result.usage is not None and result.usage.prompt_tokens == 3
        assert received[0]["model"] == "text-embedding-3-small"
        assert received[0]["input"] == ["hello"]

    asyncio.run(run())


def test_litellm_does_not_retry_a_failed_embeddings_call() -> None:
    """An upstream 500 on embeddings is one request upstream, not three: litellm's OpenAI
    embeddings path would otherwise turn ``max_retries=0`` into its default of 2 retries."""
    hits: list[str] = []

    async def failing(request: web.Request) -> web.Response:
        hits.append(request.path)
        body = {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
        return web.json_response(body, status=500)

    async def run() -> None:
        async with _embeddings_provider(failing) as provider:
            with pytest.raises(ProviderError) as caught:
                await provider.send(_embeddings_call({"model": "emb", "input": ["hello"]}))
        assert caught.value.upstream_status == 500
        assert hits == ["/v1/embeddings"]

    asyncio.run(run())


NO_NETWORK_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    outside = []

    def hook(event, args):
        if event == "socket.connect":
            address = args[1]
            host = address[0] if isinstance(address, tuple) else str(address)
            if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("/"):
                outside.append((event, host))
        elif event == "socket.getaddrinfo":
            host = args[0]
            if host not in ("127.0.0.1", "::1", "localhost", None):
                outside.append((event, host))

    sys.addaudithook(hook)
    from fakes.anthropic import AnthropicFake, rate_limit
    from gateway.config import LiteLLMDeployment
    from gateway.providers.base import ProviderCall
    from gateway.providers.litellm import LiteLLMProvider

    async def main():
        async with AnthropicFake() as fake:
            provider = LiteLLMProvider(LiteLLMDeployment(
                name="c", provider="litellm", model={model!r}, base_url=fake.url,
                api_key="sk-ant-test"))
            body = {{"messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 8}}
            await provider.send(ProviderCall("chat/completions", body, b"", False, "r", 10))
            stream = await provider.send(
                ProviderCall("chat/completions", {{**body, "stream": True}}, b"", True, "r", 10))
            async for _ in stream:
                pass
            fake.fail_next(rate_limit())
            try:
                await provider.send(ProviderCall("chat/completions", body, b"", False, "r", 10))
            except Exception:
                pass
            await provider.close()

    asyncio.run(main())
    print("OUTSIDE", outside)
    """
)


def test_litellm_never_reaches_beyond_loopback() -> None:
    """Import and calls (plain, stream, error) open no connection and resolve no name off-host."""
    script = NO_NETWORK_SCRIPT.format(tests=str(ROOT / "tests"), model=MODEL)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "OUTSIDE []" in done.stdout, done.stdout[-2000:]


def test_openai_sdk_through_the_gateway_reaches_anthropic(serve_app: Any, gateway: Any) -> None:
    """The official SDK talks to the gateway; a litellm deployment answers from 'Anthropic'."""
    fake = AnthropicFake(api_key=KEY)

    async def make() -> web.Application:
        return fake.app()

    upstream = serve_app(make)
    server = gateway(
        f"""
deployments:
  - name: claude
    provider: litellm
    model: {MODEL}
    aliases: [claude]
    base_url: {upstream.url}
    api_key: {KEY}
"""
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    try:
        answer = client.chat.completions.create(model="claude", messages=USER, max_tokens=32)
        assert answer.choices[0].message.content == fake.text
        assert answer.usage is not None and answer.usage.completion_tokens == 4
        chunks = client.chat.completions.create(
            model="claude", messages=USER, max_tokens=32, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == fake.text
        fake.fail_next(invalid_request("messages: at least one message is required"))
        with pytest.raises(openai.BadRequestError, match="at least one message"):
            client.chat.completions.create(model="claude", messages=USER, max_tokens=32)
    finally:
        client.close()
