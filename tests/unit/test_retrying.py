"""Retry chains: full-jitter backoff, push-back waits, stops, the retry budget, fresh state per
request. Time is a fake clock; sleeps are recorded, never slept."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from tenacity import AsyncRetrying

from gateway.errors import (
    InvalidRequest,
    ProviderError,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from gateway.retrying import (
    RetryBudget,
    RetryDetails,
    RetrySettings,
    backoff,
    rate_limit_wait,
    retrying,
)

SETTINGS = RetrySettings()  # 4 attempts, 0.1 s base, 2 s cap, 10 s Retry-After cap


class Clock:
    """A loop clock that only moves when the chain sleeps (or a test moves it)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(float(seconds))
        self.now += seconds
        await asyncio.sleep(0)  # let other chains run, as a real sleep would


class LowRng(random.Random):
    """Every jitter draw at the bottom of its range."""

    def uniform(self, a: float, b: float) -> float:
        return a


class Walk:
    """A chooser walking a fixed list of deployment names (``None`` past its end); ``spare``
    holds the untried deployments offered instead of a re-send the budget refused."""

    def __init__(self, names: Sequence[str], spare: Sequence[str] = ()) -> None:
        self.names = list(names)
        self.spare = list(spare)
        self.index = 0
        self.asked: list[ProviderError] = []

    @property
    def current(self) -> str:
        return self.names[self.index]

    def choose(self, error: ProviderError) -> str | None:
        self.asked.append(error)
        self.index += 1
        return self.names[self.index] if self.index < len(self.names) else None

    def untried(self) -> str | None:
        if not self.spare:
            return None
        self.names[self.index] = self.spare.pop(0)
        return self.names[self.index]


Outcome = Callable[[str], BaseException] | None  # the error an attempt raises, or success


@dataclass
class Run:
    attempts: list[tuple[str, float]]  # (deployment, loop time) of each attempt
    sleeps: list[float]
    error: BaseException | None
    statistics: dict[str, Any]
    walk: Walk


def rate_limited(retry_after: float | None = None) -> Callable[[str], ProviderError]:
    return lambda dep: RateLimited(
        "429", deployment=dep, upstream_status=429, retry_after=retry_after
    )


def server_error(dep: str) -> ProviderError:
    return ProviderServerError("500", deployment=dep, upstream_status=500)


def timeout(dep: str) -> ProviderError:
    return ProviderTimeout("slow", deployment=dep)


def run_chain(
    script: Sequence[Outcome],
    deployments: Sequence[str],
    *,
    settings: RetrySettings = SETTINGS,
    deadline: float = 100.0,
    attempt_time: float = 0.0,
    budget: RetryBudget | None = None,
    rng: random.Random | None = None,
    should_retry: Callable[[BaseException], bool] | None = None,
    details: list[RetryDetails] | None = None,
    spare: Sequence[str] | None = None,
    tried: Sequence[str] = (),
) -> Run:
    """Drive one chain: attempt ``i`` raises ``script[i](deployment)`` (``None``: succeeds).
    ``spare``: untried deployments the chain may fail over to when the budget refuses a
    re-send (``None``: no ``choose_untried``); ``tried``: sent to before the chain began."""
    clock = Clock()
    walk = Walk(deployments, spare or ())
    attempts: list[tuple[str, float]] = []

    async def go() -> tuple[AsyncRetrying, BaseException | None]:
        chain = retrying(
            settings,
            deadline=deadline,
            choose_next=walk.choose,
            choose_untried=walk.untried if spare is not None else None,
            tried=tried,
            loop_time=clock,
            rng=rng if rng is not None else random.Random(7),
            budget=budget,
            should_retry=should_retry,
            before_sleep=details.append if details is not None else None,
            sleep=clock.sleep,
        )
        try:
            async for attempt in chain:
                with attempt:
                    attempts.append((walk.current, clock.now))
                    clock.now += attempt_time
                    outcome = script[len(attempts) - 1]
                    if outcome is not None:
                        raise outcome(walk.current)
        except BaseException as exc:  # CancelledError included: the test looks at it
            return chain, exc
        return chain, None

    chain, error = asyncio.run(go())
    return Run(attempts, clock.sleeps, error, dict(chain.statistics), walk)


