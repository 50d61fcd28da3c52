"""The standalone simulated upstream over real sockets, seen by aiohttp and the openai SDK."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
import openai
import orjson
import pytest
from polling import tcp_probe

from gateway.providers.simulated.server import SHUTDOWN_TIMEOUT, SimulatedServer
from gateway.providers.simulated.settings import SimulatedSettings

pytestmark = pytest.mark.integration

T = TypeVar("T")
ROOT = Path(__file__).parents[2]
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
CHAT = {"model": "sim-model", "messages": MESSAGES}


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await fn()

    return asyncio.run(main())


def _settings(**values: Any) -> SimulatedSettings:
    return SimulatedSettings.model_validate(values)


@asynccontextmanager
async def _sdk(server: SimulatedServer, limit: float = 5.0) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=server.url, api_key="x", max_retries=0, timeout=limit
    ) as client:
        yield client


def _root(server: SimulatedServer) -> str:
    return server.url.removesuffix("/v1")


async def _wait_until(predicate: Callable[[], Awaitable[bool]], limit: float = 2.0) -> float:
    """Poll ``predicate`` every 5 ms; return the seconds it took to hold (fail after limit)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await predicate():
        assert loop.time() - started < limit, "condition not reached in time"
        await asyncio.sleep(0.005)
    return loop.time() - started


async def _probe(port: int) -> str:
    return await tcp_probe(port)


async def _refused(port: int) -> bool:
    return await _probe(port) == "refused"


async def _accepting(port: int) -> bool:
    return await _probe(port) == "accepted"


# --- plain HTTP (aiohttp client) ------------------------------------------------------------


def test_chat_models_and_healthz_answer_over_http() -> None:
    """POST chat, GET /v1/models and GET /healthz answer JSON over a real socket."""

    async def go() -> None:
        async with (
            SimulatedServer(_settings(content="a b c"), model="sim-model") as server,
            aiohttp.ClientSession() as session,
        ):
            async with session.post(f"{server.url}/chat/completions", json=CHAT) as resp:
                assert resp.status == 200
                assert resp.content_type == "application/json"
                body = await resp.json()
            assert body["choices"][0]["message"]["content"] == "a b c"
            assert body["usage"]["completion_tokens"] == 3
            async with session.get(f"{server.url}/models") as resp:
                models = await resp.json()
            assert [m["id"] for m in models["data"]] == ["sim-model"]
            async with session.get(f"{_root(server)}/healthz") as resp:
                assert resp.status == 200
                assert await resp.json() == {"status": "ok"}

    _run(go)


def test_stream_over_http_is_sse_ending_with_done() -> None:
    """A streamed chat is text/event-stream with JSON events and a final [DONE]."""

    async def go() -> None:
        async with (
            SimulatedServer(_settings(content="a b")) as server,
            aiohttp.ClientSession() as session,
        ):
            body = {**CHAT, "stream": True}
            async with session.post(f"{server.url}/chat/completions", json=body) as resp:
                assert resp.content_type == "text/event-stream"
                raw = await resp.read()
        events = [e for e in raw.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        assert len(events) == 1 + 2 + 1 + 1
        assert all(orjson.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])

    _run(go)


@pytest.mark.parametrize(
    ("data", "param"),
    [(b"{not json", None), (b'{"model": "m"}', "messages"), (b'{"messages": []}', "model")],
    ids=["not-json", "no-messages", "no-model"],
)
def test_bad_request_body_gets_an_openai_shaped_400(data: bytes, param: str | None) -> None:
    """Unparseable or incomplete bodies: 400 with {"error": {message, type, param, code}}."""

    async def go() -> None:
        async with SimulatedServer() as server, aiohttp.ClientSession() as session:
            url = f"{server.url}/chat/completions"
            async with session.post(url, data=data) as resp:
                assert resp.status == 400
                error = (await resp.json())["error"]
            assert error["type"] == "invalid_request_error"
            assert error["param"] == param
            assert error["message"]
            assert server.simulator.requests == 0

    _run(go)


