"""health.probes.Prober: one probe now, the background loop, and status driven by probes."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from health.monitor import HealthMonitor, status_settings
from health.probes import Prober, ProbeSettings, describe
from health.store import MemoryStore, ProbeResult

NOW = 1_000_000.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Deployment:
    """A simulated deployment whose probe (think ``GET /models``) answers while it is up."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    async def probe(self) -> float:
        self.calls += 1
        if not self.up:
            raise ConnectionRefusedError("connection refused")
        return 0.01


class NoLeaseStore(MemoryStore):
    """A store where another replica always holds the probe lease."""

    def __init__(self) -> None:
        super().__init__()
        self.leases: list[tuple[str, float]] = []

    async def probe_lease(self, name: str, ttl: float) -> bool:
        self.leases.append((name, ttl))
        return False


SETTINGS = ProbeSettings(interval=10.0, timeout=1.0, healthy_threshold=2, unhealthy_threshold=3)


def others() -> set[asyncio.Task[object]]:
    """Tasks of the running loop other than the current one."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


def test_deployment_that_goes_down_and_comes_back() -> None:
    """Probes walk a deployment healthy → degraded → ejected → recovering → healthy."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    seen: list[tuple[str, ProbeResult]] = []
    prober = Prober(store, clock=clock, on_result=lambda name, r: seen.append((name, r)))
    dep = Deployment()
    prober.add("a", SETTINGS, dep.probe)
    monitor = HealthMonitor(store, prober, {"a": status_settings(SETTINGS)})
    assert monitor.status("a").state == "healthy"

    async def step(is_up: bool) -> tuple[ProbeResult, str, str]:
        dep.up = is_up
        clock.now += SETTINGS.interval
        result = await prober.probe("a")
        status = monitor.status("a")
        return result, status.state, status.reason

    async def run() -> list[tuple[ProbeResult, str, str]]:
        return [await step(is_up) for is_up in (True, False, False, False, True, True)]

    steps = asyncio.run(run())
    states = [(state, reason) for _, state, reason in steps]
    assert states == [
        ("healthy", "no requests in the last 60 s; last probe ok"),
        ("degraded", "last probe failed: connection refused"),
        ("degraded", "last probe failed: connection refused"),
        ("ejected", "3 probes failed: connection refused"),
        ("ejected", "recovering: 1 of 2 probes passed after 3 failed (connection refused)"),
        ("healthy", "no requests in the last 60 s; last probe ok"),
    ]
    results = [r for r, _, _ in steps]
    assert results[0] == ProbeResult(NOW + 10, True, 0.01, "ok", "local")
    assert results[1] == ProbeResult(NOW + 20, False, None, "connection refused", "local")
    history = store.probes("a")
    assert history == tuple(reversed(results))  # newest first
    assert [p.at for p in history] == sorted((p.at for p in history), reverse=True)
    assert prober.outcomes == {"a": {"ok": 3, "failed": 3}}
    assert seen == [("a", r) for r in results]
    assert dep.calls == 6


def test_probe_that_never_answers_fails_on_timeout() -> None:
    """A probe past its timeout is a failed probe that says how long it waited."""
    store = MemoryStore()
    prober = Prober(store)

    async def hang() -> float:
        await asyncio.Event().wait()
        return 0.0

    prober.add("slow", ProbeSettings(timeout=0.05), hang)
    started = time.monotonic()
    result = asyncio.run(prober.probe("slow"))
    assert time.monotonic() - started < 5
    assert not result.ok
    assert result.latency is None
    assert result.detail == "no answer within 0.05 s"
    assert store.probes("slow") == (result,)
    assert prober.outcomes["slow"] == {"ok": 0, "failed": 1}


def test_timeout_raised_by_the_probe_keeps_its_own_message() -> None:
    """A TimeoutError the probe raises itself is reported as it is, not as our deadline."""
    prober = Prober(MemoryStore())

    async def own_timeout() -> float:
        raise TimeoutError("connect timeout to api.example.com")

    prober.add("a", ProbeSettings(timeout=5.0), own_timeout)
    result = asyncio.run(prober.probe("a"))
    assert not result.ok
    assert result.detail == "connect timeout to api.example.com"


def test_unexpected_exception_is_a_failed_probe() -> None:
    """Any exception from the probe is recorded as a failure; the probe call does not raise."""
    prober = Prober(MemoryStore())

    async def broken() -> float:
        table: dict[str, float] = {}
        return table["missing"]  # a bug in the probe itself

    async def silent() -> float:
        raise ValueError

    prober.add("broken", SETTINGS, broken)
    prober.add("silent", SETTINGS, silent)

    async def run() -> tuple[ProbeResult, ProbeResult]:
        return await prober.probe("broken"), await prober.probe("silent")

    broken_result, silent_result = asyncio.run(run())
    assert not broken_result.ok
    assert broken_result.detail == "'missing'"
    assert not silent_result.ok
    assert silent_result.detail == "ValueError"  # no message: the type names it
    assert prober.outcomes == {
        "broken": {"ok": 0, "failed": 1},
        "silent": {"ok": 0, "failed": 1},
    }


