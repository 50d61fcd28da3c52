"""Active health probes: each provider's ``probe(kind, timeout)`` passes with a latency or fails
with the error class a request would get.

The OpenAI-compatible provider talks to the scripted upstream on a real socket; the simulated
provider meets its fault schedule under an injected clock; the litellm provider is checked
against the fake Anthropic API (one import of litellm for the module).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from fakes.anthropic import AnthropicFake, overloaded
from fakes.openai_upstream import Upstream

from gateway.config import LiteLLMDeployment, OpenAIDeployment, SimulatedDeployment, Timeouts
from gateway.errors import (
    BadUpstreamResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUnreachable,
)
from gateway.providers.base import ProviderCall, ProviderResponse
from gateway.providers.openai import OpenAIProvider
from gateway.providers.simulated.provider import SimulatedProvider
from gateway.providers.simulated.settings import SimulatedSettings

KEY = "sk-probe-secret-1234"
QUERY_SECRET = "q-probe-secret-5678"
PING = [{"role": "user", "content": "ping"}]

# --- the OpenAI-compatible provider ----------------------------------------------------------


def _steps(up: Upstream, kind: str) -> list[Any]:
    """The script a probe of ``kind`` takes its answer from."""
    return up.models_script if kind == "models" else up.script


@pytest.fixture
def upstream(scripted_upstream: Callable[[], tuple[Upstream, Any]]) -> tuple[Upstream, str]:
    """The scripted upstream and its base URL (``.../v1``)."""
    up, server = scripted_upstream()
    return up, f"{server.url}/v1"


def _openai(base_url: str, **overrides: Any) -> OpenAIDeployment:
    fields: dict[str, Any] = {
        "name": "up",
        "provider": "openai",
        "model": "m",
        "base_url": base_url,
        "api_key": KEY,
        "query_params": {"key": QUERY_SECRET},
        **overrides,
    }
    return OpenAIDeployment.model_validate(fields)


def _probe(deployment: OpenAIDeployment, kind: str, timeout: float = 5.0) -> float:
    async def run() -> float:
        async with aiohttp.ClientSession() as session:
            return await OpenAIProvider(deployment, session).probe(kind, timeout)

    return asyncio.run(run())


def _probe_error(deployment: OpenAIDeployment, kind: str, timeout: float = 5.0) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        _probe(deployment, kind, timeout)
    err = caught.value
    assert err.deployment == "up"
    assert KEY not in str(err) and QUERY_SECRET not in str(err)
    return err


def _free_port() -> int:
    """A port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("key_header", "sent"),
    [("authorization", ("Authorization", f"Bearer {KEY}")), ("api-key", ("api-key", KEY))],
)
def test_models_probe_lists_models_with_the_deployments_credentials(
    upstream: tuple[Upstream, str], key_header: str, sent: tuple[str, str]
) -> None:
    """``models`` is a GET of /models carrying the key, the query parameters and extra headers."""
    up, url = upstream
    deployment = _openai(url, api_key_header=key_header, headers={"x-org": "org-1"})
    latency = _probe(deployment, "models")
    assert 0.0 <= latency < 5.0
    assert up.models_requests == [f"/v1/models?key={QUERY_SECRET}"]
    assert up.received == []  # no completion was asked for
    headers = up.headers[-1]
    assert headers.get(sent[0]) == sent[1]
    assert headers.get("x-org") == "org-1"


def test_completion_probe_asks_for_one_token(upstream: tuple[Upstream, str]) -> None:
    """``completion`` posts one ``ping`` message with ``max_tokens: 1`` for the upstream model."""
    up, url = upstream
    latency = _probe(_openai(url), "completion")
    assert 0.0 <= latency < 5.0
    assert up.received == [{"model": "m", "messages": PING, "max_tokens": 1}]
    assert up.headers[-1].get("Authorization") == f"Bearer {KEY}"
    assert up.models_requests == []


def test_completion_probe_of_an_embeddings_deployment_embeds_one_word(
    upstream: tuple[Upstream, str],
) -> None:
    """A deployment that serves embeddings but not chat is probed with a one-word embedding."""
    up, url = upstream
    _probe(_openai(url, tags=["embeddings"]), "completion")
    assert up.received == [{"model": "m", "input": "ping"}]


@pytest.mark.parametrize("kind", ["models", "completion"])
@pytest.mark.parametrize(
    ("step", "cls"),
    [
        (("status", 500, None), ProviderServerError),
        (("status", 503, 7), ProviderUnavailable),
        (("status", 404, None), ProviderMisconfigured),
        ("garbage", BadUpstreamResponse),
        ("not_json_object", BadUpstreamResponse),
    ],
)
def test_probe_failures_raise_the_request_paths_error_class(
    upstream: tuple[Upstream, str], kind: str, step: Any, cls: type[ProviderError]
) -> None:
    """An HTTP error, a body that is not a JSON object or a reset fails the probe as a request."""
    up, url = upstream
    _steps(up, kind).append(step)
    err = _probe_error(_openai(url), kind)
    assert type(err) is cls
    if isinstance(step, tuple):
        assert err.upstream_status == step[1]
    if step == ("status", 503, 7):
        assert err.retry_after == 7