# --- backoff ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 8])
def test_backoff_is_full_jitter_under_the_exponential_cap(attempt: int) -> None:
    """Draws spread over all of [0, min(max_delay, base * 2^(n-1))], never beyond."""
    rng = random.Random(1234)
    cap = min(SETTINGS.max_delay, SETTINGS.base_delay * 2 ** (attempt - 1))
    draws = [backoff(attempt, SETTINGS, rng) for _ in range(500)]
    assert all(0.0 <= d <= cap for d in draws)
    assert min(draws) < 0.1 * cap  # full jitter reaches down to zero ...
    assert max(draws) > 0.9 * cap  # ... and up to the cap


def test_backoff_stays_at_max_delay_for_any_attempt_number() -> None:
    """A huge attempt number neither overflows nor passes max_delay."""
    rng = random.Random(3)
    assert all(0 <= backoff(5000, SETTINGS, rng) <= SETTINGS.max_delay for _ in range(50))


# --- push-back waits -------------------------------------------------------------------------


def test_retry_after_is_waited_out_before_retrying_the_same_deployment() -> None:
    """A 429 asking for 1.5 s, retried on the same deployment, waits exactly 1.5 s."""
    run = run_chain([rate_limited(1.5), None], ["a", "a"])
    assert run.error is None
    assert run.sleeps == [1.5]
    assert run.attempts == [("a", 0.0), ("a", 1.5)]


def test_retry_after_past_the_deadline_stops_the_chain() -> None:
    """A wait that would reach the request's deadline is not waited: the 429 is raised."""
    run = run_chain([rate_limited(5.0), None], ["a", "a"], deadline=3.0)
    assert isinstance(run.error, RateLimited)
    assert run.sleeps == []
    assert len(run.attempts) == 1
    assert run.statistics["stop_reason"] == "deadline"


def test_retry_after_within_the_deadline_and_the_cap_is_kept_whole() -> None:
    """Just under the deadline the full Retry-After is honoured, not shortened."""
    run = run_chain([rate_limited(2.9), None], ["a", "a"], deadline=3.0)
    assert run.error is None
    assert run.sleeps == [2.9]


def test_retry_after_beyond_the_cap_fails_over_at_once() -> None:
    """Retry-After over retry_after_cap: the next deployment is tried without waiting."""
    run = run_chain([rate_limited(60.0), None], ["a", "b"])
    assert run.error is None
    assert run.sleeps == [0.0]
    assert [dep for dep, _ in run.attempts] == ["a", "b"]


def test_retry_after_beyond_the_cap_on_the_only_deployment_backs_off() -> None:
    """With nothing else to try, an unusable Retry-After counts as none: a floored backoff."""
    run = run_chain([rate_limited(60.0), rate_limited(60.0), None], ["a"] * 3, rng=LowRng())
    assert run.error is None
    assert run.sleeps == pytest.approx([SETTINGS.base_delay] * 2)


@pytest.mark.parametrize("retry_after", [None, 0.0])
def test_rate_limited_deployment_is_never_retried_in_a_tight_loop(
    retry_after: float | None,
) -> None:
    """A 429 without a usable wait (none, or 0) still waits at least base_delay, though the
    jitter draws zero; a 5xx retried on the same deployment may go at once."""
    low = LowRng()
    run = run_chain([rate_limited(retry_after)] * 3 + [None], ["a"] * 4, rng=low)
    assert run.error is None
    assert run.sleeps == pytest.approx([SETTINGS.base_delay] * 3)
    run = run_chain([server_error, None], ["a", "a"], rng=low)
    assert run.sleeps == [0.0]


def test_fail_over_to_a_fresh_deployment_is_immediate() -> None:
    """A 5xx followed by a different deployment: no wait at all."""
    details: list[RetryDetails] = []
    run = run_chain([server_error, None], ["a", "b"], details=details)
    assert run.sleeps == [0.0]
    assert [d.reason for d in details] == ["fail-over"]


