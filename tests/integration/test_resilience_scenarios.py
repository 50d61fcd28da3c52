"""The resilience issue's scenarios end to end: what the caller gets when a deployment fails.

Each test is one scenario of the issue, run on a real socket with the official OpenAI SDK as the
caller (``max_retries=0``, so every retry seen is the gateway's). Deployments are in-process
simulated providers with fault schedules (their ``simulator.stats()`` counts the attempts each
one saw), or the scripted upstream of ``tests/fakes/openai_upstream.py`` where a test needs to
see the upstream side of a connection. Time is compressed: backoff 10-50 ms, per-attempt limits
of a few hundred milliseconds, probes every 50 ms. Every scenario asserts the answer, the
attempts each deployment saw, the ``x-gateway-attempts`` header and a generous bound on the time
(loose enough for a loaded machine: they tell "at once" from "after a timeout or a pause").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from polling import wait_for
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from gateway.app import GATEWAY_KEY, build_policies
from gateway.config import ConfigError, parse_config
from gateway.providers.simulated import Fault

pytestmark = pytest.mark.integration

USER: list[Any] = [{"role": "user", "content": "hello"}]
PRIMARY_TEXT = "the primary answers"
FALLBACK_TEXT = "the fallback answers"
# Compressed time: a retry waits 10-50 ms, not the production 100 ms - 2 s.
RETRY = "base_delay: 10ms, max_delay: 50ms"
IMMEDIATE = 2.0  # seconds: a generous bound where the design says "at once"


# --- building gateways -------------------------------------------------------------------------


def _sim(
    name: str,
    content: str,
    *,
    faults: str = "[]",
    timeouts: str = "{response: 2s, first_token: 2s, idle: 2s}",
    extra: str = "",
) -> str:
    """A simulated deployment serving the client-facing model `chat` (``extra``: more keys)."""
    return f"""
  - name: {name}
    provider: simulated
    model: {name}-model
    aliases: [chat]
    timeouts: {timeouts}
    simulated: {{content: "{content}", faults: {faults}}}{extra}"""


def _config(
    *deployments: str, retry: str = "", breaker: str = "", budget: str = "", head: str = ""
) -> str:
    """A gateway over ``deployments`` (tried in order), probes off, compressed retry times."""
    retry_section = RETRY + (f", {retry}" if retry else "")
    text = f"""
server: {{request_timeout: 10s}}
health: {{probes: {{kind: none}}}}
resilience:
  retry: {{{retry_section}}}
  breaker: {{{breaker}}}
"""
    if budget:
        text += f"  retry_budget: {{{budget}}}\n"
    return text + head + "deployments:" + "".join(deployments)


@pytest.fixture
def sdk() -> Iterator[Callable[[Any], openai.OpenAI]]:
    """Factory: the official SDK pointed at a gateway (no SDK retries), warmed up with a
    ``GET /v1/models`` (which reaches no deployment) so that the times a test measures are the
    gateway's, not the SDK's first-use imports; closed at the end."""
    clients: list[openai.OpenAI] = []

    def make(gw: Any) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0, timeout=20)
        clients.append(client)
        assert [m.id for m in client.models.list()] == ["chat"]
        return client

    yield make
    for client in clients:
        client.close()


def _sim_requests(gw: Any) -> dict[str, int]:
    """Requests each simulated deployment saw (attempts and probes alike)."""

    async def read() -> dict[str, int]:
        assert gw.app is not None
        deployments = gw.app[GATEWAY_KEY].deployments
        return {
            name: int(dep.provider.simulator.stats()["requests"])
            for name, dep in deployments.items()
            if hasattr(dep.provider, "simulator")
        }

    counts: dict[str, int] = gw.call(read())
    return counts


async def _set_faults(gw: Any, name: str, faults: str) -> None:
    """Replace the fault schedule of simulated deployment ``name`` (its schedule restarts)."""
    assert gw.app is not None
    simulator = gw.app[GATEWAY_KEY].deployments[name].provider.simulator
    settings = simulator.settings.model_copy(update={"faults": _faults(faults)})
    simulator.configure(settings)


def _faults(text: str) -> tuple[Fault, ...]:
    return tuple(Fault.model_validate(f) for f in yaml.safe_load(text))


def _deployments(gw: Any) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{gw.url}/admin/deployments", timeout=5)
    assert resp.status_code == 200, resp.text
    return {d["name"]: d for d in resp.json()["deployments"]}


def _metric(gw: Any, sample: str, **labels: str) -> float | None:
    """The value of ``sample`` with ``labels`` in ``GET /metrics`` (``None``: not exposed)."""
    resp = httpx.get(f"{gw.url}/metrics", timeout=5)
    assert resp.status_code == 200, resp.text
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _chat(client: openai.OpenAI, **extra: Any) -> tuple[Any, Any, float]:
    """A non-streaming chat request: (raw response with headers, parsed completion, seconds)."""
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=USER, **extra)
    completion = raw.parse()
    return raw, completion, time.monotonic() - started


def _chat_error(client: openai.OpenAI, **extra: Any) -> tuple[openai.APIStatusError, float]:
    """A chat request that must fail: (the SDK's error, seconds)."""
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="chat", messages=USER, **extra)
    return caught.value, time.monotonic() - started


