"""Hedged first attempts: the second starts only after the delay; the first answer wins; the
loser is cancelled or, if it answered too, discarded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.hedging import hedge_delay, hedged


class Leg:
    """A fake attempt: answers ``value`` (or raises it) after ``delay`` seconds."""

    def __init__(self, delay: float, value: Any) -> None:
        self.delay, self.value = delay, value
        self.started = self.cancelled = False

    async def __call__(self) -> Any:
        self.started = True
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def _run(first: Leg, second: Leg | None, after: float) -> tuple[Any, list[Any]]:
    discarded: list[Any] = []

    async def discard(value: Any) -> None:
        discarded.append(value)

    async def go() -> Any:
        return await hedged(first, (lambda: second()) if second else (lambda: None), after, discard)

    try:
        return asyncio.run(go()), discarded
    except Exception as exc:
        return exc, discarded


def test_a_fast_first_attempt_never_starts_the_second() -> None:
    first, second = Leg(0.01, "a"), Leg(0.01, "b")
    result, _ = _run(first, second, after=0.2)
    assert result == "a" and not second.started


def test_a_slow_first_attempt_loses_to_the_hedge_and_is_cancelled() -> None:
    first, second = Leg(1.0, "a"), Leg(0.01, "b")
    result, discarded = _run(first, second, after=0.05)
    assert result == "b" and first.cancelled and discarded == []


def test_when_the_hedge_fails_the_first_attempt_still_answers() -> None:
    first, second = Leg(0.2, "a"), Leg(0.01, RuntimeError("b down"))
    result, _ = _run(first, second, after=0.05)
    assert result == "a"


def test_when_both_fail_the_later_failure_is_raised() -> None:
    first, second = Leg(0.1, RuntimeError("a down")), Leg(0.2, RuntimeError("b down"))
    result, _ = _run(first, second, after=0.05)
    assert isinstance(result, RuntimeError) and str(result) == "b down"


def test_no_second_deployment_means_waiting_for_the_first() -> None:
    first = Leg(0.1, "a")
    result, _ = _run(first, None, after=0.01)
    assert result == "a"


@pytest.mark.parametrize(
    ("section", "p95", "expected"),
    [
        (None, 1.0, None),
        ({}, 1.0, None),
        ({"after": "250ms"}, None, 0.25),
        ({"after": 2}, None, 2.0),
        ({"after": "p95"}, 0.8, 0.8),
        ({"after": "p95"}, None, None),
    ],
)
def test_hedge_delay_reads_the_route_section(
    section: Any, p95: float | None, expected: float | None
) -> None:
    assert hedge_delay(section, p95) == expected


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"after": "soon"}, "hedge.after"),
        ({"after": 0}, "greater than zero"),
        ({"delay": "1s"}, "unknown setting"),
        ({"after": None}, "`after` is required"),
    ],
)
def test_bad_hedge_sections_say_what_is_wrong(section: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hedge_delay(section, None)