def test_kind_none_is_not_probed() -> None:
    """A deployment with probe kind ``none`` gets no settings, no counters and no task."""
    dep = Deployment()
    prober = Prober(MemoryStore())
    prober.add("quiet", ProbeSettings(kind="none", interval=0.01), dep.probe)
    assert prober.settings("quiet") is None
    assert prober.outcomes == {}

    async def run() -> int:
        await prober.start()
        running = len(others())
        await asyncio.sleep(0.05)
        await prober.close()
        return running

    assert asyncio.run(run()) == 0
    assert dep.calls == 0


def test_background_loop_probes_on_its_interval_and_closes_cleanly() -> None:
    """start() probes every interval (with jitter); close() stops it and leaves no task."""
    store = MemoryStore()
    dep = Deployment()
    prober = Prober(store, rng=random.Random(7))
    prober.add("a", ProbeSettings(interval=0.05, jitter=0.5, timeout=1.0), dep.probe)

    async def run() -> tuple[int, int]:
        await prober.start()
        await asyncio.sleep(0.5)
        await prober.close()
        leftover = len(others())
        calls = dep.calls
        await asyncio.sleep(0.1)
        return leftover, calls

    leftover, calls_at_close = asyncio.run(run())
    assert leftover == 0
    assert calls_at_close >= 3  # ~9 expected; the bound only says "several"
    assert dep.calls == calls_at_close  # nothing ran after close()
    assert len(store.probes("a")) == calls_at_close
    assert prober.outcomes["a"] == {"ok": calls_at_close, "failed": 0}


def test_loop_survives_a_failing_result_hook() -> None:
    """An exception from on_result is logged and the loop keeps probing."""
    dep = Deployment()

    def explode(name: str, result: ProbeResult) -> None:
        raise RuntimeError("listener bug")

    prober = Prober(MemoryStore(), rng=random.Random(3), on_result=explode)
    prober.add("a", ProbeSettings(interval=0.03, jitter=0.0, timeout=1.0), dep.probe)

    async def run() -> None:
        await prober.start()
        await asyncio.sleep(0.3)
        await prober.close()

    asyncio.run(run())
    assert dep.calls >= 2


def test_no_probe_runs_without_the_lease() -> None:
    """When another replica holds the lease, this one asks for it but never probes."""
    store = NoLeaseStore()
    dep = Deployment()
    prober = Prober(store, rng=random.Random(1))
    prober.add("a", ProbeSettings(interval=0.05, jitter=0.2, timeout=1.0), dep.probe)

    async def run() -> None:
        await prober.start()
        await asyncio.sleep(0.3)
        await prober.close()

    asyncio.run(run())
    assert len(store.leases) >= 2
    # the lease ends before the holder's next turn, however the jitter falls
    assert all(lease == ("a", pytest.approx(0.05 * 0.8 * 0.9)) for lease in store.leases)
    assert dep.calls == 0
    assert store.probes("a") == ()
    assert prober.outcomes["a"] == {"ok": 0, "failed": 0}


def test_describe_truncates_long_messages_to_one_line() -> None:
    """Probe details are one line of at most 240 characters, ending in an ellipsis if cut."""
    long = describe(RuntimeError("x" * 1000))
    assert len(long) == 240
    assert long.endswith("…")
    assert long[:-1] == "x" * 239
    assert describe(RuntimeError("y" * 240)) == "y" * 240
    assert describe(RuntimeError("  HTTP 502\n  bad gateway\n")) == "HTTP 502 bad gateway"
    assert describe(ConnectionResetError()) == "ConnectionResetError"


def test_long_probe_error_is_stored_truncated() -> None:
    """A probe failing with a huge message stores the truncated detail."""
    prober = Prober(MemoryStore())

    async def verbose() -> float:
        raise RuntimeError("upstream said: " + "z" * 5000)

    prober.add("a", SETTINGS, verbose)
    result = asyncio.run(prober.probe("a"))
    assert len(result.detail) == 240
    assert result.detail.startswith("upstream said: zzz")


def test_a_lone_replica_never_loses_its_own_turn_to_its_own_lease() -> None:
    """With a Redis-like lease (SET NX PX), a single replica probes on every turn: its lease
    has always expired when its next (jittered) turn comes."""

    class LeaseStore(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.held_until = 0.0
            self.denied = 0

        async def probe_lease(self, name: str, ttl: float) -> bool:
            now = time.monotonic()
            if now < self.held_until:
                self.denied += 1
                return False
            self.held_until = now + ttl
            return True

    store = LeaseStore()
    dep = Deployment()
    prober = Prober(store, rng=random.Random(7))
    prober.add("a", ProbeSettings(interval=0.04, jitter=0.25, timeout=1.0), dep.probe)

    async def run() -> None:
        await prober.start()
        await asyncio.sleep(0.6)
        await prober.close()

    asyncio.run(run())
    assert dep.calls >= 5
    assert store.denied == 0
