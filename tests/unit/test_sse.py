"""SSEStream decides whether a stream ended well, and never passes off a truncated one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import pytest

from gateway.errors import ProviderTimeout, StreamBroken
from gateway.providers.base import DONE_EVENT
from gateway.providers.sse import SSEStream


def _chunk(content: str | None = None, finish: str | None = None, usage: bool = False) -> bytes:
    event: dict[str, object] = {
        "object": "chat.completion.chunk",
        "choices": [
            {"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}
        ],
    }
    if usage:
        event["usage"] = {"prompt_tokens": 3, "completion_tokens": 2}
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _source(*parts: bytes | float) -> Callable[[], Awaitable[bytes]]:
    """A readline over the given SSE text; a float pauses that many seconds."""
    lines: list[bytes | float] = []
    for part in parts:
        if isinstance(part, float):
            lines.append(part)
        else:
            lines.extend(part.splitlines(keepends=True))

    async def readline() -> bytes:
        while lines:
            item = lines.pop(0)
            if isinstance(item, float):
                await asyncio.sleep(item)
                continue
            return item
        return b""

    return readline


def _collect(stream: SSEStream) -> list[bytes]:
    async def run() -> list[bytes]:
        return [event async for event in stream]

    return asyncio.run(run())


def _stream(*parts: bytes | float, first: float = 1.0, idle: float = 1.0) -> SSEStream:
    return SSEStream(_source(*parts), deployment="d", first_timeout=first, idle_timeout=idle)


def test_complete_stream_relays_events_and_tracks_state() -> None:
    """Events pass through unchanged; finish reason and usage are recorded."""
    s = _stream(
        _chunk("a"), _chunk("b"), _chunk(finish="stop"), _chunk(usage=True), b"data: [DONE]\n\n"
    )
    events = _collect(s)
    assert events[0] == _chunk("a")
    assert events[-1] == DONE_EVENT
    assert len(events) == 5
    assert s.state.finish_reason == "stop"
    assert s.state.usage is not None and s.state.usage.completion_tokens == 2
    assert s.state.done


def test_missing_done_after_finish_is_completed_with_done() -> None:
    """A stream that finished but omitted [DONE] ends with a [DONE] added."""
    s = _stream(_chunk("a"), _chunk(finish="stop"))
    assert _collect(s)[-1] == DONE_EVENT
    assert s.state.done


def test_stream_ending_without_finish_is_broken() -> None:
    """A source that ends before any finish_reason is a broken stream, not a success."""
    s = _stream(_chunk("a"), _chunk("b"))
    with pytest.raises(StreamBroken, match="after 2 chunks with choice 0 unfinished"):
        _collect(s)
    assert not s.state.done


def test_malformed_event_is_broken() -> None:
    """An event that is not JSON breaks the stream."""
    with pytest.raises(StreamBroken, match="not JSON"):
        _collect(_stream(_chunk("a"), b"data: {oops\n\n"))


def test_in_band_error_event_is_broken() -> None:
    """An upstream `error` event is surfaced as a broken stream with its message."""
    with pytest.raises(StreamBroken, match="overloaded"):
        _collect(_stream(_chunk("a"), b'data: {"error": {"message": "overloaded"}}\n\n'))


def test_stall_past_idle_timeout_is_broken() -> None:
    """No event for longer than the idle timeout after the first one breaks the stream."""
    with pytest.raises(StreamBroken, match="stalled"):
        _collect(_stream(_chunk("a"), 0.5, _chunk(finish="stop"), idle=0.05))


def test_no_first_event_is_a_timeout() -> None:
    """Nothing before the first-token timeout is a ProviderTimeout (fail over, not broken)."""
    with pytest.raises(ProviderTimeout, match="no first token"):
        _collect(_stream(0.5, _chunk("a"), first=0.05))


def test_comments_and_multiline_data_are_handled() -> None:
    """Comment lines are skipped; a multi-line payload is parsed whole and relayed line by line."""
    s = _stream(
        b": keep-alive\n\n",
        b'data: {"choices":\ndata: []}\n\n',
        _chunk(finish="stop"),
        b"data: [DONE]\n\n",
    )
    events = _collect(s)
    assert events[0] == b'data: {"choices":\ndata: []}\n\n'
    assert events[-1] == DONE_EVENT


def test_done_before_any_chunk_is_broken() -> None:
    """A stream that says [DONE] before any content is not an (empty) answer: it fails over."""
    with pytest.raises(StreamBroken, match=r"\[DONE\] came after 0 chunks"):
        _collect(_stream(b"data: [DONE]\n\n"))


def test_done_with_a_choice_unfinished_is_broken() -> None:
    """With n > 1, every choice must finish; [DONE] while one is open is a truncated answer."""

    def choice(index: int, content: str | None, finish: str | None) -> bytes:
        delta = {"content": content} if content else {}
        event = {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(event) + b"\n\n"

    s = _stream(
        choice(0, "a", None),
        choice(1, "b", None),
        choice(0, None, "stop"),
        choice(1, "more", None),
        b"data: [DONE]\n\n",
    )
    with pytest.raises(StreamBroken, match="choice 1 unfinished"):
        _collect(s)
    complete = _stream(
        choice(0, "a", None),
        choice(1, "b", None),
        choice(0, None, "stop"),
        choice(1, None, "length"),
    )
    assert _collect(complete)[-1] == DONE_EVENT


def test_done_without_any_finish_reason_is_broken() -> None:
    """Chunks that never carried a finish_reason do not make a complete answer."""
    usage_only = b'data: {"choices": [], "usage": {"prompt_tokens": 1}}\n\n'
    with pytest.raises(StreamBroken, match="without a finish_reason"):
        _collect(_stream(usage_only, b"data: [DONE]\n\n"))


def test_line_longer_than_the_reader_allows_is_broken() -> None:
    """A reader that refuses an over-long line breaks the stream instead of escaping as a crash."""
    from aiohttp.http_exceptions import LineTooLong

    async def readline() -> bytes:
        raise LineTooLong(b"x" * 10, "1024")

    s = SSEStream(readline, deployment="d", first_timeout=1, idle_timeout=1)
    with pytest.raises(StreamBroken, match="LineTooLong"):
        _collect(s)


def test_close_callback_runs_once() -> None:
    """aclose releases the upstream exactly once, however often it is called."""
    closed: list[int] = []
    s = SSEStream(
        _source(_chunk(finish="stop")),
        deployment="d",
        first_timeout=1,
        idle_timeout=1,
        on_close=lambda: closed.append(1),
    )

    async def run() -> None:
        async for _ in s:
            pass
        await s.aclose()
        await s.aclose()

    asyncio.run(run())
    assert closed == [1]


def test_slow_consumer_is_not_mistaken_for_a_stall() -> None:
    """Time the caller spends between events does not count against the upstream's idle limit."""
    s = _stream(_chunk("a"), _chunk("b"), _chunk(finish="stop"), b"data: [DONE]\n\n", idle=0.05)

    async def run() -> list[bytes]:
        out = []
        async for event in s:
            out.append(event)
            await asyncio.sleep(0.12)  # the relay is slow to write to the caller
        return out

    assert asyncio.run(run())[-1] == DONE_EVENT