def test_completion_probe_dropped_before_any_byte_is_a_connection_error(
    upstream: tuple[Upstream, str],
) -> None:
    """A POST probe whose connection is dropped fails at once (POSTs are never resent)."""
    up, url = upstream
    up.script.append("reset")
    assert type(_probe_error(_openai(url), "completion")) is ProviderConnectionError
    assert len(up.received) == 1


def test_models_probe_is_resent_once_after_a_dropped_connection(
    upstream: tuple[Upstream, str],
) -> None:
    """aiohttp resends an idempotent GET once on a dropped connection (RFC 9112, for stale
    keep-alive connections): one reset passes, a second in a row fails the probe."""
    up, url = upstream
    up.models_script.append("reset")
    _probe(_openai(url), "models")
    assert len(up.models_requests) == 2
    up.models_script.extend(["reset", "reset"])
    assert type(_probe_error(_openai(url), "models")) is ProviderConnectionError
    assert len(up.models_requests) == 4


def test_completion_probe_without_choices_is_a_bad_response(
    upstream: tuple[Upstream, str],
) -> None:
    """A 200 ``{}`` to a completion probe is not an answer."""
    up, url = upstream
    up.script.append("empty_object")
    assert type(_probe_error(_openai(url), "completion")) is BadUpstreamResponse


@pytest.mark.parametrize("kind", ["models", "completion"])
def test_probe_of_a_refused_port_is_unreachable(kind: str) -> None:
    """Nothing listening: ProviderUnreachable, naming neither key nor query secret."""
    err = _probe_error(_openai(f"http://127.0.0.1:{_free_port()}/v1"), kind)
    assert type(err) is ProviderUnreachable


@pytest.mark.parametrize("kind", ["models", "completion"])
def test_probe_of_a_hanging_upstream_times_out_within_its_timeout(
    upstream: tuple[Upstream, str], kind: str
) -> None:
    """An upstream that accepts and never answers fails the probe once ``timeout`` passes."""
    up, url = upstream
    _steps(up, kind).append("hang")
    started = time.monotonic()
    err = _probe_error(_openai(url), kind, timeout=0.3)
    assert type(err) is ProviderTimeout
    assert "0.3s" in err.message
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    ("kind", "cls"), [("models", ProviderMisconfigured), ("completion", ProviderRejected)]
)
def test_probe_error_never_quotes_the_key(
    upstream: tuple[Upstream, str], kind: str, cls: type[ProviderError]
) -> None:
    """An upstream that echoes the key in its error: the probe's message has it redacted."""
    up, url = upstream
    _steps(up, kind).append("echo_key")
    err = _probe_error(_openai(url), kind)
    assert isinstance(err, cls)
    assert "[redacted]" in err.message


def test_openai_probe_refuses_an_unknown_kind(upstream: tuple[Upstream, str]) -> None:
    """Only ``models`` and ``completion`` exist; anything else is a programming error."""
    up, url = upstream
    with pytest.raises(ValueError, match="unknown probe kind"):
        _probe(_openai(url), "none")
    assert up.received == [] and up.models_requests == []


# --- the simulated provider ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _simulated(
    clock: Callable[[], float] | None = None, tags: tuple[str, ...] | None = None, **sim: Any
) -> SimulatedProvider:
    extra: dict[str, Any] = {"tags": tags} if tags is not None else {}
    deployment = SimulatedDeployment(
        provider="simulated",
        name="sim",
        model="sim-model",
        timeouts=Timeouts(response=5.0),
        simulated=SimulatedSettings.model_validate(sim),
        **extra,
    )
    return SimulatedProvider(deployment, clock=clock or time.monotonic)


def _sim_probe(
    provider: SimulatedProvider, kind: str = "completion", timeout: float = 2.0
) -> float:
    return asyncio.run(provider.probe(kind, timeout))


@pytest.mark.parametrize("kind", ["models", "completion"])
def test_simulated_probe_of_a_healthy_deployment_passes_and_counts(kind: str) -> None:
    """A healthy simulated deployment passes after its latency; the probe is one request in
    the simulator's stats."""
    provider = _simulated(latency=0.05)
    assert 0.05 <= _sim_probe(provider, kind) < 5.0
    assert provider.simulator.stats()["requests"] == 1


@pytest.mark.parametrize(
    ("tags", "endpoint", "body"),
    [
        (None, "chat/completions", {"model": "sim-model", "messages": PING, "max_tokens": 1}),
        (("embeddings",), "embeddings", {"model": "sim-model", "input": "ping"}),
    ],
)
def test_simulated_probe_is_a_tiny_non_streaming_request(
    tags: tuple[str, ...] | None, endpoint: str, body: dict[str, Any]
) -> None:
    """The probe goes through ``send`` as a one-token chat (or one-word embedding) request."""
    provider = _simulated(tags=tags)
    calls: list[ProviderCall] = []
    real_send = provider.send

    async def recording_send(call: ProviderCall) -> Any:
        calls.append(call)
        result = await real_send(call)
        assert isinstance(result, ProviderResponse)
        return result

    provider.send = recording_send  # type: ignore[method-assign]
    _sim_probe(provider, timeout=1.5)
    assert [(c.endpoint, c.body, c.stream, c.timeout) for c in calls] == [
        (endpoint, body, False, 1.5)
    ]


