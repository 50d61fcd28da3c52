"""The chaos run's upstreams on 127.0.0.1: fault timelines armed at traffic start, and billing.

Simulated upstreams bill what they write (prompt + completion tokens, completed or wasted); the
fault proxy applies the same schedule in front of a real upstream, played here by a simulated
server that records the headers it receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp import web
from polling import tcp_probe

from gateway.chaos.upstreams import UpstreamError, Upstreams, simulated_settings
from gateway.providers.simulated.engine import Simulator
from gateway.providers.simulated.server import SimulatedServer
from gateway.providers.simulated.settings import Fault, SimulatedSettings

pytestmark = pytest.mark.integration

T = TypeVar("T")
LIMIT = 30.0
SYSTEM = "s1 s2 s3"  # 3 prompt tokens, plus the user message's words
STATS_KEYS = {
    "received",
    "answered",
    "completed",
    "billed_prompt_tokens",
    "billed_completion_tokens",
    "wasted_prompt_tokens",
    "wasted_completion_tokens",
    "faults",
}


@dataclass(frozen=True)
class _Deployment:
    """The fields of scenario.ChaosDeployment that Upstreams reads."""

    name: str
    model: str = "sim-model"
    simulated: SimulatedSettings | None = None
    upstream_url: str | None = None
    api_key_env: str | None = None


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(fn(), LIMIT)

    return asyncio.run(main())


def _sim(name: str = "a", **settings: Any) -> _Deployment:
    return _Deployment(name, simulated=SimulatedSettings.model_validate(settings))


def _chat(words: int, *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "sim-model",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": " ".join(f"w{i}" for i in range(words))},
        ],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


@asynccontextmanager
async def _upstreams(
    deployments: list[_Deployment], faults: dict[str, tuple[Fault, ...]] | None = None
) -> AsyncIterator[tuple[Upstreams, aiohttp.ClientSession]]:
    async with (
        Upstreams(deployments, faults or {}, seed=1) as upstreams,
        # a new connection per request: a refused port shows as ECONNREFUSED, never as a
        # reset of a pooled connection that was accepted before the window
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
    ):
        yield upstreams, session


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(f"{url}/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _stream_events(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[list[Any], bool]:
    """The parsed events of a stream (``"[DONE]"`` as a string) and whether the body broke."""
    events: list[Any] = []
    async with session.post(f"{url}/chat/completions", json=body) as resp:
        assert resp.status == 200
        try:
            async for line in resp.content:
                if line.startswith(b"data: "):
                    payload = line[6:].strip()
                    events.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
        except aiohttp.ClientPayloadError:
            return events, True
    return events, False


def _content(events: list[Any]) -> list[str]:
    return [
        e["choices"][0]["delta"]["content"]
        for e in events
        if isinstance(e, dict) and e["choices"] and e["choices"][0]["delta"].get("content")
    ]


async def _probe(port: int) -> str:
    return await tcp_probe(port)


async def _until(predicate: Callable[[], Awaitable[bool]], limit: float = 5.0) -> float:
    """Poll every 10 ms; the loop time at which ``predicate`` first held (fail after limit)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
    return loop.time()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


async def _billed(upstreams: Upstreams, name: str, answered: int) -> dict[str, Any]:
    """The stats once ``answered`` requests were billed (they are billed when they end)."""

    async def ready() -> bool:
        return bool(upstreams.stats()[name]["answered"] >= answered)

    await _until(ready)
    return upstreams.stats()[name]


# --- timelines ---------------------------------------------------------------------------------