def test_returning_to_a_rate_limited_deployment_waits_out_the_rest_of_its_retry_after() -> None:
    """a (429, 3 s) → b at once → back to a only when a's 3 s have passed."""
    run = run_chain([rate_limited(3.0), server_error, None], ["a", "b", "a"], attempt_time=0.5)
    assert run.error is None
    assert run.sleeps == [0.0, pytest.approx(2.5)]
    assert run.attempts[2] == ("a", pytest.approx(3.5))


def test_retry_same_backs_off_with_full_jitter() -> None:
    """A 5xx retried on the same deployment waits a jittered backoff within its cap."""
    run = run_chain([server_error, server_error, None], ["a", "a", "a"], rng=random.Random(5))
    assert run.error is None
    assert 0.0 <= run.sleeps[0] <= 0.1
    assert 0.0 <= run.sleeps[1] <= 0.2
    assert run.sleeps[0] != run.sleeps[1]


def test_before_sleep_hook_describes_each_retry() -> None:
    """The hook gets one frozen RetryDetails per retry, naming both deployments."""
    details: list[RetryDetails] = []
    run = run_chain([rate_limited(1.0), server_error, None], ["a", "a", "b"], details=details)
    assert run.error is None
    assert [(d.attempt, d.deployment, d.next_deployment, d.reason) for d in details] == [
        (1, "a", "a", "rate-limited"),
        (2, "a", "b", "fail-over"),
    ]
    assert details[0].wait == 1.0
    assert isinstance(details[0].error, RateLimited)
    with pytest.raises(dataclasses.FrozenInstanceError):
        details[0].wait = 0.0  # type: ignore[misc]


# --- rate_limit_wait ---------------------------------------------------------------------------


def test_rate_limit_wait_reads_the_error_or_the_response_headers() -> None:
    """The provider-parsed retry_after, or the headers (x-ratelimit-reset-*: the larger)."""
    assert rate_limit_wait(RateLimited("x", retry_after=2.0)) == 2.0
    assert rate_limit_wait(RateLimited("x")) is None
    headers = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    assert rate_limit_wait(RateLimited("x", retry_after=2.0), headers) == 360.0
    overloaded = ProviderUnavailable("529", upstream_status=529, retry_after=4.0)
    assert rate_limit_wait(overloaded) == 4.0


def test_rate_limit_wait_ignores_waits_on_errors_that_are_not_push_back() -> None:
    """A 500 carrying x-ratelimit-reset-* (OpenAI sends them everywhere) asks for no pause."""
    assert rate_limit_wait(ProviderServerError("x", upstream_status=500, retry_after=6.0)) is None
    local = ProviderUnavailable("at its max_concurrency (2)", deployment="a")
    assert rate_limit_wait(local) is None


# --- stops -----------------------------------------------------------------------------------


def test_chain_stops_at_max_attempts_and_raises_the_last_error() -> None:
    """Four attempts in all, over deployments; the fourth error reaches the caller."""
    raised: list[BaseException] = []

    def failing(dep: str) -> BaseException:
        raised.append(server_error(dep))
        return raised[-1]

    run = run_chain([failing] * 6, ["a", "b", "c", "d", "e", "f"])
    assert [dep for dep, _ in run.attempts] == ["a", "b", "c", "d"]
    assert run.error is raised[-1]
    assert len(run.sleeps) == 3
    assert run.statistics["stop_reason"] == "max_attempts"


def test_chain_stops_when_no_deployment_is_left() -> None:
    """The chooser returning None ends the chain with the last error."""
    run = run_chain([timeout, timeout, None], ["a", "b"])
    assert isinstance(run.error, ProviderTimeout)
    assert len(run.attempts) == 2
    assert run.statistics["stop_reason"] == "no_deployment"


