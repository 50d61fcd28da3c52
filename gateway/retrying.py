"""Retry chains: when to try again, where, and how long to wait first (on tenacity).

The executor walks a plan; this module times the walk. One chain per client request:

1. **Attempt.** The caller makes one attempt inside ``with attempt:``; success ends the chain.
2. **Retry?** Only a :class:`~gateway.errors.ProviderError` whose action is retry-same,
   fail-over or fail-over-to-larger-context (and that the caller's ``should_retry`` does not
   veto). Anything else (the provider's own 4xx, caller errors, cancellation, bugs) propagates
   at once, unchanged.
3. **Remember push-back.** When the failed deployment asked for a pause (a 429 or 503/529 with
   ``Retry-After`` / ``retry-after-ms`` / ``x-ratelimit-reset-*``, at most
   ``retry_after_cap``), the chain notes "not before now + wait" for it. Without a usable wait
   (none, or over the cap) the note is a full-jitter backoff instead; either way at least
   ``base_delay``, so the chain never loops tightly against a deployment that is pushing back.
4. **Where next?** The caller's ``choose_next(error)`` names the deployment of the next attempt
   (it prefers one not yet tried; ``None`` when none is left).
5. **How long?** Until that deployment's "not before" when it pushed back; else full-jitter
   backoff (:func:`backoff`) when it is the deployment that just failed (retry-same); else zero:
   failing over to a fresh deployment is immediate.
6. **Budget?** Only a re-send asks the replica's :class:`RetryBudget`: an attempt on a
   deployment already tried in this request (retry-same after a reset or a 5xx, a return after
   a pause or a backoff). A fail-over to a deployment not yet tried (to a larger context window
   included) moves the request instead of multiplying load on a failing deployment, and is
   bounded per request by the plan and ``max_attempts``: it spends nothing. When the budget
   refuses a re-send, the caller's ``choose_untried()`` names an untried deployment to fail
   over to instead (free, at once); with none, the chain stops.
7. **Stop?** At ``max_attempts``, when no deployment is left, when the wait would reach the
   request's deadline, or when the budget refused a re-send and no untried deployment is left;
   the last error is re-raised. The budget is asked last, so a token is spent only on a re-send
   that happens; ``exhausted`` counts every refusal (whether the request then failed over or
   stopped). The reason is left in ``statistics["stop_reason"]`` of the chain.

Why a fresh :class:`tenacity.AsyncRetrying` per request: the object is not a reusable policy.
``async for`` keeps the running attempt's state (attempt number, outcome, idle time) on the
instance (``_retry_state``), and ``statistics`` / ``iter_state`` live in a ``threading.local``,
which every task on the event loop's thread shares. A second request entering a shared object
clears the first's statistics and replaces its retry state: the first then counts the other's
attempts, sees the other's outcome, and stops early or retries past ``max_attempts``. This
chain also keeps per-request memory (which deployments pushed back, until when). So::

    budget.record_request()
    async for attempt in retrying(settings, deadline=deadline, choose_next=walk.next,
                                  choose_untried=walk.untried, budget=budget):
        with attempt:
            result = await walk.current.provider.send(call)   # one attempt
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from tenacity import AsyncRetrying, RetryCallState

from gateway.errors import Action, ProviderError, RateLimited, parse_retry_after
from policies.units import parse_duration

__all__ = [
    "RetryBudget",
    "RetryDetails",
    "RetrySettings",
    "backoff",
    "is_retryable",
    "rate_limit_wait",
    "retrying",
]

DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_BASE_DELAY = 0.1
DEFAULT_MAX_DELAY = 2.0
DEFAULT_RETRY_AFTER_CAP = 10.0
DEFAULT_SAME_DEPLOYMENT_RETRIES = 1

_RETRYABLE = frozenset({Action.RETRY_SAME, Action.FAIL_OVER, Action.FAIL_OVER_LARGER_CONTEXT})
# Statuses for which HTTP defines Retry-After as "come back later" (RFC 6585, RFC 9110), plus
# Anthropic's 529 "overloaded". Elsewhere a wait is not a request to pause: OpenAI sends
# x-ratelimit-reset-* on every response, a 500 included.
_PUSH_BACK_STATUSES = frozenset({429, 503, 529})


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How a request's retry chain behaves (the policy document's ``retry:`` section).

    ``max_attempts`` counts every attempt of one request, over all deployments (the first
    included). ``retry_after_cap`` is the longest provider-requested pause honoured: beyond it
    the chain fails over instead of waiting (or, with nothing else to try, treats the request
    as absent and backs off). ``same_deployment_retries`` is how many times a retry-same error
    may be retried on the deployment that raised it; the caller's chooser applies it.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP
    same_deployment_retries: int = DEFAULT_SAME_DEPLOYMENT_RETRIES

    def __post_init__(self) -> None:
        for name in ("max_attempts", "same_deployment_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: expected a whole number, got {value!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: must be at least 1, got {self.max_attempts}")
        if self.same_deployment_retries < 0:
            raise ValueError(
                f"same_deployment_retries: cannot be negative, got {self.same_deployment_retries}"
            )
        for name in ("base_delay", "max_delay", "retry_after_cap"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name}: expected a finite, non-negative duration, got {value!r}")
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"max_delay ({self.max_delay}s) is shorter than base_delay ({self.base_delay}s)"
            )

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None) -> RetrySettings:
        """Settings from a policy's ``retry:`` mapping (``None`` or ``{}``: the defaults).

        Durations accept ``"100ms"``, ``"2s"`` or a number of seconds. Errors name the key; an
        unknown key is refused with the accepted ones listed.
        """
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ValueError(f"retry: expected a mapping, got {type(section).__name__}")
        accepted = sorted(f.name for f in fields(cls))
        unknown = sorted(str(k) for k in section if k not in accepted)
        if unknown:
            raise ValueError(
                f"retry: unknown setting{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(f'`{k}`' for k in unknown)}; accepted: {', '.join(accepted)}"
            )
        values: dict[str, Any] = {}
        for key, raw in section.items():
            if key in ("max_attempts", "same_deployment_retries"):
                values[key] = raw
                continue
            try:
                values[key] = parse_duration(raw)
            except ValueError as exc:
                raise ValueError(f"retry.{key}: {exc}") from None
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"retry.{exc}") from None


def is_retryable(error: BaseException) -> bool:
    """A provider error whose class says another attempt (here or elsewhere) can help."""
    return isinstance(error, ProviderError) and error.action in _RETRYABLE


def _pushes_back(error: ProviderError) -> bool:
    return isinstance(error, RateLimited) or error.upstream_status in _PUSH_BACK_STATUSES


def rate_limit_wait(error: ProviderError, headers: Any = None) -> float | None:
    """Seconds the deployment asked us to stay away, or ``None`` when it did not ask.

    From ``headers`` when given (``Retry-After``, ``retry-after-ms``, ``x-ratelimit-reset-*``
    via :func:`~gateway.errors.parse_retry_after`), else the ``retry_after`` the provider
    boundary already parsed into the error. Only for a rate limit or an overload (429, 503,
    529): on other statuses a wait is not a request to pause.
    """
    if not _pushes_back(error):
        return None
    if headers is not None:
        parsed = parse_retry_after(headers)
        if parsed is not None:
            return parsed
    return error.retry_after


def backoff(attempt_number: int, settings: RetrySettings, rng: random.Random) -> float:
    """Full-jitter exponential backoff after failed attempt ``attempt_number`` (1-based):
    uniform over ``[0, min(max_delay, base_delay * 2^(n-1))]`` (spreads retries of many
    clients instead of synchronising them)."""
    exponent = min(max(attempt_number - 1, 0), 64)  # 2**64 * any delay is past any cap
    return rng.uniform(0.0, min(settings.max_delay, settings.base_delay * 2.0**exponent))


class RetryBudget:
    """Fleet-wide limit on retries so an outage cannot turn into a retry storm (Finagle's).

    A storm is re-sending to deployments that are already failing, so the budget is asked only
    for extra load: a re-send to a deployment already tried in the same request (retry-same, a
    return after a pause or a backoff) and a hedge (a speculative second attempt). A fail-over
    to a deployment not yet tried in the request, and a stream's continuation on a deployment
    that did not fail in it, move the request and spend nothing (they are bounded per request
    by the plan and ``max_attempts``, and across requests by the breakers).

    A retry is allowed while the retries in the window, this one included, stay within
    ``ratio * requests in the window + min_per_second * window``; the floor lets a quiet
    gateway still retry. The window slides in ``buckets`` steps: a ring of per-bucket counts
    plus running totals, advanced lazily on each call (O(1) amortised), so an event is
    forgotten between ``window * (1 - 1/buckets)`` and ``window`` after it happened.
    ``exhausted`` counts retries refused (for metrics).
    """

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 1.0,
        window: float = 10.0,
        *,
        buckets: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(ratio) and ratio >= 0):
            raise ValueError(f"ratio: expected a non-negative number, got {ratio!r}")
        if not (math.isfinite(min_per_second) and min_per_second >= 0):
            raise ValueError(
                f"min_per_second: expected a non-negative number, got {min_per_second!r}"
            )
        if not (math.isfinite(window) and window > 0):
            raise ValueError(f"window: expected a positive duration, got {window!r}")
        if buckets < 1:
            raise ValueError(f"buckets: must be at least 1, got {buckets}")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self.exhausted = 0
        self._clock = clock
        self._width = window / buckets
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._total_requests = 0
        self._total_retries = 0
        self._tick = self._now_tick()

    def _now_tick(self) -> int:
        return math.floor(self._clock() / self._width)

    def _slot(self) -> int:
        """The current bucket, after expiring the buckets the window slid past."""
        n = len(self._requests)
        tick = self._now_tick()
        if tick > self._tick:
            if tick - self._tick >= n:
                self._requests = [0] * n
                self._retries = [0] * n
                self._total_requests = self._total_retries = 0
            else:
                for t in range(self._tick + 1, tick + 1):
                    s = t % n
                    self._total_requests -= self._requests[s]
                    self._total_retries -= self._retries[s]
                    self._requests[s] = self._retries[s] = 0
            self._tick = tick
        return self._tick % n

    def _allowance(self) -> float:
        return self.ratio * self._total_requests + self.min_per_second * self.window

    def record_request(self) -> None:
        """Count one client request (call once per request, before its first attempt)."""
        self._requests[self._slot()] += 1
        self._total_requests += 1

    def can_retry(self) -> bool:
        """Whether one more retry fits in the budget now (does not spend it)."""
        self._slot()
        return self._total_retries + 1 <= self._allowance()

    def spend(self) -> None:
        """Count one retry."""
        self._retries[self._slot()] += 1
        self._total_retries += 1

    def try_spend(self) -> bool:
        """Spend a retry when the budget allows it; else count the refusal in ``exhausted``."""
        if self.can_retry():
            self.spend()
            return True
        self.exhausted += 1
        return False

    def describe(self) -> dict[str, Any]:
        """The budget's settings and current state, for ``/admin`` and metrics."""
        self._slot()
        return {
            "ratio": self.ratio,
            "min_per_second": self.min_per_second,
            "window": self.window,
            "requests": self._total_requests,
            "retries": self._total_retries,
            "available": max(0, math.floor(self._allowance()) - self._total_retries),
            "exhausted": self.exhausted,
        }


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """What the ``before_sleep`` hook learns before each retry (one event for the log)."""

    attempt: int  # the attempt that failed (1-based, over the whole request)
    error: ProviderError
    deployment: str  # the deployment that failed
    next_deployment: str
    wait: float  # seconds until the next attempt
    reason: str  # "fail-over", "backoff" (retry-same) or "rate-limited" (it pushed back)


@dataclass(slots=True)
class _Decision:
    attempt: int
    error: ProviderError
    next_deployment: str | None
    wait: float
    reason: str
    stop: str | None  # why the chain ends here (``None``: it goes on)


class _Chain:
    """The per-request state and the tenacity strategies (``retry``, ``wait``, ``stop``,
    ``before_sleep``) built on it. The decision after a failed attempt is made once, by
    whichever strategy tenacity runs first, and shared by the others."""

    def __init__(
        self,
        settings: RetrySettings,
        deadline: float,
        loop_time: Callable[[], float],
        rng: random.Random,
        budget: RetryBudget | None,
        should_retry: Callable[[BaseException], bool] | None,
        choose_next: Callable[[ProviderError], str | None],
        choose_untried: Callable[[], str | None] | None,
        tried: Iterable[str],
        on_retry: Callable[[RetryDetails], None] | None,
    ) -> None:
        self.settings = settings
        self.deadline = deadline
        self.loop_time = loop_time
        self.rng = rng
        self.budget = budget
        self.should_retry = should_retry
        self.choose_next = choose_next
        self.choose_untried = choose_untried
        self.on_retry = on_retry
        self.tried: set[str] = set(tried)  # deployments this request already sent to
        self.not_before: dict[str, float] = {}  # deployment -> loop time it asked us to wait for
        self.decision: _Decision | None = None

    def retry(self, state: RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            return False
        exc = outcome.exception()
        if exc is None or not is_retryable(exc):
            return False
        return self.should_retry is None or self.should_retry(exc)

    def _decide(self, state: RetryCallState) -> _Decision:
        if self.decision is not None and self.decision.attempt == state.attempt_number:
            return self.decision
        assert state.outcome is not None  # tenacity asks only after a failed attempt
        error = state.outcome.exception()
        assert isinstance(error, ProviderError)  # self.retry let only these through
        n, settings, now = state.attempt_number, self.settings, self.loop_time()
        failed = error.deployment
        self.tried.add(failed)
        if _pushes_back(error):
            asked = rate_limit_wait(error)
            if asked is None or asked > settings.retry_after_cap:  # no usable wait: back off
                asked = backoff(n, settings, self.rng)
            # At least base_delay, even for "Retry-After: 0": never a tight loop against it.
            self.not_before[failed] = now + max(asked, settings.base_delay)
        nxt = self.choose_next(error)
        wait, reason, stop = 0.0, "fail-over", None
        if n >= settings.max_attempts:
            stop = "max_attempts"
        elif nxt is None:
            stop = "no_deployment"
        else:
            wait, reason = self._timing(nxt, failed, n, now)
            if now + wait >= self.deadline:
                stop = "deadline"
            elif nxt in self.tried and self.budget is not None and not self.budget.try_spend():
                # a refused re-send: fail over to an untried deployment instead, if one is left
                nxt = self.choose_untried() if self.choose_untried is not None else None
                if nxt is None:
                    stop = "budget"
                else:
                    wait, reason = self._timing(nxt, failed, n, now)
        wait = min(wait, max(0.0, self.deadline - now))
        self.decision = _Decision(n, error, nxt, wait, reason, stop)
        return self.decision

    def _timing(self, nxt: str, failed: str, n: int, now: float) -> tuple[float, str]:
        """The wait before an attempt on ``nxt`` after ``failed`` failed attempt ``n``."""
        pending = self.not_before.get(nxt, now) - now
        if pending > 0:
            return pending, "rate-limited"
        if nxt == failed:
            return backoff(n, self.settings, self.rng), "backoff"
        return 0.0, "fail-over"

    def wait(self, state: RetryCallState) -> float:
        return self._decide(state).wait

    def stop(self, state: RetryCallState) -> bool:
        reason = self._decide(state).stop
        if reason is None:
            return False
        state.retry_object.statistics["stop_reason"] = reason
        return True

    def before_sleep(self, state: RetryCallState) -> None:
        if self.on_retry is None:
            return
        d = self._decide(state)
        assert d.next_deployment is not None  # the stop ended the chain otherwise
        self.on_retry(
            RetryDetails(
                attempt=d.attempt,
                error=d.error,
                deployment=d.error.deployment,
                next_deployment=d.next_deployment,
                wait=d.wait,
                reason=d.reason,
            )
        )


_default_rng = random.Random()


def retrying(
    settings: RetrySettings,
    *,
    deadline: float,
    choose_next: Callable[[ProviderError], str | None],
    choose_untried: Callable[[], str | None] | None = None,
    tried: Iterable[str] = (),
    loop_time: Callable[[], float] | None = None,
    rng: random.Random | None = None,
    budget: RetryBudget | None = None,
    should_retry: Callable[[BaseException], bool] | None = None,
    before_sleep: Callable[[RetryDetails], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncRetrying:
    """A fresh retry chain for one request (see the module docstring for the steps and why it
    must be fresh).

    - ``deadline``: the request's overall deadline, a ``loop_time()`` value.
    - ``choose_next(error)``: the name of the deployment the next attempt will go to after
      ``error`` (which names the one that failed), or ``None`` when none is left. The caller
      owns the walk; it may be asked for an attempt that then does not happen (a stop wins), so
      it must not reserve anything.
    - ``choose_untried()``: asked only when the budget refuses a re-send that ``choose_next``
      chose: the deployment to fail over to instead, one not yet tried in this request, or
      ``None`` (then the chain stops). Same contract as ``choose_next``; without it a refused
      re-send stops the chain.
    - ``tried``: deployments this request already sent to before the chain's first attempt
      (a hedge's); the chain adds every deployment it sees fail. An attempt on one of them is a
      re-send and spends a budget token; any other attempt is a free fail-over.
    - ``loop_time``: the clock of ``deadline`` (the running loop's ``time`` by default).
    - ``budget``: this replica's :class:`RetryBudget`; the caller records each request in it.
    - ``should_retry(exc)``: an extra veto (e.g. a stream that already reached the caller); it
      cannot make a non-retryable error retryable.
    - ``before_sleep``: called with :class:`RetryDetails` before each retry (for the log).
    - ``sleep``: how to wait (tests pass one that records instead).

    The last error is re-raised unchanged when the chain stops; ``statistics["stop_reason"]``
    says why (``max_attempts``, ``no_deployment``, ``deadline`` or ``budget``).
    """
    if loop_time is None:
        loop_time = asyncio.get_running_loop().time
    chain = _Chain(
        settings,
        deadline,
        loop_time,
        rng if rng is not None else _default_rng,
        budget,
        should_retry,
        choose_next,
        choose_untried,
        tried,
        before_sleep,
    )
    return AsyncRetrying(
        sleep=sleep,
        stop=chain.stop,
        wait=chain.wait,
        retry=chain.retry,
        before_sleep=chain.before_sleep,
        reraise=True,
    )
