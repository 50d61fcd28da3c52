"""Hedged first attempts: a second try elsewhere when the first is slow, the first answer wins.

Configured per route in the policy (``hedge: {after: 2s}``, or ``after: p95`` for the first
deployment's own p95 latency — time to first token for streams). Off unless configured: a
request without it never creates a task.

1. Start the first attempt.
2. If it has not answered (a whole answer, or a stream's first event) within ``after``, and a
   second usable deployment exists, and the retry budget grants a token, start a second attempt
   there. A hedge spends a token although it goes to a deployment not yet tried (a fail-over
   there would be free): it does not move the request but adds speculative load beside it.
3. The first attempt to answer wins; the other is cancelled (its slot and breaker permit come
   back; a cancellation never counts against a deployment). An answer that arrives while the
   winner is being chosen is closed and released.
4. If one fails, wait for the other; if both fail, the later failure is raised (the retry chain
   then goes on from there, with both deployments tried).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from policies.units import parse_duration

T = TypeVar("T")


def hedge_delay(section: Mapping[str, Any] | None, p95: float | None) -> float | None:
    """Seconds to wait before hedging, from a route's ``hedge:`` section; ``None``: no hedging.

    ``after`` is a duration, or ``p95`` (the first deployment's p95; no hedge until it has one).
    Raises ``ValueError`` naming the problem (the policy loader reports it with file and line).
    """
    if not section:
        return None
    unknown = sorted(str(k) for k in section if k != "after")
    if unknown:
        raise ValueError(f"hedge: unknown setting(s) {', '.join(unknown)}; accepted: after")
    after = section.get("after")
    if after is None:
        raise ValueError("hedge: `after` is required (a duration such as '2s', or 'p95')")
    if after == "p95":
        return p95
    try:
        seconds = parse_duration(after)
    except ValueError as exc:
        raise ValueError(f"hedge.after: {exc}; or 'p95'") from None
    if seconds <= 0:
        raise ValueError("hedge.after must be greater than zero")
    return seconds


async def hedged(
    first: Callable[[], Awaitable[T]],
    second: Callable[[], Awaitable[T] | None],
    after: float,
    discard: Callable[[T], Awaitable[None]],
) -> T:
    """Run ``first``; after ``after`` seconds without an answer, also ``second()`` (which may
    return ``None``: no second attempt possible); return the first answer. ``discard`` closes
    an answer that lost the race."""
    one = asyncio.ensure_future(first())
    try:
        done, _ = await asyncio.wait({one}, timeout=after)
    except BaseException:
        one.cancel()
        await asyncio.gather(one, return_exceptions=True)
        raise
    if done:
        return one.result()
    started = second()
    if started is None:
        return await one
    two = asyncio.ensure_future(started)
    pending = {one, two}
    failure: BaseException | None = None
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            winner = None
            for task in done:
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is None and winner is None:
                    winner = task
                elif exc is None:
                    await discard(task.result())  # a second answer in the same instant
                else:
                    failure = exc
            if winner is not None:
                return winner.result()
        assert failure is not None
        raise failure
    finally:
        for task in pending:
            task.cancel()
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            for result in results:
                if not isinstance(result, BaseException):
                    await discard(result)
