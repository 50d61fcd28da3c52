"""Walk a plan of deployments until one answers: the execute step of the request path.

This is the foundation's executor: an ordered walk under one overall deadline. The resilience
issue replaces the loop with breakers, backoff and a retry budget; the contract stays: ``execute``
returns an :class:`Attempt` that answered, or raises the error the caller should see.

Per error class (:class:`gateway.errors.Action`):

1. ``retry-same`` (connection refused/reset before any byte, a 5xx): one more try on the same
   deployment, then fail over;
2. ``fail-over`` (429, 503, timeouts, broken or garbage answers): the next deployment;
3. ``fail-over-larger-context``: the next deployment whose context window is larger (or unknown);
   when there is none, the provider's own error;
4. ``dont-retry``: the provider's status and reason go to the caller at once.

A deployment at its ``max_concurrency`` is skipped. For streams, an attempt only counts as answered
once its first event has arrived, so a failure before the first chunk fails over invisibly.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.breakers import Breakers
from gateway.errors import (
    Action,
    ContextLengthExceeded,
    GatewayError,
    NoDeploymentAvailable,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from gateway.providers.base import (
    Provider,
    ProviderCall,
    ProviderResponse,
    ProviderStream,
    Usage,
)
from gateway.retrying import RetryBudget, RetrySettings, retrying
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
        if not record or isinstance(self.result, ProviderResponse):
            return
        usage = self.result.state.usage
        if error is None:
            self.deployment.succeeded(self.started, self.ttft, usage)
        else:
            self.deployment.failed(error, usage)


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

    __slots__ = ("breakers", "current", "min_context", "plan", "pushed_back", "retry", "tried")

    def __init__(
        self, plan: list[Deployment], breakers: Breakers | None, retry: RetrySettings
    ) -> None:
        self.plan = plan
        self.breakers = breakers
        self.retry = retry
        self.tried: dict[str, int] = {}
        self.pushed_back: set[str] = set()  # 429 / 503 / 529 with no pause, or one we can wait
        self.min_context: int | None = None
        self.current: Deployment | None = self._fresh()

    def _usable(self, dep: Deployment) -> bool:
        if (
            self.min_context is not None
            and dep.context_window is not None
            and dep.context_window <= self.min_context
        ):
            return False
        if dep.max_concurrency is not None and dep.inflight >= dep.max_concurrency:
            return False
        return self.breakers is None or self.breakers.state(dep.name) not in BLOCKED

    def _fresh(self) -> Deployment | None:
        for dep in self.plan:
            if dep.name not in self.tried and self._usable(dep):
                return dep
        return None

    def next(self, error: ProviderError) -> str | None:
        """The deployment after ``error`` (tenacity's ``choose_next``; reserves nothing)."""
        dep = self.current
        assert dep is not None
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
            choice = self._fresh()
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
) -> Attempt:
    """Try the plan under ``deadline`` (a ``loop.time()`` value); see the module docstring.

    1. The first attempt goes to the first deployment of the plan that is usable: context large
       enough (after a context-length failure), below its ``max_concurrency``, breaker not
       open / forced open / drained.
    2. After a retryable failure, the next attempt goes to the same deployment for a
       retry-same error (up to ``same_deployment_retries`` times), else to the next usable
       deployment not yet tried, else to one that asked for a pause (``Retry-After``).
    3. The tenacity chain (:func:`gateway.retrying.retrying`) decides whether and when:
       immediately for a fresh deployment, after the requested pause or a full-jitter backoff
       otherwise, never past the deadline, ``max_attempts`` or the retry budget.
    4. Each attempt asks the deployment's breaker for a permit, is recorded in its health
       window and breaker (a cancellation or caller error never counts against it), and after
       a failure the breaker also judges the window's failure rate.
    """
    res = resilience if resilience is not None else _NO_RESILIENCE
    settings = retry if retry is not None else res.retry
    loop = asyncio.get_running_loop()
    breakers = res.breakers
    if res.budget is not None:
        res.budget.record_request()
    walk = _Walk(plan, breakers, settings)
    errors: list[ProviderError] = []
    attempts = 0
    fair_share = (deadline - loop.time()) / 2  # see _short_changed
    if walk.current is None:
        raise _exhausted(_unusable(plan, breakers), 0, deadline_hit=False)
    try:
        async for chain_attempt in retrying(
            settings,
            deadline=deadline,
            choose_next=walk.next,
            loop_time=loop.time,
            rng=res.rng,
            budget=res.budget,
        ):
            with chain_attempt:
                dep = walk.current
                if dep is None:  # the chain asked for an attempt nobody can take
                    raise _exhausted(errors, attempts, deadline_hit=False)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _exhausted(errors, attempts, deadline_hit=True)
                breaker = breakers.get(dep.name) if breakers is not None else None
                permit = breaker.allow(loop.time()) if breaker is not None else 1
                if not permit:  # half-open and its trials are taken, or opened meanwhile
                    refused = ProviderUnavailable(
                        f"circuit breaker {breaker.state if breaker else 'open'}",
                        deployment=dep.name,
                    )
                    walk.tried[dep.name] = walk.tried.get(dep.name, 0) + 1
                    errors.append(refused)
                    raise refused
                attempts += 1
                walk.tried[dep.name] = walk.tried.get(dep.name, 0) + 1
                call.timeout = remaining
                window = dep.window
                window.inflight += 1
                started = loop.time()
                try:
                    result = await dep.provider.send(call)
                    first = None
                    if not isinstance(result, ProviderResponse):
                        try:
                            first = await anext(aiter(result))
                        except BaseException:
                            await result.aclose()
                            raise
                except ProviderError as exc:
                    window.inflight -= 1
                    counted = not _short_changed(exc, dep, call.stream, remaining, fair_share)
                    if counted:
                        dep.failed(exc)
                    if breaker is not None:
                        if counted:
                            now = loop.time()
                            breaker.failure(permit, exc.health_class, now)
                            stats = dep.window.stats()
                            judged = stats.requests - stats.error_count("caller_error")
                            breaker.judge_rate(judged, stats.error_rate, now)
                        else:
                            breaker.cancelled(permit)
                    errors.append(exc)
                    raise
                except BaseException:
                    window.inflight -= 1
                    if breaker is not None:
                        breaker.cancelled(permit)
                    raise
                if breaker is not None:
                    breaker.success(permit, loop.time())
                if first is None:
                    assert isinstance(result, ProviderResponse)
                    dep.succeeded(started, None, result.usage)
                    return Attempt(dep, result, attempts, None, errors, started=started)
                ttft = loop.time() - started
                return Attempt(dep, result, attempts, first, errors, started=started, ttft=ttft)
    except ProviderError as exc:
        if exc.action is Action.DONT_RETRY or exc.action is Action.CALLER_ERROR:
            raise _stamped(exc, attempts, errors) from None
        if isinstance(exc, ContextLengthExceeded) and walk.current is None:
            raise _stamped(exc, attempts, errors) from None
        if loop.time() >= deadline:
            raise _exhausted(errors, attempts, deadline_hit=True) from None
        raise _exhausted(errors, attempts, deadline_hit=False) from None
    raise AssertionError("the retry chain ended without an answer or an error")


BLOCKED = frozenset({"open", "forced-open", "drained"})  # breaker states that take no traffic


def _unusable(plan: list[Deployment], breakers: Breakers | None) -> list[ProviderError]:
    """Why no deployment of ``plan`` can take a first attempt (for the error message)."""
    reasons: list[ProviderError] = []
    for dep in plan:
        if dep.max_concurrency is not None and dep.inflight >= dep.max_concurrency:
            why = f"at its max_concurrency ({dep.max_concurrency})"
        elif breakers is not None and breakers.state(dep.name) in BLOCKED:
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


def _exhausted(
    errors: list[ProviderError], attempts: int, *, deadline_hit: bool
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
    else:
        tried = ", ".join(dict.fromkeys(e.deployment for e in errors if e.deployment))
        err = NoDeploymentAvailable(
            f"every deployment failed ({attempts} attempt{'s' if attempts != 1 else ''} over "
            f"{tried}); last error from `{last.deployment}`: {last.message}",
            last=last,
        )
    return _stamped(err, attempts, errors)