@contextmanager
def _timer() -> Iterator[Callable[[], float]]:
    started = time.monotonic()
    yield lambda: time.monotonic() - started


# --- rate limits ---------------------------------------------------------------------------------


def test_429_with_retry_after_once_waits_then_succeeds_on_the_only_deployment(
    gateway: Any,
    sdk: Any,
) -> None:
    """A lone deployment that asks for a 1 s pause gets it, then answers the retry."""
    once = "[{kind: status, status: 429, retry_after: 1s, count: 1}]"
    gw = gateway(_config(_sim("primary", PRIMARY_TEXT, faults=once)))
    client = sdk(gw)
    raw, completion, elapsed = _chat(client)
    assert completion.choices[0].message.content == PRIMARY_TEXT
    assert raw.headers["x-gateway-deployment"] == "primary"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert _sim_requests(gw) == {"primary": 2}
    assert 0.9 <= elapsed < 1.0 + IMMEDIATE  # the Retry-After was honoured, not more


def test_429_with_retry_after_fails_over_at_once_when_there_is_a_fallback(
    gateway: Any, sdk: Any
) -> None:
    """With a fallback, a rate-limited primary is not waited for: the fallback answers now."""
    once = "[{kind: status, status: 429, retry_after: 1s, count: 1}]"
    gw = gateway(
        _config(_sim("primary", PRIMARY_TEXT, faults=once), _sim("fallback", FALLBACK_TEXT))
    )
    client = sdk(gw)
    raw, completion, elapsed = _chat(client)
    assert completion.choices[0].message.content == FALLBACK_TEXT
    assert raw.headers["x-gateway-deployment"] == "fallback"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert _sim_requests(gw) == {"primary": 1, "fallback": 1}
    assert elapsed < 0.9  # the primary's 1 s pause was not waited out


def test_429_asking_for_a_pause_past_the_deadline_is_returned_at_once(
    gateway: Any, sdk: Any
) -> None:
    """A lone deployment asks for 5 s but the caller allows 3 s (`x-gateway-timeout`): no
    pointless wait, the caller gets the 429 and its Retry-After right away."""
    once = "[{kind: status, status: 429, retry_after: 5s, count: 1}]"
    gw = gateway(_config(_sim("primary", PRIMARY_TEXT, faults=once)))
    client = sdk(gw)
    error, elapsed = _chat_error(client, extra_headers={"x-gateway-timeout": "3s"})
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "5"
    assert error.response.headers["x-gateway-attempts"] == "1"
    assert _sim_requests(gw) == {"primary": 1}
    assert elapsed < IMMEDIATE  # neither the pause nor the deadline was waited out


def test_persistent_429_without_retry_after_fails_over(gateway: Any, sdk: Any) -> None:
    """A primary that keeps rate-limiting (no Retry-After) hands the request to the fallback."""
    always = "[{kind: status, status: 429}]"
    gw = gateway(
        _config(_sim("primary", PRIMARY_TEXT, faults=always), _sim("fallback", FALLBACK_TEXT))
    )
    client = sdk(gw)
    raw, completion, elapsed = _chat(client)
    assert completion.choices[0].message.content == FALLBACK_TEXT
    assert raw.headers["x-gateway-deployment"] == "fallback"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert _sim_requests(gw) == {"primary": 1, "fallback": 1}
    assert elapsed < IMMEDIATE


def test_persistent_429_without_fallback_backs_off_for_bounded_attempts_then_returns_429(
    gateway: Any,
    sdk: Any,
) -> None:
    """Alone and always rate-limited: max_attempts tries with a pause between them (never a
    tight loop), then the caller gets the 429 itself, without a Retry-After it never got."""
    always = "[{kind: status, status: 429, message: 'slow down please'}]"
    gw = gateway(_config(_sim("primary", PRIMARY_TEXT, faults=always), retry="max_attempts: 4"))
    client = sdk(gw)
    error, elapsed = _chat_error(client)
    assert isinstance(error, openai.RateLimitError)
    assert error.status_code == 429
    assert "slow down please" in error.message
    assert "retry-after" not in error.response.headers
    assert error.response.headers["x-gateway-attempts"] == "4"
    assert _sim_requests(gw) == {"primary": 4}
    assert 3 * 0.010 <= elapsed < IMMEDIATE  # at least base_delay between attempts