@pytest.mark.parametrize(
    ("fault", "cls"),
    [
        ({"kind": "status", "status": 503}, ProviderUnavailable),
        ({"kind": "status", "status": 500}, ProviderServerError),
        ({"kind": "refuse"}, ProviderUnreachable),
        ({"kind": "reset"}, ProviderConnectionError),
        ({"kind": "garbage"}, BadUpstreamResponse),
    ],
)
def test_simulated_probe_fails_inside_an_outage_window_and_passes_after_it(
    fault: dict[str, Any], cls: type[ProviderError]
) -> None:
    """An outage window [0s, 10s) on the injected clock fails the probe; at 10s it passes."""
    clock = FakeClock()
    provider = _simulated(clock=clock, faults=[{**fault, "start": 0, "end": 10}])
    for now, kind in ((0.0, "completion"), (9.9, "models")):
        clock.now = now
        with pytest.raises(ProviderError) as caught:
            _sim_probe(provider, kind)
        assert type(caught.value) is cls
        assert caught.value.deployment == "sim"
    clock.now = 10.0
    assert _sim_probe(provider) >= 0.0
    assert _sim_probe(provider, "models") >= 0.0


def test_simulated_probe_of_a_hanging_deployment_times_out_within_its_timeout() -> None:
    """``hang``: the probe fails with ProviderTimeout once its ``timeout`` has passed."""
    provider = _simulated(faults=[{"kind": "hang"}])
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"0\.2s"):
        _sim_probe(provider, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 5.0


def test_simulated_probe_slower_than_its_timeout_times_out() -> None:
    """Latency above the probe's timeout fails it (no need to wait the latency out)."""
    provider = _simulated(latency=30.0)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        _sim_probe(provider, timeout=0.1)
    assert time.monotonic() - started < 5.0


def test_simulated_probe_refuses_an_unknown_kind() -> None:
    """Only ``models`` and ``completion`` exist; nothing reaches the schedule otherwise."""
    provider = _simulated()
    with pytest.raises(ValueError, match="unknown probe kind"):
        _sim_probe(provider, "none")
    assert provider.simulator.stats()["requests"] == 0


# --- the litellm provider (imports litellm once for the module, a few seconds) ----------------

LITELLM_MODEL = "anthropic/claude-3-5-haiku-20241022"
ANTHROPIC_KEY = "sk-ant-probe-secret"


def _litellm_deployment(base_url: str) -> LiteLLMDeployment:
    return LiteLLMDeployment.model_validate(
        {
            "name": "claude",
            "provider": "litellm",
            "model": LITELLM_MODEL,
            "base_url": base_url,
            "api_key": ANTHROPIC_KEY,
        }
    )


def test_litellm_models_probe_is_a_programming_error() -> None:
    """litellm deployments are probed with ``completion`` (or not at all); ``models`` raises."""
    from gateway.providers.litellm import LiteLLMProvider

    async def run() -> None:
        provider = LiteLLMProvider(_litellm_deployment("http://127.0.0.1:9"))
        try:
            with pytest.raises(
                ValueError, match="litellm deployments support probe kind completion or none"
            ):
                await provider.probe("models", 1.0)
        finally:
            await provider.close()

    asyncio.run(run())


def test_litellm_completion_probe_asks_for_one_token_and_fails_like_a_request() -> None:
    """Against the fake Anthropic API: a one-token ``ping`` passes; an overloaded answer fails
    the probe with ProviderUnavailable, the key nowhere in the message."""
    from gateway.providers.litellm import LiteLLMProvider

    async def run() -> None:
        async with AnthropicFake(api_key=ANTHROPIC_KEY) as fake:
            provider = LiteLLMProvider(_litellm_deployment(fake.url))
            try:
                latency = await provider.probe("completion", 5.0)
                assert 0.0 <= latency < 5.0
                (request,) = fake.requests
                assert request.body["max_tokens"] == 1
                (message,) = request.body["messages"]
                assert message["role"] == "user"
                # litellm sends the text as Anthropic content blocks
                assert message["content"] in ("ping", [{"type": "text", "text": "ping"}])
                assert request.headers["x-api-key"] == ANTHROPIC_KEY
                fake.fail_next(overloaded())
                with pytest.raises(ProviderUnavailable) as caught:
                    await provider.probe("completion", 5.0)
                assert caught.value.deployment == "claude"
                assert ANTHROPIC_KEY not in str(caught.value)
            finally:
                await provider.close()

    asyncio.run(run())
