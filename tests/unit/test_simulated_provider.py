"""Every fault of the in-process simulated provider surfaces as the gateway's own error class."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import pytest

from gateway.config import SimulatedDeployment, Timeouts
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
from gateway.providers.base import DONE_EVENT, ProviderCall, ProviderResponse, Usage
from gateway.providers.simulated.provider import SimulatedProvider
from gateway.providers.simulated.settings import SimulatedSettings
from gateway.providers.sse import SSEStream

T = TypeVar("T")

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hello there"}]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _provider(
    first_token: float = 1.0,
    idle: float = 1.0,
    clock: Callable[[], float] | None = None,
    response: float = 60.0,
    **sim: Any,
) -> SimulatedProvider:
    deployment = SimulatedDeployment(
        provider="simulated",
        name="sim-a",
        model="sim-model",
        timeouts=Timeouts(first_token=first_token, idle=idle, response=response),
        simulated=SimulatedSettings.model_validate(sim),
    )
    if clock is None:
        return SimulatedProvider(deployment)
    return SimulatedProvider(deployment, clock=clock)


def _call(
    endpoint: str = "chat/completions",
    body: dict[str, Any] | None = None,
    *,
    stream: bool = False,
    timeout: float = 1.0,
) -> ProviderCall:
    body = dict(CHAT if body is None else body)
    if stream:
        body["stream"] = True
    return ProviderCall(endpoint, body, orjson.dumps(body), stream, "req-1", timeout)


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


async def _timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await awaitable
    return result, loop.time() - started


async def _drain(stream: SSEStream, received: list[bytes]) -> None:
    async for event in stream:
        received.append(event)


def _send_error(provider: SimulatedProvider, call: ProviderCall) -> tuple[ProviderError, float]:
    """Run send() expecting a ProviderError; return it and how long it took."""

    async def go() -> tuple[ProviderError, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ProviderError) as info:
            await provider.send(call)
        return info.value, loop.time() - started

    return _run(go)


def _stream_error(
    provider: SimulatedProvider, call: ProviderCall
) -> tuple[ProviderError, list[bytes]]:
    """Open a stream and read it, expecting a ProviderError; return it and the events seen."""

    async def go() -> tuple[ProviderError, list[bytes]]:
        stream = await provider.send(call)
        assert isinstance(stream, SSEStream)
        received: list[bytes] = []
        with pytest.raises(ProviderError) as info:
            await _drain(stream, received)
        return info.value, received

    return _run(go)


def _stream_ok(provider: SimulatedProvider, call: ProviderCall) -> tuple[SSEStream, list[bytes]]:
    async def go() -> tuple[SSEStream, list[bytes]]:
        stream = await provider.send(call)
        assert isinstance(stream, SSEStream)
        received: list[bytes] = []
        await _drain(stream, received)
        return stream, received

    return _run(go)


# --- successes ------------------------------------------------------------------------------


def test_chat_answer_is_a_complete_body_with_usage() -> None:
    """A non-streaming call returns the chat.completion bytes and the usage in words."""
    response = _run(lambda: _provider(content="one two three").send(_call()))
    assert isinstance(response, ProviderResponse)
    body = orjson.loads(response.body)
    assert body["choices"][0]["message"]["content"] == "one two three"
    assert body["model"] == "sim-model"
    assert response.usage == Usage(2, 3)


def test_embeddings_answer_has_one_vector_per_input() -> None:
    """/embeddings returns a list of vectors of embedding_dimensions floats."""
    call = _call("embeddings", {"model": "sim-model", "input": ["a", "b c"]})
    response = _run(lambda: _provider(embedding_dimensions=3).send(call))
    assert isinstance(response, ProviderResponse)
    data = orjson.loads(response.body)["data"]
    assert [len(item["embedding"]) for item in data] == [3, 3]
    assert response.usage == Usage(3, 0)


def test_stream_ends_with_done_and_reports_finish_and_usage() -> None:
    """A streamed answer passes SSEStream: role, content, stop, usage, [DONE]."""
    body = {**CHAT, "stream_options": {"include_usage": True}}
    stream, events = _stream_ok(_provider(content="a b c"), _call(body=body, stream=True))
    assert events[-1] == DONE_EVENT
    assert len(events) == 1 + 3 + 1 + 1 + 1
    assert stream.state.finish_reason == "stop"
    assert stream.state.done
    assert stream.state.usage == Usage(2, 3)
    text = "".join(
        orjson.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:4]
    )
    assert text == "a b c"


def test_tokens_per_second_paces_a_non_streaming_answer() -> None:
    """latency + words / tokens_per_second passes before the body comes back."""
    provider = _provider(content="w " * 10, latency=0.01, tokens_per_second=1000)
    _, elapsed = _run(lambda: _timed(provider.send(_call())))
    assert elapsed >= 0.01 + 10 / 1000


def test_time_window_follows_the_injected_clock() -> None:
    """A reset window [1s, 2s) hits only while the injected clock is inside it."""
    clock = FakeClock()
    provider = _provider(clock=clock, faults=[{"kind": "reset", "start": 1, "end": 2}])

    async def at(t: float) -> str:
        clock.now = t
        try:
            await provider.send(_call())
        except ProviderConnectionError:
            return "reset"
        return "ok"

    async def go() -> list[str]:
        return [await at(t) for t in (0.5, 1.0, 1.99, 2.0)]

    assert _run(go) == ["ok", "reset", "reset", "ok"]


# --- faults before the answer ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        ({"status": 500}, ProviderServerError),
        ({}, ProviderServerError),
        ({"status": 503}, ProviderUnavailable),
        ({"status": 400}, ProviderRejected),
        ({"status": 400, "code": "context_length_exceeded"}, ContextLengthExceeded),
        ({"status": 429}, RateLimited),
    ],
    ids=["500", "default-500", "503", "400", "context-length", "429"],
)
def test_status_fault_maps_to_the_error_tree(fault: dict[str, Any], error_class: type) -> None:
    """A status fault raises what error_for_status gives for that status and code."""
    provider = _provider(faults=[{"kind": "status", **fault}])
    error, _ = _send_error(provider, _call())
    assert type(error) is error_class
    assert error.deployment == "sim-a"
    assert error.upstream_status == fault.get("status", 500)


def test_rate_limit_fault_carries_retry_after_and_message() -> None:
    """429 with retry_after: RateLimited.retry_after is set and the message is the fault's."""
    provider = _provider(
        faults=[{"kind": "status", "status": 429, "retry_after": "1500ms", "message": "slow down"}]
    )
    error, _ = _send_error(provider, _call())
    assert isinstance(error, RateLimited)
    assert error.retry_after == 1.5
    assert error.message == "slow down"
    assert error.headers() == {"retry-after": "2"}