def test_armed_outage_refuses_in_its_window_counted_from_arm_and_serves_after() -> None:
    """An outage window counts from arm(), not from start(): the port is open before and after
    it, refused inside it, and refused connections never reach the upstream."""

    async def go() -> None:
        faults = {"a": (Fault(kind="refuse", start=0.3, end=1.3),)}
        async with _upstreams([_sim("a")], faults) as (upstreams, session):
            url = upstreams.urls()["a"]
            port = _port(url)
            assert url == f"http://127.0.0.1:{port}/v1"
            await asyncio.sleep(0.4)  # past the window's start, counted from start(): no effect
            assert await _probe(port) == "accepted"
            await _post(session, url, _chat(2))
            loop = asyncio.get_running_loop()
            armed = loop.time()
            upstreams.arm()

            async def refused() -> bool:
                return await _probe(port) == "refused"

            async def accepting() -> bool:
                return await _probe(port) == "accepted"

            closed = await _until(refused) - armed
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.post(f"{url}/chat/completions", json=_chat(2))
            reopened = await _until(accepting) - armed
            await _post(session, url, _chat(2))
        assert 0.29 <= closed < 1.3
        assert reopened >= 1.29
        stats = upstreams.stats()["a"]
        assert stats["received"] == 2  # the refused connection never reached the handler
        assert stats["answered"] == stats["completed"] == 2

    _run(go)


def test_armed_status_window_fails_requests_inside_and_bills_only_answers() -> None:
    """A status window answers 503 inside it and 200 after; error answers are not billed."""

    async def go() -> None:
        faults = {"a": (Fault(kind="status", status=503, start=0.0, end=0.6),)}
        async with _upstreams([_sim("a")], faults) as (upstreams, session):
            url = upstreams.urls()["a"]
            await _post(session, url, _chat(2))  # not armed yet
            loop = asyncio.get_running_loop()
            armed = loop.time()
            upstreams.arm()
            async with session.post(f"{url}/chat/completions", json=_chat(2)) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["type"] == "server_error"
            await asyncio.sleep(max(0.0, armed + 0.65 - loop.time()))
            await _post(session, url, _chat(2))
        stats = upstreams.stats()["a"]
        assert stats["received"] == 3
        assert stats["faults"] == {"status": 1}
        assert stats["answered"] == stats["completed"] == 2
        assert stats["billed_prompt_tokens"] == 2 * (3 + 2)

    _run(go)


def test_each_deployment_gets_its_own_faults() -> None:
    """arm() installs a deployment's faults on its own upstream only."""

    async def go() -> None:
        faults = {"a": (Fault(kind="status", status=429),)}
        async with _upstreams([_sim("a"), _sim("b")], faults) as (upstreams, session):
            upstreams.arm()
            urls = upstreams.urls()
            async with session.post(f"{urls['a']}/chat/completions", json=_chat(1)) as resp:
                assert resp.status == 429
            await _post(session, urls["b"], _chat(1))
        stats = upstreams.stats()
        assert stats["a"]["faults"] == {"status": 1} and stats["a"]["answered"] == 0
        assert stats["b"]["faults"] == {} and stats["b"]["answered"] == 1

    _run(go)


def test_simulated_settings_force_echo_and_derive_the_seed() -> None:
    """Served settings echo, have no faults or content, and take the run's dice unless the
    deployment set its own seed."""
    base = SimulatedSettings(latency=0.01, content="x", faults=(Fault(kind="reset"),))
    served = simulated_settings(base, "a", 7)
    assert served.echo and served.content is None and served.faults == ()
    assert served.latency == 0.01
    assert (
        served.seed
        == simulated_settings(base, "a", 7).seed
        != simulated_settings(base, "b", 7).seed
    )
    assert simulated_settings(SimulatedSettings(seed=5), "a", 7).seed == 5


def test_stats_have_the_contract_shape_before_start() -> None:
    """stats() names every deployment with every counter, zeros before start."""
    upstreams = Upstreams([_sim("a"), _sim("b")], {}, seed=1)
    stats = upstreams.stats()
    assert list(stats) == ["a", "b"]
    assert set(stats["a"]) == STATS_KEYS
    assert stats["a"]["received"] == 0 and stats["a"]["faults"] == {}


def test_bad_deployments_and_fault_targets_are_refused() -> None:
    """Duplicate names, faults for an unknown deployment, or no upstream at all: ValueError."""
    with pytest.raises(ValueError, match="unique"):
        Upstreams([_sim("a"), _sim("a")], {}, seed=1)
    with pytest.raises(ValueError, match="unknown deployment"):
        Upstreams([_sim("a")], {"b": ()}, seed=1)
    with pytest.raises(ValueError, match="exactly one"):
        Upstreams([_Deployment("a")], {}, seed=1)


# --- billing -----------------------------------------------------------------------------------