def test_reset_drops_the_connection_before_any_byte() -> None:
    """reset: the client sees the connection reset, no status line."""

    async def go() -> None:
        async with (
            SimulatedServer(_settings(faults=[{"kind": "reset"}])) as server,
            aiohttp.ClientSession() as session,
        ):
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.post(f"{server.url}/chat/completions", json=CHAT)

    _run(go)


def test_stream_cut_leaves_the_http_body_incomplete() -> None:
    """stream_cut: the chunked body ends without its terminator after N content chunks."""

    async def go() -> None:
        settings = _settings(content="a b c d", faults=[{"kind": "stream_cut", "after_chunks": 2}])
        async with SimulatedServer(settings) as server, aiohttp.ClientSession() as session:
            body = {**CHAT, "stream": True}
            async with session.post(f"{server.url}/chat/completions", json=body) as resp:
                lines = []
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for line in resp.content:
                        if line.strip():
                            lines.append(line)
        assert len(lines) == 3  # role + 2 content chunks

    _run(go)


def test_hang_never_answers_and_does_not_hold_up_shutdown() -> None:
    """hang: no answer within the client's timeout; stopping the server ends it at once."""

    async def go() -> None:
        server = SimulatedServer(_settings(faults=[{"kind": "hang"}]))
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                timeout = aiohttp.ClientTimeout(total=0.05)
                with pytest.raises(TimeoutError):
                    await session.post(f"{server.url}/chat/completions", json=CHAT, timeout=timeout)
                pending = asyncio.ensure_future(
                    session.post(f"{server.url}/chat/completions", json=CHAT)
                )
                await _wait_until(lambda: _served(server, 2))
                loop = asyncio.get_running_loop()
                started = loop.time()
                await server.stop()
                assert loop.time() - started < SHUTDOWN_TIMEOUT / 2
                with pytest.raises(aiohttp.ClientConnectionError):
                    await pending
        finally:
            await server.stop()

    _run(go)


async def _served(server: SimulatedServer, n: int) -> bool:
    return server.simulator.requests >= n


def test_slow_first_token_delays_the_response_headers() -> None:
    """slow_first_token: nothing arrives before the delay."""

    async def go() -> float:
        settings = _settings(faults=[{"kind": "slow_first_token", "delay": "50ms"}])
        async with SimulatedServer(settings) as server, aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with session.post(f"{server.url}/chat/completions", json=CHAT) as resp:
                elapsed = loop.time() - started
                assert resp.status == 200
            return elapsed

    assert _run(go) >= 0.05


def test_garbage_is_a_200_that_is_not_json() -> None:
    """garbage: status 200, JSON content type, a body that does not parse."""

    async def go() -> None:
        async with (
            SimulatedServer(_settings(faults=[{"kind": "garbage"}])) as server,
            aiohttp.ClientSession() as session,
            session.post(f"{server.url}/chat/completions", json=CHAT) as resp,
        ):
            assert resp.status == 200
            raw = await resp.read()
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)

    _run(go)


def test_fault_schedule_can_be_replaced_and_stats_count_faults() -> None:
    """POST /_sim/faults installs a schedule at once; GET /_sim/stats counts faults by kind."""

    async def go() -> None:
        async with SimulatedServer() as server, aiohttp.ClientSession() as session:
            root = _root(server)
            async with session.post(f"{server.url}/chat/completions", json=CHAT) as resp:
                assert resp.status == 200
            new = {"faults": [{"kind": "status", "status": 503, "count": 1}]}
            async with session.post(f"{root}/_sim/faults", json=new) as resp:
                assert await resp.json() == {"ok": True, "faults": 1}
            async with session.get(f"{root}/_sim/faults") as resp:
                assert (await resp.json())["faults"][0]["status"] == 503
            statuses = []
            for _ in range(2):
                async with session.post(f"{server.url}/chat/completions", json=CHAT) as resp:
                    statuses.append(resp.status)
            assert statuses == [503, 200]
            async with session.post(
                f"{root}/_sim/faults", json={"faults": [{"kind": "x"}]}
            ) as resp:
                assert resp.status == 400
                assert "faults.0.kind" in (await resp.json())["error"]["message"]
            async with session.get(f"{root}/_sim/stats") as resp:
                stats = await resp.json()
            assert stats["requests"] == 3
            assert stats["faults"] == {"status": 1}
            assert stats["listening"] is True

    _run(go)


