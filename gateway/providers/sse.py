"""Server-sent events from an upstream, checked event by event.

:class:`SSEStream` reads raw lines from any source (an aiohttp response, the simulated provider),
assembles complete events, checks that each ``data:`` payload is JSON, keeps the stream's
:class:`StreamState` current and enforces the first-token and idle timeouts. It is the one place
that decides whether a stream ended well:

- it ended well when every choice it showed carried a ``finish_reason``; then ``data: [DONE]``
  ends it, and so does the source ending or falling silent for :data:`FINISH_GRACE` seconds (a
  ``[DONE]`` is added so the caller's client sees a proper end, promptly);
- anything else raises :class:`StreamBroken`: ``[DONE]`` or the end of the source while a choice
  is unfinished or before any chunk, a connection cut, a stall past the idle timeout, an event
  that is not JSON, a line too long to read, an in-band ``error`` event; or
  :class:`ProviderTimeout` when the first event never came. A truncated answer is never passed
  off as complete.

Events are relayed as received; a payload that spanned several ``data:`` lines keeps one
``data:`` prefix per line. While reading, the state also keeps choice 0's text and the choices
shown (:class:`StreamState`), which is what :mod:`gateway.continuation` needs to continue the
answer on a fallback if the stream breaks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError

from gateway.errors import ProviderError, ProviderTimeout, StreamBroken
from gateway.providers.base import DONE_EVENT, StreamState, Usage

ReadLine = Callable[[], Awaitable[bytes]]
# Seconds to wait for usage or [DONE] once every choice has finished; then the stream is
# finalised as complete instead of waiting out the idle timeout.
FINISH_GRACE = 2.0


class SSEStream:
    """An upstream SSE stream as validated, complete events (see the module docstring)."""

    __slots__ = (
        "_closed",
        "_deadline",
        "_deployment",
        "_expired",
        "_finished",
        "_finished_choices",
        "_first_timeout",
        "_idle_timeout",
        "_on_close",
        "_open_choices",
        "_reader",
        "_readline",
        "_timer",
        "state",
    )

    def __init__(
        self,
        readline: ReadLine,
        *,
        deployment: str,
        first_timeout: float,
        idle_timeout: float,
        on_close: Callable[[], Any] | None = None,
    ) -> None:
        self._readline = readline
        self._deployment = deployment
        self._first_timeout = first_timeout
        self._idle_timeout = idle_timeout
        self._on_close = on_close
        self._finished = False
        self._closed = False
        self.state = StreamState()
        # One watchdog timer per stream instead of a timeout per event (see _watch).
        self._deadline = 0.0
        self._reader: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        # The state's own sets (shared, not copied), so a continuation can read them.
        self._open_choices = self.state.open_choices
        self._finished_choices = self.state.finished_choices

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> bytes:
        if self._finished:
            raise StopAsyncIteration
        first = self.state.chunks == 0
        limit = self._first_timeout if first else self._idle_timeout
        complete = not first and self._is_complete()
        if complete and limit > FINISH_GRACE:
            limit = FINISH_GRACE  # every choice finished: only usage or [DONE] can still come
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + limit
        self._reader = asyncio.current_task()
        timer = self._timer
        if timer is None or timer.when() > self._deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(self._deadline, self._watch)
        try:
            try:
                data = await self._read_event()
            finally:
                self._reader = None
        except asyncio.CancelledError:
            if not self._expired:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self.aclose()
            if complete:  # the answer is whole; the upstream just never said [DONE]
                self._finished = True
                self.state.done = True
                return DONE_EVENT
            if first:
                raise ProviderTimeout(
                    f"no first token within {limit:g}s", deployment=self._deployment
                ) from None
            raise StreamBroken(
                f"stream stalled: no event for {limit:g}s after {self.state.chunks} chunks",
                deployment=self._deployment,
            ) from None
        except ProviderError:
            await self.aclose()
            raise
        except (aiohttp.ClientError, OSError, HttpProcessingError, ValueError) as exc:
            # ValueError / HttpProcessingError: a line longer than the reader's limit.
            await self.aclose()
            raise StreamBroken(
                f"stream cut after {self.state.chunks} chunks: {type(exc).__name__}",
                deployment=self._deployment,
            ) from None
        if data is None or data == b"[DONE]":
            await self.aclose()
            self._check_complete("[DONE]" if data else "the end of the stream")
            self._finished = True
            self.state.done = True
            return DONE_EVENT
        try:
            self._inspect(data)
        except ProviderError:
            await self.aclose()
            raise
        self.state.chunks += 1
        if b"\n" in data:
            data = data.replace(b"\n", b"\ndata: ")
        return b"data: " + data + b"\n\n"

    def _is_complete(self) -> bool:
        return not self._open_choices and self.state.finish_reason is not None

    def _check_complete(self, what: str) -> None:
        """Raise :class:`StreamBroken` unless every choice shown so far has finished."""
        chunks = self.state.chunks
        if self._open_choices:
            unfinished = ", ".join(str(i) for i in sorted(self._open_choices, key=str))
            raise StreamBroken(
                f"{what} came after {chunks} chunks with choice {unfinished} unfinished",
                deployment=self._deployment,
            )
        if self.state.finish_reason is None:
            raise StreamBroken(
                f"{what} came after {chunks} chunks without a finish_reason",
                deployment=self._deployment,
            )

    def _watch(self) -> None:
        """The watchdog: cancel a read that has waited past its deadline, else re-arm.

        A per-event ``asyncio.timeout`` costs a timer and a context per event; this one timer
        fires at most once per timeout period and is re-armed to the current deadline.
        """
        self._timer = None
        if self._closed or self._reader is None:
            return  # not reading now: the next read arms a fresh timer
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            self._expired = True
            self._reader.cancel()
        else:
            self._timer = loop.call_at(self._deadline, self._watch)

    async def _read_event(self) -> bytes | None:
        """The ``data`` payload of the next event, or ``None`` at the end of the source."""
        parts: list[bytes] = []
        while True:
            line = await self._readline()
            if not line:
                return b"\n".join(parts) if parts else None
            line = line.rstrip(b"\r\n")
            if not line:
                if parts:
                    return b"\n".join(parts)
                continue
            if line.startswith(b"data:"):
                parts.append(line[6:] if line[5:6] == b" " else line[5:])
            # Comments (":"), "event:", "id:" and "retry:" fields carry nothing we relay.

    def _inspect(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise StreamBroken(
                f"malformed stream event after {self.state.chunks} chunks: not JSON",
                deployment=self._deployment,
            ) from None
        if not isinstance(event, dict):
            raise StreamBroken(
                f"malformed stream event after {self.state.chunks} chunks: not an object",
                deployment=self._deployment,
            )
        error = event.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise StreamBroken(
                f"upstream sent an error event: {message}", deployment=self._deployment
            )
        choices = event.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                index = choice.get("index", 0)
                delta = choice.get("delta")
                if delta is None:  # completions: the text is on the choice
                    if index == 0:
                        text = choice.get("text")
                        if text and isinstance(text, str):
                            self.state.text.append(text)
                elif isinstance(delta, dict):
                    if len(delta) > 1 or "content" not in delta:
                        self._other_fields(delta)
                    if index == 0:
                        text = delta.get("content")
                        if text and isinstance(text, str):
                            self.state.text.append(text)
                reason = choice.get("finish_reason")
                if reason:
                    self.state.finish_reason = reason
                    self._finished_choices.add(index)
                    self._open_choices.discard(index)
                elif index not in self._finished_choices:
                    self._open_choices.add(index)
        usage = event.get("usage")
        if usage:
            self.state.usage = Usage.from_openai(usage)

    def _other_fields(self, delta: dict[str, Any]) -> None:
        """Note a delta that carries more than text (tool calls, a refusal, reasoning)."""
        for key, value in delta.items():
            if value is not None and key != "content" and key != "role":
                self.state.non_text = True
                return

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._on_close is not None:
            result = self._on_close()
            if asyncio.iscoroutine(result):
                await result
