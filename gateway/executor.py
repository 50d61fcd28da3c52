"""Walk a plan of deployments until one answers: the execute step of the request path.

``execute`` returns an :class:`Attempt` that answered, or raises the error the caller should
see; :func:`execute`'s docstring lists its steps (first attempt direct, then a fresh tenacity
chain, breaker permits, health and breaker recording).

Per error class (:class:`gateway.errors.Action`):

1. ``retry-same`` (connection refused/reset before any byte, a 5xx): one more try on the same
   deployment after a full-jitter backoff, then fail over;
2. ``fail-over`` (429, 503, timeouts, broken or garbage answers): the next deployment, at once;
   one that asked for a pause may be tried again last, after it;
3. ``fail-over-larger-context``: the next deployment whose context window is larger (or unknown);
   when there is none, the provider's own error;
4. ``dont-retry``: the provider's status and reason go to the caller at once.

A deployment at its ``max_concurrency`` or whose breaker takes no traffic is skipped. For
streams, an attempt only counts as answered once its first event has arrived, so a failure
before the first chunk fails over invisibly.

The retry budget (:class:`gateway.retrying.RetryBudget`) is spent only on extra load: a re-send
to a deployment this request already tried (1, or a return after a pause) and a hedge. A
fail-over to a deployment not yet tried (2, 3) is free: it moves the request, and the plan and
``max_attempts`` bound it. A re-send the budget refuses becomes a fail-over to an untried
deployment when one is left; else the request ends with the last error.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.breakers import Breaker, Breakers
from gateway.errors import (
    Action,
    ContextLengthExceeded,
    GatewayError,
    NoDeploymentAvailable,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from gateway.hedging import hedge_delay, hedged
from gateway.providers.base import (
    Provider,
    ProviderCall,
    ProviderResponse,
    ProviderStream,
    Usage,
)
from gateway.retrying import RetryBudget, RetrySettings, is_retryable, retrying
from health.window import RollingWindow

E = TypeVar("E", bound=GatewayError)


class Deployment:
    """A configured deployment at run time: its provider and its health window.

    ``window.inflight`` is the live in-flight count (``max_concurrency`` is judged on it);
    every attempt's outcome is recorded in ``window`` as it ends.
    """

    __slots__ = (
        "context_window",
        "first_token_limit",
        "max_concurrency",
        "name",
        "price_in",
        "price_out",
        "provider",
        "response_limit",
        "window",
    )

    def __init__(self, provider: Provider, window: RollingWindow | None = None) -> None:
        config = provider.deployment
        self.provider = provider
        self.name = config.name
        self.max_concurrency = config.max_concurrency
        self.context_window = config.context_window
        self.price_in = config.price.input / 1e6  # dollars per token
        self.price_out = config.price.output / 1e6
        self.response_limit = config.timeouts.response
        self.first_token_limit = config.timeouts.first_token
        self.window = window if window is not None else RollingWindow()

    @property
    def inflight(self) -> int:
        return self.window.inflight

    def succeeded(self, started: float, ttft: float | None, usage: Usage | None) -> None:
        """Record an answered attempt that began at ``started`` (``loop.time()``): a stream by
        its time to first event (``ttft``), a whole answer by its latency."""
        latency = None if ttft is not None else asyncio.get_running_loop().time() - started
        if usage is None:
            self.window.success(latency, ttft=ttft)
            return
        tin, tout = usage.prompt_tokens, usage.completion_tokens
        cost = tin * self.price_in + tout * self.price_out
        self.window.success(latency, ttft=ttft, tokens_in=tin, tokens_out=tout, cost=cost)

    def failed(self, error: ProviderError, usage: Usage | None = None) -> None:
        """Record a failed attempt (tokens of a broken stream count; they are never billed)."""
        if usage is None:
            self.window.failure(error.health_class)
        else:
            self.window.failure(
                error.health_class,
                tokens_in=usage.prompt_tokens,
                tokens_out=usage.completion_tokens,
            )


@dataclass(slots=True)
class Attempt:
    """The attempt that answered. For a stream, ``first`` is its first event, already read.

    A non-streaming answer is recorded in the deployment's window by :func:`execute`; a stream
    is recorded by :meth:`finish` when it ends (a caller that hangs up records nothing: the
    deployment did not fail, and the answer was not delivered).
    """

    deployment: Deployment
    result: ProviderResponse | ProviderStream
    attempts: int
    first: bytes | None = None
    errors: list[ProviderError] = field(default_factory=list)
    outcome: str | None = None  # set when a stream did not end well (error label)
    started: float = 0.0  # loop.time() when this attempt was sent
    ttft: float | None = None  # seconds to a stream's first event
    # For a stream's continuation after it broke mid-way (gateway.continuation): the plan's
    # deployments after this one, in order; the call; the request's deadline (loop.time()).
    rest: list[Deployment] = field(default_factory=list)
    call: ProviderCall | None = None
    deadline: float = 0.0
    breaker: Breaker | None = None  # a stream's breaker and permit, reported to in finish()
    permit: int = 0
    _released: bool = False

    def release(self) -> None:
        """Give back the deployment's concurrency slot (once; streams do it when they end)."""
        if not self._released:
            self._released = True
            self.deployment.window.inflight -= 1

    def finish(self, error: ProviderError | None = None, *, record: bool = True) -> None:
        """A stream ended: record it (complete, or broken by ``error``) and release the slot."""
        if self._released:
            return
        self.release()
        breaker, self.breaker = self.breaker, None
        if not record or isinstance(self.result, ProviderResponse):
            if breaker is not None:
                breaker.cancelled(self.permit)
            return
        usage = self.result.state.usage
        now = asyncio.get_running_loop().time()
        if error is None:
            self.deployment.succeeded(self.started, self.ttft, usage)
            if breaker is not None:
                breaker.success(self.permit, now)
        else:
            self.deployment.failed(error, usage)
            if breaker is not None:
                _breaker_failure(breaker, self.permit, error, self.deployment, now)