def test_deadline_stops_the_chain() -> None:
    """Attempts of 0.4 s under a 1 s deadline: the third ends past it, so no fourth."""
    run = run_chain([timeout] * 4, ["a", "b", "c", "d"], deadline=1.0, attempt_time=0.4)
    assert [t for _, t in run.attempts] == [0.0, 0.4, pytest.approx(0.8)]
    assert isinstance(run.error, ProviderTimeout)
    assert run.statistics["stop_reason"] == "deadline"


@pytest.mark.parametrize(
    "make",
    [
        lambda dep: ProviderRejected("bad tools", deployment=dep, upstream_status=422),
        lambda dep: InvalidRequest("bad json"),
        lambda dep: ValueError("a bug"),
        lambda dep: asyncio.CancelledError(),
    ],
    ids=["provider-rejected", "caller-error", "bug", "cancelled"],
)
def test_non_retryable_errors_propagate_at_once(make: Callable[[str], BaseException]) -> None:
    """One attempt, no sleep, the chooser never asked, the very error raised."""
    made: list[BaseException] = []

    def failing(dep: str) -> BaseException:
        made.append(make(dep))
        return made[-1]

    run = run_chain([failing, None], ["a", "b"])
    assert run.error is made[0]
    assert len(run.attempts) == 1
    assert run.sleeps == []
    assert run.walk.asked == []


def test_should_retry_can_veto_but_not_widen() -> None:
    """The caller's predicate stops a retryable error; it cannot retry a rejected request."""
    run = run_chain([server_error, None], ["a", "b"], should_retry=lambda exc: False)
    assert isinstance(run.error, ProviderServerError)
    assert len(run.attempts) == 1
    rejected = lambda dep: ProviderRejected("no", deployment=dep)  # noqa: E731
    run = run_chain([rejected, None], ["a", "b"], should_retry=lambda exc: True)
    assert isinstance(run.error, ProviderRejected)
    assert len(run.attempts) == 1


def test_each_call_builds_a_fresh_retrying() -> None:
    """Two requests never share an AsyncRetrying."""

    async def go() -> tuple[AsyncRetrying, AsyncRetrying]:
        kwargs: dict[str, Any] = {"deadline": 10.0, "choose_next": lambda e: None}
        return retrying(SETTINGS, **kwargs), retrying(SETTINGS, **kwargs)

    first, second = asyncio.run(go())
    assert first is not second


def test_concurrent_chains_keep_their_own_attempts() -> None:
    """Two chains interleaved on one loop: each stops on its own count and its own outcome
    (with one shared AsyncRetrying, "down" would stop after 3 attempts and "flaky" fail)."""
    clock = Clock()
    counts = {"flaky": 0, "down": 0}

    async def chain(name: str, failures: int) -> BaseException | None:
        walk = Walk([f"{name}-{i}" for i in range(10)])
        try:
            chain = retrying(
                SETTINGS,
                deadline=100.0,
                choose_next=walk.choose,
                loop_time=clock,
                sleep=clock.sleep,
            )
            async for attempt in chain:
                with attempt:
                    counts[name] += 1
                    await asyncio.sleep(0)  # let the other chain run mid-attempt
                    if counts[name] <= failures:
                        raise server_error(walk.current)
        except ProviderError as exc:
            return exc
        return None

    async def go() -> list[BaseException | None]:
        return await asyncio.gather(chain("down", 99), chain("flaky", 2))

    down, flaky = asyncio.run(go())
    assert counts == {"down": 4, "flaky": 3}
    assert isinstance(down, ProviderServerError)
    assert down.deployment == "down-3"
    assert flaky is None


# --- retry budget ----------------------------------------------------------------------------


class BudgetClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def spend_all(budget: RetryBudget) -> int:
    spent = 0
    while budget.try_spend():
        spent += 1
        assert spent < 10_000
    return spent


def test_budget_floor_allows_min_per_second_over_the_window() -> None:
    """With no requests, 1/s over 10 s allows 10 retries; the 11th is refused and counted."""
    budget = RetryBudget(clock=BudgetClock())
    assert spend_all(budget) == 10
    assert budget.exhausted == 1
    assert not budget.can_retry()
    assert budget.exhausted == 1  # asking does not count


