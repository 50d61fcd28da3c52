"""Per-deployment circuit breakers: every transition, on an injected clock (no sleeps)."""

from __future__ import annotations

import math
import random
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from gateway.breakers import (
    DENIED,
    STATES,
    Breaker,
    Breakers,
    BreakerSettings,
    BreakerTransition,
)
from health.store import ProbeResult
from health.window import RollingWindow

NO_JITTER = BreakerSettings(jitter=0.0)
WINDOW = 60.0  # seconds covered by the health window figures passed to judge_rate


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(settings: BreakerSettings = NO_JITTER, **kw: Any) -> tuple[Breaker, list[Any]]:
    events: list[BreakerTransition] = []
    breaker = Breaker("a", settings, now=0.0, on_change=events.append, **kw)
    return breaker, events


def fail(b: Breaker, n: int, now: float = 0.0, error: str = "server_error") -> None:
    for _ in range(n):
        b.failure(b.allow(now), error, now)


def trip(b: Breaker, now: float = 0.0) -> None:
    fail(b, b.settings.consecutive_failures, now)
    assert b.state == "open"


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("consecutive_failures", 0),
        ("consecutive_failures", True),
        ("consecutive_failures", 2.5),
        ("min_volume", 0),
        ("half_open_trials", 0),
        ("close_after", 0),
        ("failure_rate", 0),
        ("failure_rate", 1.5),
        ("failure_rate", math.nan),
        ("open_for", 0),
        ("open_for", math.inf),
        ("open_max", 1.0),  # below open_for
        ("backoff", 0.5),
        ("jitter", 1.0),
        ("jitter", -0.1),
        ("jitter", "0.1"),
    ],
)
def test_invalid_settings_raise_value_error_naming_the_field(field: str, value: Any) -> None:
    """Each bad value is refused with a message naming the setting."""
    with pytest.raises(ValueError, match=field):
        BreakerSettings(**{field: value})


def test_settings_from_mapping_parse_durations_and_refuse_unknown_keys() -> None:
    """A policy's breaker section: human durations accepted, unknown keys named."""
    s = BreakerSettings.from_mapping({"open_for": "250ms", "open_max": "1m", "close_after": 2})
    assert (s.open_for, s.open_max, s.close_after) == (0.25, 60.0, 2)
    with pytest.raises(ValueError, match="'open_fr'"):
        BreakerSettings.from_mapping({"open_fr": "5s"})


# --- closed: the two trip rules --------------------------------------------------------------


def test_consecutive_failures_trip_the_breaker() -> None:
    """N failures in a row open it; N - 1 do not."""
    b, events = make()
    fail(b, 4)
    assert (b.state, b.consecutive_failures) == ("closed", 4)
    fail(b, 1, now=3.0, error="timeout")
    assert b.state == "open"
    assert b.open_until == 8.0  # 3 + open_for, no jitter
    assert b.trips == 1
    assert b.last_trip_reason == "5 consecutive failures (last: timeout)"
    assert [(e.old, e.new, e.at) for e in events] == [("closed", "open", 3.0)]
    assert b.pybreaker.current_state == "open"  # pybreaker holds the state


def test_success_resets_the_consecutive_count() -> None:
    """A success between failures restarts the count (the rate rule covers flapping)."""
    b, _ = make()
    fail(b, 4)
    b.success(b.allow(0.0), 0.0)
    fail(b, 4)
    assert (b.state, b.consecutive_failures) == ("closed", 4)


def test_rate_rule_trips_a_flapping_deployment() -> None:
    """Alternating success/failure never trips on consecutive failures, but the rate does."""
    b, _ = make()
    for _ in range(20):
        b.success(b.allow(0.0), 0.0)
        fail(b, 1)
    assert b.state == "closed"
    b.judge_rate(19, 0.5, 1.0, window=WINDOW)  # below min_volume
    b.judge_rate(40, 0.49, 1.0, window=WINDOW)  # below failure_rate
    assert b.state == "closed"
    b.judge_rate(20, 0.5, 1.0, window=WINDOW)
    assert b.state == "open"
    assert b.last_trip_reason == "error rate 50% over 20 requests"