@pytest.mark.parametrize(
    ("method", "path", "status", "allow", "message"),
    [
        ("GET", "/nope", 404, None, "Invalid URL (GET /nope)"),
        ("POST", "/v1/nope", 404, None, "Invalid URL (POST /v1/nope)"),
        ("GET", "/v1/chat/completions", 405, "POST", "GET is not allowed on /v1/chat/completions"),
        ("POST", "/_sim/stats", 405, "GET", "POST is not allowed on /_sim/stats; use GET"),
        ("DELETE", "/_sim/faults", 405, "GET, POST", "DELETE is not allowed on /_sim/faults"),
        ("POST", "/v1/models", 405, "GET", "POST is not allowed on /v1/models; use GET"),
    ],
    ids=["unknown-root", "unknown-v1", "get-chat", "post-stats", "delete-faults", "post-models"],
)
def test_unknown_paths_and_methods_get_openai_shaped_errors(
    method: str, path: str, status: int, allow: str | None, message: str
) -> None:
    """404 and 405 (with Allow) are {"error": {message, type, param, code}} bodies, not
    aiohttp's text pages."""

    async def go() -> None:
        async with (
            SimulatedServer() as server,
            aiohttp.ClientSession() as session,
            session.request(method, f"{_root(server)}{path}") as resp,
        ):
            assert resp.status == status
            assert resp.content_type == "application/json"
            assert resp.headers.get("Allow") == allow
            error = (await resp.json())["error"]
        assert message in error["message"]
        assert error["type"] == "invalid_request_error"
        assert set(error) == {"message", "type", "param", "code"}

    _run(go)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/_sim/faults"])
def test_body_over_the_size_limit_gets_an_openai_shaped_413(path: str) -> None:
    """A body over max_body_size is a 413 with an OpenAI error body naming the limit."""

    async def go() -> None:
        async with (
            SimulatedServer(max_body_size=1024) as server,
            aiohttp.ClientSession() as session,
        ):
            body = orjson.dumps({**CHAT, "pad": "x" * 2048})
            async with session.post(f"{_root(server)}{path}", data=body) as resp:
                assert resp.status == 413
                assert resp.content_type == "application/json"
                error = (await resp.json())["error"]
            assert error["message"] == "the request body is larger than the limit of 1024 bytes"
            assert error["type"] == "invalid_request_error"
            assert server.simulator.requests == 0

    _run(go)


def test_sdk_sees_an_unknown_path_as_not_found() -> None:
    """The openai SDK parses the simulator's 404 into NotFoundError with its message."""

    async def go() -> None:
        async with SimulatedServer() as server, _sdk(server) as client:
            with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(GET /v1/files\)"):
                await client.files.list()

    _run(go)


# --- the official openai SDK ----------------------------------------------------------------


