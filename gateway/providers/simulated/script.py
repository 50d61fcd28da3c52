"""A streamed answer as a script of SSE lines, and the player that paces it.

The engine builds a :class:`StreamScript` (every ``data:`` line of the answer) and applies a
stream fault to it (:func:`apply_stream_fault`): a cut drops the tail, a stall marks a pause, a
malformed event is inserted, a missing ``[DONE]`` is removed. :class:`ScriptPlayer` then hands out
the lines with the pacing and the pause; the in-process provider reads it through
:class:`gateway.providers.sse.SSEStream`, the standalone server writes it to a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.providers.simulated import render
from gateway.providers.simulated.settings import Fault


@dataclass(slots=True)
class StreamScript:
    """SSE ``data:`` lines (each ends in one ``\\n``; an event is a line plus a blank line).

    Before ``lines[i]`` with ``paced_from <= i < paced_to`` the player waits ``interval``; before
    ``lines[pause_at]`` it waits ``pause`` seconds (``None``: forever). ``cut`` means the source
    ends abruptly after the last line (the server closes the connection mid-body).

    ``tokens[i]`` is the number of completion tokens ``lines[i]`` carries (0 for the role, finish,
    usage and ``[DONE]`` lines); empty when the script's maker did not count them.
    ``prompt_tokens`` is the prompt's size as the usage reports it.
    """

    lines: list[bytes]
    interval: float = 0.0
    paced_from: int = 0
    paced_to: int = 0
    pause_at: int = -1
    pause: float | None = None
    cut: bool = False
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0

    def tokens_before(self, index: int) -> int:
        """Completion tokens carried by ``lines[:index]``."""
        return sum(self.tokens[:index])


async def wait_forever() -> None:
    """Never return (until cancelled)."""
    await asyncio.get_running_loop().create_future()


class ScriptPlayer:
    """Plays a :class:`StreamScript` line by line, with its pacing and its stall."""

    __slots__ = ("_forever", "_index", "_paused", "_script")

    def __init__(
        self, script: StreamScript, *, forever: Callable[[], Awaitable[object]] = wait_forever
    ) -> None:
        self._script = script
        self._index = 0
        self._paused = False
        self._forever = forever

    async def next_line(self) -> bytes | None:
        """The next line, or ``None`` at the end (also when ``forever`` returns during a stall)."""
        script = self._script
        i = self._index
        if i == script.pause_at and not self._paused:
            self._paused = True
            if script.pause is None:
                await self._forever()
                self._index = len(script.lines)
                return None
            await asyncio.sleep(script.pause)
        if i >= len(script.lines):
            return None
        if script.interval and script.paced_from <= i < script.paced_to:
            await asyncio.sleep(script.interval)
        self._index = i + 1
        return script.lines[i]


def apply_stream_fault(script: StreamScript, fault: Fault, at: int) -> None:
    """Change ``script`` so that ``fault`` happens before ``lines[at]``."""
    kind = fault.kind
    if kind == "stream_cut":
        del script.lines[at:]
        del script.tokens[at:]
        script.cut = True
    elif kind == "stream_stall":
        script.pause_at = at
        script.pause = fault.delay
    elif kind == "malformed_chunk":
        script.lines.insert(at, render.MALFORMED_LINE)
        if script.tokens:
            script.tokens.insert(at, 0)
        if at < script.paced_to:
            script.paced_to += 1
    elif kind == "missing_done":
        script.lines.pop()
        if script.tokens:
            script.tokens.pop()