def test_normal_answer_and_stream_are_billed_and_completed() -> None:
    """Non-stream and stream: prompt + completion tokens billed, completed, nothing wasted;
    the answers echo the user message."""

    async def go() -> dict[str, Any]:
        async with _upstreams([_sim("a", chunk_tokens=2)]) as (upstreams, session):
            url = upstreams.urls()["a"]
            answer = await _post(session, url, _chat(4))
            assert answer["choices"][0]["message"]["content"] == "w0 w1 w2 w3"
            events, broken = await _stream_events(session, url, _chat(5, stream=True))
            assert not broken and events[-1] == "[DONE]"
            assert "".join(_content(events)) == "w0 w1 w2 w3 w4"
            return await _billed(upstreams, "a", 2)

    stats = _run(go)
    assert stats == {
        "received": 2,
        "answered": 2,
        "completed": 2,
        "billed_prompt_tokens": (3 + 4) + (3 + 5),
        "billed_completion_tokens": 4 + 5,
        "wasted_prompt_tokens": 0,
        "wasted_completion_tokens": 0,
        "faults": {},
    }


def test_stream_cut_bills_the_chunks_written_and_wastes_them() -> None:
    """stream_cut after 2 chunks of 2 tokens: 4 completion tokens billed, not completed."""

    async def go() -> dict[str, Any]:
        faults = {"a": (Fault(kind="stream_cut", after_chunks=2),)}
        async with _upstreams([_sim("a", chunk_tokens=2)], faults) as (upstreams, session):
            upstreams.arm()
            events, broken = await _stream_events(
                session, upstreams.urls()["a"], _chat(7, stream=True)
            )
            assert broken
            assert _content(events) == ["w0 w1 ", "w2 w3 "]
            return await _billed(upstreams, "a", 1)

    stats = _run(go)
    assert stats["answered"] == 1 and stats["completed"] == 0
    assert stats["billed_completion_tokens"] == 2 * 2
    assert stats["billed_prompt_tokens"] == stats["wasted_prompt_tokens"] == 3 + 7
    assert stats["wasted_completion_tokens"] == 4
    assert stats["faults"] == {"stream_cut": 1}


def test_client_leaving_mid_stream_bills_what_was_written_as_waste() -> None:
    """A client that closes a paced stream after 3 chunks: billed for the chunks written before
    the upstream noticed, fewer than the whole answer, all wasted."""

    async def go() -> dict[str, Any]:
        async with _upstreams([_sim("a", tokens_per_second=50)]) as (upstreams, session):
            url = upstreams.urls()["a"]
            seen = 0
            async with session.post(f"{url}/chat/completions", json=_chat(40, stream=True)) as resp:
                async for line in resp.content:
                    if b'"content":"w' in line:
                        seen += 1
                        if seen == 3:
                            break
                resp.close()
            return await _billed(upstreams, "a", 1)

    stats = _run(go)
    assert stats["answered"] == 1 and stats["completed"] == 0
    assert 3 <= stats["billed_completion_tokens"] < 40
    assert stats["wasted_completion_tokens"] == stats["billed_completion_tokens"]
    assert stats["wasted_prompt_tokens"] == 3 + 40


def test_client_leaving_before_a_slow_answer_is_billed_for_the_whole_generation() -> None:
    """Non-stream with a first-token delay beyond the client's limit: the generation is billed
    (prompt + whole completion) and wasted."""

    async def go() -> dict[str, Any]:
        faults = {"a": (Fault(kind="slow_first_token", delay=5.0),)}
        async with _upstreams([_sim("a")], faults) as (upstreams, session):
            upstreams.arm()
            url = upstreams.urls()["a"]
            with pytest.raises(TimeoutError):
                await session.post(
                    f"{url}/chat/completions",
                    json=_chat(6),
                    timeout=aiohttp.ClientTimeout(total=0.1),
                )
            return await _billed(upstreams, "a", 1)

    stats = _run(go)
    assert stats["completed"] == 0
    assert (stats["billed_prompt_tokens"], stats["billed_completion_tokens"]) == (3 + 6, 6)
    assert (stats["wasted_prompt_tokens"], stats["wasted_completion_tokens"]) == (3 + 6, 6)


