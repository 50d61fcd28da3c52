"""Continuing a broken stream: the text the stream state keeps, the events a continuation
rewrites, simulated prefill, and continue_stream's bookkeeping (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from gateway.config import SimulatedDeployment
from gateway.continuation import continue_stream, remainder_event, without_role
from gateway.errors import ProviderError, StreamBroken
from gateway.executor import Attempt, Deployment
from gateway.providers.base import DONE_EVENT, ProviderCall
from gateway.providers.simulated import Fault, SimulatedSettings
from gateway.providers.simulated.engine import Simulator
from gateway.providers.simulated.provider import SimulatedProvider
from gateway.providers.sse import SSEStream

TEXT = "one two three four five six"
USER = [{"role": "user", "content": "hello"}]


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chat(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    return _event(
        {
            "id": "c-1",
            "object": "chat.completion.chunk",
            "model": "fb",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }
    )


def _source(*events: bytes) -> Callable[[], Awaitable[bytes]]:
    lines = [line for e in events for line in e.splitlines(keepends=True)]

    async def readline() -> bytes:
        return lines.pop(0) if lines else b""

    return readline


def _read(*events: bytes) -> SSEStream:
    """An SSEStream over ``events``, read to its end (or its break)."""

    async def run() -> SSEStream:
        stream = SSEStream(_source(*events), deployment="d", first_timeout=5, idle_timeout=5)
        try:
            async for _ in stream:
                pass
        except StreamBroken:
            pass
        return stream

    return asyncio.run(run())


# --- what the stream state keeps ---------------------------------------------------------------


def test_stream_state_keeps_choice_zero_text_of_chat_and_completions() -> None:
    """Chat deltas and completions text are both kept, in order; other choices are not."""
    chat = _read(
        _chat({"role": "assistant", "content": ""}),
        _chat({"content": "Hel"}),
        _chat({"content": "lo"}),
        _chat({}, "stop"),
    )
    assert (chat.state.content, chat.state.n_choices, chat.state.non_text) == ("Hello", 1, False)
    assert chat.state.complete
    text = _read(
        _event({"choices": [{"index": 0, "text": "a b", "finish_reason": None}]}),
        _event({"choices": [{"index": 1, "text": "x", "finish_reason": None}]}),
        _event({"choices": [{"index": 0, "text": " c", "finish_reason": None}]}),
    )
    assert (text.state.content, text.state.n_choices, text.state.complete) == ("a b c", 2, False)


def test_stream_state_flags_deltas_that_carry_more_than_text() -> None:
    """Tool calls make a stream impossible to continue from text; null fields do not."""
    nulls = _read(_chat({"role": "assistant", "content": "", "refusal": None, "tool_calls": None}))
    assert not nulls.state.non_text
    tools = _read(_chat({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}))
    assert tools.state.non_text


# --- event rewriting ---------------------------------------------------------------------------


def test_without_role_drops_a_role_only_chunk_and_keeps_everything_else() -> None:
    """A continuation's role chunk is dropped; role is removed beside content; others untouched."""
    assert without_role(_chat({"role": "assistant", "content": ""})) is None
    stripped = without_role(_chat({"role": "assistant", "content": "Hi"}))
    assert stripped is not None
    assert orjson.loads(stripped[6:])["choices"][0]["delta"] == {"content": "Hi"}
    plain = _chat({"content": "x"})
    assert without_role(plain) is plain
    assert without_role(DONE_EVENT) is DONE_EVENT


def test_remainder_event_carries_only_the_new_text_in_the_fallbacks_shape() -> None:
    """The crossing chunk keeps the fallback's id and model and carries only the new text."""
    event = remainder_event(_chat({"content": "three four"}), "four")
    assert event is not None
    payload = orjson.loads(event[6:])
    assert (payload["id"], payload["model"]) == ("c-1", "fb")
    assert payload["choices"][0]["delta"] == {"content": "four"}
    completion = _event({"id": "t", "choices": [{"index": 0, "text": "ab", "finish_reason": None}]})
    out = remainder_event(completion, "b")
    assert out is not None and orjson.loads(out[6:])["choices"][0]["text"] == "b"
    assert remainder_event(_chat({"content": "three"}), "") is None
    finished = remainder_event(_chat({"content": "end"}, "stop"), "")
    assert finished is not None and orjson.loads(finished[6:])["choices"][0]["finish_reason"]