def test_status_fault_waits_for_the_latency_first() -> None:
    """An error answer also takes `latency` to arrive."""
    provider = _provider(latency=0.02, faults=[{"kind": "status", "status": 500}])
    _, elapsed = _send_error(provider, _call())
    assert elapsed >= 0.02


def test_reset_raises_a_connection_error_at_once() -> None:
    """reset: ProviderConnectionError (retry-same), without waiting for the latency."""
    error, elapsed = _send_error(_provider(latency=1.0, faults=[{"kind": "reset"}]), _call())
    assert type(error) is ProviderConnectionError
    assert elapsed < 0.5


def test_refuse_is_unreachable_at_once_only_inside_its_window() -> None:
    """refuse [1s, 2s): ProviderUnreachable (fail over) at once inside the window, as the
    standalone server's closed port; answers before and after it."""
    clock = FakeClock()
    faults = [{"kind": "refuse", "start": 1, "end": 2}]
    provider = _provider(clock=clock, latency=0.2, faults=faults)

    async def at(t: float) -> str:
        clock.now = t
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await provider.send(_call(stream=t == 1.5))
        except ProviderUnreachable:
            assert loop.time() - started < 0.1  # no latency: the port is closed
            return "refused"
        return "ok"

    async def go() -> list[str]:
        return [await at(t) for t in (0.0, 1.0, 1.5, 2.0)]

    assert _run(go) == ["ok", "refused", "refused", "ok"]