def test_outside_cancellation_is_not_turned_into_a_timeout() -> None:
    """Cancelling the reading task (caller gone) propagates as cancellation, not as an error."""
    s = _stream(_chunk("a"), 5.0, _chunk(finish="stop"), idle=10.0)

    async def run() -> None:
        async def consume() -> None:
            async for _ in s:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


def test_stall_is_detected_on_every_event_not_only_the_first() -> None:
    """The watchdog re-arms: a stall after several prompt events is still caught."""
    s = _stream(
        _chunk("a"), 0.01, _chunk("b"), 0.01, _chunk("c"), 0.5, _chunk(finish="stop"), idle=0.1
    )
    with pytest.raises(StreamBroken, match="after 3 chunks"):
        _collect(s)


def test_a_finished_stream_that_falls_silent_is_finalised_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every choice finished, then neither [DONE] nor the end: the stream completes after
    FINISH_GRACE (not the idle timeout), as a success with a [DONE]."""
    import gateway.providers.sse as sse

    monkeypatch.setattr(sse, "FINISH_GRACE", 0.05)
    s = _stream(_chunk("a"), _chunk(finish="stop"), 5.0, idle=10.0)

    async def run() -> tuple[list[bytes], float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        events = [event async for event in s]
        return events, loop.time() - started

    events, elapsed = asyncio.run(run())
    assert events[-1] == DONE_EVENT and s.state.done
    assert elapsed < 2.0


def test_an_unfinished_stream_that_falls_silent_is_still_broken_after_idle() -> None:
    """Without a finish_reason the grace does not apply: a stall is a broken stream."""
    s = _stream(_chunk("a"), 5.0, idle=0.05)
    with pytest.raises(StreamBroken, match="stalled"):
        _collect(s)
