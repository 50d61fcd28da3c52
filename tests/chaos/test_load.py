"""The chaos traffic driver against real servers on 127.0.0.1: how every kind of answer is judged.

The simulated upstream speaks the gateway's API, so it stands in for the gateway as a target; a
small aiohttp app plays the broken answers (cut streams, wrong content, in-band errors, 502s, a
server that never answers).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web

from gateway.chaos import load
from gateway.chaos.load import (
    GRACE,
    OUTCOME_COLUMNS,
    Outcome,
    drive,
    outcome_from_row,
    outcome_row,
    plan,
)
from gateway.providers.simulated import Fault, SimulatedSettings
from gateway.providers.simulated.server import SimulatedServer

pytestmark = pytest.mark.integration

T = TypeVar("T")
ECHO = SimulatedSettings(echo=True)


@dataclass(frozen=True)
class _Traffic:
    """The fields of scenario.Traffic the driver reads."""

    model: str = "sim-model"
    rate: float | None = 60.0
    concurrency: int | None = None
    duration: float = 0.5
    stream_share: float = 0.5
    prompt_tokens: tuple[int, int] = (5, 30)
    output_tokens: tuple[int, int] = (3, 12)
    timeout: float = 5.0
    headers: dict[str, str] = field(default_factory=dict)


FEW = _Traffic(rate=40.0, duration=0.1)  # a handful of requests (the first at t = 0)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await fn()

    return asyncio.run(main())


@asynccontextmanager
async def _sim(settings: SimulatedSettings = ECHO) -> AsyncIterator[SimulatedServer]:
    async with SimulatedServer(settings) as server:
        yield server


def _event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return _event({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


async def _misbehave(request: web.Request) -> web.StreamResponse:
    """``/{mode}/v1/chat/completions``: answers the way ``mode`` says."""
    mode = request.match_info["mode"]
    body = orjson.loads(await request.read())
    payload: str = body["messages"][-1]["content"]
    headers = {"x-gateway-deployment": "primary", "x-gateway-attempts": "3"}
    if mode == "hang":
        await asyncio.Event().wait()
    if mode == "502":
        error = {"message": "all upstreams failed", "type": "server_error", "code": "x"}
        return web.json_response({"error": error}, status=502, headers=headers)
    if mode == "garbage":
        return web.Response(body=b"<html>oops</html>", content_type="application/json")
    text = {
        "wrong": payload + " extra",
        "anonwrong": payload + " extra",
        "prefix": payload[:-1],
        "real": "an answer of a real model",
    }.get(mode, payload)
    finish = {"nofinish": None, "length": "length"}.get(mode, "stop")
    if mode == "real":
        headers["x-gateway-deployment"] = "real"
    if mode.startswith("anon"):
        del headers["x-gateway-deployment"]
    if not body.get("stream"):
        choice = {"index": 0, "message": {"content": text}, "finish_reason": finish}
        if mode != "cutbody":
            return web.json_response({"choices": [choice]}, headers=headers)
        # the whole answer is promised by Content-Length, half of it is sent, then the close
        raw = orjson.dumps({"choices": [choice]})
        cut = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
        cut.content_length = len(raw)
        await cut.prepare(request)
        await cut.write(raw[: len(raw) // 2])
        assert request.transport is not None
        request.transport.close()
        return cut
    resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
    await resp.prepare(request)
    first, _, rest = text.partition(" ")
    await resp.write(_chunk(first))
    if mode == "cut":  # the body ends cleanly, but without the rest, a finish or [DONE]
        await resp.write_eof()
        return resp
    if mode == "drop":  # the connection closes in the middle of the chunked body
        assert request.transport is not None
        request.transport.close()
        return resp
    if mode == "inband":
        error = {"message": "upstream broke", "type": "server_error", "code": "upstream_cut"}
        await resp.write(_event({"error": error}))
        await resp.write_eof()
        return resp
    await resp.write(_chunk(" " + rest))
    if finish is not None:
        await resp.write(_chunk(finish=finish))
    if mode != "nodone":
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@asynccontextmanager
async def _tiny() -> AsyncIterator[Callable[[str], str]]:
    """A server of broken answers; yields ``mode -> base URL``."""
    app = web.Application()
    app.router.add_post("/{mode}/v1/chat/completions", _misbehave)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield lambda mode: f"http://127.0.0.1:{port}/{mode}/v1"
    finally:
        await runner.cleanup()


def _closed_url() -> str:
    """The base URL of a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def _drive_tiny(mode: str, traffic: _Traffic, **kwargs: Any) -> list[Outcome]:
    async with _tiny() as url:
        return await drive(traffic, [url(mode)], seed=3, **kwargs)


