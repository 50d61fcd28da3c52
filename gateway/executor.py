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
from dataclasses import dataclass, field
from typing import TypeVar

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


async def execute(plan: list[Deployment], call: ProviderCall, *, deadline: float) -> Attempt:
    """Try the plan in order under ``deadline`` (a ``loop.time()`` value)."""
    loop = asyncio.get_running_loop()
    attempts = 0
    errors: list[ProviderError] = []
    min_context: int | None = None
    fair_share = (deadline - loop.time()) / 2  # see _short_changed
    for dep in plan:
        if (
            min_context is not None
            and dep.context_window is not None
            and dep.context_window <= min_context
        ):
            continue
        if dep.max_concurrency is not None and dep.inflight >= dep.max_concurrency:
            errors.append(
                ProviderUnavailable(
                    f"at its max_concurrency ({dep.max_concurrency})", deployment=dep.name
                )
            )
            continue
        tries_here = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _exhausted(errors, attempts, deadline_hit=True)
            attempts += 1
            tries_here += 1
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
                if not _short_changed(exc, dep, call.stream, remaining, fair_share):
                    dep.failed(exc)
                errors.append(exc)
                action = exc.action
                if action is Action.DONT_RETRY or action is Action.CALLER_ERROR:
                    _stamped(exc, attempts, errors)
                    raise
                if action is Action.FAIL_OVER_LARGER_CONTEXT:
                    min_context = max(min_context or 0, dep.context_window or 0)
                    break
                if action is Action.RETRY_SAME and tries_here < 2:
                    continue
                break
            except BaseException:
                window.inflight -= 1
                raise
            if first is None:
                assert isinstance(result, ProviderResponse)
                dep.succeeded(started, None, result.usage)
                return Attempt(dep, result, attempts, None, errors, started=started)
            ttft = loop.time() - started
            return Attempt(dep, result, attempts, first, errors, started=started, ttft=ttft)
    last = errors[-1] if errors else None
    if isinstance(last, ContextLengthExceeded):
        raise _stamped(last, attempts, errors)
    raise _exhausted(errors, attempts, deadline_hit=False)


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