def test_rate_rule_ignores_window_failures_from_before_the_last_close() -> None:
    """A recovered deployment whose fresh outcomes mostly succeed does not re-trip on the stale
    failures still in the window."""
    b, _ = make()
    trip(b)
    b.success(b.allow(10.0), 10.0)  # half-open trial closes it
    assert b.state == "closed"
    for _ in range(9):
        b.success(b.allow(11.0), 11.0)
    fail(b, 1, now=11.0)
    b.judge_rate(40, 0.6, 11.0, window=WINDOW)
    assert b.state == "closed"
    fail(b, 9, now=12.0, error="timeout")  # now the fresh outcomes fail half the time
    b.success(b.allow(12.0), 12.0)  # (keeps the consecutive rule out of it)
    b.judge_rate(40, 0.6, 12.0, window=WINDOW)
    assert b.state == "open"


def test_rate_rule_boundary_is_one_window_after_the_close() -> None:
    """Closed for less than the window: the counts since the close must agree. From then on the
    window's figures alone decide, still over min_volume and failure_rate."""
    b, _ = make()
    trip(b)
    b.success(b.allow(10.0), 10.0)  # closed at 10
    for _ in range(9):
        b.success(b.allow(11.0), 11.0)
    fail(b, 1, now=11.0)  # since the close: 1 failure in 10
    b.judge_rate(40, 0.6, 69.999, window=WINDOW)
    assert b.state == "closed"
    b.judge_rate(19, 1.0, 70.0, window=WINDOW)  # below min_volume
    b.judge_rate(40, 0.49, 70.0, window=WINDOW)  # below failure_rate
    assert b.state == "closed"
    b.judge_rate(40, 0.6, 70.0, window=WINDOW)
    assert b.state == "open"
    assert b.last_trip_reason == "error rate 60% over 40 requests"


@pytest.mark.parametrize("healthy_before", [0, 100, 1_000, 72_000])
def test_rate_rule_trips_a_long_healthy_deployment_once_the_window_shows_the_rate(
    healthy_before: int,
) -> None:
    """However long a deployment was healthy, a 60% brownout trips its breaker at the first
    failure after which the window (5 s x 12, as the executor feeds it) reaches min_volume and
    failure_rate: the outcomes counted since the close, hours of them, do not outvote it."""
    clock = Clock(0.0)
    window = RollingWindow(buckets=12, width=5.0, clock=clock)
    b, _ = make()
    rate = 20.0  # requests per second
    for _ in range(healthy_before):
        b.success(b.allow(clock.t), clock.t)
        window.success(0.05)
        clock.t += 1 / rate
    pattern = (False, True, False, False, True)  # 60% failures, never 5 in a row
    for n in range(int(20 * 60 * rate)):  # 20 minutes of brownout at most
        now = clock.t
        ok = pattern[n % len(pattern)]
        permit = b.allow(now)
        if ok:
            b.success(permit, now)
            window.success(0.05)
        else:
            b.failure(permit, "server_error", now)
            window.failure("server_error")
            stats = window.stats()
            b.judge_rate(stats.requests, stats.error_rate, now, window=stats.window_seconds)
            if stats.requests >= 20 and stats.error_rate >= 0.5:
                break  # the first time the window's figures qualify
            assert b.state == "closed"
        clock.t += 1 / rate
    assert b.state == "open"
    assert b.last_trip_reason is not None and b.last_trip_reason.startswith("error rate")
    assert clock.t - healthy_before / rate <= window.window_seconds  # within one window


def test_caller_errors_and_cancellations_never_count() -> None:
    """They neither add to nor reset the consecutive count, and never feed the rate rule."""
    b, _ = make()
    fail(b, 4)
    for _ in range(10):
        b.failure(b.allow(0.0), "caller_error", 0.0)
        b.cancelled(b.allow(0.0))
    assert (b.state, b.consecutive_failures) == ("closed", 4)
    fail(b, 1)
    assert b.state == "open"

    c, _ = make()
    for _ in range(30):
        c.failure(c.allow(0.0), "caller_error", 0.0)
    c.judge_rate(30, 1.0, 0.0, window=WINDOW)  # no counted failure of its own: no trip
    assert c.state == "closed"


# --- open and half-open ----------------------------------------------------------------------


def test_open_refuses_until_its_time_then_half_opens_on_allow() -> None:
    """Open admits nothing before open_until; the first allow after it half-opens."""
    b, events = make()
    trip(b)
    assert b.allow(4.999) == DENIED
    permit = b.allow(5.0)
    assert permit
    assert b.state == "half-open"
    assert b.pybreaker.current_state == "half-open"
    assert events[-1].reason == "open time elapsed"