def test_persistent_429_with_retry_after_and_no_fallback_passes_the_retry_after_on(
    gateway: Any,
    sdk: Any,
) -> None:
    """Alone, rate-limited with a (short) Retry-After every time: each pause is honoured and
    the final 429 carries a Retry-After for the caller."""
    always = "[{kind: status, status: 429, retry_after: 100ms}]"
    gw = gateway(_config(_sim("primary", PRIMARY_TEXT, faults=always), retry="max_attempts: 3"))
    client = sdk(gw)
    error, elapsed = _chat_error(client)
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "1"  # whole seconds, at least 1
    assert error.response.headers["x-gateway-attempts"] == "3"
    assert _sim_requests(gw) == {"primary": 3}
    assert 2 * 0.09 <= elapsed < IMMEDIATE  # two pauses of 100 ms


# --- server errors and broken connections --------------------------------------------------------


def test_500_once_is_retried_on_the_same_deployment(gateway: Any, sdk: Any) -> None:
    """One 500: the same deployment gets one more try and answers; the fallback is untouched."""
    once = "[{kind: status, status: 500, count: 1}]"
    gw = gateway(
        _config(_sim("primary", PRIMARY_TEXT, faults=once), _sim("fallback", FALLBACK_TEXT))
    )
    client = sdk(gw)
    raw, completion, elapsed = _chat(client)
    assert completion.choices[0].message.content == PRIMARY_TEXT
    assert raw.headers["x-gateway-deployment"] == "primary"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert _sim_requests(gw) == {"primary": 2, "fallback": 0}
    assert elapsed < IMMEDIATE


def test_persistent_503_fails_over_then_the_open_breaker_skips_the_primary(
    gateway: Any, sdk: Any
) -> None:
    """503s fail over; after two in a row the breaker opens and later requests go straight to
    the fallback (one attempt), the primary seeing nothing more."""
    always = "[{kind: status, status: 503}]"
    gw = gateway(
        _config(
            _sim("primary", PRIMARY_TEXT, faults=always),
            _sim("fallback", FALLBACK_TEXT),
            breaker="consecutive_failures: 2, open_for: 30s",
        )
    )
    client = sdk(gw)
    with _timer() as elapsed:
        for _ in range(2):
            raw, completion, _ = _chat(client)
            assert completion.choices[0].message.content == FALLBACK_TEXT
            assert raw.headers["x-gateway-attempts"] == "2"
        assert _sim_requests(gw) == {"primary": 2, "fallback": 2}
        breaker = _deployments(gw)["primary"]["breaker"]
        assert breaker["state"] == "open"
        assert "2 consecutive failures" in breaker["last_trip_reason"]
        for _ in range(3):
            raw, completion, _ = _chat(client)
            assert completion.choices[0].message.content == FALLBACK_TEXT
            assert raw.headers["x-gateway-deployment"] == "fallback"
            assert raw.headers["x-gateway-attempts"] == "1"
        assert elapsed() < 5 * IMMEDIATE
    assert _sim_requests(gw) == {"primary": 2, "fallback": 5}


def test_reset_before_headers_is_retried_on_the_same_deployment_then_fails_over(
    gateway: Any,
    sdk: Any,
) -> None:
    """A connection reset before any byte: one retry on the same deployment, then the fallback."""
    always = "[{kind: reset}]"
    gw = gateway(
        _config(_sim("primary", PRIMARY_TEXT, faults=always), _sim("fallback", FALLBACK_TEXT))
    )
    client = sdk(gw)
    raw, completion, elapsed = _chat(client)
    assert completion.choices[0].message.content == FALLBACK_TEXT
    assert raw.headers["x-gateway-deployment"] == "fallback"
    assert raw.headers["x-gateway-attempts"] == "3"
    assert _sim_requests(gw) == {"primary": 2, "fallback": 1}
    assert elapsed < IMMEDIATE