def test_standalone_server_reports_billing_in_sim_stats() -> None:
    """GET /_sim/stats of the standalone server carries the billing counters."""

    async def go() -> dict[str, Any]:
        settings = SimulatedSettings(echo=True, faults=(Fault(kind="stream_cut", count=1),))
        async with SimulatedServer(settings) as server, aiohttp.ClientSession() as session:
            _, broken = await _stream_events(session, server.url, _chat(3, stream=True))
            assert broken
            await _post(session, server.url, _chat(3))
            root = server.url.removesuffix("/v1")

            async def two() -> bool:
                return server.simulator.billing.answered == 2

            await _until(two)
            async with session.get(f"{root}/_sim/stats") as resp:
                return dict(await resp.json())

    stats = _run(go)
    assert stats["billing"] == {
        "answered": 2,
        "completed": 1,
        "prompt_tokens": 2 * (3 + 3),
        "completion_tokens": 3,
        "wasted_prompt_tokens": 3 + 3,
        "wasted_completion_tokens": 0,
    }


@pytest.mark.parametrize(
    ("fault", "kept"),
    [
        (Fault(kind="stream_cut", after_chunks=1), [0, 2]),
        (Fault(kind="malformed_chunk", after_chunks=1), [0, 2, 0, 1, 0, 0]),
        (Fault(kind="missing_done"), [0, 2, 1, 0]),
        (None, [0, 2, 1, 0, 0]),
    ],
    ids=["cut", "malformed", "missing-done", "none"],
)
def test_stream_script_counts_tokens_line_by_line(fault: Fault | None, kept: list[int]) -> None:
    """A script's per-line token counts stay in step with its lines whatever the fault."""
    sim = Simulator(SimulatedSettings(echo=True, chunk_tokens=2), name="a", model="a")
    script = sim.stream_script("chat/completions", _chat(3), "a", fault)
    assert script.tokens == kept
    assert len(script.tokens) == len(script.lines)
    assert script.prompt_tokens == 3 + 3


# --- the fault proxy ---------------------------------------------------------------------------


@asynccontextmanager
async def _real_upstream(**settings: Any) -> AsyncIterator[tuple[SimulatedServer, list[str]]]:
    """A simulated server playing the real upstream; the list collects Authorization headers."""
    seen: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        response: web.StreamResponse = await handler(request)
        return response

    server = SimulatedServer(SimulatedSettings(echo=True, **settings), model="real-model")
    server.app.middlewares.append(record)
    async with server:
        yield server, seen


