"""health.status.derive: window figures + probe history (newest first) → state and reason."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from health.status import STATES, StatusSettings, derive
from health.store import ProbeResult
from health.window import RollingWindow, WindowStats

NOW = 1_000_000.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stats(
    *, ok: int = 0, errors: dict[str, int] | None = None, latency: float = 0.05
) -> WindowStats:
    """Figures of a real 12 x 5 s window after ``ok`` answers and ``errors`` by class."""
    window = RollingWindow(buckets=12, width=5.0, clock=FakeClock())
    for _ in range(ok):
        window.success(latency)
    for error_class, n in (errors or {}).items():
        for _ in range(n):
            window.failure(error_class)
    return window.stats()


def up() -> ProbeResult:
    return ProbeResult(NOW, True, 0.01, "ok")


def down(detail: str = "connection refused") -> ProbeResult:
    return ProbeResult(NOW, False, None, detail)


def history(spec: str) -> tuple[ProbeResult, ...]:
    """Probe history from a string, newest first: ``"+--"`` is one pass after two failures."""
    return tuple(up() if c == "+" else down() for c in spec)


@dataclass(frozen=True)
class Case:
    id: str
    stats: WindowStats
    state: str
    reason: str | None = None  # the exact reason, when the case pins it
    contains: tuple[str, ...] = ()
    probes: str = ""
    settings: StatusSettings = field(default_factory=StatusSettings)


CASES = [
    Case("no traffic", stats(), "healthy", reason="no requests in the last 60 s"),
    Case(
        "below min_requests",
        stats(ok=5, errors={"server_error": 4}),
        "healthy",
        reason=(
            "error rate 44% over 9 requests in 60 s (4 server_error); "
            "too few requests to judge (fewer than 10)"
        ),
    ),
    Case(
        "exactly min_requests is judged",
        stats(errors={"server_error": 10}),
        "unhealthy",
        reason="error rate 100% over 10 requests in 60 s (10 server_error)",
    ),
    Case(
        "just below degraded rate",
        stats(ok=10, errors={"server_error": 1}),
        "healthy",
        reason="error rate 9% over 11 requests in 60 s (1 server_error)",
    ),
    Case(
        "exactly at degraded rate",
        stats(ok=9, errors={"server_error": 1}),
        "degraded",
        reason="error rate 10% over 10 requests in 60 s (1 server_error)",
    ),
    Case(
        "just below unhealthy rate",
        stats(ok=6, errors={"timeout": 5}),
        "degraded",
        contains=("error rate 45% over 11 requests",),
    ),
    Case(
        "exactly at unhealthy rate",
        stats(ok=5, errors={"timeout": 5}),
        "unhealthy",
        reason="error rate 50% over 10 requests in 60 s (5 timeout)",
    ),
    Case(
        "custom thresholds",
        stats(ok=16, errors={"rate_limited": 4}),
        "unhealthy",
        settings=StatusSettings(
            min_requests=20, degraded_error_rate=0.05, unhealthy_error_rate=0.2
        ),
    ),
    Case(
        "caller errors only",
        stats(errors={"caller_error": 100}),
        "healthy",
        reason="no requests in the last 60 s",
    ),
    Case(
        "caller errors beside answers",
        stats(ok=20, errors={"caller_error": 100}),
        "healthy",
        reason="error rate 0% over 20 requests in 60 s",
    ),
    Case(
        "caller errors leave the rate alone",
        stats(ok=8, errors={"server_error": 2, "caller_error": 100}),
        "degraded",
        reason="error rate 20% over 10 requests in 60 s (2 server_error)",
    ),
    Case(
        "reason names rate, count, window and top three classes",
        stats(ok=15, errors={"server_error": 20, "timeout": 3, "rate_limited": 1, "connection": 1}),
        "unhealthy",
        reason=(
            "error rate 62% over 40 requests in 60 s (20 server_error, 3 timeout, 1 rate_limited)"
        ),
    ),
    Case(
        "slow p95",
        stats(ok=20, latency=1.0),
        "degraded",
        reason="p95 latency 990 ms is above 500 ms",
        settings=StatusSettings(degraded_latency=0.5),
    ),
    Case(
        "fast p95",
        stats(ok=20, latency=0.1),
        "healthy",
        settings=StatusSettings(degraded_latency=0.5),
    ),
    Case("latency unset never degrades", stats(ok=20, latency=100.0), "healthy"),
    Case(
        "error rate wins over latency",
        stats(ok=5, errors={"server_error": 5}, latency=1.0),
        "unhealthy",
        settings=StatusSettings(degraded_latency=0.5),
    ),
    Case(
        "last probe failed",
        stats(),
        "degraded",
        reason="last probe failed: connection refused",
        probes="-+",
    ),
    Case(
        "two failures are below the threshold",
        stats(ok=20),
        "degraded",
        reason="last probe failed: connection refused",
        probes="--",
    ),
    Case(
        "unhealthy error rate wins over a failed probe",
        stats(errors={"server_error": 10}),
        "unhealthy",
        probes="-",
    ),
    Case(
        "threshold failures eject",
        stats(ok=20),
        "ejected",
        reason="3 probes failed: connection refused",
        probes="---",
    ),
    Case(
        "more failures say how many",
        stats(),
        "ejected",
        reason="4 probes failed: connection refused",
        probes="----+",
    ),
    Case(
        "probe ejection wins over error rate",
        stats(errors={"server_error": 50}),
        "ejected",
        reason="3 probes failed: connection refused",
        probes="---",
    ),
    Case(
        "one pass after ejection is not enough",
        stats(ok=20),
        "ejected",
        contains=("recovering: 1 of 2 probes passed", "after 3 failed", "connection refused"),
        probes="+---",
    ),
    Case(
        "healthy_threshold passes bring it back",
        stats(ok=20),
        "healthy",
        reason="error rate 0% over 20 requests in 60 s; last probe ok",
        probes="++---",
    ),
    Case(
        "flapping after ejection stays ejected (pass)",
        stats(),
        "ejected",
        contains=("recovering: 1 of 2 probes passed",),
        probes="+-+---",
    ),
    Case(
        "flapping after ejection stays ejected (fail)",
        stats(),
        "ejected",
        reason="recovering: 0 of 2 probes passed; last probe failed: connection refused",
        probes="-+---",
    ),
    Case(
        "a failure after recovery is only a failed probe",
        stats(),
        "degraded",
        reason="last probe failed: connection refused",
        probes="-++---",
    ),
    Case(
        "probe thresholds come from settings",
        stats(),
        "ejected",
        reason="2 probes failed: connection refused",
        probes="--",
        settings=StatusSettings(unhealthy_threshold=2),
    ),
    Case(
        "healthy_threshold of one recovers on one pass",
        stats(),
        "healthy",
        probes="+---",
        settings=StatusSettings(healthy_threshold=1),
    ),
    Case(
        "healthy with probes says the last probe passed",
        stats(),
        "healthy",
        reason="no requests in the last 60 s; last probe ok",
        probes="+",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_derive(case: Case) -> None:
    """Each row: window figures and probes give the expected state and reason."""
    status = derive(case.stats, history(case.probes), case.settings)
    assert status.state == case.state, status.reason
    assert status.state in STATES
    if case.reason is not None:
        assert status.reason == case.reason
    for text in case.contains:
        assert text in status.reason


def test_ejected_reason_quotes_the_newest_failure() -> None:
    """The ejection reason carries the detail of the newest failed probe."""
    probes = (down("HTTP 503"), down("connection refused"), down("connection refused"))
    status = derive(stats(), probes, StatusSettings())
    assert status == derive(stats(), probes, StatusSettings())  # pure: same in, same out
    assert status.reason == "3 probes failed: HTTP 503"


def test_p95_equal_to_the_limit_is_not_above_it() -> None:
    """Latency degrades only when p95 is strictly above ``degraded_latency``."""
    figures = stats(ok=20, latency=0.5)
    p95 = figures.latency.p95
    assert p95 is not None
    assert derive(figures, (), StatusSettings(degraded_latency=p95)).state == "healthy"
    assert derive(figures, (), StatusSettings(degraded_latency=p95 * 0.99)).state == "degraded"


def test_errors_that_age_out_of_the_window_stop_counting() -> None:
    """A burst of errors makes a deployment unhealthy until the window slides past it."""
    clock = FakeClock()
    window = RollingWindow(buckets=12, width=5.0, clock=clock)
    for _ in range(20):
        window.failure("server_error")
    settings = StatusSettings()
    assert derive(window.stats(), (), settings).state == "unhealthy"
    clock.now += 55  # still inside the 60 s window
    assert derive(window.stats(), (), settings).state == "unhealthy"
    clock.now += 5
    status = derive(window.stats(), (), settings)
    assert status.state == "healthy"
    assert status.reason == "no requests in the last 60 s"