def test_silent_deployment_costs_one_response_timeout_then_fails_over(
    gateway: Any, sdk: Any
) -> None:
    """A deployment that never answers costs one `timeouts.response` (300 ms), is not tried
    again, and the fallback answers."""
    hang = "[{kind: hang}]"
    silent = "{response: 300ms, first_token: 300ms}"
    gw = gateway(
        _config(
            _sim("primary", PRIMARY_TEXT, faults=hang, timeouts=silent),
            _sim("fallback", FALLBACK_TEXT),
        )
    )
    client = sdk(gw)
    raw, completion, elapsed = _chat(client)
    assert completion.choices[0].message.content == FALLBACK_TEXT
    assert raw.headers["x-gateway-deployment"] == "fallback"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert _sim_requests(gw) == {"primary": 1, "fallback": 1}
    assert 0.28 <= elapsed < IMMEDIATE  # one timeout, not two


def test_silent_only_deployment_is_not_retried_and_the_caller_gets_a_504(
    gateway: Any, sdk: Any
) -> None:
    """Alone and silent: one timeout, no second try against a deployment that said nothing."""
    hang = "[{kind: hang}]"
    silent = "{response: 300ms, first_token: 300ms}"
    gw = gateway(_config(_sim("primary", PRIMARY_TEXT, faults=hang, timeouts=silent)))
    client = sdk(gw)
    error, elapsed = _chat_error(client)
    assert error.status_code == 504
    assert "primary" in error.message
    assert error.response.headers["x-gateway-attempts"] == "1"
    assert _sim_requests(gw) == {"primary": 1}
    assert 0.28 <= elapsed < IMMEDIATE


def test_slow_first_token_beyond_the_limit_fails_over_to_a_stream_that_answers(
    gateway: Any,
    sdk: Any,
) -> None:
    """A stream whose first token would take 5 s is abandoned at `timeouts.first_token`
    (200 ms) and the fallback streams the whole answer."""
    slow = "[{kind: slow_first_token, delay: 5s}]"
    limits = "{response: 10s, first_token: 200ms, idle: 2s}"
    gw = gateway(
        _config(
            _sim("primary", PRIMARY_TEXT, faults=slow, timeouts=limits),
            _sim("fallback", FALLBACK_TEXT),
        )
    )
    client = sdk(gw)
    started = time.monotonic()
    with client.chat.completions.with_streaming_response.create(
        model="chat", messages=USER, stream=True
    ) as resp:
        headers = resp.headers
        chunks = list(resp.parse())
    elapsed = time.monotonic() - started
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FALLBACK_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert headers["x-gateway-deployment"] == "fallback"
    assert headers["x-gateway-attempts"] == "2"
    assert _sim_requests(gw) == {"primary": 1, "fallback": 1}
    assert 0.18 <= elapsed < IMMEDIATE  # the 200 ms limit, not the 5 s delay


# --- the provider's own refusals -----------------------------------------------------------------

CONTEXT_FAULT = (
    "[{kind: status, status: 400, code: context_length_exceeded, "
    "message: 'This model maximum context length is 1000 tokens'}]"
)


def test_context_length_exceeded_fails_over_to_a_larger_context_window(
    gateway: Any, sdk: Any
) -> None:
    """Too long for the primary: a deployment with the same window is skipped, the larger one
    answers."""
    gw = gateway(
        _config(
            _sim("primary", PRIMARY_TEXT, faults=CONTEXT_FAULT, extra="\n    context_window: 1000"),
            _sim("same", "same size", extra="\n    context_window: 1000"),
            _sim("large", "the large one answers", extra="\n    context_window: 100000"),
        )
    )
    client = sdk(gw)
    raw, completion, elapsed = _chat(client)
    assert completion.choices[0].message.content == "the large one answers"
    assert raw.headers["x-gateway-deployment"] == "large"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert _sim_requests(gw) == {"primary": 1, "same": 0, "large": 1}
    assert elapsed < IMMEDIATE


def test_context_length_exceeded_without_a_larger_window_returns_the_providers_400(
    gateway: Any,
    sdk: Any,
) -> None:
    """No larger window anywhere: the caller gets the provider's 400 and its code, after one
    attempt (a smaller fallback is not tried)."""
    gw = gateway(
        _config(
            _sim("primary", PRIMARY_TEXT, faults=CONTEXT_FAULT, extra="\n    context_window: 1000"),
            _sim("small", FALLBACK_TEXT, extra="\n    context_window: 800"),
        )
    )
    client = sdk(gw)
    error, elapsed = _chat_error(client)
    assert isinstance(error, openai.BadRequestError)
    assert error.code == "context_length_exceeded"
    assert "maximum context length is 1000 tokens" in error.message
    assert error.response.headers["x-gateway-attempts"] == "1"
    assert _sim_requests(gw) == {"primary": 1, "small": 0}
    assert elapsed < IMMEDIATE