def test_hang_waits_out_the_attempt_then_times_out() -> None:
    """hang on a non-stream: ProviderTimeout after call.timeout."""
    error, elapsed = _send_error(_provider(faults=[{"kind": "hang"}]), _call(timeout=0.03))
    assert type(error) is ProviderTimeout
    assert elapsed >= 0.03


def test_hang_on_a_stream_times_out_at_the_first_token_limit() -> None:
    """hang on a stream: ProviderTimeout after timeouts.first_token when that is shorter."""
    provider = _provider(first_token=0.02, faults=[{"kind": "hang"}])
    error, elapsed = _send_error(provider, _call(stream=True, timeout=5.0))
    assert type(error) is ProviderTimeout
    assert 0.02 <= elapsed < 1.0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_garbage_raises_bad_upstream_response(stream: bool) -> None:
    """garbage (200 with a non-JSON body): BadUpstreamResponse."""
    error, _ = _send_error(_provider(faults=[{"kind": "garbage"}]), _call(stream=stream))
    assert type(error) is BadUpstreamResponse


def test_slow_first_token_within_the_limit_only_delays() -> None:
    """A slow first token under the limit still answers, after the delay."""
    provider = _provider(faults=[{"kind": "slow_first_token", "delay": "20ms"}])
    response, elapsed = _run(lambda: _timed(provider.send(_call(stream=True))))
    assert isinstance(response, SSEStream)
    assert elapsed >= 0.02
    _run(response.aclose)


def test_slow_first_token_past_the_first_token_limit_times_out() -> None:
    """A stream whose first token comes after timeouts.first_token: ProviderTimeout."""
    provider = _provider(first_token=0.02, faults=[{"kind": "slow_first_token", "delay": 5}])
    error, elapsed = _send_error(provider, _call(stream=True, timeout=5.0))
    assert type(error) is ProviderTimeout
    assert 0.02 <= elapsed < 1.0


@pytest.mark.parametrize(
    "call",
    [_call(timeout=5.0), _call("embeddings", {"model": "sim-model", "input": "x"}, timeout=5.0)],
    ids=["chat", "embeddings"],
)
def test_timeouts_response_limits_a_non_streaming_answer(call: ProviderCall) -> None:
    """An answer slower than timeouts.response but within call.timeout: ProviderTimeout after
    ~timeouts.response."""
    error, elapsed = _send_error(_provider(response=0.03, latency=5), call)
    assert type(error) is ProviderTimeout
    assert "within 0.03s" in error.message
    assert 0.03 <= elapsed < 1.0


def test_generation_time_counts_against_timeouts_response() -> None:
    """A first byte within timeouts.response but a body that takes longer: ProviderTimeout."""
    provider = _provider(response=0.05, latency=0.02, tokens_per_second=100, content="w " * 10)
    error, elapsed = _send_error(provider, _call(timeout=5.0))
    assert type(error) is ProviderTimeout
    assert 0.05 <= elapsed < 1.0