def test_budget_allows_a_ratio_of_requests_plus_the_floor() -> None:
    """100 requests: 20% of them plus the floor of 10 = 30 retries."""
    budget = RetryBudget(clock=BudgetClock())
    for _ in range(100):
        budget.record_request()
    for _ in range(50):
        assert budget.can_retry()  # asking spends nothing
    assert spend_all(budget) == 30
    assert budget.describe() == {
        "ratio": 0.2,
        "min_per_second": 1.0,
        "window": 10.0,
        "requests": 100,
        "retries": 30,
        "available": 0,
        "exhausted": 1,
    }


def test_budget_refills_as_the_window_slides() -> None:
    """Retries are forgotten bucket by bucket, one window after they were spent."""
    clock = BudgetClock()
    budget = RetryBudget(clock=clock)
    for _ in range(5):
        budget.spend()
    clock.now = 5.0
    assert spend_all(budget) == 5
    clock.now = 9.99
    assert not budget.can_retry()
    clock.now = 10.0  # the t=0 bucket leaves the window, the t=5 one stays
    assert spend_all(budget) == 5
    clock.now = 15.0  # the t=5 bucket leaves; the t=10 one stays
    assert spend_all(budget) == 5
    clock.now = 1000.0  # a long silence clears everything
    assert budget.describe()["retries"] == 0
    assert spend_all(budget) == 10


def test_budget_forgets_requests_as_the_window_slides() -> None:
    """Requests that earned retries expire too: at t=10 the t=0 requests no longer count."""
    clock = BudgetClock()
    budget = RetryBudget(clock=clock)
    for _ in range(100):
        budget.record_request()
    clock.now = 9.0
    assert spend_all(budget) == 30
    clock.now = 10.0
    assert budget.describe()["requests"] == 0
    assert not budget.can_retry()  # 30 retries of t=9 against a floor of 10