# --- simulated prefill -------------------------------------------------------------------------


def _sim_text(sim: Simulator, messages: list[dict[str, Any]]) -> str:
    body = orjson.loads(
        sim.respond("chat/completions", {"model": "m", "messages": messages}, "m").body
    )
    text: str = body["choices"][0]["message"]["content"]
    return text


def test_simulated_deployment_continues_a_matching_prefill() -> None:
    """A prefix of the content is continued; anything else gets the whole content."""
    sim = Simulator(SimulatedSettings(content=TEXT), name="s", model="m")
    prefilled = [*USER, {"role": "assistant", "content": "one two "}]
    assert _sim_text(sim, prefilled) == "three four five six"
    other = [*USER, {"role": "assistant", "content": "uno "}]
    assert _sim_text(sim, other) == TEXT
    assert _sim_text(sim, USER) == TEXT


# --- continue_stream -----------------------------------------------------------------------------


class Recording(SimulatedProvider):
    """A simulated provider that keeps every body it was sent."""

    def __init__(self, config: SimulatedDeployment) -> None:
        super().__init__(config)
        self.bodies: list[dict[str, Any]] = []

    async def send(self, call: ProviderCall) -> Any:
        self.bodies.append(call.body)
        return await super().send(call)


def _dep(name: str, *faults: Fault, content: str = TEXT, **extra: Any) -> Deployment:
    config = SimulatedDeployment(
        name=name,
        provider="simulated",
        model="m",
        simulated=SimulatedSettings(content=content, faults=faults),
        **extra,
    )
    return Deployment(Recording(config))


CUT = Fault(kind="stream_cut", after_chunks=2)


async def _broken(
    primary: Deployment, rest: list[Deployment], body: dict[str, Any], deadline: float = 5
) -> tuple[Attempt, ProviderError]:
    """A stream on ``primary`` read until it breaks, recorded as the relay does."""
    loop = asyncio.get_running_loop()
    call = ProviderCall("chat/completions", body, orjson.dumps(body), True, "r", 5.0)
    primary.window.inflight += 1
    stream = await primary.provider.send(call)
    assert isinstance(stream, SSEStream)
    first = await anext(stream)
    attempt = Attempt(primary, stream, 1, first, rest=rest, call=call)
    attempt.deadline = loop.time() + deadline
    with pytest.raises(StreamBroken) as info:
        async for _ in stream:
            pass
    attempt.finish(info.value)
    return attempt, info.value


async def _all(attempt: Attempt, error: ProviderError) -> list[bytes]:
    return [event async for event in continue_stream(attempt, error)]


def _content(events: list[bytes]) -> str:
    text = ""
    for event in events:
        if event == DONE_EVENT or b'"error"' in event:
            continue
        for choice in orjson.loads(event[6:])["choices"]:
            text += choice.get("delta", {}).get("content") or ""
    return text


def test_prefill_body_ends_with_the_sent_text_and_drops_n() -> None:
    """The prefill candidate gets the sent text as the assistant's message, without `n`."""
    primary = _dep("p", CUT)
    fallback = _dep("f", tags=("chat", "stream", "prefill"))

    async def run() -> tuple[list[bytes], Attempt]:
        attempt, error = await _broken(
            primary, [fallback], {"model": "m", "messages": USER, "stream": True, "n": 1}
        )
        return await _all(attempt, error), attempt

    events, attempt = asyncio.run(run())
    assert _content(events) == "three four five six" and events[-1] == DONE_EVENT
    assert isinstance(fallback.provider, Recording)
    sent = fallback.provider.bodies[0]
    assert "n" not in sent
    assert sent["messages"][-1] == {"role": "assistant", "content": "one two "}
    assert (attempt.deployment, attempt.outcome, attempt.attempts) == (fallback, None, 2)
    assert (fallback.inflight, fallback.window.stats().successes) == (0, 1)