def test_refresh_moves_an_elapsed_open_breaker_to_half_open() -> None:
    """Looking at the state after open_until shows half-open (so the engine ranks it again)."""
    b, _ = make()
    trip(b)
    assert b.refresh(4.0) == "open"
    assert b.refresh(5.0) == "half-open"


@pytest.mark.parametrize("trials", [1, 3])
def test_half_open_admits_exactly_the_configured_concurrent_trials(trials: int) -> None:
    """N trials may be in flight; the next is refused until one finishes."""
    b, _ = make(BreakerSettings(jitter=0.0, half_open_trials=trials, close_after=trials + 1))
    trip(b)
    permits = [b.allow(5.0) for _ in range(trials)]
    assert all(permits)
    assert b.allow(5.0) == DENIED
    b.success(permits[0], 5.1)
    assert b.state == "half-open"
    assert b.allow(5.1)
    assert b.allow(5.1) == DENIED


@pytest.mark.parametrize(
    "finish",
    [
        lambda b, p: b.cancelled(p),
        lambda b, p: b.failure(p, "caller_error", 6.0),
    ],
    ids=["cancelled", "caller-error"],
)
def test_uncounted_trial_outcomes_free_the_slot_and_keep_half_open(finish: Any) -> None:
    """A cancelled or caller-error trial neither opens nor closes; another trial may start."""
    b, _ = make()
    trip(b)
    permit = b.allow(5.0)
    assert b.allow(5.0) == DENIED
    finish(b, permit)
    assert b.state == "half-open"
    assert b.allow(6.0)


def test_close_after_trial_successes_closes_and_resets_the_open_time() -> None:
    """close_after successes are needed; closing resets the backoff to open_for."""
    b, events = make(BreakerSettings(jitter=0.0, close_after=2))
    trip(b)
    b.success(b.allow(5.0), 5.0)
    assert b.state == "half-open"
    b.failure(b.allow(5.0), "timeout", 5.0)  # re-open: 10 s this time
    assert b.open_until == 15.0
    b.success(b.allow(15.0), 15.0)
    b.success(b.allow(15.0), 16.0)
    assert b.state == "closed"
    assert events[-1].reason == "2 trials succeeded"
    assert b.pybreaker.current_state == "closed"
    trip(b, now=20.0)
    assert b.open_until == 25.0  # back to open_for


def test_reopen_time_grows_and_is_capped() -> None:
    """Each failed trial doubles the open time, up to open_max."""
    b, _ = make(BreakerSettings(jitter=0.0, open_for=5.0, open_max=60.0, backoff=2.0))
    trip(b)
    durations = [b.open_until]
    now = 0.0
    for _ in range(6):
        now = b.open_until or 0.0
        b.failure(b.allow(now), "timeout", now)
        durations.append((b.open_until or 0.0) - now)
    assert durations == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert b.last_trip_reason == "half-open trial failed (timeout)"
    assert b.trips == 7


def test_open_time_is_jittered_within_bounds_and_reproducible_with_a_seed() -> None:
    """Jitter spreads open times by ± jitter, never above open_max; a seed repeats them."""
    settings = BreakerSettings(open_for=10.0, open_max=40.0, backoff=2.0, jitter=0.2)

    def run(seed: int) -> list[float]:
        b = Breaker("a", settings, rng=random.Random(seed))
        now, out = 0.0, []
        trip(b)
        for _ in range(5):
            out.append((b.open_until or 0.0) - now)
            now = b.open_until or 0.0
            b.failure(b.allow(now), "timeout", now)
        return out

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    for got, nominal in zip(first, [10.0, 20.0, 40.0, 40.0, 40.0], strict=True):
        assert nominal * 0.8 - 1e-9 <= got <= min(40.0, nominal * 1.2) + 1e-9
    assert len(set(first)) == len(first)  # jitter applied every time


def test_late_outcomes_from_an_earlier_phase_do_not_count() -> None:
    """An attempt admitted before the trip that ends during half-open neither re-opens nor
    closes the breaker, nor frees the trial's slot."""
    b, _ = make()
    stragglers = [b.allow(0.0) for _ in range(3)]
    trip(b)
    trial = b.allow(5.0)
    b.failure(stragglers[0], "timeout", 6.0)
    b.success(stragglers[1], 6.0)
    b.cancelled(stragglers[2])
    assert b.state == "half-open"
    assert b.allow(6.0) == DENIED  # the real trial still holds the slot
    b.success(trial, 7.0)
    assert b.state == "closed"