def test_proxy_forwards_with_the_key_and_bills_from_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests reach the real upstream with Bearer <key from the env> (not the caller's); the
    answers come back whole and are billed from their usage."""
    monkeypatch.setenv("CHAOS_TEST_KEY", "sk-test-123")

    async def go() -> tuple[dict[str, Any], list[str]]:
        async with _real_upstream(chunk_tokens=2) as (real, seen):
            proxied = _Deployment("r", upstream_url=real.url, api_key_env="CHAOS_TEST_KEY")
            async with _upstreams([proxied]) as (upstreams, session):
                upstreams.arm()
                url = upstreams.urls()["r"]
                headers = {"Authorization": "Bearer caller"}
                async with session.post(
                    f"{url}/chat/completions", json=_chat(4), headers=headers
                ) as resp:
                    assert resp.status == 200
                    answer = await resp.json()
                assert answer["choices"][0]["message"]["content"] == "w0 w1 w2 w3"
                events, broken = await _stream_events(session, url, _chat(5, stream=True))
                assert not broken and events[-1] == "[DONE]"
                assert "".join(_content(events)) == "w0 w1 w2 w3 w4"
                async with session.get(f"{url}/models") as resp:
                    assert (await resp.json())["data"][0]["id"] == "real-model"
                return await _billed(upstreams, "r", 2), seen

    stats, seen = _run(go)
    assert seen == ["Bearer sk-test-123"] * 3
    assert stats["received"] == 3  # the models list is not billed
    assert stats["answered"] == stats["completed"] == 2
    assert stats["billed_prompt_tokens"] == (3 + 4) + (3 + 5)
    assert stats["billed_completion_tokens"] == 4 + 5
    assert stats["wasted_prompt_tokens"] == stats["wasted_completion_tokens"] == 0


def test_proxy_applies_status_and_stream_cut_faults() -> None:
    """A status fault answers without forwarding; stream_cut closes the relayed stream after N
    content chunks, billed from the words written (the upstream's usage never came)."""

    async def go() -> tuple[dict[str, Any], list[str]]:
        async with _real_upstream(chunk_tokens=2) as (real, seen):
            faults = {
                "r": (
                    Fault(kind="status", status=502, count=1),
                    Fault(kind="stream_cut", after_chunks=2),
                )
            }
            async with _upstreams([_Deployment("r", upstream_url=real.url)], faults) as (
                upstreams,
                session,
            ):
                upstreams.arm()
                url = upstreams.urls()["r"]
                async with session.post(f"{url}/chat/completions", json=_chat(2)) as resp:
                    assert resp.status == 502
                events, broken = await _stream_events(session, url, _chat(7, stream=True))
                assert broken
                assert _content(events) == ["w0 w1 ", "w2 w3 "]
                return await _billed(upstreams, "r", 1), seen

    stats, seen = _run(go)
    assert seen == [""]  # only the stream was forwarded, and no key was configured
    assert stats["faults"] == {"status": 1, "stream_cut": 1}
    assert stats["answered"] == 1 and stats["completed"] == 0
    assert (stats["billed_prompt_tokens"], stats["billed_completion_tokens"]) == (3 + 7, 4)
    assert stats["wasted_completion_tokens"] == 4


def test_proxy_outage_closes_its_listener_for_the_window() -> None:
    """A refuse window on a proxied deployment closes the proxy's port, then it serves again."""

    async def go() -> dict[str, Any]:
        async with _real_upstream() as (real, _):
            faults = {"r": (Fault(kind="refuse", end=0.5),)}
            async with _upstreams([_Deployment("r", upstream_url=real.url)], faults) as (
                upstreams,
                session,
            ):
                url = upstreams.urls()["r"]
                port = _port(url)
                upstreams.arm()

                async def refused() -> bool:
                    return await _probe(port) == "refused"

                async def accepting() -> bool:
                    return await _probe(port) == "accepted"

                await _until(refused)
                await _until(accepting)
                await _post(session, url, _chat(2))
                return await _billed(upstreams, "r", 1)

    stats = _run(go)
    assert stats["received"] == 1 and stats["completed"] == 1


def test_proxy_without_its_key_in_the_environment_does_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """start() fails with UpstreamError naming the variable; nothing is left listening."""
    monkeypatch.delenv("CHAOS_MISSING_KEY", raising=False)

    async def go() -> None:
        upstreams = Upstreams(
            [
                _sim("a"),
                _Deployment(
                    "r", upstream_url="http://127.0.0.1:9/v1", api_key_env="CHAOS_MISSING_KEY"
                ),
            ],
            {},
            seed=1,
        )
        with pytest.raises(UpstreamError, match="CHAOS_MISSING_KEY"):
            await upstreams.start()
        await upstreams.stop()

    _run(go)


def test_proxy_stream_stall_pauses_the_relay_then_finishes() -> None:
    """stream_stall with a delay: the relayed stream pauses after N chunks, then completes."""

    async def go() -> tuple[dict[str, Any], float]:
        async with _real_upstream() as (real, _):
            faults = {"r": (Fault(kind="stream_stall", after_chunks=1, delay=0.3),)}
            async with _upstreams([_Deployment("r", upstream_url=real.url)], faults) as (
                upstreams,
                session,
            ):
                upstreams.arm()
                loop = asyncio.get_running_loop()
                started = loop.time()
                events, broken = await _stream_events(
                    session, upstreams.urls()["r"], _chat(3, stream=True)
                )
                took = loop.time() - started
                assert not broken and events[-1] == "[DONE]"
                assert "".join(_content(events)) == "w0 w1 w2"
                return await _billed(upstreams, "r", 1), took

    stats, took = _run(go)
    assert took >= 0.3
    assert stats["completed"] == 1 and stats["faults"] == {"stream_stall": 1}
    assert (stats["billed_prompt_tokens"], stats["billed_completion_tokens"]) == (3 + 3, 3)