# --- verified answers ------------------------------------------------------------------------


def test_echoed_answers_verify_for_stream_and_non_stream() -> None:
    """Every answer of an echoing upstream is ok, with the usage the payload implies."""
    traffic = _Traffic()

    async def main() -> list[Outcome]:
        async with _sim() as server:
            return await drive(traffic, [server.url], seed=11)

    outcomes = _run(main)
    planned = plan(traffic, 11)
    assert len(outcomes) == len(planned) >= 15
    assert {o.stream for o in outcomes} == {True, False}
    for o, p in zip(outcomes, planned, strict=True):
        words = len(p.payload.split())
        assert (o.ok, o.reason, o.truncated, o.status) == (True, None, False, 200), o
        assert o.stream == p.stream
        assert (o.prompt_tokens, o.completion_tokens) == (p.prompt_words + words, words)
        assert o.latency is not None and 0 <= o.latency <= o.duration
        assert (o.replica, o.attempts, o.deployment) == (0, 0, None)
    assert outcomes[0].t < 0.1
    assert all(o.t < traffic.duration + 0.2 for o in outcomes)


def test_an_answer_that_is_not_the_payload_is_truncated() -> None:
    """A canned answer (no echo) is a 200 that does not match: truncated, stream or not."""

    async def main() -> list[Outcome]:
        async with _sim(SimulatedSettings()) as server:
            return await drive(FEW, [server.url], seed=1)

    outcomes = _run(main)
    assert outcomes
    assert all((o.ok, o.reason, o.truncated) == (False, "truncated", True) for o in outcomes)


# --- failures --------------------------------------------------------------------------------

BROKEN = [
    # mode, share of streams, reason, truncated, status
    ("cut", 1.0, "truncated", True, 200),
    ("drop", 1.0, "truncated", True, 200),
    ("wrong", 1.0, "truncated", True, 200),
    ("wrong", 0.0, "truncated", True, 200),
    ("inband", 1.0, "in_band_error:server_error", False, 200),
    ("502", 1.0, "http_502:server_error", False, 502),
    ("502", 0.0, "http_502:server_error", False, 502),
    ("garbage", 0.0, "bad_body", False, 200),
]


@pytest.mark.parametrize(("mode", "share", "reason", "truncated", "status"), BROKEN)
def test_broken_answers_get_their_reason(
    mode: str, share: float, reason: str, truncated: bool, status: int
) -> None:
    """Each kind of broken answer fails with its reason; only silent ones count as truncated."""
    outcomes = _run(lambda: _drive_tiny(mode, replace(FEW, stream_share=share)))
    assert outcomes
    for o in outcomes:
        assert (o.ok, o.reason, o.truncated, o.status) == (False, reason, truncated, status), o
        assert o.stream is (share == 1.0)
        if mode in ("502", "inband", "cut"):
            assert (o.deployment, o.attempts) == ("primary", 3)


def test_in_band_error_keeps_the_time_of_the_first_chunk() -> None:
    """A stream that began and then reported an error still has its latency."""
    outcomes = _run(lambda: _drive_tiny("inband", replace(FEW, stream_share=1.0)))
    assert all(o.latency is not None for o in outcomes)