def test_budget_refuses_bad_settings() -> None:
    """Negative ratios, empty windows and no buckets are configuration errors."""
    for kwargs in ({"ratio": -0.1}, {"min_per_second": -1.0}, {"window": 0.0}, {"buckets": 0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            RetryBudget(**kwargs)  # type: ignore[arg-type]


def empty_budget() -> RetryBudget:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=BudgetClock())
    budget.record_request()
    return budget


def test_fail_over_to_an_untried_deployment_spends_no_budget() -> None:
    """An empty budget does not stop a fail-over: b was not tried yet, so nothing is asked."""
    budget = empty_budget()
    run = run_chain([server_error, timeout, None], ["a", "b", "c"], budget=budget)
    assert run.error is None
    assert [dep for dep, _ in run.attempts] == ["a", "b", "c"]
    assert (budget.describe()["retries"], budget.exhausted) == (0, 0)


def test_re_send_to_a_tried_deployment_spends_a_token() -> None:
    """Retry-same spends one token; so does going back to a deployment after its pause."""
    budget = RetryBudget(clock=BudgetClock())
    run_chain([server_error, None], ["a", "a"], budget=budget)
    assert budget.describe()["retries"] == 1
    run = run_chain([rate_limited(1.0), server_error, None], ["a", "b", "a"], budget=budget)
    assert run.error is None
    assert budget.describe()["retries"] == 2  # a -> b free, b -> a charged


def test_exhausted_budget_stops_a_re_send_with_no_untried_deployment_left() -> None:
    """No budget left, only the failing deployment to go back to: the error is raised after
    one attempt, the refusal counted."""
    budget = empty_budget()
    run = run_chain([server_error, None], ["a", "a"], budget=budget, spare=[])
    assert isinstance(run.error, ProviderServerError)
    assert len(run.attempts) == 1
    assert run.statistics["stop_reason"] == "budget"
    assert budget.exhausted == 1
    run = run_chain([rate_limited(1.0), None], ["a", "a"], budget=budget)  # no choose_untried
    assert isinstance(run.error, RateLimited)
    assert (len(run.attempts), run.sleeps, budget.exhausted) == (1, [], 2)


def test_refused_re_send_falls_through_to_an_untried_deployment() -> None:
    """A retry-same the budget refuses becomes a fail-over to an untried one: at once, free."""
    budget = empty_budget()
    details: list[RetryDetails] = []
    run = run_chain([server_error, None], ["a", "a"], budget=budget, spare=["b"], details=details)
    assert run.error is None
    assert run.attempts == [("a", 0.0), ("b", 0.0)]
    assert [(d.next_deployment, d.reason, d.wait) for d in details] == [("b", "fail-over", 0.0)]
    assert (budget.describe()["retries"], budget.exhausted) == (0, 1)


def test_a_deployment_tried_before_the_chain_counts_as_tried() -> None:
    """A deployment a hedge already sent to is a re-send for the chain: it asks the budget."""
    budget = empty_budget()
    run = run_chain([server_error, None], ["a", "b"], budget=budget, tried=["b"])
    assert isinstance(run.error, ProviderServerError)
    assert run.statistics["stop_reason"] == "budget"
    assert budget.exhausted == 1


def test_budget_is_spent_only_on_retries_that_happen() -> None:
    """One re-send spends one token; a chain stopped by max_attempts spends and refuses none."""
    budget = RetryBudget(clock=BudgetClock())
    run_chain([server_error, None], ["a", "a"], budget=budget)
    assert budget.describe()["retries"] == 1
    settings = RetrySettings(max_attempts=2)
    run = run_chain([server_error] * 3, ["a", "a", "a"], settings=settings, budget=budget)
    assert run.statistics["stop_reason"] == "max_attempts"
    assert (budget.describe()["retries"], budget.exhausted) == (2, 0)


# --- settings --------------------------------------------------------------------------------


def test_settings_from_mapping_reads_durations() -> None:
    """Human durations and numbers; absent keys keep their defaults."""
    settings = RetrySettings.from_mapping(
        {"max_attempts": 3, "base_delay": "50ms", "max_delay": "1s", "retry_after_cap": 5}
    )
    assert settings == RetrySettings(
        max_attempts=3, base_delay=0.05, max_delay=1.0, retry_after_cap=5.0
    )
    assert RetrySettings.from_mapping(None) == RetrySettings.from_mapping({}) == RetrySettings()


def test_settings_from_mapping_names_unknown_keys_and_the_accepted_ones() -> None:
    """A typo is refused with every unknown key and the list of accepted ones."""
    with pytest.raises(ValueError) as info:
        RetrySettings.from_mapping({"tries": 3, "backof": "1s", "max_attempts": 2})
    message = str(info.value)
    assert "`backof`, `tries`" in message
    assert (
        "accepted: base_delay, max_attempts, max_delay, retry_after_cap, same_deployment_retries"
        in message
    )


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"base_delay": "soon"}, "retry.base_delay: expected a duration"),
        ({"max_delay": -1}, "retry.max_delay: a duration cannot be negative"),
        ({"max_attempts": 0}, "retry.max_attempts: must be at least 1"),
        ({"max_attempts": True}, "retry.max_attempts: expected a whole number"),
        ({"max_attempts": "3"}, "retry.max_attempts: expected a whole number"),
        ({"base_delay": "3s", "max_delay": "1s"}, "is shorter than base_delay"),
        ({"same_deployment_retries": -1}, "same_deployment_retries: cannot be negative"),
    ],
)
def test_settings_from_mapping_names_the_bad_key(section: dict[str, Any], fragment: str) -> None:
    """Every invalid value is reported under its key."""
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        RetrySettings.from_mapping(section)


def test_settings_refuse_a_section_that_is_not_a_mapping() -> None:
    """`retry: 3` is a mistake, not a max_attempts."""
    with pytest.raises(ValueError, match="retry: expected a mapping"):
        RetrySettings.from_mapping(3)  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    """Settings are shared by every request of a route; nobody may change them in place."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        SETTINGS.max_attempts = 9  # type: ignore[misc]
