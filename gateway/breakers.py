"""Per-deployment circuit breakers: pybreaker's state machine, driven from asyncio.

Each deployment has a :class:`Breaker`. Its state (closed, open, half-open) lives in a
``pybreaker.CircuitBreaker``: every transition is one of pybreaker's ``open()`` /
``half_open()`` / ``close()`` calls, and a ``CircuitBreakerListener`` relays pybreaker's
``state_change`` events back to us, where they are de-duplicated, logged and counted. What
pybreaker does not do for an asyncio gateway, we do around it. How each pitfall is handled:

1. **``call_async`` needs Tornado.** We never call ``call``/``call_async``. The executor asks
   :meth:`Breaker.allow` before an attempt and reports the attempt's outcome afterwards
   (:meth:`~Breaker.success`, :meth:`~Breaker.failure`, :meth:`~Breaker.cancelled`), so any
   awaitable works, including a stream whose outcome is known only at its last chunk.
2. **The decorator does not count coroutine failures** (decorating an ``async def`` wraps the
   call that *creates* the coroutine, which "succeeds" before it ran). No decorator: outcomes
   are reported explicitly, after the ``await``.
3. **Half-open admits everyone** until the first result comes back. :meth:`Breaker.allow`
   reserves one of ``half_open_trials`` slots per trial; the trial's outcome releases it, and
   further requests are refused while every slot is taken.
4. **A cancelled task counts as a failure** (pybreaker catches ``BaseException``, so
   ``CancelledError`` too). :meth:`Breaker.cancelled` only releases a trial slot; caller errors
   (``error_class == "caller_error"``) are treated the same way. Neither ever counts.
5. **Any success resets the consecutive-failure counter**, so a deployment failing every other
   request never trips. The consecutive rule stays (it reacts fastest to a hard outage); the
   *rate* rule (:meth:`Breaker.judge_rate`) trips on the health window's failure rate over
   ``min_volume`` requests, which a flapping deployment cannot hide from.
6. **pybreaker's open timer is fixed, on the wall clock, and only checked inside ``call``.** We
   keep ``open_until`` on the injected monotonic clock, growing by ``backoff`` per consecutive
   trip (capped at ``open_max``, jittered by ``± jitter``), and move open → half-open when
   someone looks after it has passed (:meth:`Breaker.allow`, :meth:`Breaker.refresh`, so also
   the health snapshot) or when a probe succeeds.
7. **pybreaker notifies every assignment**, even open → open. The relay reports a transition
   only when the state we show changes.
8. **Late outcomes.** An LLM call can outlive a whole open → half-open cycle (30 s timeouts
   against a 5 s open time); counting its failure in the next half-open phase would re-open the
   breaker, and its success would close it without a real trial. So :meth:`Breaker.allow`
   returns a *permit* (the phase number, truthy; ``0`` = refused) and an outcome counts only in
   the phase that admitted it. pybreaker's own counters and storage are unused (its Redis
   storage makes blocking calls on every state read).

Counting, phase by phase:

1. **Closed**: a counted failure adds to ``consecutive_failures``, a success resets it;
   ``consecutive_failures`` in a row trip the breaker. :meth:`Breaker.judge_rate` (called by the
   owner after a failure, with the window's requests and error rate, caller errors excluded, and
   the window's length) trips when requests ≥ ``min_volume`` and error rate ≥ ``failure_rate``.
   For one window's length after the breaker closed, the outcomes it counted since then must
   fail at least that often too: the window still holds the failures from before the last trip,
   and a recovered deployment must not re-trip on them. After that the window holds nothing
   older than the close, so its figures alone decide (the counts since the close would, after
   hours of healthy traffic, outvote any brownout).
2. **Open** for ``open_for * backoff^(trips in a row - 1)``, capped at ``open_max``, times
   ``1 ± jitter`` (never above ``open_max``). Nothing is admitted.
3. **Half-open** after that time or after a successful probe: up to ``half_open_trials``
   concurrent trials. A failed trial re-opens (the next open time is longer); ``close_after``
   successful trials close it and reset the open time to ``open_for``. A probe moves open →
   half-open only: a cheap ``GET /models`` proves less than a real completion, so only a trial
   closes the breaker.
4. **Forced** by an operator (:meth:`Breaker.force`): ``open`` and ``drained`` (same effect,
   a distinct name: "taken out on purpose") admit nothing; ``closed`` admits everything and
   counts nothing; ``auto`` returns to an automatic, closed breaker with a reset open time.
   Remote trips, probes and rate judgements leave a forced breaker alone.
5. **Remote**: :meth:`Breaker.remote_open` opens the breaker until ``until`` (local monotonic
   seconds: a publisher sends the remaining time, not its own clock) because another replica
   tripped it; the half-open trials after that are this replica's own.

Use from the executor (single event loop; no awaits, no locks on the hot path)::

    breaker = breakers.get(name)
    permit = breaker.allow(now)          # 0: skip this deployment
    ... attempt ...
    breaker.success(permit, now) | breaker.failure(permit, error.health_class, now)
    | breaker.cancelled(permit)
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

import pybreaker
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.logs import get_logger
from gateway.units import parse_duration
from health.snapshot import BreakerState
from health.store import ProbeResult

__all__ = [
    "CALLER_ERROR",
    "DENIED",
    "FORCE_MODES",
    "STATES",
    "Breaker",
    "BreakerSettings",
    "BreakerTransition",
    "Breakers",
    "Permit",
]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half-open"
FORCED_OPEN: Final = "forced-open"
DRAINED: Final = "drained"
FORCED_CLOSED: Final = "forced-closed"
STATES: tuple[BreakerState, ...] = (CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DRAINED, FORCED_CLOSED)
FORCE_MODES: Final = ("open", "closed", "drained", "auto")
CALLER_ERROR: Final = "caller_error"  # health class of the caller's own fault: never counts

Permit = int  # the phase that admitted an attempt; falsy (DENIED) when refused
DENIED: Final = 0

_FROM_PYBREAKER: Mapping[str, BreakerState] = {
    pybreaker.STATE_CLOSED: CLOSED,
    pybreaker.STATE_OPEN: OPEN,
    pybreaker.STATE_HALF_OPEN: HALF_OPEN,
}
_FORCED: Mapping[str, BreakerState] = {
    "open": FORCED_OPEN,
    "drained": DRAINED,
    "closed": FORCED_CLOSED,
}
_DURATIONS = frozenset({"open_for", "open_max"})


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a breaker trips and how long it stays open (see the module docstring)."""

    consecutive_failures: int = 5
    failure_rate: float = 0.5  # of the window's requests, caller errors excluded
    min_volume: int = 20  # window requests needed before the rate rule applies
    open_for: float = 5.0  # seconds, first trip
    open_max: float = 120.0  # seconds, cap of the growing open time
    backoff: float = 2.0  # open time multiplier per consecutive trip
    jitter: float = 0.2  # ± fraction of the open time
    half_open_trials: int = 1  # concurrent trial requests in half-open
    close_after: int = 1  # trial successes that close the breaker

    def __post_init__(self) -> None:
        for name in ("consecutive_failures", "min_volume", "half_open_trials", "close_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"breaker {name} must be an integer >= 1, got {value!r}")
        for name in ("failure_rate", "open_for", "open_max", "backoff", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"breaker {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"breaker {name} must be finite, got {value!r}")
        if not 0 < self.failure_rate <= 1:
            raise ValueError(f"breaker failure_rate must be in (0, 1], got {self.failure_rate!r}")
        if self.open_for <= 0:
            raise ValueError(f"breaker open_for must be > 0 seconds, got {self.open_for!r}")
        if self.open_max < self.open_for:
            raise ValueError(
                f"breaker open_max ({self.open_max!r}) must be >= open_for ({self.open_for!r})"
            )
        if self.backoff < 1:
            raise ValueError(f"breaker backoff must be >= 1, got {self.backoff!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"breaker jitter must be in [0, 1), got {self.jitter!r}")

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> BreakerSettings:
        """Settings from a policy's free-form ``breaker:`` section; ``open_for``/``open_max``
        accept human durations (``"5s"``). Unknown keys and bad values raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(
                f"unknown breaker setting(s) {', '.join(map(repr, unknown))}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {
            key: parse_duration(value) if key in _DURATIONS else value
            for key, value in section.items()
        }
        return cls(**values)


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One state change, as the ``on_change`` hooks receive it. Times: monotonic seconds.

    ``remote`` marks an open caused by another replica (do not publish it again); publish
    ``open_until - at`` (the remaining open time), never ``open_until`` itself.
    """

    name: str
    old: BreakerState
    new: BreakerState
    reason: str
    at: float
    open_until: float | None = None
    remote: bool = False


class _Relay(pybreaker.CircuitBreakerListener):
    """pybreaker listener: forwards ``state_change`` to the owning :class:`Breaker`."""

    def __init__(self, owner: Breaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._owner._observed(_FROM_PYBREAKER[new_state.name])


class Breaker:
    """One deployment's breaker. Call it from one event loop; every method is synchronous."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        now: float = 0.0,
        rng: random.Random | None = None,
        on_change: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = s = settings or BreakerSettings()
        self._rng = rng or random.Random()
        self._on_change = on_change
        self._cb = pybreaker.CircuitBreaker(
            fail_max=s.consecutive_failures,
            reset_timeout=s.open_for,
            success_threshold=s.close_after,
            listeners=[_Relay(self)],
            name=name,
        )
        self._state: BreakerState = CLOSED  # mirror of pybreaker's state, or the forced one
        self._admit_all = True  # closed or forced-closed: the one check allow() makes then
        self._forced: BreakerState | None = None
        self._epoch: Permit = 1  # phase number; bumped by every transition
        self._since = now
        self._open_until: float | None = None
        self._next_open = s.open_for  # un-jittered open time of the next trip
        self._streak = 0  # trips since the breaker last closed from half-open
        self._consecutive = 0
        self._seen = 0  # counted outcomes since entering closed (rate rule, first window)
        self._failed = 0
        self._trials = 0  # trials in flight (half-open)
        self._trial_ok = 0
        self.trips = 0  # local trips (remote opens are not trips of ours)
        self.last_trip_reason: str | None = None
        self._pending: tuple[str, float, bool] = ("", now, False)

    # --- reading -------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state as last moved; see :meth:`refresh` for one that honours the clock."""
        return self._state

    @property
    def open_until(self) -> float | None:
        """When an automatic open ends (monotonic seconds); ``None`` unless open."""
        return self._open_until

    @property
    def since(self) -> float:
        return self._since

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def pybreaker(self) -> pybreaker.CircuitBreaker:
        """The underlying state machine (read it; move it only through this class)."""
        return self._cb

    def refresh(self, now: float) -> BreakerState:
        """The state at ``now``: an open breaker whose time is up moves to half-open first."""
        if self._state == OPEN and self._open_until is not None and now >= self._open_until:
            self._move(HALF_OPEN, None, "open time elapsed", now)
        return self._state

    def describe(self, now: float) -> dict[str, Any]:
        """The breaker as ``GET /admin/deployments`` shows it."""
        state = self.refresh(now)
        until = self._open_until
        return {
            "state": state,
            "since": self._since,
            "in_state_s": round(now - self._since, 3),
            "open_until": until,
            "reopens_in_s": None if until is None else round(max(0.0, until - now), 3),
            "trips": self.trips,
            "trips_in_a_row": self._streak,
            "consecutive_failures": self._consecutive,
            "trials_in_flight": self._trials,
            "next_open_s": self._next_open,
            "last_trip_reason": self.last_trip_reason,
        }

    # --- the hot path --------------------------------------------------------------------

    def can_admit(self, now: float) -> bool:
        """Would :meth:`allow` admit an attempt now? (Reserves nothing: for choosing where the
        next attempt goes.)"""
        if self._admit_all:
            return True
        state = self._state
        if state == OPEN:
            return self._open_until is not None and now >= self._open_until
        return state == HALF_OPEN and self._trials < self.settings.half_open_trials

    def allow(self, now: float) -> Permit:
        """May an attempt start now? A truthy permit to pass to the outcome, or ``DENIED``.

        Closed: one attribute test. Half-open: reserves a trial slot, which the attempt's
        outcome (success, failure or cancellation) must release."""
        if self._admit_all:
            return self._epoch
        state = self._state
        if state == OPEN:
            if self._open_until is None or now < self._open_until:
                return DENIED
            self._move(HALF_OPEN, None, "open time elapsed", now)
            state = self._state
        if state == HALF_OPEN and self._trials < self.settings.half_open_trials:
            self._trials += 1
            return self._epoch
        return DENIED

    def success(self, permit: Permit, now: float) -> None:
        """The attempt admitted with ``permit`` succeeded."""
        if permit != self._epoch:
            return  # admitted in an earlier phase (or refused): does not count now
        state = self._state
        if state == CLOSED:
            self._consecutive = 0
            self._seen += 1
        elif state == HALF_OPEN:
            self._trials -= 1
            self._trial_ok += 1
            if self._trial_ok >= self.settings.close_after:
                self._streak = 0
                self._next_open = self.settings.open_for
                n = self._trial_ok
                self._move(CLOSED, None, f"{n} trial{'s' if n > 1 else ''} succeeded", now)

    def failure(self, permit: Permit, error_class: str, now: float) -> None:
        """The attempt admitted with ``permit`` failed with ``error_class`` (a health class;
        ``"caller_error"`` never counts)."""
        if permit != self._epoch:
            return
        state = self._state
        if error_class == CALLER_ERROR:
            if state == HALF_OPEN:
                self._trials -= 1
            return
        if state == CLOSED:
            self._consecutive += 1
            self._seen += 1
            self._failed += 1
            if self._consecutive >= self.settings.consecutive_failures:
                self._trip(f"{self._consecutive} consecutive failures (last: {error_class})", now)
        elif state == HALF_OPEN:
            self._trials -= 1
            self._trip(f"half-open trial failed ({error_class})", now)

    def cancelled(self, permit: Permit) -> None:
        """The attempt admitted with ``permit`` was cancelled: counts nothing, frees its slot."""
        if permit == self._epoch and self._state == HALF_OPEN:
            self._trials -= 1

    # --- other inputs --------------------------------------------------------------------

    def judge_rate(self, requests: int, error_rate: float, now: float, *, window: float) -> None:
        """Trip on the health window's figures (requests without caller errors, their failure
        rate) if they reach ``min_volume`` / ``failure_rate``. ``window`` is the seconds those
        figures cover: until the breaker has been closed that long, they may include failures
        from before it closed, so the outcomes counted since the close must agree (fail at
        least ``failure_rate`` of the time). Closed, automatic breakers only."""
        s = self.settings
        if self._state != CLOSED or requests < s.min_volume or error_rate < s.failure_rate:
            return
        if now - self._since < window and (
            self._failed == 0 or self._failed < s.failure_rate * self._seen
        ):
            return  # the window may still remember the time before the close
        self._trip(f"error rate {error_rate:.0%} over {requests} requests", now)

    def probe(self, ok: bool, now: float) -> None:
        """An active probe's result: a success moves an open breaker to half-open at once (only
        a trial closes it). A failed probe changes nothing (status and ejection use it)."""
        if ok and self._state == OPEN:
            self._move(HALF_OPEN, None, "probe succeeded", now)

    def remote_open(self, until: float, reason: str, now: float) -> None:
        """Another replica tripped this deployment: stay open until ``until`` (local monotonic
        seconds). Ignored when forced, and when ``until`` is already past."""
        if self._forced is not None or until <= now:
            return
        if self._state == OPEN:
            if self._open_until is None or until > self._open_until:
                self._open_until = until
            return
        self.last_trip_reason = f"remote: {reason}"
        self._move(OPEN, None, f"remote: {reason}", now, open_until=until, remote=True)

    def force(self, mode: str, now: float) -> None:
        """Operator override: ``open``, ``closed``, ``drained`` or ``auto`` (back to automatic:
        closed, with the open time reset)."""
        if mode == "auto":
            self._streak = 0
            self._next_open = self.settings.open_for
            self._move(CLOSED, None, "automatic again (operator)", now)
            return
        forced = _FORCED.get(mode)
        if forced is None:
            raise ValueError(
                f"unknown breaker mode {mode!r}; expected one of {', '.join(FORCE_MODES)}"
            )
        target: BreakerState = CLOSED if forced == FORCED_CLOSED else OPEN
        self._move(target, forced, f"{forced} by operator", now)

    # --- transitions ---------------------------------------------------------------------

    def _trip(self, reason: str, now: float) -> None:
        s = self.settings
        base = self._next_open
        self._next_open = min(s.open_max, base * s.backoff)
        duration = min(s.open_max, base * (1 + s.jitter * self._rng.uniform(-1.0, 1.0)))
        self._streak += 1
        self.trips += 1
        self.last_trip_reason = reason
        self._move(OPEN, None, reason, now, open_until=now + duration)

    def _move(
        self,
        target: BreakerState,
        forced: BreakerState | None,
        reason: str,
        now: float,
        *,
        open_until: float | None = None,
        remote: bool = False,
    ) -> None:
        """Reset the phase's counters and move pybreaker; :meth:`_observed` does the rest."""
        self._forced = forced
        self._open_until = open_until if forced is None else None
        self._consecutive = self._seen = self._failed = 0
        self._trials = self._trial_ok = 0
        self._pending = (reason, now, remote)
        if target == OPEN:
            self._cb.open()
        elif target == HALF_OPEN:
            self._cb.half_open()
        else:
            self._cb.close()

    def _observed(self, automatic: BreakerState) -> None:
        """pybreaker changed state (through :class:`_Relay`): mirror it and report it."""
        old = self._state
        new = self._forced or automatic
        self._epoch += 1  # outcomes of attempts admitted before now no longer count
        self._state = new
        self._admit_all = new in (CLOSED, FORCED_CLOSED)
        if new == old:
            return
        reason, now, remote = self._pending
        self._since = now
        if self._on_change is not None:
            transition = BreakerTransition(
                self.name, old, new, reason, now, self._open_until, remote
            )
            self._on_change(transition)


class Breakers:
    """Every deployment's breaker, created on first use; logs and counts their transitions.

    ``state`` fits ``HealthMonitor.breaker_state``, ``admin`` fits ``HealthMonitor.extra``,
    ``on_probe`` fits ``Prober(on_result=...)``; ``metrics`` feeds ``/metrics``.
    """

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        *,
        overrides: Mapping[str, BreakerSettings] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._default = settings or BreakerSettings()
        self._overrides = dict(overrides or {})
        self._clock = clock
        self._rng = rng or random.Random()
        self._breakers: dict[str, Breaker] = {}
        self.on_change: list[Callable[[BreakerTransition], None]] = []
        self.transitions: dict[tuple[str, BreakerState], int] = {}
        self._log = get_logger("gateway.breaker")

    def get(self, name: str) -> Breaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = Breaker(
                name,
                self._overrides.get(name, self._default),
                now=self._clock(),
                rng=self._rng,
                on_change=self._record,
            )
        return breaker

    @property
    def names(self) -> list[str]:
        return list(self._breakers)

    def state(self, name: str) -> BreakerState:
        """``name``'s state now (an elapsed open time shows, and moves, as half-open)."""
        breaker = self._breakers.get(name)
        return CLOSED if breaker is None else breaker.refresh(self._clock())

    def admin(self, name: str) -> dict[str, Any]:
        """``{"breaker": ...}`` for ``GET /admin/deployments``."""
        return {"breaker": self.get(name).describe(self._clock())}

    def on_probe(self, name: str, result: ProbeResult) -> None:
        self.get(name).probe(result.ok, self._clock())

    def force(self, name: str, mode: str) -> None:
        self.get(name).force(mode, self._clock())

    def _record(self, t: BreakerTransition) -> None:
        key = (t.name, t.new)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        log = self._log.warning if t.new == OPEN else self._log.info
        log(
            "breaker state changed",
            deployment=t.name,
            old=t.old,
            new=t.new,
            reason=t.reason,
            open_for_s=None if t.open_until is None else round(t.open_until - t.at, 3),
            remote=t.remote,
        )
        for hook in self.on_change:
            try:
                hook(t)
            except Exception:  # a hook must never break the request that caused the change
                self._log.exception("breaker hook error", deployment=t.name)

    def metrics(self) -> list[Metric]:
        transitions = CounterMetricFamily(
            "llm_gateway_breaker_transitions",
            "Breaker state changes, by deployment and the state entered.",
            labels=["deployment", "state"],
        )
        for (name, new), n in sorted(self.transitions.items()):
            transitions.add_metric([name, new], n)
        state = GaugeMetricFamily(
            "llm_gateway_breaker_state",
            "1 for the state each deployment's breaker is in, 0 for the others.",
            labels=["deployment", "state"],
        )
        for name in sorted(self._breakers):
            current = self.state(name)
            for s in STATES:
                state.add_metric([name, s], 1.0 if s == current else 0.0)
        return [transitions, state]