def test_real_upstream_answers_skip_the_content_check() -> None:
    """A deployment that does not echo passes with any text, when finish and [DONE] are there."""
    traffic = replace(FEW, stream_share=0.5)
    checked = _run(lambda: _drive_tiny("real", traffic))
    unchecked = _run(lambda: _drive_tiny("real", traffic, echo=lambda d: d != "real"))
    assert all(o.reason == "truncated" for o in checked)
    assert all(o.ok and o.deployment == "real" for o in unchecked)
    assert {o.stream for o in unchecked} == {True, False}


def test_a_server_that_never_answers_times_out_within_the_limit() -> None:
    """Requests end as client_timeout at traffic.timeout, and the drive ends soon after."""
    traffic = replace(FEW, timeout=0.5)

    async def main() -> tuple[list[Outcome], float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcomes = await _drive_tiny("hang", traffic)
        return outcomes, loop.time() - started

    outcomes, elapsed = _run(main)
    assert outcomes
    for o in outcomes:
        assert (o.ok, o.reason, o.truncated, o.status) == (False, "client_timeout", False, 0)
        assert 0.4 <= o.duration <= 1.5
    assert elapsed <= traffic.duration + traffic.timeout + GRACE


def test_requests_beyond_the_in_flight_cap_are_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the cap reached, further arrivals count as driver_overloaded."""
    monkeypatch.setattr(load, "MAX_IN_FLIGHT", 2)
    traffic = _Traffic(rate=40.0, duration=0.3, timeout=0.6)
    outcomes = _run(lambda: _drive_tiny("hang", traffic))
    reasons = [o.reason for o in outcomes]
    assert reasons[:2] == ["client_timeout", "client_timeout"]
    assert reasons.count("driver_overloaded") >= 1
    assert all(o.replica == -1 for o in outcomes if o.reason == "driver_overloaded")


# --- each truncation condition on its own ----------------------------------------------------
# Every mode below differs from "whole" (a right answer, checked first) in exactly one defect.

STREAM = replace(FEW, stream_share=1.0)
PLAIN = replace(FEW, stream_share=0.0)


def _all_truncated(outcomes: list[Outcome]) -> None:
    assert outcomes
    for o in outcomes:
        assert (o.ok, o.reason, o.truncated, o.status) == (False, "truncated", True, 200), o


@pytest.mark.parametrize("traffic", [STREAM, PLAIN], ids=["stream", "plain"])
def test_the_whole_answer_of_the_tiny_server_is_ok(traffic: _Traffic) -> None:
    """The right content, finish "stop", [DONE] and the deployment header: ok."""
    outcomes = _run(lambda: _drive_tiny("whole", traffic))
    assert outcomes and all(o.ok and o.deployment == "primary" for o in outcomes)


@pytest.mark.parametrize("echoes", [True, False])
def test_a_stream_without_done_is_truncated(echoes: bool) -> None:
    """The whole content and finish "stop", but no ``data: [DONE]``: truncated, echo or not."""
    _all_truncated(_run(lambda: _drive_tiny("nodone", STREAM, echo=lambda d: echoes)))


@pytest.mark.parametrize("echoes", [True, False])
@pytest.mark.parametrize("traffic", [STREAM, PLAIN], ids=["stream", "plain"])
def test_an_answer_without_finish_reason_is_truncated(traffic: _Traffic, echoes: bool) -> None:
    """The whole content (and [DONE]) but no finish_reason anywhere: truncated, echo or not."""
    _all_truncated(_run(lambda: _drive_tiny("nofinish", traffic, echo=lambda d: echoes)))


@pytest.mark.parametrize("traffic", [STREAM, PLAIN], ids=["stream", "plain"])
def test_finish_length_from_an_echoing_deployment_is_truncated(traffic: _Traffic) -> None:
    """The whole content but finish "length": truncated from an echoing deployment, ok otherwise.

    An echo is never cut (no ``max_tokens`` is sent), so "length" there means the answer or its
    report was cut on the way, and the caller, told its answer is incomplete without an error, is
    given a silent truncation; a real model may stop at its own limit, so any finish will do.
    """
    _all_truncated(_run(lambda: _drive_tiny("length", traffic)))
    real = _run(lambda: _drive_tiny("length", traffic, echo=lambda d: False))
    assert real and all(o.ok for o in real)


def test_a_body_cut_short_of_its_content_length_is_truncated() -> None:
    """A 200 whose JSON body stops halfway and closes is truncated, not bad_body: the caller
    got a success status and part of an answer, with no error."""
    outcomes = _run(lambda: _drive_tiny("cutbody", PLAIN))
    _all_truncated(outcomes)
    assert all((o.deployment, o.attempts) == ("primary", 3) for o in outcomes)


@pytest.mark.parametrize("traffic", [STREAM, PLAIN], ids=["stream", "plain"])
def test_a_strict_prefix_of_the_payload_is_truncated(traffic: _Traffic) -> None:
    """The payload less its last character, with finish "stop" and [DONE]: truncated."""
    _all_truncated(_run(lambda: _drive_tiny("prefix", traffic)))


def test_an_answer_without_deployment_header_is_still_compared() -> None:
    """No x-gateway-deployment: drive asks ``echo(None)`` and, told yes, compares the content."""
    asked: list[str | None] = []

    def echo(name: str | None) -> bool:
        asked.append(name)
        return True

    right = _run(lambda: _drive_tiny("anonymous", FEW, echo=echo))
    wrong = _run(lambda: _drive_tiny("anonwrong", FEW, echo=echo))
    assert right and all(o.ok and o.deployment is None for o in right)
    assert {o.stream for o in right} == {True, False}
    _all_truncated(wrong)
    assert asked == [None] * (len(right) + len(wrong))


# --- replicas --------------------------------------------------------------------------------


def test_requests_alternate_between_replicas() -> None:
    """Request n goes to replica n mod 2."""

    async def main() -> tuple[list[Outcome], int, int]:
        async with _sim() as a, _sim() as b:
            outcomes = await drive(FEW, [a.url, b.url], seed=2)
            return outcomes, a.simulator.requests, b.simulator.requests

    outcomes, to_a, to_b = _run(main)
    assert all(o.ok for o in outcomes)
    assert [o.replica for o in outcomes] == [n % 2 for n in range(len(outcomes))]
    assert (to_a, to_b) == (sum(o.replica == 0 for o in outcomes), sum(o.replica for o in outcomes))


@pytest.mark.parametrize("closed_first", [True, False])
def test_a_refusing_replica_passes_its_requests_on(closed_first: bool) -> None:
    """Connections refused by one replica go to the other: every request succeeds there."""

    async def main() -> list[Outcome]:
        async with _sim() as server:
            urls = [_closed_url(), server.url] if closed_first else [server.url, _closed_url()]
            return await drive(FEW, urls, seed=4)

    outcomes = _run(main)
    live = 1 if closed_first else 0
    assert len(outcomes) >= 3
    assert all(o.ok and o.replica == live for o in outcomes)


def test_no_replica_listening_is_a_connection_error_or_a_killed_replica() -> None:
    """Refused everywhere: connection_error, or replica_killed when the replica is dead."""
    urls = [_closed_url(), _closed_url()]
    alive = _run(lambda: drive(FEW, urls, seed=5))
    killed = _run(lambda: drive(FEW, urls, seed=5, dead=lambda i: True))
    assert alive and all(o.reason == "connection_error" and o.status == 0 for o in alive)
    assert killed and all(o.reason == "replica_killed" for o in killed)
    assert not any(o.truncated for o in alive + killed)


def test_a_connection_dropped_after_sending_counts_against_the_caller() -> None:
    """A reset after the request was sent is a connection_error, replica_killed on a dead one."""
    settings = SimulatedSettings(echo=True, faults=(Fault(kind="reset"),))

    async def main() -> tuple[list[Outcome], list[Outcome]]:
        async with _sim(settings) as server:
            alive = await drive(FEW, [server.url], seed=6)
            killed = await drive(FEW, [server.url], seed=6, dead=lambda i: i == 0)
            return alive, killed

    alive, killed = _run(main)
    assert alive and all(o.reason == "connection_error" for o in alive)
    assert killed and all(o.reason == "replica_killed" for o in killed)


# --- closed loop and determinism ---------------------------------------------------------------


def test_closed_loop_keeps_n_requests_in_flight() -> None:
    """N workers send back to back: never more than N at once, none sent after the duration."""
    traffic = _Traffic(rate=None, concurrency=3, duration=0.6)
    settings = SimulatedSettings(echo=True, latency=0.02)

    async def main() -> list[Outcome]:
        async with _sim(settings) as server:
            return await drive(traffic, [server.url], seed=8)

    outcomes = _run(main)
    assert len(outcomes) >= 9
    assert all(o.ok for o in outcomes)
    assert all(o.t < traffic.duration for o in outcomes)
    edges = sorted([(o.t, 1) for o in outcomes] + [(o.t + o.duration, -1) for o in outcomes])
    level = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        level += step
        peak = max(peak, level)
    assert peak == 3
    planned = plan(traffic, 8, count=len(outcomes))
    assert [o.stream for o in outcomes] == [p.stream for p in planned]


def test_the_same_seed_gives_the_same_plan() -> None:
    """Arrivals, streaming choices and sizes follow the seed alone."""
    traffic = _Traffic(rate=200.0, duration=5.0, stream_share=0.3)
    first = plan(traffic, 7)
    assert first == plan(traffic, 7)
    assert first != plan(traffic, 8)
    assert 800 <= len(first) <= 1200
    assert first[0].t == 0.0
    times = [p.t for p in first if p.t is not None]
    assert len(times) == len(first) and times == sorted(times) and times[-1] < 5.0
    assert 0.2 <= sum(p.stream for p in first) / len(first) <= 0.4
    for p in first:
        words = p.payload.split()
        assert words[0] == f"r{p.n}" and 3 <= len(words) <= 12
        assert 5 <= p.prompt_words <= 30
    closed = plan(replace(traffic, rate=None, concurrency=4), 7, count=50)
    assert [replace(p, t=None) for p in first[:50]] == closed


def test_the_same_seed_drives_the_same_requests() -> None:
    """Two drives with one seed send the same requests in the same order."""

    async def main() -> tuple[list[Outcome], list[Outcome]]:
        async with _sim() as server:
            return await drive(FEW, [server.url], 9), await drive(FEW, [server.url], 9)

    a, b = _run(main)
    assert [(o.stream, o.prompt_tokens, o.completion_tokens) for o in a] == [
        (o.stream, o.prompt_tokens, o.completion_tokens) for o in b
    ]


def test_outcome_rows_round_trip() -> None:
    """A result.json row reads back as the same outcome, columns in the spec's order."""
    assert OUTCOME_COLUMNS == (
        "t",
        "latency",
        "duration",
        "stream",
        "status",
        "ok",
        "reason",
        "truncated",
        "deployment",
        "attempts",
        "replica",
        "prompt_tokens",
        "completion_tokens",
    )
    o = Outcome(1.25, None, 0.5, True, 502, False, "http_502:x", False, "a", 2, 1, 3, 0)
    row = outcome_row(o)
    assert orjson.loads(orjson.dumps(row)) == row
    assert outcome_from_row(OUTCOME_COLUMNS, row) == o
    shuffled = list(reversed(OUTCOME_COLUMNS))
    assert outcome_from_row(shuffled, list(reversed(row))) == o
    with pytest.raises(ValueError, match="lacks column"):
        outcome_from_row(OUTCOME_COLUMNS[:-1], row[:-1])
