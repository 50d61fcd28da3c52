"""Fault selection of the simulated provider: windows, request ranges, seeded rates, refusals."""

from __future__ import annotations

from gateway.providers.simulated.schedule import FaultSchedule
from gateway.providers.simulated.settings import Fault


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _kinds(schedule: FaultSchedule, n: int, *, stream: bool = False) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(n):
        fault = schedule.select(stream=stream)
        out.append(fault.kind if fault is not None else None)
    return out


def test_empty_schedule_selects_nothing_but_counts_requests() -> None:
    """Without faults every request is served normally and still counted."""
    schedule = FaultSchedule(())
    assert _kinds(schedule, 3) == [None, None, None]
    assert schedule.served == 3


def test_window_applies_from_start_inclusive_to_end_exclusive() -> None:
    """A fault with start/end applies at start, inside, and not at end or before start."""
    clock = FakeClock()
    schedule = FaultSchedule((Fault(kind="reset", start=1.0, end=2.0),), clock=clock)
    seen = []
    for elapsed in (0.0, 0.999, 1.0, 1.5, 1.999, 2.0, 5.0):
        clock.now = 100.0 + elapsed
        fault = schedule.select(stream=False)
        seen.append(fault is not None)
    assert seen == [False, False, True, True, True, False, False]


def test_open_ended_windows_cover_everything_on_their_open_side() -> None:
    """Only `end` means from the start until end; only `start` means from start on, forever."""
    clock = FakeClock()
    schedule = FaultSchedule(
        (Fault(kind="reset", end=1.0), Fault(kind="hang", start=3.0)), clock=clock
    )
    kinds = []
    for elapsed in (0.0, 0.5, 1.0, 2.9, 3.0, 1000.0):
        clock.now = 100.0 + elapsed
        kinds.extend(_kinds(schedule, 1))
    assert kinds == ["reset", "reset", None, None, "hang", "hang"]


def test_after_skips_the_first_requests_and_count_caps_the_hits() -> None:
    """`after: 2, count: 3` hits requests #3, #4 and #5 only."""
    schedule = FaultSchedule((Fault(kind="status", status=500, after=2, count=3),))
    assert _kinds(schedule, 7) == [None, None, "status", "status", "status", None, None]


def test_first_matching_fault_wins_and_the_next_takes_over_when_it_is_spent() -> None:
    """List order decides; a spent fault lets the next matching one apply."""
    schedule = FaultSchedule(
        (Fault(kind="status", status=429, count=2), Fault(kind="status", status=500, count=1))
    )
    statuses = []
    for _ in range(4):
        fault = schedule.select(stream=False)
        statuses.append(fault.status if fault is not None else None)
    assert statuses == [429, 429, 500, None]


def test_seeded_rate_is_reproducible_and_roughly_honoured() -> None:
    """The same seed gives the same hits; a rate of 0.3 hits about 30% of 2000 requests."""
    faults = (Fault(kind="reset", rate=0.3),)
    first = _kinds(FaultSchedule(faults, seed=7), 2000)
    again = _kinds(FaultSchedule(faults, seed=7), 2000)
    other = _kinds(FaultSchedule(faults, seed=8), 2000)
    assert first == again
    assert first != other
    assert 500 < first.count("reset") < 700


def test_rate_zero_never_hits_and_rate_one_always_hits() -> None:
    """The bounds of `rate` are exact."""
    assert _kinds(FaultSchedule((Fault(kind="reset", rate=0.0),)), 50) == [None] * 50
    assert _kinds(FaultSchedule((Fault(kind="reset", rate=1.0),)), 50) == ["reset"] * 50


def test_stream_faults_only_match_streaming_requests() -> None:
    """A stream_cut is skipped (and not counted) for a non-streaming request."""
    schedule = FaultSchedule((Fault(kind="stream_cut", count=1), Fault(kind="reset", count=1)))
    assert _kinds(schedule, 1, stream=False) == ["reset"]
    assert _kinds(schedule, 1, stream=True) == ["stream_cut"]
    assert _kinds(schedule, 1, stream=True) == [None]


def test_refusal_reports_window_state_and_the_next_edge() -> None:
    """refusal() says whether a refuse window covers now and when the next edge comes."""
    clock = FakeClock(10.0)
    schedule = FaultSchedule(
        (Fault(kind="refuse", start=1.0, end=2.0), Fault(kind="refuse", start=4.0)), clock=clock
    )
    assert schedule.refusal() == (False, 11.0)
    clock.now = 11.0
    assert schedule.refusal() == (True, 12.0)
    clock.now = 12.5
    assert schedule.refusal() == (False, 14.0)
    clock.now = 14.0
    assert schedule.refusal() == (True, None)


def test_refusal_and_select_agree_on_every_request() -> None:
    """A request is refused exactly while the listener would be closed, even where an earlier
    fault's window overlaps the refusal (a closed port comes before any request-level fault)."""
    clock = FakeClock(0.0)
    faults = (Fault(kind="reset", start=0.0, end=1.0), Fault(kind="refuse", start=0.5, end=2.0))
    schedule = FaultSchedule(faults, clock=clock)
    seen = []
    for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.0, 3.0):
        clock.now = t
        refusing, _ = schedule.refusal()
        fault = schedule.select(stream=False)
        assert refusing == (fault is not None and fault.kind == "refuse"), t
        seen.append(fault.kind if fault is not None else None)
    assert seen == ["reset", "refuse", "refuse", "refuse", "refuse", None, None]
