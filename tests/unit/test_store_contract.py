"""The metrics-store contract, run against every store, then what only the Redis store promises.

One suite, one parametrised fixture: ``memory`` (:class:`MemoryStore`), ``fakeredis``
(:class:`RedisStore` on an in-process fake with Lua) and ``redis`` (:class:`RedisStore` on the
real Redis of ``REDIS_URL``; skipped when unreachable, failed when ``REQUIRE_REDIS=1``). Each test
gets a fresh random namespace, and its keys are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redisutil import free_port, require_redis
from structlog.testing import capture_logs

from health.redis_store import KEY_PREFIX, RedisStore, key_tag
from health.store import PROBE_HISTORY, MemoryStore, MetricsStore, ProbeResult, WindowSettings
from health.window import LAYOUT, SIZE, Clock, RollingWindow

T0 = 1_800_000_000.0  # a multiple of every bucket width used here


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Fleet:
    """The stores of one test: replicas sharing one backend (and a raw client to inspect it)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.namespace = f"test-{uuid.uuid4().hex[:12]}"
        self.url = require_redis() if kind == "redis" else "redis://127.0.0.1:6379/0"
        self._server = fakeredis.FakeServer() if kind == "fakeredis" else None
        self._stores: list[MetricsStore] = []
        self._clients: list[Any] = []
        self.raw: Any = self.client(decode=True) if kind != "memory" else None

    @property
    def shared(self) -> bool:
        return self.kind != "memory"

    def client(self, decode: bool = False) -> Any:
        """A new client of this fleet's Redis (closed when the test ends)."""
        client: Any
        if self._server is not None:
            client = fakeredis.aioredis.FakeRedis(server=self._server, decode_responses=decode)
        else:
            client = aioredis.Redis.from_url(self.url, decode_responses=decode)
        self._clients.append(client)
        return client

    def store(
        self,
        *,
        clock: Clock = time.time,
        settings: WindowSettings | None = None,
        replica: str | None = None,
        **options: Any,
    ) -> Any:
        """A new replica's store (closed when the test ends)."""
        store: MetricsStore
        if self.kind == "memory":
            store = MemoryStore(settings, clock=clock, replica=replica or "local")
        else:
            client = self.client() if self._server is not None else None
            store = RedisStore(
                self.url,
                settings,
                namespace=self.namespace,
                clock=clock,
                replica=replica,
                client=client,
                **options,
            )
        return self.adopt(store)

    def adopt(self, store: Any) -> Any:
        """Close ``store`` when the test ends."""
        self._stores.append(store)
        return store

    async def keys(self) -> list[str]:
        return sorted(
            [k async for k in self.raw.scan_iter(match=f"{KEY_PREFIX}:{{{self.namespace}:*")]
        )

    async def close(self) -> None:
        for store in self._stores:
            await store.close()
        if self.raw is not None:
            keys = await self.keys()
            if keys:
                await self.raw.delete(*keys)
        for client in self._clients:
            await client.aclose()


OpenFleet = Callable[[], AbstractAsyncContextManager[Fleet]]


def _opener(kind: str) -> OpenFleet:
    if kind == "redis":
        require_redis()

    @asynccontextmanager
    async def open_fleet() -> AsyncIterator[Fleet]:
        fleet = Fleet(kind)
        try:
            yield fleet
        finally:
            await fleet.close()

    return open_fleet


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def open_fleet(request: pytest.FixtureRequest) -> OpenFleet:
    """Factory of a fresh backend per test, for every store."""
    return _opener(request.param)


@pytest.fixture(params=["fakeredis", "redis"])
def open_redis_fleet(request: pytest.FixtureRequest) -> OpenFleet:
    """Factory of a fresh backend per test, Redis stores only."""
    return _opener(request.param)