@dataclass(slots=True)
class Resilience:
    """What one gateway shares across requests: breakers, the retry budget, retry defaults."""

    breakers: Breakers | None = None
    budget: RetryBudget | None = None
    retry: RetrySettings = field(default_factory=RetrySettings)
    rng: random.Random = field(default_factory=random.Random)


_NO_RESILIENCE = Resilience(retry=RetrySettings(max_attempts=64, same_deployment_retries=1))


class _Walk:
    """Which deployment each attempt goes to (see :func:`execute`, steps 1-3)."""

    __slots__ = (
        "breakers",
        "clock",
        "current",
        "min_context",
        "plan",
        "pushed_back",
        "retry",
        "tried",
    )

    def __init__(
        self,
        plan: list[Deployment],
        breakers: Breakers | None,
        retry: RetrySettings,
        clock: Callable[[], float],
    ) -> None:
        self.plan = plan
        self.breakers = breakers
        self.retry = retry
        self.clock = clock
        self.tried: dict[str, int] = {}
        self.pushed_back: set[str] = set()  # 429 / 503 / 529 with no pause, or one we can wait
        self.min_context: int | None = None
        self.current: Deployment | None = self.fresh()

    def _usable(self, dep: Deployment) -> bool:
        if (
            self.min_context is not None
            and dep.context_window is not None
            and dep.context_window <= self.min_context
        ):
            return False
        if dep.max_concurrency is not None and dep.inflight >= dep.max_concurrency:
            return False
        return self.breakers is None or self.breakers.get(dep.name).can_admit(self.clock())

    def admit(self) -> tuple[Deployment | None, Breaker | None, int]:
        """The deployment of this attempt and its breaker permit. One whose breaker refuses
        after all (its half-open trials were taken meanwhile) is passed over for the next
        usable one, within the same attempt."""
        while True:
            dep = self.current
            if dep is None:
                return None, None, 0
            if self.breakers is None:
                return dep, None, 1
            breaker = self.breakers.get(dep.name)
            permit = breaker.allow(self.clock())
            if permit:
                return dep, breaker, permit
            self.tried.setdefault(dep.name, 0)
            self.current = self.fresh()

    def fresh(self) -> Deployment | None:
        for dep in self.plan:
            if dep.name not in self.tried and self._usable(dep):
                return dep
        return None

    def untried(self) -> str | None:
        """The next usable deployment not yet tried, instead of a re-send the retry budget
        refused (tenacity's ``choose_untried``; reserves nothing)."""
        self.current = self.fresh()
        return self.current.name if self.current is not None else None

    def next(self, error: ProviderError) -> str | None:
        """The deployment after ``error`` (tenacity's ``choose_next``; reserves nothing)."""
        dep = self.current
        if dep is None:
            return None
        action = error.action
        if action is Action.FAIL_OVER_LARGER_CONTEXT:
            self.min_context = max(self.min_context or 0, dep.context_window or 0)
        if error.upstream_status in (429, 503, 529) and (
            error.retry_after is None or error.retry_after <= self.retry.retry_after_cap
        ):
            # it may be tried again once everything else was: after its pause, or a backoff;
            # a pause longer than retry_after_cap is not worth waiting for
            self.pushed_back.add(dep.name)
        choice: Deployment | None = None
        if (
            action is Action.RETRY_SAME
            and self.tried.get(dep.name, 0) <= self.retry.same_deployment_retries
            and self._usable(dep)
        ):
            choice = dep
        if choice is None:
            choice = self.fresh()
        if choice is None:  # every deployment tried: one that only asked for a pause may wait
            for candidate in self.plan:
                if candidate.name in self.pushed_back and self._usable(candidate):
                    choice = candidate
                    break
        self.current = choice
        return choice.name if choice is not None else None