def test_content_policy_rejection_is_not_retried_and_its_message_reaches_the_caller(
    gateway: Any,
    sdk: Any,
) -> None:
    """A 400 for the request's own content: one attempt, the provider's words to the caller,
    the fallback untouched, and nothing held against the primary (its breaker stays closed
    though one counted failure would open it)."""
    refusal = (
        "[{kind: status, status: 400, code: content_policy_violation, "
        "message: 'Your request was rejected as a result of our safety system'}]"
    )
    gw = gateway(
        _config(
            _sim("primary", PRIMARY_TEXT, faults=refusal),
            _sim("fallback", FALLBACK_TEXT),
            breaker="consecutive_failures: 1",
        )
    )
    client = sdk(gw)
    for _ in range(2):
        error, elapsed = _chat_error(client)
        assert isinstance(error, openai.BadRequestError)
        assert error.code == "content_policy_violation"
        assert "rejected as a result of our safety system" in error.message
        assert error.response.headers["x-gateway-attempts"] == "1"
        assert error.response.headers["x-gateway-deployment"] == "primary"
        assert elapsed < IMMEDIATE
    assert _sim_requests(gw) == {"primary": 2, "fallback": 0}
    primary = _deployments(gw)["primary"]
    assert primary["breaker"]["state"] == "closed"
    assert primary["window"]["errors"] == {"caller_error": 2}


# --- outages and recovery ------------------------------------------------------------------------


def test_primary_outage_moves_traffic_away_and_back_after_probe_and_trial(
    gateway: Any, sdk: Any
) -> None:
    """Connections refused: two failures open the breaker, requests then go straight to the
    fallback; when the outage ends a probe moves the breaker to half-open, one trial request
    succeeds on the primary, the breaker closes and traffic is back."""
    outage = "[{kind: refuse, start: 0s}]"  # until the test clears the schedule
    # Fast probes; failed ones never eject it here, so that only the breaker moves traffic.
    probe = "\n    probe: {kind: models, interval: 50ms, timeout: 200ms, unhealthy_threshold: 1000}"
    gw = gateway(
        _config(
            _sim("primary", PRIMARY_TEXT, faults=outage, extra=probe),
            _sim("fallback", FALLBACK_TEXT),
            # open for 1 s (± 20 %): longer than the steps below take even on a loaded machine,
            # so it is the probe (every 50 ms) that ends the open phase, not the timer
            breaker="consecutive_failures: 2, open_for: 1s",
        )
    )
    client = sdk(gw)
    with capture_logs() as logs, _timer() as elapsed:
        # 1. Outage: the primary refuses, the fallback answers; two requests trip the breaker.
        for _ in range(2):
            raw, completion, _ = _chat(client)
            assert completion.choices[0].message.content == FALLBACK_TEXT
            assert raw.headers["x-gateway-attempts"] == "2"
        assert _deployments(gw)["primary"]["breaker"]["state"] == "open"
        # 2. Breaker open: straight to the fallback.
        raw, completion, _ = _chat(client)
        assert raw.headers["x-gateway-deployment"] == "fallback"
        assert raw.headers["x-gateway-attempts"] == "1"
        # 3. The outage ends; a probe, then a trial request, bring the primary back.
        gw.call(_set_faults(gw, "primary", "[]"))  # the outage is over
        answered: list[str] = []

        def back() -> bool:
            raw, _, _ = _chat(client)
            answered.append(raw.headers["x-gateway-deployment"])
            return answered[-1] == "primary"

        assert wait_for(back, timeout=5.0), answered
        assert elapsed() < 10.0
    assert set(answered[:-1]) <= {"fallback"}
    primary = _deployments(gw)["primary"]
    assert (primary["breaker"]["state"], primary["breaker"]["trips"]) == ("closed", 1)
    moves = [(e["new"], e["reason"]) for e in logs if e["event"] == "breaker state changed"]
    assert moves == [
        ("open", "2 consecutive failures (last: connection)"),
        ("half-open", "probe succeeded"),
        ("closed", "1 trial succeeded"),
    ]
    for state in ("open", "half-open", "closed"):
        transitions = _metric(
            gw, "llm_gateway_breaker_transitions_total", deployment="primary", state=state
        )
        assert transitions == 1.0
    # traffic stays on the primary
    raw, completion, _ = _chat(client)
    assert completion.choices[0].message.content == PRIMARY_TEXT
    assert raw.headers["x-gateway-attempts"] == "1"


