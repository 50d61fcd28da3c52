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
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUnreachable,
    RateLimited,
    StreamBroken,
)
from gateway.executor import Deployment, execute
from gateway.providers.base import ProviderCall, ProviderResponse, Usage


class FakeProvider:
    """Answers from a script: a ProviderError to raise, a float to sleep, or ``ok``."""

    def __init__(
        self,
        name: str,
        *script: Any,
        context_window: int | None = None,
        max_concurrency: int | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.deployment = SimpleNamespace(
            name=name,
            context_window=context_window,
            max_concurrency=max_concurrency,
            price=SimpleNamespace(input=2.0, output=8.0),
            timeouts=SimpleNamespace(response=timeout, first_token=timeout),
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
        deps[0].window.inflight = 1
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


# --- recording into the health window ------------------------------------------------------


def test_every_attempt_is_recorded_in_its_deployments_window_by_class() -> None:
    """Failures count under their health class; the answer counts as a success with its cost."""
    a = FakeProvider(
        "a",
        ProviderConnectionError("reset", deployment="a"),
        ProviderConnectionError("reset", deployment="a"),
    )
    b = FakeProvider("b", RateLimited("slow", deployment="b"))
    c = FakeProvider("c", ProviderRejected("bad", deployment="c"))
    attempt, deps = _run([a, b, FakeProvider("d")])
    stats = [d.window.stats() for d in deps]
    assert (stats[0].requests, stats[0].error_count("connection"), stats[0].successes) == (2, 2, 0)
    assert (stats[1].requests, stats[1].error_count("rate_limited")) == (1, 1)
    assert (stats[2].requests, stats[2].successes, stats[2].latency.mean is not None) == (
        1,
        1,
        True,
    )
    with pytest.raises(ProviderRejected):
        _run([c])
    assert attempt.ttft is None


def test_caller_error_class_and_usage_cost() -> None:
    """A rejection counts as caller_error (not in the error rate); usage gives tokens and cost."""

    async def go() -> Any:
        rejecting = Deployment(FakeProvider("r", ProviderRejected("bad", deployment="r")))  # type: ignore[arg-type]
        call = ProviderCall("chat/completions", {}, b"{}", False, "rid", 5.0)
        loop = asyncio.get_running_loop()
        with pytest.raises(ProviderRejected):
            await execute([rejecting], call, deadline=loop.time() + 5)
        answering = Deployment(FakeProvider("ok"))  # type: ignore[arg-type]
        answering.succeeded(loop.time(), None, Usage(1000, 500))
        return rejecting.window.stats(), answering.window.stats()

    rejected, answered = asyncio.run(go())
    assert (rejected.error_count("caller_error"), rejected.error_rate) == (1, 0.0)
    assert (answered.tokens_in, answered.tokens_out) == (1000, 500)
    assert answered.cost == pytest.approx(1000 * 2.0 / 1e6 + 500 * 8.0 / 1e6)


def test_stream_is_recorded_when_it_finishes_not_when_it_starts() -> None:
    """A stream's success (with its time to first token) is recorded by ``finish``; a broken
    one as its error class; a caller who left records nothing."""
    events: list[Any] = [b"data: 1\n\n", b"data: 2\n\n"]

    async def go() -> Any:
        deps = [Deployment(FakeProvider(n, list(events))) for n in "abc"]  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        out = []
        for dep, how in zip(deps, ("ok", "broken", "gone"), strict=True):
            call = ProviderCall("chat/completions", {}, b"{}", True, "rid", 5.0)
            attempt = await execute([dep], call, deadline=loop.time() + 5)
            assert attempt.ttft is not None and dep.window.stats().requests == 0
            assert dep.inflight == 1
            if how == "ok":
                attempt.finish()
            elif how == "broken":
                attempt.finish(StreamBroken("cut", deployment=dep.name))
            else:
                attempt.finish(record=False)
            attempt.finish()  # a second call changes nothing
            out.append((dep.inflight, dep.window.stats()))
        return out

    ok, broken, gone = asyncio.run(go())
    assert ok[0] == 0 and (ok[1].successes, ok[1].ttft.mean is not None) == (1, True)
    assert ok[1].latency.mean is None  # a stream's length is not the deployment's latency
    assert broken[0] == 0 and broken[1].error_count("stream_broken") == 1
    assert gone[0] == 0 and gone[1].requests == 0


def test_timeout_caused_by_the_request_deadline_is_not_held_against_the_fallback() -> None:
    """A primary that uses up most of the deadline leaves the fallback a sliver: the fallback's
    timeout is the deadline's doing and stays out of its window; the primary's own timeout
    (it had its full limit) counts."""

    class TimesOut(FakeProvider):
        async def send(self, call: ProviderCall) -> Any:
            self.calls += 1
            wait = min(call.timeout, 0.3)
            await asyncio.sleep(wait)
            raise ProviderTimeout(f"no answer in {wait:.2f}s", deployment=self.deployment.name)

    primary = TimesOut("primary", timeout=0.3)  # its own limit binds: counted
    fallback = TimesOut("fallback", timeout=5.0)  # gets ~0.05 s of a 5 s limit: not counted

    async def go() -> Any:
        deps = [Deployment(primary), Deployment(fallback)]  # type: ignore[arg-type]
        call = ProviderCall("chat/completions", {}, b"{}", False, "rid", 0.35)
        loop = asyncio.get_running_loop()
        with pytest.raises(NoDeploymentAvailable):
            await execute(deps, call, deadline=loop.time() + 0.35)
        return [d.window.stats() for d in deps]

    first, second = asyncio.run(go())
    assert (primary.calls, fallback.calls) == (1, 1)
    assert first.error_count("timeout") == 1
    assert second.requests == 0


# --- breakers, retry chain, budget ---------------------------------------------------------


def _resilient(
    plan: list[FakeProvider],
    *,
    breakers: Any = None,
    budget: Any = None,
    timeout: float = 5.0,
    hedge: dict[str, Any] | None = None,
    **retry: Any,
) -> Any:
    from gateway.executor import Resilience
    from gateway.retrying import RetrySettings

    settings = RetrySettings(**{"base_delay": 0.01, "max_delay": 0.02, **retry})

    async def go() -> Any:
        deps = [Deployment(p) for p in plan]  # type: ignore[arg-type]
        call = ProviderCall("chat/completions", {}, b"{}", False, "rid", timeout)
        loop = asyncio.get_running_loop()
        res = Resilience(breakers=breakers, budget=budget, retry=settings)
        started = loop.time()
        try:
            attempt = await execute(
                deps, call, deadline=loop.time() + timeout, resilience=res, hedge=hedge
            )
        except Exception as exc:
            return exc, deps, loop.time() - started
        return attempt, deps, loop.time() - started

    return asyncio.run(go())


def test_an_open_breaker_skips_its_deployment_and_a_failure_streak_opens_it() -> None:
    """After `consecutive_failures` the breaker opens: the next request goes straight to the
    fallback (one attempt), the failing deployment is not called again."""
    from gateway.breakers import Breakers, BreakerSettings

    breakers = Breakers(BreakerSettings(consecutive_failures=2, open_for=60.0))
    down = [ProviderUnavailable("down", deployment="a") for _ in range(5)]
    a, b = FakeProvider("a", *down), FakeProvider("b")
    for _ in range(2):
        result, _, _ = _resilient([a, b], breakers=breakers)
        assert result.deployment.name == "b"
    assert breakers.state("a") == "open" and a.calls == 2
    result, _, _ = _resilient([a, b], breakers=breakers)
    assert (result.deployment.name, result.attempts, a.calls) == ("b", 1, 2)


def test_a_rate_limited_only_deployment_is_retried_after_its_retry_after() -> None:
    """With nothing else to try, a 429 asking for 0.2 s is retried after ~0.2 s, not at once."""
    a = FakeProvider("a", RateLimited("slow", deployment="a", retry_after=0.2, upstream_status=429))
    result, _, elapsed = _resilient([a])
    assert (result.deployment.name, result.attempts, a.calls) == ("a", 2, 2)
    assert elapsed >= 0.19


def test_a_retry_after_past_the_cap_fails_over_or_gives_up_instead_of_waiting() -> None:
    a = FakeProvider("a", RateLimited("slow", deployment="a", retry_after=60, upstream_status=429))
    result, _, elapsed = _resilient([a], retry_after_cap=1.0)
    assert isinstance(result, NoDeploymentAvailable) and result.status == 429
    assert elapsed < 1.0 and a.calls == 1


def _budget(ratio: float = 0.0, floor: float = 0.0) -> Any:
    from gateway.retrying import RetryBudget

    return RetryBudget(ratio=ratio, min_per_second=floor)


def test_fail_over_to_an_untried_deployment_spends_no_budget() -> None:
    """ratio 0 and no floor: a 503 still fails over to the untried fallback, asking nothing."""
    budget = _budget()
    a, b = FakeProvider("a", ProviderUnavailable("down", deployment="a")), FakeProvider("b")
    result, _, _ = _resilient([a, b], budget=budget)
    assert (result.deployment.name, result.attempts) == ("b", 2)
    assert (a.calls, b.calls, budget.exhausted) == (1, 1, 0)
    assert budget.describe()["retries"] == 0


def test_fail_over_to_a_larger_context_window_spends_no_budget() -> None:
    """A context-length failure moves to a larger untried window even with an empty budget."""
    budget = _budget()
    small = FakeProvider(
        "small", ContextLengthExceeded("too long", deployment="small"), context_window=8000
    )
    large = FakeProvider("large", context_window=128000)
    result, _, _ = _resilient([small, large], budget=budget)
    assert result.deployment.name == "large"
    assert (budget.describe()["retries"], budget.exhausted) == (0, 0)


def test_re_send_to_the_same_deployment_spends_a_token() -> None:
    """A reset retried on the same deployment spends one token of the budget."""
    budget = _budget(floor=1.0)
    reset = ProviderConnectionError("reset", deployment="a")
    a, b = FakeProvider("a", reset), FakeProvider("b")
    result, _, _ = _resilient([a, b], budget=budget)
    assert (result.deployment.name, a.calls, b.calls) == ("a", 2, 0)
    assert (budget.describe()["retries"], budget.exhausted) == (1, 0)


def test_refused_re_send_falls_through_to_an_untried_deployment() -> None:
    """Empty budget: the reset is not retried on `a`; the request fails over to `b` instead."""
    budget = _budget()
    reset = ProviderConnectionError("reset", deployment="a")
    a, b = FakeProvider("a", reset), FakeProvider("b")
    result, deps, _ = _resilient([a, b], budget=budget)
    assert (result.deployment.name, result.attempts) == ("b", 2)
    assert (a.calls, b.calls, budget.exhausted) == (1, 1, 1)
    assert [d.inflight for d in deps] == [0, 1]


def test_refused_re_send_on_a_lone_deployment_returns_the_error() -> None:
    """Empty budget, nothing untried left: one attempt, and the error says the budget stopped
    it; a Retry-After wait is not waited out either."""
    budget = _budget()
    a = FakeProvider("a", ProviderConnectionError("reset", deployment="a"))
    result, _, _ = _resilient([a], budget=budget)
    assert isinstance(result, NoDeploymentAvailable) and result.attempts == 1
    assert "retry budget" in result.message
    limited = RateLimited("slow", deployment="a", retry_after=0.5, upstream_status=429)
    a = FakeProvider("a", limited)
    result, _, elapsed = _resilient([a], budget=budget)
    assert isinstance(result, NoDeploymentAvailable) and result.status == 429
    assert (a.calls, budget.exhausted) == (1, 2)
    assert elapsed < 0.5


def test_a_hedge_spends_a_token_and_an_empty_budget_refuses_it() -> None:
    """The hedge is speculative extra load: it takes a token; with none left it is not sent
    and the slow first attempt answers on its own."""
    budget = _budget(floor=1.0)
    slow, fast = FakeProvider("a", 0.3), FakeProvider("b")
    result, _, _ = _resilient([slow, fast], budget=budget, hedge={"after": "20ms"})
    assert (result.deployment.name, fast.calls) == ("b", 1)
    assert (budget.describe()["retries"], budget.exhausted) == (1, 0)
    empty = _budget()
    slow, fast = FakeProvider("a", 0.1), FakeProvider("b")
    result, _, _ = _resilient([slow, fast], budget=empty, hedge={"after": "20ms"})
    assert (result.deployment.name, fast.calls, empty.exhausted) == ("a", 0, 1)


def test_max_attempts_bounds_a_long_plan() -> None:
    plan = [FakeProvider(n, ProviderUnavailable("down", deployment=n)) for n in "abcdef"]
    result, _, _ = _resilient(plan, max_attempts=3)
    assert isinstance(result, NoDeploymentAvailable) and result.attempts == 3
    assert [p.calls for p in plan] == [1, 1, 1, 0, 0, 0]