def test_first_byte_delay_is_taken_off_the_first_event_limit() -> None:
    """A first byte after 0.2s and a first event 0.2s later, each under first_token (0.3s) but
    together over it: ProviderTimeout at ~0.3s."""
    provider = _provider(
        first_token=0.3,
        latency=0.2,
        faults=[{"kind": "stream_stall", "after_chunks": 0, "delay": "200ms"}],
    )
    call = _call("completions", {"model": "sim-model", "prompt": "p"}, stream=True, timeout=5.0)

    async def go() -> tuple[ProviderError, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream = await provider.send(call)
        assert isinstance(stream, SSEStream)
        with pytest.raises(ProviderError) as info:
            await _drain(stream, [])
        return info.value, loop.time() - started

    error, elapsed = _run(go)
    assert type(error) is ProviderTimeout
    assert "first token" in error.message
    assert 0.3 <= elapsed < 1.0


def test_latency_past_the_attempt_timeout_times_out() -> None:
    """A non-streaming answer slower than call.timeout: ProviderTimeout at call.timeout."""
    error, elapsed = _send_error(_provider(latency=5), _call(timeout=0.02))
    assert type(error) is ProviderTimeout
    assert 0.02 <= elapsed < 1.0


# --- faults inside a stream -----------------------------------------------------------------


def test_stream_cut_breaks_after_n_content_chunks() -> None:
    """stream_cut after 2: role + 2 content chunks arrive, then StreamBroken (no finish)."""
    provider = _provider(content="a b c d", faults=[{"kind": "stream_cut", "after_chunks": 2}])
    error, events = _stream_error(provider, _call(stream=True))
    assert type(error) is StreamBroken
    assert "came after 3 chunks with choice 0 unfinished" in error.message
    contents = [orjson.loads(e[6:])["choices"][0]["delta"]["content"] for e in events]
    assert contents == ["", "a ", "b "]


def test_stream_stall_forever_trips_the_idle_timeout() -> None:
    """stream_stall without delay: SSEStream's idle timeout raises StreamBroken."""
    provider = _provider(idle=0.03, faults=[{"kind": "stream_stall", "after_chunks": 1}])
    error, events = _stream_error(provider, _call(stream=True))
    assert type(error) is StreamBroken
    assert "stalled" in error.message
    assert len(events) == 2


def test_short_stream_stall_under_the_idle_timeout_completes() -> None:
    """A stall shorter than timeouts.idle is only a pause."""
    provider = _provider(idle=1.0, faults=[{"kind": "stream_stall", "delay": "10ms"}])
    stream, events = _stream_ok(provider, _call(stream=True))
    assert events[-1] == DONE_EVENT
    assert stream.state.finish_reason == "stop"


def test_stall_before_the_first_event_is_a_first_token_timeout() -> None:
    """A completions stream stalled before its first chunk: ProviderTimeout, not StreamBroken."""
    provider = _provider(first_token=0.03, faults=[{"kind": "stream_stall", "after_chunks": 0}])
    call = _call("completions", {"model": "sim-model", "prompt": "p"}, stream=True)
    error, events = _stream_error(provider, call)
    assert type(error) is ProviderTimeout
    assert events == []


def test_malformed_chunk_breaks_the_stream() -> None:
    """An event that is not JSON: StreamBroken after the chunks before it."""
    provider = _provider(faults=[{"kind": "malformed_chunk", "after_chunks": 1}])
    error, events = _stream_error(provider, _call(stream=True))
    assert type(error) is StreamBroken
    assert "not JSON" in error.message
    assert len(events) == 2


def test_missing_done_after_finish_gets_done_synthesized() -> None:
    """A stream that finished but lacks [DONE] still ends with [DONE], added by SSEStream."""
    provider = _provider(content="a b", faults=[{"kind": "missing_done"}])
    stream, events = _stream_ok(provider, _call(stream=True))
    assert events[-1] == DONE_EVENT
    assert events.count(DONE_EVENT) == 1
    assert stream.state.done and stream.state.finish_reason == "stop"


# --- caller mistakes ------------------------------------------------------------------------


def test_bad_body_is_rejected_like_an_upstream_400() -> None:
    """A body without messages raises ProviderRejected(400) naming the param."""
    error, _ = _send_error(_provider(), _call(body={"model": "sim-model"}))
    assert type(error) is ProviderRejected
    assert error.status == 400
    assert error.param == "messages"


def test_unknown_endpoint_is_rejected_with_404() -> None:
    """Only the three OpenAI endpoints exist; another is the deployment's gap (fail over)."""
    error, _ = _send_error(_provider(), _call("images/generations", {"model": "m"}))
    assert isinstance(error, ProviderMisconfigured)
    assert error.upstream_status == 404


def test_close_is_idempotent() -> None:
    """close() releases nothing and can be called twice."""
    provider = _provider()

    async def go() -> bool:
        await provider.close()
        await provider.close()
        response = await provider.send(_call())
        return isinstance(response, ProviderResponse)

    assert _run(go)