def test_judge_rate_applies_to_the_closed_state_only() -> None:
    """The rate rule does not act in half-open (the trials decide there)."""
    b, _ = make()
    trip(b)
    b.failure(b.allow(5.0), "timeout", 5.0)  # re-opened, then half-open again:
    b.allow(15.0)
    b.judge_rate(100, 1.0, 15.0, window=0.0)  # (the figures alone would decide in closed)
    assert b.state == "half-open"


# --- probes, operators, other replicas --------------------------------------------------------


def test_successful_probe_half_opens_an_open_breaker_but_never_closes_it() -> None:
    """ok → half-open at once; only a trial success closes; failed probes change nothing."""
    b, events = make()
    trip(b)
    b.probe(False, 1.0)
    assert b.state == "open"
    b.probe(True, 1.0)
    assert b.state == "half-open"
    assert events[-1].reason == "probe succeeded"
    b.probe(True, 1.5)
    assert b.state == "half-open"
    b.success(b.allow(2.0), 2.0)
    assert b.state == "closed"
    b.probe(False, 3.0)
    assert b.state == "closed"


@pytest.mark.parametrize(
    ("mode", "state", "admits", "pybreaker_state"),
    [
        ("open", "forced-open", False, "open"),
        ("drained", "drained", False, "open"),
        ("closed", "forced-closed", True, "closed"),
    ],
)
def test_forced_modes_hold_until_auto(
    mode: str, state: str, admits: bool, pybreaker_state: str
) -> None:
    """A forced breaker ignores outcomes, rates, probes and remote trips; auto closes it."""
    b, events = make()
    b.force(mode, 1.0)
    assert b.state == state
    assert bool(b.allow(1000.0)) is admits
    assert b.pybreaker.current_state == pybreaker_state
    fail(b, 20, now=2.0)
    b.judge_rate(100, 1.0, 2.0, window=1.0)  # (the window's figures alone would trip)
    b.probe(True, 2.0)
    b.remote_open(50.0, "tripped elsewhere", 2.0)
    b.force(mode, 3.0)  # same mode again: no new event
    assert b.state == state
    assert [e.new for e in events] == [state]
    assert events[0].reason == f"{state} by operator"
    b.force("auto", 4.0)
    assert b.state == "closed"
    assert b.allow(4.0)


def test_auto_closes_an_open_breaker_and_resets_the_backoff() -> None:
    """auto is also the operator's reset: closed, open time back to open_for."""
    b, _ = make()
    trip(b)
    b.failure(b.allow(5.0), "timeout", 5.0)  # next open time would be 20 s
    b.force("auto", 6.0)
    assert b.state == "closed"
    assert b.open_until is None
    trip(b, now=7.0)
    assert b.open_until == 12.0


def test_forcing_an_unknown_mode_raises() -> None:
    """Only open/closed/drained/auto are modes."""
    b, _ = make()
    with pytest.raises(ValueError, match="'half-open'"):
        b.force("half-open", 0.0)
    assert b.state == "closed"


def test_remote_open_opens_until_the_given_time_then_trials_are_local() -> None:
    """Another replica's trip opens this breaker; it is not a local trip; trials follow."""
    b, events = make()
    b.remote_open(20.0, "5 consecutive failures", 10.0)
    assert b.state == "open"
    assert (b.open_until, b.trips) == (20.0, 0)
    assert events[-1].remote is True
    assert events[-1].reason == "remote: 5 consecutive failures"
    b.remote_open(25.0, "again", 11.0)  # extends
    b.remote_open(21.0, "older", 11.0)  # never shortens
    assert b.open_until == 25.0
    assert len(events) == 1
    assert b.allow(24.9) == DENIED
    permit = b.allow(25.0)
    assert permit and b.state == "half-open"
    b.failure(permit, "timeout", 26.0)  # a local re-open, published by the owner
    assert events[-1].remote is False
    assert b.open_until == 31.0


def test_remote_open_in_the_past_is_ignored() -> None:
    """A stale message (until already passed) changes nothing."""
    b, events = make()
    b.remote_open(5.0, "old", 10.0)
    assert b.state == "closed"
    assert events == []


# --- the registry -----------------------------------------------------------------------------


