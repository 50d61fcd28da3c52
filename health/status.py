"""A deployment's status — healthy, degraded, unhealthy or ejected — with the reason, in words.

:func:`derive` is pure: the same window figures and probe history give the same answer on every
replica, so a fleet that shares both (Redis mode) agrees on every deployment's status.

1. **Probes first**: replay the history oldest → newest as the threshold state machine.
   ``unhealthy_threshold`` failures in a row eject ("3 probes failed: connection refused");
   only ``healthy_threshold`` successes in a row bring an ejected deployment back, and a failure
   in between starts the count again ("recovering: 1 of 2 probes passed"): a deployment that
   flaps ok / failed after an ejection stays ejected. The replay starts "not ejected" at the
   oldest result the store keeps (:data:`health.store.PROBE_HISTORY` of them).
2. **Error rate** over the window, once it holds at least ``min_requests`` judged requests
   (caller errors are not the deployment's fault and do not count):
   ≥ ``unhealthy_error_rate`` ⇒ ``unhealthy``; ≥ ``degraded_error_rate`` ⇒ ``degraded``.
3. **Latency**: when ``degraded_latency`` is set and the window's p95 exceeds it, over at least
   ``min_requests`` ⇒ ``degraded`` (one slow answer is not a trend).
4. **A failed last probe** (below the threshold) ⇒ ``degraded``.
5. Otherwise ``healthy``; the reason still gives the figures it was judged on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from health.store import ProbeResult
from health.window import CALLER_ERROR, WindowStats

State = Literal["healthy", "degraded", "unhealthy", "ejected"]
STATES: tuple[State, ...] = ("healthy", "degraded", "unhealthy", "ejected")


@dataclass(frozen=True, slots=True)
class StatusSettings:
    min_requests: int = 10
    degraded_error_rate: float = 0.1
    unhealthy_error_rate: float = 0.5
    degraded_latency: float | None = None  # seconds of p95; None: latency never degrades
    healthy_threshold: int = 2  # consecutive probe successes to come back from ejected
    unhealthy_threshold: int = 3  # consecutive probe failures to eject


@dataclass(frozen=True, slots=True)
class Status:
    state: State
    reason: str


def _leading(probes: Sequence[ProbeResult], ok: bool) -> int:
    n = 0
    for probe in probes:
        if probe.ok is not ok:
            break
        n += 1
    return n


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _rate(stats: WindowStats) -> str:
    judged = stats.requests - stats.error_count(CALLER_ERROR)
    text = (
        f"error rate {stats.error_rate:.0%} over {_plural(judged, 'request')} "
        f"in {stats.window_seconds:g} s"
    )
    top = [(n, name) for name, n in stats.errors if name != CALLER_ERROR]
    if top:
        top.sort(reverse=True)
        text += " (" + ", ".join(f"{n} {name}" for n, name in top[:3]) + ")"
    return text


def _ejected(probes: Sequence[ProbeResult], settings: StatusSettings) -> bool:
    """Whether the probe history (newest first) leaves the deployment ejected now."""
    ejected = False
    failed = passed = 0
    for probe in reversed(probes):
        if probe.ok:
            passed, failed = passed + 1, 0
            if passed >= settings.healthy_threshold:
                ejected = False
        else:
            passed, failed = 0, failed + 1
            if failed >= settings.unhealthy_threshold:
                ejected = True
    return ejected


def derive(stats: WindowStats, probes: Sequence[ProbeResult], settings: StatusSettings) -> Status:
    """The status of one deployment from its window and its probe history (newest first)."""
    failed = _leading(probes, ok=False)
    if _ejected(probes, settings):
        if failed >= settings.unhealthy_threshold:
            return Status("ejected", f"{_plural(failed, 'probe')} failed: {probes[0].detail}")
        need = settings.healthy_threshold
        if failed:  # flapping: a failure broke the run of successes that would bring it back
            return Status(
                "ejected",
                f"recovering: 0 of {need} probes passed; last probe failed: {probes[0].detail}",
            )
        passed = _leading(probes, ok=True)
        before = _leading(probes[passed:], ok=False)
        return Status(
            "ejected",
            f"recovering: {passed} of {need} probes passed after "
            f"{before} failed ({probes[passed].detail})",
        )
    judged = stats.requests - stats.error_count(CALLER_ERROR)
    if judged >= settings.min_requests:
        if stats.error_rate >= settings.unhealthy_error_rate:
            return Status("unhealthy", _rate(stats))
        if stats.error_rate >= settings.degraded_error_rate:
            return Status("degraded", _rate(stats))
    p95 = stats.latency.p95
    limit = settings.degraded_latency
    if limit is not None and p95 is not None and p95 > limit and judged >= settings.min_requests:
        return Status("degraded", f"p95 latency {p95 * 1000:.0f} ms is above {limit * 1000:.0f} ms")
    if failed:
        return Status("degraded", f"last probe failed: {probes[0].detail}")
    if judged == 0:
        reason = f"no requests in the last {stats.window_seconds:g} s"
    elif judged < settings.min_requests:
        reason = f"{_rate(stats)}; too few requests to judge (fewer than {settings.min_requests})"
    else:
        reason = _rate(stats)
    if probes:
        reason += "; last probe ok"
    return Status("healthy", reason)