async def execute(
    plan: list[Deployment],
    call: ProviderCall,
    *,
    deadline: float,
    resilience: Resilience | None = None,
    retry: RetrySettings | None = None,
    hedge: Mapping[str, Any] | None = None,
) -> Attempt:
    """Try the plan under ``deadline`` (a ``loop.time()`` value); see the module docstring.

    1. The first attempt goes to the first deployment of the plan that is usable: context large
       enough (after a context-length failure), below its ``max_concurrency``, and its breaker
       would admit it. It is made directly: no retry chain is built for a request that succeeds
       at once (most of them). With a route ``hedge`` section, a second first attempt starts on
       the next usable deployment if the first has not answered in time (:mod:`gateway.hedging`;
       it spends a retry-budget token); the first answer wins.
    2. After a retryable failure, the tenacity chain (:func:`gateway.retrying.retrying`, fresh
       for this request) takes over, starting from that failure: the next attempt goes to the
       same deployment for a retry-same error (up to ``same_deployment_retries`` times), else
       to the next usable deployment not yet tried (at once), else to one that asked for a
       pause it is worth waiting for (after it, or after a full-jitter backoff) — never past
       the deadline or ``max_attempts``. Going back to a deployment already tried spends a
       retry-budget token; refused, the attempt goes to the next usable deployment not yet
       tried instead (free), or the request ends. Going to one not yet tried spends none.
    3. Each attempt takes a breaker permit (a deployment whose breaker refuses after all is
       skipped within the same attempt, never counted as one), is recorded in the deployment's
       health window and breaker (a cancellation or caller error never counts against it; a
       stream reports when it ends, see :meth:`Attempt.finish`), and after a failure the
       breaker also judges the window's failure rate.
    """
    res = resilience if resilience is not None else _NO_RESILIENCE
    settings = retry if retry is not None else res.retry
    loop = asyncio.get_running_loop()
    breakers = res.breakers
    if res.budget is not None:
        res.budget.record_request()
    walk = _Walk(plan, breakers, settings, loop.time)
    errors: list[ProviderError] = []
    counter = [0]  # attempts made (a refusal by a breaker is not one)
    fair_share = (deadline - loop.time()) / 2  # see _short_changed
    if walk.current is None:
        raise _exhausted(_unusable(plan, breakers, loop.time()), 0, deadline_hit=False)

    async def attempt() -> Attempt:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise _exhausted(errors, counter[0], deadline_hit=True)
        dep, breaker, permit = walk.admit()
        if dep is None:  # every usable deployment refused a permit: the last real cause
            if errors:
                raise errors[-1]
            raise _exhausted(_unusable(plan, breakers, loop.time()), 0, deadline_hit=False)
        counter[0] += 1
        walk.tried[dep.name] = walk.tried.get(dep.name, 0) + 1
        call.timeout = remaining
        window = dep.window
        window.inflight += 1
        started = loop.time()
        try:
            result = await dep.provider.send(call)
            first = None if isinstance(result, ProviderResponse) else await first_event(result)
        except ProviderError as exc:
            window.inflight -= 1
            counted = not _short_changed(exc, dep, call.stream, remaining, fair_share)
            if counted:
                dep.failed(exc)
            if breaker is not None:
                if counted:
                    _breaker_failure(breaker, permit, exc, dep, loop.time())
                else:
                    breaker.cancelled(permit)
            errors.append(exc)
            raise
        except BaseException:
            window.inflight -= 1
            if breaker is not None:
                breaker.cancelled(permit)
            raise
        if first is None:
            assert isinstance(result, ProviderResponse)
            if breaker is not None:
                breaker.success(permit, loop.time())
            dep.succeeded(started, None, result.usage)
            return Attempt(dep, result, counter[0], None, errors, started=started)
        # a stream reports to its breaker when it ends (Attempt.finish): a cut stream is a
        # failure even though its first event came
        ttft = loop.time() - started
        return Attempt(
            dep,
            result,
            counter[0],
            first,
            errors,
            started=started,
            ttft=ttft,
            breaker=breaker,
            permit=permit,
        )

    # 1. The first attempt, without a chain (hedged when the route says so).
    delay = None
    if hedge:
        first_dep = walk.current
        p95 = None
        if hedge.get("after") == "p95":
            stats = first_dep.window.stats()
            p95 = stats.ttft.p95 if call.stream else stats.latency.p95
        delay = hedge_delay(hedge, p95)

    def second() -> Awaitable[Attempt] | None:
        nxt = walk.fresh()
        if nxt is None or (res.budget is not None and not res.budget.try_spend()):
            return None
        walk.current = nxt
        return attempt()

    try:
        if delay is None:
            return await attempt()
        return await hedged(attempt, second, delay, _discard)
    except ProviderError as exc:
        failed = exc
    if not is_retryable(failed):
        raise _stamped(failed, counter[0], errors)
    # 2. The chain, starting from that failure (replayed as its first attempt).
    chain = retrying(
        settings,
        deadline=deadline,
        choose_next=walk.next,
        choose_untried=walk.untried,
        tried=[name for name, sent in walk.tried.items() if sent],
        loop_time=loop.time,
        rng=res.rng,
        budget=res.budget,
    )
    replay: ProviderError | None = failed
    try:
        async for chain_attempt in chain:
            with chain_attempt:
                if replay is not None:
                    first_failure, replay = replay, None
                    raise first_failure
                return await attempt()
    except ProviderError as exc:
        if exc.action is Action.DONT_RETRY or exc.action is Action.CALLER_ERROR:
            raise _stamped(exc, counter[0], errors) from None
        if isinstance(exc, ContextLengthExceeded) and walk.current is None:
            raise _stamped(exc, counter[0], errors) from None
        stopped = chain.statistics.get("stop_reason")
        if loop.time() >= deadline:  # a pause that would outlast it reports its own cause
            raise _exhausted(errors, counter[0], deadline_hit=True) from None
        raise _exhausted(errors, counter[0], deadline_hit=False, stopped=stopped) from None
    raise AssertionError("the retry chain ended without an answer or an error")


