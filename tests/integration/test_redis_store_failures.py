"""The Redis store when Redis breaks: killed, hung (SIGSTOP), restarted, resumed.

Each test runs its own ``redis-server`` (tests/redisutil.py) so it can break it. What must hold:
a record never waits on Redis, a sync is bounded by the store's timeout, shared() turns stale
with the reason, the background loop (not a manual sync) recovers by itself, deltas recorded
while Redis was away reach it afterwards, and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redisutil import RedisServer
from structlog.testing import capture_logs

from health.redis_store import RedisStore, key_tag
from health.store import ProbeResult
from health.window import LAYOUT

pytestmark = pytest.mark.integration

FLUSH = 0.05
TIMEOUT = 0.3
NS = "failures"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


async def until(condition: Callable[[], bool], within: float = 5.0) -> float:
    """Wait until ``condition()`` holds; fail after ``within`` seconds. Returns the wait."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def requests_in_redis(url: str, name: str) -> int:
    """The fleet's request count for ``name``, read straight from Redis's bucket hashes."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        total = 0.0
        async for key in client.scan_iter(match=f"{key_tag(NS, name)}:b:*"):
            total += float(await client.hget(key, str(LAYOUT.REQUESTS)) or 0)
        return int(total)
    finally:
        await client.aclose()


def store_for(server: RedisServer, **options: Any) -> RedisStore:
    options = {"namespace": NS, "flush_interval": FLUSH, "timeout": TIMEOUT, **options}
    return RedisStore(server.url, **options)


async def timed(coro: Any) -> float:
    start = time.monotonic()
    await coro
    return time.monotonic() - start


def test_killed_redis_keeps_serving_and_the_loop_recovers_by_itself(server: RedisServer) -> None:
    """Redis killed: records work, sync is quick, stale with a reason and the fleet's last probes;
    restarted: fresh alone."""

    async def main() -> None:
        store = store_for(server)
        w = store.window("d")
        with capture_logs() as logs:
            await store.start()
            w.success(0.1)
            await until(lambda: store.shared().state == "fresh")
            assert await requests_in_redis(server.url, "d") == 1
            other = store_for(server, replica="other")  # a replica that probed the deployment
            other.add_probe("d", ProbeResult(at=1.0, ok=True, latency=0.01, detail="ok"))
            await other.sync()
            await other.close()
            await until(lambda: len(store.probes("d")) == 1)

            server.kill()
            for _ in range(100):
                w.failure("server_error")
            assert await timed(store.sync()) < 2 * TIMEOUT + 1.0
            status = store.shared()
            assert status.state == "stale"
            assert status.error is not None and status.error.startswith("ConnectionError")
            assert store.stats("d").requests == 101  # the local window, while stale
            assert [p.ok for p in store.probes("d")] == [True]  # the fleet's last probe list

            server.start()  # same port, empty: the history before the kill is gone
            await until(lambda: store.shared().state == "fresh")
            assert await requests_in_redis(server.url, "d") == 100
            assert store.stats("d").requests == 100
            await store.close()
        mine = [e for e in logs if e.get("replica") == store.replica]
        events = [e["event"] for e in mine if e["event"].startswith("shared metrics")]
        assert events == ["shared metrics fresh", "shared metrics stale", "shared metrics fresh"]

    asyncio.run(main())


def test_hung_redis_never_blocks_a_record_and_each_record_counts_once(
    server: RedisServer,
) -> None:
    """SIGSTOP: syncs give up after the timeout, stale; SIGCONT: fresh alone, no double count."""

    async def main() -> None:
        store = store_for(server)
        w = store.window("d")
        await store.start()
        w.success(0.1)
        await until(lambda: store.shared().state == "fresh")

        server.stop()
        try:
            for _ in range(3):  # spread over several flushes that reach the frozen server
                for _ in range(10):
                    w.failure("timeout")
                await asyncio.sleep(FLUSH * 3)
            assert await timed(store.sync()) < 2 * TIMEOUT + 1.0  # may wait for the loop's
            await until(lambda: store.shared().state == "stale", within=3.0)
            assert "TimeoutError" in (store.shared().error or "")
            assert store.stats("d").requests == 31
        finally:
            server.cont()
        # The frozen server now runs what it had buffered, and the store sends it all again.
        await until(lambda: store.shared().state == "fresh")
        await store.sync()
        assert await requests_in_redis(server.url, "d") == 31
        assert store.stats("d").requests == 31
        await store.close()

    asyncio.run(main())


def test_start_and_close_do_not_wait_for_a_missing_redis(server: RedisServer) -> None:
    """start() returns at once with Redis down; the loop connects once it is up; close is quick."""

    async def main() -> None:
        server.kill()
        store = store_for(server)
        w = store.window("d")
        assert await timed(store.start()) < 0.5
        w.success(0.2)
        await until(lambda: "ConnectionError" in (store.shared().error or ""))
        server.start()
        await until(lambda: store.shared().state == "fresh")
        assert await requests_in_redis(server.url, "d") == 1
        server.stop()
        try:
            assert await timed(store.close()) < 2 * TIMEOUT + 1.0
        finally:
            server.cont()

    asyncio.run(main())