def test_sdk_chat_stream_and_embeddings_work() -> None:
    """The openai SDK parses a chat answer, a stream with usage, and (base64) embeddings."""

    async def go() -> None:
        settings = _settings(content="one two three", chunk_tokens=2, embedding_dimensions=12)
        async with SimulatedServer(settings) as server, _sdk(server) as client:
            answer = await client.chat.completions.create(model="sim-model", messages=MESSAGES)
            assert answer.choices[0].message.content == "one two three"
            assert answer.usage is not None and answer.usage.total_tokens == 2 + 3
            stream = await client.chat.completions.create(
                model="sim-model",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            text, finish, usage = "", None, None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                usage = chunk.usage or usage
            assert (text, finish) == ("one two three", "stop")
            assert usage is not None and usage.completion_tokens == 3
            completion = await client.completions.create(model="sim-model", prompt="p")
            assert completion.choices[0].text == "one two three"
            embeddings = await client.embeddings.create(model="sim-model", input=["a", "b"])
            assert [len(item.embedding) for item in embeddings.data] == [12, 12]

    _run(go)


def test_sdk_sees_429_with_retry_after() -> None:
    """A 429 fault reaches the SDK as RateLimitError with Retry-After and an OpenAI body."""

    async def go() -> None:
        fault = {
            "kind": "status",
            "status": 429,
            "retry_after": "2s",
            "code": "rate_limit_exceeded",
        }
        async with SimulatedServer(_settings(faults=[fault])) as server, _sdk(server) as client:
            with pytest.raises(openai.RateLimitError) as info:
                await client.chat.completions.create(model="sim-model", messages=MESSAGES)
        error = info.value
        assert error.status_code == 429
        assert error.response.headers["retry-after"] == "2"
        assert error.response.headers["retry-after-ms"] == "2000"
        assert error.code == "rate_limit_exceeded"
        assert error.type == "rate_limit_error"

    _run(go)


def test_sdk_sees_a_reset_as_a_connection_error() -> None:
    """reset: APIConnectionError, not a status error."""

    async def go() -> None:
        async with (
            SimulatedServer(_settings(faults=[{"kind": "reset"}])) as server,
            _sdk(server) as client,
        ):
            with pytest.raises(openai.APIConnectionError):
                await client.chat.completions.create(model="sim-model", messages=MESSAGES)

    _run(go)


def test_refuse_window_closes_the_port_then_reopens_it() -> None:
    """A refuse window closes the listener (ECONNREFUSED, SDK connection error) and reopens it."""

    async def go() -> None:
        async with SimulatedServer() as server, aiohttp.ClientSession() as session:
            # The SDK's first call takes ~1s (lazy imports): make it before the window.
            async with _sdk(server) as client:
                await client.chat.completions.create(model="sim-model", messages=MESSAGES)
            outage = {"faults": [{"kind": "refuse", "end": "500ms"}]}
            async with session.post(f"{_root(server)}/_sim/faults", json=outage) as resp:
                assert resp.status == 200
            await _wait_until(lambda: _refused(server.port), limit=0.4)
            assert not server.listening
            async with _sdk(server) as client:
                with pytest.raises(openai.APIConnectionError):
                    await client.chat.completions.create(model="sim-model", messages=MESSAGES)
            waited = await _wait_until(lambda: _accepting(server.port))
            assert waited > 0.05
            async with _sdk(server) as client:
                answer = await client.chat.completions.create(model="sim-model", messages=MESSAGES)
            assert answer.choices[0].finish_reason == "stop"
            async with session.get(f"{_root(server)}/_sim/stats") as resp:
                stats = await resp.json()
            assert stats["listener_closures"] == 1 and stats["listening"] is True

    _run(go)


def test_refuse_window_resets_models_and_healthz_on_a_kept_alive_connection() -> None:
    """Inside a refuse window the host is down for every route: a probe of ``/v1/models`` (or
    ``/healthz``) over a pooled connection opened before the window is reset, not answered."""

    async def go() -> None:
        async with SimulatedServer() as server:
            connector = aiohttp.TCPConnector(limit=1)  # one connection, reused throughout
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.get(f"{server.url}/models") as resp:
                    assert resp.status == 200
                outage = {"faults": [{"kind": "refuse", "end": "2s"}]}
                async with session.post(f"{_root(server)}/_sim/faults", json=outage) as resp:
                    assert resp.status == 200
                for path in (f"{server.url}/models", f"{_root(server)}/healthz"):
                    with pytest.raises(aiohttp.ClientError):
                        async with session.get(path) as resp:
                            await resp.read()

    _run(go)


def test_refuse_without_a_window_is_rejected_at_run_time() -> None:
    """POST /_sim/faults with a windowless refuse: 400 naming the fault, schedule unchanged."""

    async def go() -> None:
        async with SimulatedServer() as server, aiohttp.ClientSession() as session:
            bad = {"faults": [{"kind": "refuse", "count": 1}]}
            async with session.post(f"{_root(server)}/_sim/faults", json=bad) as resp:
                assert resp.status == 400
                message = (await resp.json())["error"]["message"]
            assert "faults.0: Value error, a `refuse` fault needs a time window" in message
            assert server.simulator.settings.faults == ()
            assert server.listening

    _run(go)


def test_refuse_window_in_the_settings_starts_later_and_ends() -> None:
    """A window given at start-up (start/end) opens and closes on schedule."""

    async def go() -> None:
        settings = _settings(faults=[{"kind": "refuse", "start": "100ms", "end": "250ms"}])
        async with SimulatedServer(settings) as server:
            assert await _accepting(server.port)
            closed_after = await _wait_until(lambda: _refused(server.port))
            reopened_after = await _wait_until(lambda: _accepting(server.port))
        assert closed_after > 0.05
        assert reopened_after > 0.05

    _run(go)


def test_sdk_stream_cut_raises_instead_of_finishing() -> None:
    """stream_cut: the SDK's iteration fails after the first chunks; no finish_reason seen."""

    async def go() -> None:
        settings = _settings(content="a b c d", faults=[{"kind": "stream_cut", "after_chunks": 2}])
        async with SimulatedServer(settings) as server, _sdk(server) as client:
            stream = await client.chat.completions.create(
                model="sim-model", messages=MESSAGES, stream=True
            )
            seen = []
            with pytest.raises((httpx.HTTPError, openai.APIError)):
                async for chunk in stream:
                    seen.append(chunk)
        assert len(seen) == 3
        assert all(c.choices[0].finish_reason is None for c in seen)

    _run(go)


def test_sdk_stream_missing_done_still_yields_the_whole_answer() -> None:
    """missing_done: the SDK gets every chunk including the finish; only [DONE] is absent."""

    async def go() -> None:
        settings = _settings(content="a b", faults=[{"kind": "missing_done"}])
        async with SimulatedServer(settings) as server, _sdk(server) as client:
            stream = await client.chat.completions.create(
                model="sim-model", messages=MESSAGES, stream=True
            )
            chunks = [chunk async for chunk in stream]
        assert chunks[-1].choices[0].finish_reason == "stop"

    _run(go)


def test_sdk_stream_stall_trips_the_client_read_timeout() -> None:
    """stream_stall without delay: the stream goes silent; a client read timeout fires."""

    async def go() -> None:
        settings = _settings(faults=[{"kind": "stream_stall", "after_chunks": 1}])
        async with SimulatedServer(settings) as server, _sdk(server, limit=0.1) as client:
            stream = await client.chat.completions.create(
                model="sim-model", messages=MESSAGES, stream=True
            )
            seen = []
            with pytest.raises((httpx.ReadTimeout, openai.APITimeoutError)):
                async for chunk in stream:
                    seen.append(chunk)
        assert len(seen) == 2

    _run(go)


# --- the command line -----------------------------------------------------------------------


def test_simulate_with_a_bad_faults_file_exits_2_naming_file_and_reason(tmp_path: Path) -> None:
    """`gateway simulate --faults BAD` prints file and reason to stderr, exits 2, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("faults:\n  - kind: explode\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "simulate", "--port", "0", "--faults", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"{bad}:2: faults[0].kind:" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_simulate_serves_announces_its_url_and_stops_on_sigterm() -> None:
    """`gateway simulate --port 0` prints its URL, answers, and exits 0 on SIGTERM."""

    async def go() -> tuple[str, int]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "gateway", "simulate", "--port", "0", "--model", "m1"),
            *("--faults", str(ROOT / "configs" / "faults" / "streams.yaml")),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert process.stdout is not None
            line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
            url = line.rsplit(" ", 1)[-1]
            async with aiohttp.ClientSession() as session, session.get(f"{url}/models") as resp:
                assert (await resp.json())["data"][0]["id"] == "m1"
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        return line, code

    line, code = _run(go)
    assert line.startswith("simulated upstream listening on http://127.0.0.1:")
    assert line.endswith("/v1")
    assert code == 0
