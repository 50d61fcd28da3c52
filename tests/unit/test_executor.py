"""The executor walks the plan by error class, under one deadline."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.errors import (
    ContextLengthExceeded,
    NoDeploymentAvailable,
    ProviderConnectionError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    ProviderUnreachable,
    RateLimited,
    StreamBroken,
)
from gateway.executor import Deployment, execute
from gateway.providers.base import ProviderCall, ProviderResponse


class FakeProvider:
    """Answers from a script: a ProviderError to raise, a float to sleep, or ``ok``."""

    def __init__(
        self,
        name: str,
        *script: Any,
        context_window: int | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        self.deployment = SimpleNamespace(
            name=name, context_window=context_window, max_concurrency=max_concurrency
        )
        self.script = list(script)
        self.calls = 0

    async def send(self, call: ProviderCall) -> Any:
        self.calls += 1
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, float):
            await asyncio.sleep(step)
            step = "ok"
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, list):
            return FakeStream(step)
        return ProviderResponse(body=self.deployment.name.encode())

    async def close(self) -> None:
        pass


class FakeStream:
    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.closed = False
        self.state = SimpleNamespace(usage=None, done=False)

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> bytes:
        if not self.events:
            raise StopAsyncIteration
        item = self.events.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        self.closed = True


def _run(plan: list[FakeProvider], *, timeout: float = 5.0, stream: bool = False) -> Any:
    async def go() -> Any:
        deps = [Deployment(p) for p in plan]  # type: ignore[arg-type]
        call = ProviderCall("chat/completions", {}, b"{}", stream, "rid", timeout)
        loop = asyncio.get_running_loop()
        return await execute(deps, call, deadline=loop.time() + timeout), deps

    return asyncio.run(go())


def test_first_healthy_deployment_answers() -> None:
    """With nothing failing the first deployment answers in one attempt."""
    a, b = FakeProvider("a"), FakeProvider("b")
    attempt, deps = _run([a, b])
    assert (attempt.deployment.name, attempt.attempts, b.calls) == ("a", 1, 0)
    attempt.release()
    assert deps[0].inflight == 0


def test_fail_over_class_moves_to_next_deployment() -> None:
    """A 503 or 429 moves on to the next deployment without retrying the same one."""
    a = FakeProvider("a", ProviderUnavailable("busy", deployment="a"))
    b = FakeProvider("b", RateLimited("slow", deployment="b"))
    c = FakeProvider("c")
    attempt, deps = _run([a, b, c])
    assert (attempt.deployment.name, attempt.attempts) == ("c", 3)
    assert (a.calls, b.calls, c.calls) == (1, 1, 1)
    assert [d.inflight for d in deps] == [0, 0, 1]


def test_retry_same_class_retries_once_then_fails_over() -> None:
    """A reset before any byte is retried once on the same deployment, then the next one."""
    reset = ProviderConnectionError("reset", deployment="a")
    a = FakeProvider("a", reset, reset)
    b = FakeProvider("b")
    attempt, _ = _run([a, b])
    assert (a.calls, b.calls, attempt.attempts) == (2, 1, 3)


def test_refused_connection_fails_over_at_once() -> None:
    """A refused connection is not retried on the same address."""
    a = FakeProvider("a", ProviderUnreachable("refused", deployment="a"))
    b = FakeProvider("b")
    attempt, _ = _run([a, b])
    assert (a.calls, attempt.deployment.name) == (1, "b")


def test_dont_retry_class_reaches_the_caller_at_once() -> None:
    """A provider's rejection of the request is not tried elsewhere."""
    a = FakeProvider("a", ProviderRejected("bad request", deployment="a"))
    b = FakeProvider("b")
    with pytest.raises(ProviderRejected) as info:
        _run([a, b])
    assert b.calls == 0
    assert info.value.attempts == 1


def test_context_length_fails_over_to_larger_windows_only() -> None:
    """After a context-length error only deployments with a larger (or unknown) window are tried."""
    small = FakeProvider(
        "small", ContextLengthExceeded("too long", deployment="small"), context_window=8000
    )
    same = FakeProvider("same", context_window=8000)
    big = FakeProvider("big", context_window=128000)
    attempt, _ = _run([small, same, big])
    assert attempt.deployment.name == "big"
    assert same.calls == 0


def test_context_length_with_no_larger_window_propagates_the_provider_error() -> None:
    """When no larger window exists the caller gets the provider's context-length error."""
    small = FakeProvider(
        "small", ContextLengthExceeded("too long", deployment="small"), context_window=8000
    )
    other = FakeProvider("other", context_window=4000)
    with pytest.raises(ContextLengthExceeded):
        _run([small, other])


def test_everything_failing_names_every_deployment() -> None:
    """When all fail the error lists the deployments tried and keeps the last failure."""
    a = FakeProvider("a", ProviderUnavailable("busy", deployment="a"))
    b = FakeProvider("b", RateLimited("slow", deployment="b", retry_after=2))
    with pytest.raises(NoDeploymentAvailable) as info:
        _run([a, b])
    err = info.value
    assert "2 attempts over a, b" in err.message
    assert err.status == 429 and err.attempts == 2


def test_each_attempt_gets_only_the_time_left() -> None:
    """call.timeout shrinks to what is left of the overall deadline before each attempt."""
    seen: list[float] = []

    class Recording(FakeProvider):
        async def send(self, call: ProviderCall) -> Any:
            seen.append(call.timeout)
            await asyncio.sleep(0.05)
            raise ProviderUnavailable("busy", deployment=self.deployment.name)

    with pytest.raises(NoDeploymentAvailable):
        _run([Recording("a"), Recording("b")], timeout=1.0)
    assert seen[0] <= 1.0
    assert seen[1] <= seen[0] - 0.04


def test_exhausted_deadline_before_next_attempt_is_a_timeout() -> None:
    """When the deadline has passed the next deployment is not tried and a 504 is raised."""
    a = FakeProvider("a")
    b = FakeProvider("b")

    async def go() -> None:
        deps = [Deployment(a), Deployment(b)]  # type: ignore[arg-type]
        call = ProviderCall("chat/completions", {}, b"{}", False, "rid", 1)
        loop = asyncio.get_running_loop()
        await execute(deps, call, deadline=loop.time() - 0.001)

    with pytest.raises(NoDeploymentAvailable) as info:
        asyncio.run(go())
    assert info.value.status == 504
    assert a.calls == 0 and b.calls == 0


def test_saturated_deployment_is_skipped() -> None:
    """A deployment at its max_concurrency is skipped, not queued on."""
    a = FakeProvider("a", max_concurrency=1)
    b = FakeProvider("b")

    async def go() -> str:
        deps = [Deployment(a), Deployment(b)]  # type: ignore[arg-type]
        deps[0].inflight = 1
        call = ProviderCall("chat/completions", {}, b"{}", False, "rid", 1)
        loop = asyncio.get_running_loop()
        attempt = await execute(deps, call, deadline=loop.time() + 1)
        return attempt.deployment.name

    assert asyncio.run(go()) == "b"
    assert a.calls == 0


def test_stream_failing_before_first_event_fails_over_and_is_closed() -> None:
    """A stream that breaks before its first event is closed and the next deployment streams."""
    broken = StreamBroken("cut", deployment="a")
    a = FakeProvider("a", [broken])
    b = FakeProvider("b", [b"data: 1\n\n"])
    attempt, _ = _run([a, b], stream=True)
    assert attempt.deployment.name == "b"
    assert attempt.first == b"data: 1\n\n"
    assert isinstance(attempt.errors[0], ProviderError)