def test_prefill_extends_the_callers_own_assistant_prefix() -> None:
    """A caller's own trailing assistant message is extended, not followed by a second one."""
    primary = _dep("p", CUT, content="Sure: " + TEXT)
    fallback = _dep("f", content="Sure: " + TEXT, tags=("chat", "stream", "prefill"))
    messages = [*USER, {"role": "assistant", "content": "Sure: "}]

    async def run() -> list[bytes]:
        attempt, error = await _broken(
            primary, [fallback], {"model": "m", "messages": messages, "stream": True}
        )
        return await _all(attempt, error)

    asyncio.run(run())
    assert isinstance(fallback.provider, Recording)
    last = fallback.provider.bodies[0]["messages"]
    assert len(last) == 2 and last[-1]["content"] == "Sure: one two "


def test_stream_that_broke_after_finishing_ends_with_done() -> None:
    """A stream whose choice had finished (only usage or [DONE] lost) is whole: [DONE]."""
    stream = SSEStream(
        _source(_chat({"content": "hi"}), _chat({}, "stop"), b"data: {oops\n\n"),
        deployment="p",
        first_timeout=5,
        idle_timeout=5,
    )
    primary = _dep("p")
    fallback = _dep("f")

    async def run() -> tuple[list[bytes], Attempt]:
        first = await anext(stream)
        attempt = Attempt(primary, stream, 1, first, rest=[fallback])
        with pytest.raises(StreamBroken) as info:
            async for _ in stream:
                pass
        return await _all(attempt, info.value), attempt

    events, attempt = asyncio.run(run())
    assert events == [DONE_EVENT] and attempt.outcome is None
    assert isinstance(fallback.provider, Recording) and fallback.provider.bodies == []


def test_full_fallback_and_passed_deadline_are_not_tried() -> None:
    """A candidate at max_concurrency is skipped; past the deadline nothing starts."""
    primary = _dep("p", CUT)
    full = _dep("full", max_concurrency=1)
    full.window.inflight = 1
    late = _dep("late", CUT)
    spare = _dep("spare")

    async def run() -> tuple[list[bytes], list[bytes]]:
        attempt, error = await _broken(
            primary, [full], {"model": "m", "messages": USER, "stream": True}
        )
        skipped = await _all(attempt, error)
        attempt, error = await _broken(
            late, [spare], {"model": "m", "messages": USER, "stream": True}, deadline=0
        )
        return skipped, await _all(attempt, error)

    skipped, timed_out = asyncio.run(run())
    for events in (skipped, timed_out):
        assert len(events) == 1 and b'"error"' in events[0] and b"unfinished" in events[0]
    assert isinstance(full.provider, Recording) and full.provider.bodies == []
    assert isinstance(spare.provider, Recording) and spare.provider.bodies == []
    assert full.inflight == 1


def test_tool_call_stream_is_not_continued() -> None:
    """A stream that carried tool calls cannot be continued from text: the in-band error."""
    stream = SSEStream(
        _source(_chat({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]})),
        deployment="p",
        first_timeout=5,
        idle_timeout=5,
    )
    fallback = _dep("f")
    body = {"model": "m", "messages": USER, "stream": True}
    call = ProviderCall("chat/completions", body, orjson.dumps(body), True, "r", 5.0)

    async def run() -> list[bytes]:
        first = await anext(stream)
        attempt = Attempt(_dep("p"), stream, 1, first, rest=[fallback], call=call)
        with pytest.raises(StreamBroken) as info:
            await anext(stream)
        return await _all(attempt, info.value)

    events = asyncio.run(run())
    assert len(events) == 1 and b'"error"' in events[0]
    assert isinstance(fallback.provider, Recording) and fallback.provider.bodies == []


def test_closing_a_continuation_midway_gives_the_slot_back_and_records_nothing() -> None:
    """A caller that leaves during the continuation: the fallback's slot back, no record."""
    primary = _dep("p", CUT)
    fallback = _dep("f", tags=("chat", "stream", "prefill"), content=TEXT)

    async def run() -> None:
        attempt, error = await _broken(
            primary, [fallback], {"model": "m", "messages": USER, "stream": True}
        )
        events = continue_stream(attempt, error)
        await anext(events)
        assert fallback.inflight == 1
        await events.aclose()

    asyncio.run(run())
    assert fallback.inflight == 0
    assert fallback.window.stats().requests == 0
    assert primary.window.stats().error_count("stream_broken") == 1
