"""Server-sent events from an upstream, checked event by event.

:class:`SSEStream` reads raw lines from any source (an aiohttp response, the simulated provider),
assembles complete events, checks that each ``data:`` payload is JSON, keeps the stream's
:class:`StreamState` current and enforces the first-token and idle timeouts. It is the one place
that decides whether a stream ended well:

- ``data: [DONE]`` ends it;
- the source ending after a chunk carried a ``finish_reason`` ends it too, and a ``[DONE]`` is
  added so the caller's client sees a proper end;
- anything else (connection cut, stall past the idle timeout, an event that is not JSON, an
  in-band ``error`` event) raises :class:`StreamBroken`, or :class:`ProviderTimeout` when the first
  event never came. A truncated answer is never passed off as complete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from gateway.errors import ProviderError, ProviderTimeout, StreamBroken
from gateway.providers.base import DONE_EVENT, StreamState, Usage

ReadLine = Callable[[], Awaitable[bytes]]


class SSEStream:
    """An upstream SSE stream as validated, complete events (see the module docstring)."""

    __slots__ = (
        "_closed",
        "_deadline",
        "_deployment",
        "_expired",
        "_finished",
        "_first_timeout",
        "_idle_timeout",
        "_on_close",
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

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> bytes:
        if self._finished:
            raise StopAsyncIteration
        first = self.state.chunks == 0
        limit = self._first_timeout if first else self._idle_timeout
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
        except (aiohttp.ClientError, OSError) as exc:
            await self.aclose()
            raise StreamBroken(
                f"stream cut after {self.state.chunks} chunks: {type(exc).__name__}",
                deployment=self._deployment,
            ) from None
        if data is None:  # the source ended
            await self.aclose()
            if self.state.finish_reason is not None:
                self._finished = True
                self.state.done = True
                return DONE_EVENT
            raise StreamBroken(
                f"stream ended without finishing after {self.state.chunks} chunks",
                deployment=self._deployment,
            )
        if data == b"[DONE]":
            self._finished = True
            self.state.done = True
            await self.aclose()
            return DONE_EVENT
        self._inspect(data)
        self.state.chunks += 1
        return b"data: " + data + b"\n\n"

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
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    self.state.finish_reason = choice["finish_reason"]
        usage = event.get("usage")
        if usage:
            self.state.usage = Usage.from_openai(usage)

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