async def first_event(stream: ProviderStream) -> bytes:
    """A stream's first event (it counts as answered only then); closed if that fails."""
    try:
        return await anext(aiter(stream))
    except BaseException:
        await stream.aclose()
        raise


async def _discard(loser: Attempt) -> None:
    """An answer that lost a hedge race: close it, give its slot and permit back."""
    if isinstance(loser.result, ProviderResponse):
        loser.release()
        return
    await loser.result.aclose()
    loser.finish(record=False)


def _breaker_failure(
    breaker: Breaker, permit: int, exc: ProviderError, dep: Deployment, now: float
) -> None:
    """A counted failure: the consecutive rule, then the window's failure rate."""
    breaker.failure(permit, exc.health_class, now)
    if breaker.state == "closed":
        stats = dep.window.stats()
        judged = stats.requests - stats.error_count("caller_error")
        breaker.judge_rate(judged, stats.error_rate, now, window=stats.window_seconds)


BLOCKED = frozenset({"open", "forced-open", "drained"})  # breaker states that take no traffic


def _unusable(plan: list[Deployment], breakers: Breakers | None, now: float) -> list[ProviderError]:
    """Why no deployment of ``plan`` can take an attempt (for the error message)."""
    reasons: list[ProviderError] = []
    for dep in plan:
        if dep.max_concurrency is not None and dep.inflight >= dep.max_concurrency:
            why = f"at its max_concurrency ({dep.max_concurrency})"
        elif breakers is not None and not breakers.get(dep.name).can_admit(now):
            why = f"circuit breaker {breakers.state(dep.name)}"
        else:
            continue
        reasons.append(ProviderUnavailable(why, deployment=dep.name))
    return reasons