def test_fail_over_bills_only_the_deployment_that_answered(gateway: Any, sdk: Any) -> None:
    """The answer names the fallback (header, model, usage); the primary's failure is in its
    window's errors and costs nothing; the fallback's window holds the tokens and the cost."""
    always = "[{kind: status, status: 503}]"
    price = "\n    price: {input: 1000, output: 2000}"
    gw = gateway(
        _config(
            _sim("primary", PRIMARY_TEXT, faults=always, extra=price),
            _sim("fallback", FALLBACK_TEXT, extra=price),
        )
    )
    client = sdk(gw)
    raw, completion, elapsed = _chat(client)
    assert raw.headers["x-gateway-deployment"] == "fallback"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert completion.model == "fallback-model"
    usage = completion.usage
    assert usage is not None and usage.completion_tokens == len(FALLBACK_TEXT.split())
    assert elapsed < IMMEDIATE
    windows = {name: d["window"] for name, d in _deployments(gw).items()}
    primary, fallback = windows["primary"], windows["fallback"]
    assert (primary["requests"], primary["successes"]) == (1, 0)
    assert sum(primary["errors"].values()) == 1
    assert (primary["tokens_in"], primary["tokens_out"], primary["cost_usd"]) == (0, 0, 0)
    assert (fallback["requests"], fallback["successes"], fallback["errors"]) == (1, 1, {})
    assert (fallback["tokens_in"], fallback["tokens_out"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    expected = (usage.prompt_tokens * 1000 + usage.completion_tokens * 2000) / 1e6
    assert fallback["cost_usd"] == pytest.approx(expected)
    assert _sim_requests(gw) == {"primary": 1, "fallback": 1}


def test_every_deployment_down_ends_in_bounded_time_with_an_error_naming_each(
    gateway: Any,
    sdk: Any,
) -> None:
    """Three broken deployments: every one is tried within max_attempts (4), quickly, and the
    error names all three and the last failure."""
    gw = gateway(
        _config(
            _sim("alpha", "a", faults="[{kind: status, status: 503}]"),
            _sim("beta", "b", faults="[{kind: reset}]"),
            _sim("gamma", "c", faults="[{kind: status, status: 500}]"),
        )
    )
    client = sdk(gw)
    error, elapsed = _chat_error(client)
    assert error.status_code == 502  # the last failure's status (gamma's 500)
    assert "every deployment failed (4 attempts over alpha, beta, gamma" in error.message
    assert "last error from `gamma`: simulated 500 error" in error.message
    assert error.response.headers["x-gateway-attempts"] == "4"
    assert _sim_requests(gw) == {"alpha": 1, "beta": 2, "gamma": 1}
    assert elapsed < IMMEDIATE


def test_every_deployment_unavailable_gives_a_503_naming_each(gateway: Any, sdk: Any) -> None:
    """All of them answer 503 (no Retry-After): each is tried once, then the first again after a
    backoff, up to max_attempts (4); the caller gets a 503 that lists them. Once every breaker
    is open, the 503 comes at once, without an attempt, and says why for each."""
    down = "[{kind: status, status: 503}]"
    gw = gateway(
        _config(
            _sim("alpha", "a", faults=down),
            _sim("beta", "b", faults=down),
            _sim("gamma", "c", faults=down),
            breaker="consecutive_failures: 2, open_for: 30s",
        )
    )
    client = sdk(gw)
    error, elapsed = _chat_error(client)
    assert error.status_code == 503
    assert error.code == "upstream_unavailable"
    assert "every deployment failed (4 attempts over alpha, beta, gamma" in error.message
    assert error.response.headers["x-gateway-attempts"] == "4"
    assert _sim_requests(gw) == {"alpha": 2, "beta": 1, "gamma": 1}
    assert elapsed < IMMEDIATE
    # alpha's breaker is open now; beta's and gamma's open with the next request
    error, elapsed = _chat_error(client)
    assert error.status_code == 503
    assert "2 attempts over beta, gamma" in error.message
    assert _sim_requests(gw) == {"alpha": 2, "beta": 2, "gamma": 2}
    assert {name: d["breaker"]["state"] for name, d in _deployments(gw).items()} == {
        "alpha": "open",
        "beta": "open",
        "gamma": "open",
    }
    error, elapsed = _chat_error(client)
    assert error.status_code == 503
    assert error.response.headers["x-gateway-attempts"] == "0"
    for name in ("alpha", "beta", "gamma"):
        assert name in error.message
    assert "circuit breaker open" in error.message
    assert _sim_requests(gw) == {"alpha": 2, "beta": 2, "gamma": 2}
    assert elapsed < IMMEDIATE


# --- the caller leaves ---------------------------------------------------------------------------


def test_caller_leaving_mid_stream_cancels_upstream_and_counts_no_failure(
    gateway: Any, sdk: Any, scripted_upstream: Any
) -> None:
    """The caller closes a stream after two chunks: the upstream stream is abandoned, the
    deployment's window shows no error and its breaker (one failure would open it) stays closed.
    """
    up, up_server = scripted_upstream()
    up.script = ["stream_slow"]  # 200 chunks, 50 ms apart
    gw = gateway(
        _config(breaker="consecutive_failures: 1")
        + f"""
  - name: primary
    provider: openai
    model: up-model
    aliases: [chat]
    base_url: {up_server.url}/v1
"""
    )
    client = sdk(gw)
    with _timer() as elapsed:
        with client.chat.completions.with_streaming_response.create(
            model="chat", messages=USER, stream=True
        ) as resp:
            assert resp.headers["x-gateway-attempts"] == "1"
            seen = []
            for chunk in resp.parse():
                seen.append(chunk.choices[0].delta.content)
                if len(seen) == 2:
                    break
        assert seen == ["w0 ", "w1 "]
        assert wait_for(up.abandoned.is_set)
        assert wait_for(lambda: _metric(gw, "llm_gateway_requests_total", status="499") == 1.0)
        assert elapsed() < 5.0  # not the 10 s the whole stream would take
    primary = _deployments(gw)["primary"]
    assert primary["window"]["errors"] == {}
    assert primary["window"]["inflight"] == 0
    assert primary["breaker"]["state"] == "closed"
    assert primary["breaker"]["consecutive_failures"] == 0
    assert len(up.received) == 1


# --- retry budget and operators ------------------------------------------------------------------


def test_exhausted_retry_budget_refuses_re_sends_but_not_fail_overs(gateway: Any, sdk: Any) -> None:
    """With a budget of zero retries, a 503 from the primary still fails over to the untried
    fallback (a fail-over spends nothing); a lone deployment's 500 is not retried on it, nor is
    its 429 waited out: the caller gets the error after one attempt, and /metrics counts each
    re-send the budget refused."""
    empty = "ratio: 0.0, min_per_second: 0.0"
    gw = gateway(
        _config(
            _sim("primary", PRIMARY_TEXT, faults="[{kind: status, status: 503}]"),
            _sim("fallback", FALLBACK_TEXT),
            budget=empty,
        )
    )
    client = sdk(gw)
    raw, completion, elapsed = _chat(client)
    assert completion.choices[0].message.content == FALLBACK_TEXT
    assert raw.headers["x-gateway-attempts"] == "2"
    assert _sim_requests(gw) == {"primary": 1, "fallback": 1}
    assert elapsed < IMMEDIATE
    assert _metric(gw, "llm_gateway_retry_budget_exhausted_total") == 0.0

    faults = "[{kind: status, status: 500, count: 1}, {kind: status, status: 429, retry_after: 1s}]"
    lone = gateway(_config(_sim("primary", PRIMARY_TEXT, faults=faults), budget=empty))
    client = sdk(lone)
    for status, exhausted in ((502, 1.0), (429, 2.0)):  # an upstream 500 reaches us as 502
        error, elapsed = _chat_error(client)
        assert error.status_code == status
        assert "retry budget" in error.message
        assert error.response.headers["x-gateway-attempts"] == "1"
        assert elapsed < 1.0  # the 429's Retry-After was not waited out
        assert _metric(lone, "llm_gateway_retry_budget_exhausted_total") == exhausted
    assert _sim_requests(lone) == {"primary": 2}


def test_operator_forces_the_primary_open_then_hands_it_back(gateway: Any, sdk: Any) -> None:
    """`open` (and `drained`) take the primary out of traffic at once, `auto` brings it back;
    `closed` keeps it in traffic whatever it does; a bad mode or an unknown deployment is
    refused and changes nothing."""
    gw = gateway(
        _config(
            _sim("primary", PRIMARY_TEXT),
            _sim("fallback", FALLBACK_TEXT),
            breaker="consecutive_failures: 1",
        )
    )
    client = sdk(gw)
    url = f"{gw.url}/admin/deployments/primary/breaker"

    def force(mode: str) -> None:
        resp = httpx.post(url, json={"mode": mode}, timeout=5)
        assert resp.status_code == 200, resp.text
        state = {"open": "forced-open", "auto": "closed", "closed": "forced-closed"}.get(mode, mode)
        assert resp.json()["breaker"]["state"] == state
        assert _deployments(gw)["primary"]["breaker"]["state"] == state

    def answered_by(name: str) -> None:
        """Requests reach ``name`` within the router's health view age (100 ms)."""
        seen: list[str] = []

        def served() -> bool:
            raw, _, _ = _chat(client)
            assert raw.headers["x-gateway-attempts"] == "1"
            seen.append(raw.headers["x-gateway-deployment"])
            return seen[-1] == name

        assert wait_for(served, timeout=2.0), seen

    with _timer() as elapsed:
        for mode in ("open", "drained"):
            force(mode)
            before = _sim_requests(gw)["primary"]
            for _ in range(2):  # at once: not even the first request after the call
                raw, completion, _ = _chat(client)
                assert completion.choices[0].message.content == FALLBACK_TEXT
                assert raw.headers["x-gateway-attempts"] == "1"
            assert _sim_requests(gw)["primary"] == before

        force("auto")
        answered_by("primary")

        bad = httpx.post(url, json={"mode": "sideways"}, timeout=5)
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "mode"
        unknown = httpx.post(
            f"{gw.url}/admin/deployments/nope/breaker", json={"mode": "open"}, timeout=5
        )
        assert unknown.status_code == 404
        assert "primary" in unknown.json()["error"]["message"]
        assert _deployments(gw)["primary"]["breaker"]["state"] == "closed"

        # forced closed: failures (one would trip it) do not take it out of traffic
        force("closed")
        gw.call(_set_faults(gw, "primary", "[{kind: status, status: 503, count: 2}]"))
        for _ in range(2):
            raw, completion, _ = _chat(client)
            assert completion.choices[0].message.content == FALLBACK_TEXT
            assert raw.headers["x-gateway-attempts"] == "2"
        raw, completion, _ = _chat(client)
        assert completion.choices[0].message.content == PRIMARY_TEXT
        assert _deployments(gw)["primary"]["breaker"]["state"] == "forced-closed"
        assert elapsed() < 5 * IMMEDIATE


# --- configuration -------------------------------------------------------------------------------


def test_unknown_retry_setting_in_the_config_is_refused_with_file_and_line() -> None:
    """`resilience.retry: {bogus: 1}` names the file, the line and the accepted settings."""
    text = _config(_sim("primary", PRIMARY_TEXT), retry="bogus: 1")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    line = text.splitlines().index("  retry: {" + RETRY + ", bogus: 1}") + 1
    message = str(caught.value)
    assert f"gw.yaml:{line}:" in message
    assert "resilience.retry" in message
    assert "`bogus`" in message and "max_attempts" in message


def _policy(tmp_path: Path, retry: str, *deployments: str) -> Path:
    """A policy file routing `chat` to ``deployments`` in order, with the route's ``retry``."""
    candidates = ", ".join(f"{{deployment: {name}}}" for name in deployments)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"""version: 1
routes:
  - name: chat
    match: {{models: [chat]}}
    candidates: [{candidates}]
    strategy: ordered
    retry: {{{retry}}}
"""
    )
    return policy


def test_policy_route_retry_overrides_the_gateway_default(
    gateway: Any, sdk: Any, tmp_path: Path
) -> None:
    """A route's `retry: {max_attempts: 1}` wins over the config's defaults: a 503 from the
    primary goes to the caller and the fallback is not tried."""
    policy = _policy(tmp_path, "max_attempts: 1", "primary", "fallback")
    gw = gateway(
        _config(
            _sim("primary", PRIMARY_TEXT, faults="[{kind: status, status: 503}]"),
            _sim("fallback", FALLBACK_TEXT),
            head=f"policy: {{path: {policy}, watch: false}}\n",
        )
    )
    client = sdk(gw)
    error, elapsed = _chat_error(client)
    assert error.status_code == 503
    assert error.response.headers["x-gateway-attempts"] == "1"
    assert error.response.headers["x-gateway-route"] == "chat"
    assert _sim_requests(gw) == {"primary": 1, "fallback": 0}
    assert elapsed < IMMEDIATE


def test_unknown_retry_setting_in_a_policy_route_is_refused_with_file_and_line(
    tmp_path: Path,
) -> None:
    """A route's `retry: {bogus: 1}` is refused when the policy loads, naming file and line."""
    policy = _policy(tmp_path, "bogus: 1", "primary")
    config = parse_config(
        _config(_sim("primary", PRIMARY_TEXT), head="policy: {path: policy.yaml}\n"),
        str(tmp_path / "gw.yaml"),
    )
    with pytest.raises(ConfigError) as caught:
        build_policies(config)
    message = str(caught.value)
    assert f"{policy}:7:" in message
    assert "routes[0].retry" in message
    assert "`bogus`" in message
