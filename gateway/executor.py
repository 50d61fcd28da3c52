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
from gateway.providers.base import Provider, ProviderCall, ProviderResponse, ProviderStream

E = TypeVar("E", bound=GatewayError)


class Deployment:
    """A configured deployment at run time: its provider and its live in-flight count."""

    __slots__ = ("context_window", "inflight", "max_concurrency", "name", "provider")

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.name = provider.deployment.name
        self.max_concurrency = provider.deployment.max_concurrency
        self.context_window = provider.deployment.context_window
        self.inflight = 0


@dataclass(slots=True)
class Attempt:
    """The attempt that answered. For a stream, ``first`` is its first event, already read."""

    deployment: Deployment
    result: ProviderResponse | ProviderStream
    attempts: int
    first: bytes | None = None
    errors: list[ProviderError] = field(default_factory=list)
    outcome: str | None = None  # set when a stream did not end well (error label)
    _released: bool = False

    def release(self) -> None:
        """Give back the deployment's concurrency slot (once; streams do it when they end)."""
        if not self._released:
            self._released = True
            self.deployment.inflight -= 1


async def execute(plan: list[Deployment], call: ProviderCall, *, deadline: float) -> Attempt:
    """Try the plan in order under ``deadline`` (a ``loop.time()`` value)."""
    loop = asyncio.get_running_loop()
    attempts = 0
    errors: list[ProviderError] = []
    min_context: int | None = None
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
            dep.inflight += 1
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
                dep.inflight -= 1
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
                dep.inflight -= 1
                raise
            return Attempt(dep, result, attempts, first, errors)
    last = errors[-1] if errors else None
    if isinstance(last, ContextLengthExceeded):
        raise _stamped(last, attempts, errors)
    raise _exhausted(errors, attempts, deadline_hit=False)


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