def _short_changed(
    exc: ProviderError, dep: Deployment, stream: bool, budget: float, fair_share: float
) -> bool:
    """A timeout the request's deadline caused, not the deployment: the attempt started with
    less than its own limit (``timeouts.first_token`` for a stream, ``timeouts.response``
    otherwise) and less than half of the request's whole time. Such an attempt is left out of
    the deployment's health window, so a fallback squeezed by a slow primary does not look bad
    exactly during an incident."""
    if not isinstance(exc, ProviderTimeout):
        return False
    own = dep.first_token_limit if stream else dep.response_limit
    return budget < own and budget < fair_share


def _stamped(err: E, attempts: int, errors: list[ProviderError]) -> E:
    """``err`` carrying the attempt count and every failed attempt, for headers and the log."""
    err.attempts = attempts
    err.history = tuple(errors)
    return err


_STOPPED = {
    "budget": "the retry budget refused a retry (too many across requests) and no untried "
    "deployment was left",
    "max_attempts": "max_attempts reached",
}


def _exhausted(
    errors: list[ProviderError],
    attempts: int,
    *,
    deadline_hit: bool,
    stopped: str | None = None,
) -> NoDeploymentAvailable:
    last = errors[-1] if errors else None
    if deadline_hit:
        last = ProviderTimeout(
            "the request deadline (server.request_timeout) passed before any deployment answered",
            deployment=last.deployment if last else "",
        )
        errors.append(last)
    if last is None:
        err = NoDeploymentAvailable("no deployment could take the request")
    elif attempts == 0 and not deadline_hit:  # nothing was sent: say why each was passed over
        reasons = "; ".join(f"{e.deployment}: {e.message}" for e in errors)
        err = NoDeploymentAvailable(f"no deployment could take the request: {reasons}")
    else:
        tried = ", ".join(dict.fromkeys(e.deployment for e in errors if e.deployment))
        err = NoDeploymentAvailable(
            f"every deployment failed ({attempts} attempt{'s' if attempts != 1 else ''} over "
            f"{tried}{'; stopped: ' + _STOPPED[stopped] if stopped in _STOPPED else ''}); "
            f"last error from `{last.deployment}`: {last.message}",
            last=last,
        )
    return _stamped(err, attempts, errors)