def run(open_fleet: OpenFleet, body: Callable[[Fleet], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_fleet() as fleet:
            await body(fleet)

    asyncio.run(main())


def probe(at: float, ok: bool = True, replica: str = "r") -> ProbeResult:
    return ProbeResult(at=at, ok=ok, latency=0.01 if ok else None, detail="ok", replica=replica)


# -- the contract: every store ----------------------------------------------------------------


def test_records_show_in_stats(open_fleet: OpenFleet) -> None:
    """Successes and failures recorded on the window are in stats() after a sync."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store(clock=FakeClock())
        w = store.window("d")
        w.success(0.2, ttft=0.05, tokens_in=10, tokens_out=5, cost=0.01)
        w.success(0.4, tokens_in=10, tokens_out=5, cost=0.01)
        w.failure("timeout", tokens_in=3)
        await store.sync()
        s = store.stats("d")
        assert (s.requests, s.successes, s.failures) == (3, 2, 1)
        assert s.error_count("timeout") == 1
        assert s.error_rate == pytest.approx(1 / 3)
        assert (s.tokens_in, s.tokens_out) == (23, 10)
        assert s.cost == pytest.approx(0.02)
        assert s.latency.mean == pytest.approx(0.3)
        assert s.ttft.mean == pytest.approx(0.05)
        assert s.latency.ewma == pytest.approx(0.2 + 0.3 * (0.4 - 0.2))

    run(open_fleet, body)


def test_errors_are_counted_by_class_and_caller_errors_do_not_count_as_failures(
    open_fleet: OpenFleet,
) -> None:
    """Error classes are kept apart; caller_error is counted but left out of the error rate."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store(clock=FakeClock())
        w = store.window("d")
        w.success(0.1)
        w.success(0.1)
        w.failure("server_error")
        w.failure("rate_limited")
        w.failure("caller_error")
        w.failure("caller_error")
        await store.sync()
        s = store.stats("d")
        assert s.requests == 6
        assert s.errors == (("rate_limited", 1), ("server_error", 1), ("caller_error", 2))
        assert s.failures == 2
        assert s.error_rate == pytest.approx(2 / 4)

    run(open_fleet, body)


def test_percentiles_come_from_the_recorded_latencies(open_fleet: OpenFleet) -> None:
    """p50/p95/p99 of 100 latencies spread over 10 ms..1 s fall in the right histogram bins."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store(clock=FakeClock())
        w = store.window("d")
        for i in range(1, 101):
            w.success(i / 100)
        await store.sync()
        lat = store.stats("d").latency
        assert lat.p50 is not None and lat.p95 is not None and lat.p99 is not None
        assert 0.4 < lat.p50 <= 0.6
        assert 0.8 < lat.p95 <= 1.0
        assert lat.p50 <= lat.p95 <= lat.p99 <= 1.0
        assert lat.mean == pytest.approx(0.505)

    run(open_fleet, body)


def test_records_leave_the_window_one_bucket_at_a_time(open_fleet: OpenFleet) -> None:
    """A sliding window: each bucket boundary crossed drops exactly the oldest bucket."""

    async def body(fleet: Fleet) -> None:
        clock = FakeClock()
        store = fleet.store(clock=clock, settings=WindowSettings(buckets=3, width=10.0))
        w = store.window("d")
        for n in (1, 2, 4):  # 1 in bucket 0, 2 in bucket 1, 4 in bucket 2
            for _ in range(n):
                w.failure("server_error")
            clock.now += 10.0
        seen = []
        for now in (T0 + 29.999, T0 + 30.0, T0 + 40.0, T0 + 50.0):
            clock.now = now
            await store.sync()
            seen.append(store.stats("d").requests)
        assert seen == [7, 6, 4, 0]

    run(open_fleet, body)


def test_inflight_is_the_gauge_of_attempts_in_progress(open_fleet: OpenFleet) -> None:
    """The window's in-flight gauge shows in stats(), up and down."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store(clock=FakeClock())
        w = store.window("d")
        w.inflight += 3
        await store.sync()
        assert store.stats("d").inflight == 3
        w.inflight -= 3
        await store.sync()
        assert store.stats("d").inflight == 0

    run(open_fleet, body)


def test_probe_history_is_newest_first_and_bounded(open_fleet: OpenFleet) -> None:
    """probes() lists the newest first and keeps at most PROBE_HISTORY, before and after sync."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store(clock=FakeClock())
        store.window("d")
        await store.sync()
        for i in range(PROBE_HISTORY + 5):
            store.add_probe("d", probe(float(i), ok=i % 2 == 0))
        expected = [float(i) for i in reversed(range(5, PROBE_HISTORY + 5))]
        assert [p.at for p in store.probes("d")] == expected  # not yet synced
        await store.sync()
        got = store.probes("d")
        assert [p.at for p in got] == expected
        assert got[0] == probe(float(PROBE_HISTORY + 4), ok=(PROBE_HISTORY + 4) % 2 == 0)
        assert store.probes("other") == ()

    run(open_fleet, body)


def test_names_are_every_deployment_in_first_seen_order(open_fleet: OpenFleet) -> None:
    """names() lists each deployment once, in the order it was first seen; window() is stable."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store()
        w = store.window("b")
        store.window("a")
        store.window("b")
        assert store.names() == ["b", "a"]
        assert store.window("b") is w

    run(open_fleet, body)


def test_reading_an_unregistered_name_registers_nothing(open_fleet: OpenFleet) -> None:
    """stats()/probes() of a name never given to window() are empty and add no deployment."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store(settings=WindowSettings(buckets=4, width=2.5))
        store.window("known")
        ghost = store.stats("ghost")
        assert ghost == store.stats("known")  # the same empty figures as a registered one
        assert (ghost.requests, ghost.window_seconds) == (0, 10.0)
        assert store.probes("ghost") == ()
        await store.sync()
        assert store.names() == ["known"]
        if fleet.shared:  # nothing is flushed for it either
            assert [k for k in await fleet.keys() if "ghost" in k] == []

    run(open_fleet, body)


def test_an_unknown_deployment_has_empty_stats(open_fleet: OpenFleet) -> None:
    """stats() of a deployment nothing was recorded for is all zeros."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store(settings=WindowSettings(buckets=4, width=2.5))
        await store.sync()
        s = store.stats("nothing")
        assert (s.requests, s.inflight, s.error_rate, s.window_seconds) == (0, 0, 0.0, 10.0)
        assert s.latency.p50 is None

    run(open_fleet, body)


def test_shared_says_how_current_the_view_is(open_fleet: OpenFleet) -> None:
    """Memory is 'local'; Redis is 'stale' before its first sync and 'fresh' after it."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store()
        store.window("d")
        if not fleet.shared:
            assert store.shared().to_dict() == {"store": "memory", "shared_metrics": "local"}
            return
        before = store.shared()
        assert (before.store, before.state, before.last_sync_age) == ("redis", "stale", None)
        assert before.error
        await store.sync()
        after = store.shared()
        assert (after.store, after.state, after.error) == ("redis", "fresh", None)
        assert after.last_sync_age is not None and 0 <= after.last_sync_age < 5

    run(open_fleet, body)


def test_probe_lease_lets_one_replica_probe_per_ttl(open_fleet: OpenFleet) -> None:
    """Memory always grants the lease; Redis grants it to one caller until the ttl passes."""

    async def body(fleet: Fleet) -> None:
        a, b = fleet.store(replica="a"), fleet.store(replica="b")
        assert await a.probe_lease("d", 0.3)
        if not fleet.shared:
            assert await a.probe_lease("d", 0.3)
            return
        assert not await a.probe_lease("d", 0.3)
        assert not await b.probe_lease("d", 0.3)
        assert await b.probe_lease("other", 0.3)  # leases are per deployment
        await asyncio.sleep(0.4)
        assert await b.probe_lease("d", 0.3)

    run(open_fleet, body)


def test_a_published_trip_reaches_the_other_replicas_but_not_its_own(
    open_fleet: OpenFleet,
) -> None:
    """Redis: B sees A's trip (until, reason, replica) after syncing, A does not list its own;
    memory: publishing is a no-op and there are never remote trips."""

    async def body(fleet: Fleet) -> None:
        clock = FakeClock()
        a, b = fleet.store(clock=clock, replica="a"), fleet.store(clock=clock, replica="b")
        a.window("d")
        b.window("d")
        reason = "error rate 60% over 20 requests | last: timeout"  # a '|' inside survives
        assert a.publish_trip("d", T0 + 30.0, reason) is None  # sync: nothing to await
        await a.sync()
        await b.sync()
        await a.sync()
        if not fleet.shared:
            assert (a.remote_trips(), b.remote_trips()) == ({}, {})
            return
        assert b.remote_trips() == {"d": (T0 + 30.0, reason, "a")}
        assert a.remote_trips() == {}
        key = f"{key_tag(fleet.namespace, 'd')}:trip"
        assert await fleet.raw.get(key) == f"{round((T0 + 30.0) * 1000)}|a|{reason}"
        assert 25_000 < await fleet.raw.pttl(key) <= 30_000  # PX = until - now

    run(open_fleet, body)


# -- what only the Redis store promises -------------------------------------------------------


def test_replicas_see_each_others_records_probes_and_inflight(open_redis_fleet: OpenFleet) -> None:
    """Two replicas of one namespace merge their windows, probes and in-flight gauges."""

    async def body(fleet: Fleet) -> None:
        clock = FakeClock()
        a = fleet.store(clock=clock, replica="a")
        b = fleet.store(clock=clock, replica="b")
        wa, wb = a.window("d"), b.window("d")
        for _ in range(3):
            wa.success(0.1)
        wa.inflight = 2
        a.add_probe("d", probe(T0, replica="a"))
        wb.failure("server_error")
        wb.inflight = 1
        await a.sync()
        await b.sync()
        await a.sync()
        for store in (a, b):
            s = store.stats("d")
            assert (s.requests, s.successes, s.failures, s.inflight) == (4, 3, 1, 3)
        assert b.probes("d") == (probe(T0, replica="a"),)
        wb.failure("timeout")  # not flushed yet: b sees it at once, a after the next syncs
        assert (b.stats("d").requests, a.stats("d").requests) == (5, 4)
        await b.sync()
        await a.sync()
        assert a.stats("d").requests == 5
        assert a.stats("d").latency.ewma == pytest.approx(0.1)  # EWMAs stay local
        assert b.stats("d").latency.ewma is None

    run(open_redis_fleet, body)


def test_a_silent_replicas_inflight_gauge_is_ignored(open_redis_fleet: OpenFleet) -> None:
    """A replica that stopped flushing no longer counts in the others' in-flight figure."""

    async def body(fleet: Fleet) -> None:
        clock = FakeClock()
        a = fleet.store(clock=clock, replica="a")
        b = fleet.store(clock=clock, replica="b")
        a.window("d").inflight = 4
        b.window("d")
        await a.sync()
        await b.sync()
        assert b.stats("d").inflight == 4
        # a goes quiet: its gauge is stamped with Redis's clock, so age the stamp in Redis.
        key = f"{key_tag(fleet.namespace, 'd')}:inflight"
        count, stamped, order = (await fleet.raw.hget(key, "a")).split(":")
        seconds, micros = await fleet.raw.time()
        assert count == "4"
        assert abs(int(stamped) - (seconds * 1000 + micros // 1000)) < 5000
        aged = int(stamped) - round(b.stale_after * 1000) - 1000
        await fleet.raw.hset(key, "a", f"{count}:{aged}:{order}")
        await b.sync()
        assert b.stats("d").inflight == 0
        assert await fleet.raw.hkeys(key) == ["b"]

    run(open_redis_fleet, body)


def test_inflight_gauges_count_whatever_the_replicas_clocks_say(
    open_redis_fleet: OpenFleet,
) -> None:
    """In-flight gauges are stamped and judged by Redis's clock: a replica 30 s behind counts."""

    async def body(fleet: Fleet) -> None:
        a = fleet.store(clock=FakeClock(T0 - 30.0), replica="a")
        b = fleet.store(clock=FakeClock(T0), replica="b")
        a.window("d").inflight = 4
        b.window("d").inflight = 1
        await a.sync()
        await b.sync()
        await a.sync()
        assert (a.stats("d").inflight, b.stats("d").inflight) == (5, 5)
        assert sorted(await fleet.raw.hkeys(f"{key_tag(fleet.namespace, 'd')}:inflight")) == [
            "a",
            "b",
        ]

    run(open_redis_fleet, body)


def test_keys_share_the_hash_tag_hold_only_non_zero_fields_and_expire(
    open_redis_fleet: OpenFleet,
) -> None:
    """Every key is llmgw:{namespace:deployment}:…, buckets hold non-zero fields, all expire."""

    async def body(fleet: Fleet) -> None:
        settings = WindowSettings(buckets=6, width=10.0)
        clock = FakeClock()
        store = fleet.store(clock=clock, settings=settings, replica="r")
        w = store.window("d")
        w.success(0.3, tokens_in=7)
        ref = RollingWindow(buckets=6, width=10.0, clock=clock)  # the same record, in memory
        ref.success(0.3, tokens_in=7)
        w.inflight = 1
        store.add_probe("d", probe(T0))
        await store.sync()
        tag = f"{KEY_PREFIX}:{{{fleet.namespace}:d}}"
        idx = int(T0 // 10.0)
        assert await fleet.keys() == sorted(
            f"{tag}:{suffix}" for suffix in (f"b:{idx}", "inflight", "probes", "seq:r")
        )
        for key in await fleet.keys():
            ttl = await fleet.raw.pttl(key)
            assert ttl > 0, key
            if ":b:" in key or ":seq:" in key:
                assert ttl <= (settings.seconds + 2 * settings.width) * 1000
        fields = await fleet.raw.hgetall(f"{tag}:b:{idx}")
        wanted = {i for i, v in enumerate(ref.merged()) if v}  # whatever the layout holds
        lat_bin = LAYOUT.LATENCY_HIST + 7  # 0.3 s is in the (0.25, 0.4] bin
        assert {LAYOUT.REQUESTS, LAYOUT.SUCCESSES, LAYOUT.TOKENS_IN, lat_bin} <= wanted
        assert len(wanted) < SIZE
        assert {int(f) for f in fields} == wanted
        assert float(fields[str(LAYOUT.TOKENS_IN)]) == 7

    run(open_redis_fleet, body)


def test_round_trips_per_sync_do_not_grow_with_traffic(open_redis_fleet: OpenFleet) -> None:
    """A sync is one pipeline for all deployments, whether 1 or 3000 records were made."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store(clock=FakeClock())
        windows = [store.window(name) for name in ("a", "b", "c")]
        await store.sync()  # the first one also loads the script
        sent = []
        for records in (0, 1, 3000):
            for i in range(records):
                windows[i % 3].success(0.05)
                windows[i % 3].failure("timeout")
            before = store.commands_sent
            await store.sync()
            sent.append(store.commands_sent - before)
        assert sent == [1, 1, 1]
        assert store.stats("a").requests == 2 * (1 + 1000)

    run(open_redis_fleet, body)


class Flaky:
    """A client whose next pipeline can run on Redis but lose its answer (``lose_next``: a
    timeout), or that is cut off from Redis altogether (``down``); ``before`` runs as a pipeline
    is sent (what happens while an exchange is on the wire)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.lose_next = False
        self.down = False
        self.before: Callable[[], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self._client.pipeline(*args, **kwargs)
        execute = pipe.execute

        async def run(*a: Any, **k: Any) -> Any:
            if self.before is not None:
                self.before()
            if self.down:
                raise redis.exceptions.ConnectionError("cut off by the test")
            if self.lose_next:
                self.lose_next = False
                await execute(*a, **k)
                raise TimeoutError
            return await execute(*a, **k)

        pipe.execute = run
        return pipe


def flaky_store(fleet: Fleet, **options: Any) -> tuple[RedisStore, Flaky]:
    """A replica's store on a :class:`Flaky` client (both closed when the test ends)."""
    flaky = Flaky(fleet.client())
    store = RedisStore(
        fleet.url,
        namespace=fleet.namespace,
        client=flaky,  # type: ignore[arg-type]
        **options,
    )
    return fleet.adopt(store), flaky


def test_a_flush_whose_answer_was_lost_is_not_counted_twice(open_redis_fleet: OpenFleet) -> None:
    """Deltas of a flush that ran but timed out are sent again and applied once."""

    async def body(fleet: Fleet) -> None:
        store, flaky = flaky_store(fleet, clock=FakeClock())
        w = store.window("d")
        await store.sync()
        for _ in range(5):
            w.failure("server_error")
        flaky.lose_next = True
        await store.sync()
        assert store.shared().state == "stale"
        w.failure("server_error")
        await store.sync()
        assert store.shared().state == "fresh"
        assert store.stats("d").requests == 6
        assert store.duplicates_skipped == 1

    run(open_redis_fleet, body)


def test_stale_probes_carry_on_from_the_last_fleet_view(open_redis_fleet: OpenFleet) -> None:
    """Cut off from Redis, a replica's probes are the fleet's last list plus its own since."""

    async def body(fleet: Fleet) -> None:
        clock = FakeClock()
        a = fleet.store(clock=clock, replica="a")
        b, flaky = flaky_store(fleet, clock=clock, replica="b")
        for i in range(3):  # long ago, b saw failures
            b.add_probe("d", probe(T0 + i, ok=False, replica="b"))
        await b.sync()
        for i in range(7):  # then a saw the deployment recover
            a.add_probe("d", probe(T0 + 10 + i, replica="a"))
        await a.sync()
        await b.sync()
        fleet_view = b.probes("d")
        assert [p.replica for p in fleet_view] == ["a"] * 7 + ["b"] * 3
        flaky.down = True
        await b.sync()
        assert b.shared().state == "stale"
        assert b.probes("d") == fleet_view  # not b's own three failures
        late = probe(T0 + 20, ok=False, replica="b")
        b.add_probe("d", late)  # what b probes meanwhile goes on top
        assert b.probes("d") == (late, *fleet_view)
        flaky.down = False
        await b.sync()
        await a.sync()
        assert b.shared().state == "fresh"
        assert a.probes("d") == b.probes("d") == (late, *fleet_view)

    run(open_redis_fleet, body)


def test_each_replica_has_its_own_seq_key_that_only_it_refreshes(
    open_redis_fleet: OpenFleet,
) -> None:
    """Applied-batch seqs live in one expiring key per replica, so departed replicas leave none."""

    async def body(fleet: Fleet) -> None:
        settings = WindowSettings(buckets=3, width=10.0)
        clock = FakeClock()
        a = fleet.store(clock=clock, settings=settings, replica="a")
        b = fleet.store(clock=clock, settings=settings, replica="b")
        a.window("d").success(0.1)
        b.window("d").success(0.1)
        await a.sync()
        await b.sync()
        tag = key_tag(fleet.namespace, "d")
        assert [k for k in await fleet.keys() if ":seq" in k] == [f"{tag}:seq:a", f"{tag}:seq:b"]
        for replica in ("a", "b"):
            assert await fleet.raw.type(f"{tag}:seq:{replica}") == "string"
            assert 0 < await fleet.raw.pttl(f"{tag}:seq:{replica}") <= 50_000
        await fleet.raw.pexpire(f"{tag}:seq:a", 5000)
        for _ in range(3):  # b goes on writing; a's key keeps counting down
            b.window("d").success(0.1)
            await b.sync()
        assert 0 < await fleet.raw.pttl(f"{tag}:seq:a") <= 5000
        assert b.stats("d").requests == 5

    run(open_redis_fleet, body)


async def requests_in_redis(fleet: Fleet, name: str) -> int:
    """The fleet's request count for ``name``, read straight from its bucket hashes."""
    total = 0.0
    for key in await fleet.keys():
        if key.startswith(f"{key_tag(fleet.namespace, name)}:b:"):
            total += float(await fleet.raw.hget(key, str(LAYOUT.REQUESTS)) or 0)
    return int(total)


def test_a_foreign_key_fails_only_its_deployment_named_and_never_half_applied(
    open_redis_fleet: OpenFleet,
) -> None:
    """A key of the wrong type under one deployment's tag: stale, the error and the log name it,
    the other deployments are still sent and pulled, and its own records count once, later."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store(clock=FakeClock(), replica="r")
        other = fleet.store(clock=FakeClock(), replica="o")
        good, bad = store.window("good"), store.window("bad")
        poison = f"{key_tag(fleet.namespace, 'bad')}:probes"
        await fleet.raw.set(poison, "not a list")
        with capture_logs() as logs:
            for _ in range(3):
                good.success(0.1)
                bad.failure("server_error")
                await store.sync()
        status = store.shared()
        assert status.state == "stale"
        assert status.error is not None
        assert status.error.startswith("ResponseError: deployment 'bad': WRONGTYPE")
        stale = [e for e in logs if e["event"] == "shared metrics stale"]
        assert [e["deployments"] for e in stale] == [["bad"]]
        assert await requests_in_redis(fleet, "good") == 3
        assert store.duplicates_skipped == 0  # good's batches were acknowledged, not sent again
        assert await requests_in_redis(fleet, "bad") == 0  # nothing half-written
        other.window("good")
        await other.sync()
        assert other.stats("good").requests == 3
        await fleet.raw.delete(poison)
        await store.sync()
        assert store.shared().state == "fresh"
        assert await requests_in_redis(fleet, "bad") == 3
        assert await requests_in_redis(fleet, "good") == 3

    run(open_redis_fleet, body)


def test_a_failing_deployments_batches_are_dropped_once_out_of_the_window(
    open_redis_fleet: OpenFleet,
) -> None:
    """Batches a deployment cannot deliver are kept at most a window, probes included."""

    async def body(fleet: Fleet) -> None:
        clock = FakeClock()
        store = fleet.store(clock=clock, settings=WindowSettings(buckets=3, width=10.0))
        w = store.window("bad")
        poison = f"{key_tag(fleet.namespace, 'bad')}:inflight"
        await fleet.raw.set(poison, "not a hash")
        w.failure("server_error")
        store.add_probe("bad", probe(T0, ok=False))
        await store.sync()
        assert store.shared().state == "stale"
        assert len(store._deps["bad"].unacked) == 1
        clock.now += 20.0
        await store.sync()
        assert len(store._deps["bad"].unacked) == 1  # still inside the window: kept
        clock.now += 10.0
        await store.sync()
        assert store._deps["bad"].unacked == []
        await fleet.raw.delete(poison)
        await store.sync()
        assert store.shared().state == "fresh"
        tag = key_tag(fleet.namespace, "bad")
        assert [k for k in await fleet.keys() if ":b:" in k or k.endswith(":probes")] == []
        assert not await fleet.raw.exists(f"{tag}:seq:{store.replica}")

    run(open_redis_fleet, body)


def test_braces_are_refused_in_names_and_namespaces() -> None:
    """The hash tag needs brace-free names: a namespace or deployment with one is refused."""
    with pytest.raises(ValueError, match="namespace"):
        RedisStore("redis://127.0.0.1:6379/0", namespace="a{b")
    store = RedisStore("redis://127.0.0.1:6379/0", client=fakeredis.aioredis.FakeRedis())
    with pytest.raises(ValueError, match="braces"):
        store.window("x}y")


def _password_free(store: RedisStore, logs: Sequence[object], password: str) -> None:
    shown = [repr(store), str(store.shared()), repr(logs), store.shared().error or ""]
    assert not [text for text in shown if password in text]


def test_the_url_password_is_never_shown_when_redis_is_unreachable() -> None:
    """repr, shared() and the stale log name the error class, never the URL's password."""

    async def main() -> None:
        password = "s3cret-pw-1"
        store = RedisStore(f"redis://user:{password}@127.0.0.1:{free_port()}/0", timeout=0.2)
        with capture_logs() as logs:
            await store.sync()
            await store.sync()
            await store.close()
        status = store.shared()
        assert status.state == "stale"
        assert status.error is not None and status.error.startswith("ConnectionError")
        stale = [e for e in logs if e["event"] == "shared metrics stale"]
        assert len(stale) == 1  # once per transition, not once per try
        assert stale[0]["error_class"] == "ConnectionError"
        _password_free(store, logs, password)

    asyncio.run(main())


def test_the_url_password_is_never_shown_when_redis_refuses_it() -> None:
    """A password the real Redis rejects shows up as an error class and message, not the URL."""
    url = require_redis()
    host = url.split("://", 1)[1].rsplit("@", 1)[-1]

    async def main() -> None:
        password = "s3cret-pw-2"
        store = RedisStore(f"redis://nobody:{password}@{host}", timeout=0.5)
        with capture_logs() as logs:
            await store.sync()
            await store.close()
        assert store.shared().state == "stale"
        assert [e["error_class"] for e in logs if e["event"] == "shared metrics stale"]
        _password_free(store, logs, password)

    asyncio.run(main())


def trip_key(fleet: Fleet, name: str = "d") -> str:
    return f"{key_tag(fleet.namespace, name)}:trip"


def test_a_trip_ends_by_its_until_and_one_already_over_is_never_written(
    open_redis_fleet: OpenFleet,
) -> None:
    """The trip key expires at ``until`` (PX), readers drop a trip whose ``until`` passed, and a
    trip over before its flush is not sent at all."""

    async def body(fleet: Fleet) -> None:
        clock = FakeClock()
        a, b = fleet.store(clock=clock, replica="a"), fleet.store(clock=clock, replica="b")
        a.window("d")
        b.window("d")
        a.publish_trip("d", T0 + 0.3, "short")
        await a.sync()
        await b.sync()
        assert b.remote_trips() == {"d": (T0 + 0.3, "short", "a")}
        await asyncio.sleep(0.4)  # real time: the key's PX of 300 ms runs out
        await b.sync()
        assert not await fleet.raw.exists(trip_key(fleet))
        assert b.remote_trips() == {}
        a.publish_trip("d", T0 + 10.0, "long")
        await a.sync()
        await b.sync()
        assert b.remote_trips() == {"d": (T0 + 10.0, "long", "a")}
        clock.now = T0 + 10.0  # over by the reader's clock, before the key expires
        assert b.remote_trips() == {}
        a.publish_trip("d", T0 + 5.0, "already over")  # ignored at once
        a.publish_trip("d", T0 + 11.0, "over by the flush")
        clock.now = T0 + 12.0
        await fleet.raw.delete(trip_key(fleet))
        await a.sync()
        assert not await fleet.raw.exists(trip_key(fleet))
        assert a._deps["d"].trip is None  # dropped, not kept for later flushes

    run(open_redis_fleet, body)


def test_the_latest_until_wins_and_an_earlier_trip_does_not_overwrite_it(
    open_redis_fleet: OpenFleet,
) -> None:
    """The trip key keeps the trip that lasts longest, whoever publishes and in whatever order;
    of two trips queued before one flush, the later ``until`` is sent."""

    async def body(fleet: Fleet) -> None:
        clock = FakeClock()
        a, b = fleet.store(clock=clock, replica="a"), fleet.store(clock=clock, replica="b")
        a.window("d")
        b.window("d")
        a.publish_trip("d", T0 + 10.0, "a first")
        a.publish_trip("d", T0 + 8.0, "a shorter, same flush")
        await a.sync()
        b.publish_trip("d", T0 + 5.0, "b earlier")
        await b.sync()
        assert b.remote_trips() == {"d": (T0 + 10.0, "a first", "a")}
        assert (await fleet.raw.get(trip_key(fleet))).endswith("|a|a first")
        b.publish_trip("d", T0 + 20.0, "b later")
        await b.sync()
        await a.sync()
        assert a.remote_trips() == {"d": (T0 + 20.0, "b later", "b")}
        assert b.remote_trips() == {}  # its own trip now
        a.publish_trip("d", T0 + 20.0, "a, same until")  # not later: b's stays
        await a.sync()
        assert a.remote_trips() == {"d": (T0 + 20.0, "b later", "b")}
        assert 15_000 < await fleet.raw.pttl(trip_key(fleet)) <= 20_000

    run(open_redis_fleet, body)


def test_a_trip_rides_in_the_same_single_round_trip(open_redis_fleet: OpenFleet) -> None:
    """Publishing trips adds no round trip: a sync stays one pipeline of one call per deployment."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store(clock=FakeClock(), replica="a")
        for name in ("a", "b", "c"):
            store.window(name)
        await store.sync()  # the first one also loads the script
        for name in ("a", "b"):
            store.publish_trip(name, T0 + 30.0, "5 consecutive failures")
        before = store.commands_sent
        await store.sync()
        assert store.commands_sent - before == 1
        assert [await fleet.raw.exists(trip_key(fleet, n)) for n in ("a", "b", "c")] == [1, 1, 0]

    run(open_redis_fleet, body)


def test_trips_survive_a_stale_spell_on_both_sides(open_redis_fleet: OpenFleet) -> None:
    """Cut off from Redis, a replica keeps the remote trips it knew until they end, and a trip
    it publishes meanwhile is delivered once Redis answers again."""

    async def body(fleet: Fleet) -> None:
        clock = FakeClock()
        a = fleet.store(clock=clock, replica="a")
        b, flaky = flaky_store(fleet, clock=clock, replica="b")
        a.window("d")
        b.window("d")
        a.publish_trip("d", T0 + 10.0, "a tripped")
        await a.sync()
        await b.sync()
        flaky.down = True
        b.publish_trip("d", T0 + 30.0, "b tripped while cut off")
        await b.sync()
        await b.sync()
        assert b.shared().state == "stale"
        assert b.remote_trips() == {"d": (T0 + 10.0, "a tripped", "a")}
        clock.now = T0 + 10.0
        assert b.remote_trips() == {}
        flaky.down = False
        await b.sync()
        await a.sync()
        assert b.shared().state == "fresh"
        assert a.remote_trips() == {"d": (T0 + 30.0, "b tripped while cut off", "b")}

    run(open_redis_fleet, body)


def test_a_trip_published_during_an_exchange_goes_with_the_next_one(
    open_redis_fleet: OpenFleet,
) -> None:
    """A trip queued while a flush is on the wire is not forgotten when that flush succeeds."""

    async def body(fleet: Fleet) -> None:
        b, flaky = flaky_store(fleet, clock=FakeClock(), replica="b")
        b.window("d")
        b.publish_trip("d", T0 + 10.0, "first")

        def meanwhile() -> None:
            flaky.before = None
            b.publish_trip("d", T0 + 20.0, "second")

        flaky.before = meanwhile
        await b.sync()
        assert (await fleet.raw.get(trip_key(fleet))).endswith("|b|first")
        await b.sync()
        assert (await fleet.raw.get(trip_key(fleet))).endswith("|b|second")

    run(open_redis_fleet, body)


def test_a_foreign_trip_key_fails_its_deployment_before_anything_is_written(
    open_redis_fleet: OpenFleet,
) -> None:
    """A trip key of the wrong type is refused like any foreign key: nothing of the call applies
    until it is gone, then the records and the trip arrive once."""

    async def body(fleet: Fleet) -> None:
        store = fleet.store(clock=FakeClock(), replica="r")
        store.window("d").failure("server_error")
        store.publish_trip("d", T0 + 30.0, "tripped")
        await fleet.raw.hset(trip_key(fleet), "not", "a string")
        await store.sync()
        assert store.shared().state == "stale"
        assert store.shared().error is not None and "WRONGTYPE" in store.shared().error
        assert await requests_in_redis(fleet, "d") == 0
        await fleet.raw.delete(trip_key(fleet))
        await store.sync()
        assert store.shared().state == "fresh"
        assert await requests_in_redis(fleet, "d") == 1
        assert (await fleet.raw.get(trip_key(fleet))).endswith("|r|tripped")

    run(open_redis_fleet, body)


def test_a_replica_id_with_the_trip_separator_is_refused() -> None:
    """Replica ids are a field of the trip value, so one holding '|' is refused."""
    with pytest.raises(ValueError, match="replica"):
        RedisStore("redis://127.0.0.1:6379/0", replica="a|b")