def test_registry_state_shows_elapsed_open_time_as_half_open() -> None:
    """state() suits HealthMonitor.breaker_state: unknown names are closed, time is honoured."""
    clock = Clock()
    reg = Breakers(NO_JITTER, clock=clock)
    assert reg.state("nobody") == "closed"
    assert reg.names == []
    trip(reg.get("a"), now=clock.t)
    assert reg.state("a") == "open"
    clock.t += 5.0
    assert reg.state("a") == "half-open"


def test_registry_logs_counts_and_reports_each_transition_once() -> None:
    """One log event and one count per state change; hooks get a BreakerTransition."""
    clock = Clock(0.0)
    reg = Breakers(NO_JITTER, clock=clock)
    seen: list[BreakerTransition] = []
    reg.on_change.append(seen.append)
    with capture_logs() as logs:
        b = reg.get("a")
        trip(b)
        reg.on_probe("a", ProbeResult(at=0.0, ok=True, latency=0.01, detail="ok"))
        b.success(b.allow(1.0), 1.0)
        reg.force("a", "drained")
        reg.force("a", "drained")
    changes = [e for e in logs if e["event"] == "breaker state changed"]
    assert [(e["old"], e["new"]) for e in changes] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
        ("closed", "drained"),
    ]
    assert changes[0]["log_level"] == "warning"
    assert changes[0]["open_for_s"] == 5.0
    assert changes[0]["deployment"] == "a"
    assert [(t.old, t.new) for t in seen] == [(e["old"], e["new"]) for e in changes]
    assert reg.transitions == {
        ("a", "open"): 1,
        ("a", "half-open"): 1,
        ("a", "closed"): 1,
        ("a", "drained"): 1,
    }


def test_a_failing_hook_does_not_break_the_caller() -> None:
    """A hook that raises is logged; the transition still happens and is counted."""
    reg = Breakers(NO_JITTER, clock=Clock(0.0))

    def boom(_: BreakerTransition) -> None:
        raise RuntimeError("hook failed")

    reg.on_change.append(boom)
    with capture_logs() as logs:
        trip(reg.get("a"))
    assert reg.transitions == {("a", "open"): 1}
    assert any(e["event"] == "breaker hook error" for e in logs)


def test_registry_applies_per_deployment_overrides() -> None:
    """A deployment with its own settings gets them; others get the default."""
    reg = Breakers(
        NO_JITTER, overrides={"b": BreakerSettings(consecutive_failures=2)}, clock=Clock(0.0)
    )
    fail(reg.get("a"), 2)
    fail(reg.get("b"), 2)
    assert (reg.state("a"), reg.state("b")) == ("closed", "open")


def test_admin_fields_describe_the_breaker() -> None:
    """``admin`` suits HealthMonitor.extra: state, times, trips, counts, last reason."""
    clock = Clock(100.0)
    reg = Breakers(NO_JITTER, clock=clock)
    trip(reg.get("a"), now=100.0)
    clock.t = 102.0
    info = reg.admin("a")["breaker"]
    assert info["state"] == "open"
    assert info["since"] == 100.0
    assert info["open_until"] == 105.0
    assert info["reopens_in_s"] == 3.0
    assert info["trips"] == 1
    assert info["consecutive_failures"] == 0
    assert info["last_trip_reason"] == "5 consecutive failures (last: server_error)"


def test_metrics_expose_transitions_and_a_one_hot_state_gauge() -> None:
    """/metrics: llm_gateway_breaker_transitions_total and llm_gateway_breaker_state."""
    clock = Clock(0.0)
    reg = Breakers(NO_JITTER, clock=clock)
    trip(reg.get("a"))
    reg.get("b")
    families = {f.name: f for f in reg.metrics()}
    state = families["llm_gateway_breaker_state"]
    ones = {(s.labels["deployment"], s.labels["state"]) for s in state.samples if s.value == 1.0}
    assert ones == {("a", "open"), ("b", "closed")}
    assert len(state.samples) == 2 * len(STATES)

    class Collector:
        def collect(self) -> Any:
            return reg.metrics()

    registry = CollectorRegistry()
    registry.register(Collector())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'llm_gateway_breaker_transitions_total{deployment="a",state="open"} 1.0' in text
    assert re.search(r"^# TYPE llm_gateway_breaker_transitions(_total)? counter$", text, re.M)
    assert re.search(r"^# TYPE llm_gateway_breaker_state gauge$", text, re.M)
