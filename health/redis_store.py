"""The fleet-wide metrics store: memory on the hot path, Redis in the background.

A request never waits on Redis: it records into this process's
:class:`~health.window.RollingWindow` (``track_pending=True``), exactly as in memory mode. A
background loop exchanges with Redis every ``flush_interval``:

1. **Cut a batch** per deployment: take the window's pending deltas (bucket index → vector) and
   the probe results queued since the last flush, and give them a sequence number (``seq``,
   increasing for this process, seeded from the wall clock in µs so a restarted replica with the
   same id starts above its old numbers). Batches stay *unacknowledged* until Redis confirms them;
   a batch cut more than a window ago is dropped whole (its deltas are out of the window, and
   its ``seq`` guard below may have expired), so unacknowledged batches stay bounded. A breaker
   trip published by :meth:`RedisStore.publish_trip` waits beside the batches (one per
   deployment: the latest ``until`` wins) and is sent with every call until one succeeds, or
   until its ``until`` has passed.
2. **One pipeline** (``transaction=False``) holding one ``EVALSHA`` of :data:`SCRIPT` per
   deployment. The script, atomically for that deployment: refuses to touch a key of the wrong
   type (a foreign key under our prefix) before writing anything; stores the highest sent
   ``seq`` for this replica, *then* applies every sent batch whose ``seq`` is above the one
   stored before (``HINCRBYFLOAT`` of the non-zero fields into the bucket hashes, ``LPUSH`` +
   ``LTRIM`` of the probes), so an error half-way can lose part of a batch but never applies it
   twice; writes the trip, if one was sent, only when its ``until`` is later than the one the
   trip key holds (a replay, or an earlier trip, changes nothing); refreshes the expiry of what
   it wrote; sets this replica's in-flight gauge stamped with Redis's own ``TIME``; drops gauges
   older than a few flush intervals by that same clock; and returns the live window's bucket
   hashes, the other replicas' in-flight sum, the probe list and the trip key's value. Round
   trips per flush: one, whatever the request rate or the trips (Redis commands per second:
   D / flush_interval script calls for D deployments).
3. **Acknowledge**, per deployment: one whose call returned drops its batches, keeps the pulled
   view, and takes the pulled probe list (plus its own probes not yet sent) as its probe
   history, forgets the trip it sent (unless a later one was published meanwhile) and keeps the
   pulled trip if another replica published it. One whose call failed keeps its batches (and
   its trip) and sends them again, all of them, with the next flush; any failure marks the
   store stale, with an error that names the deployment(s), but never holds back the others'
   acknowledgements. The ``seq`` check makes that exactly-once: a call that timed out may still
   run later (a hung Redis resumes and executes what it had buffered) and the retry then skips
   what it applied, or the late call skips what the retry applied.
4. **Read** (:meth:`RedisStore.stats`, :meth:`RedisStore.probes`): while fresh, the pulled
   buckets still inside the window plus this replica's deltas not yet in them; in-flight is the
   others' fresh gauges plus the local one; EWMAs are local. While stale (the last sync failed,
   or is older than ``max(1 s, 4 * flush_interval)``), the local window alone: the gateway keeps
   routing on what it saw itself and says so in :meth:`RedisStore.shared`. Probes are always
   the local history: the last fleet view, newest first, with this replica's later probes on
   top, so stale mode carries on from what the fleet last knew. A name never registered through
   :meth:`RedisStore.window` (or a probe, or a trip) reads as empty and stays unregistered.
   :meth:`RedisStore.remote_trips` lists the other replicas' trips of the last successful pull
   of each deployment whose ``until`` is still ahead of this replica's clock, fresh or stale (a
   stale one ends by its own ``until``). A trip reaches the other replicas within two flush
   intervals (this replica's next flush, then theirs): 0.5 s at the default cadence.

Keys (one prefix, :data:`KEY_PREFIX`; every key of a deployment shares the hash tag
``{namespace:deployment}`` so one script call touches one Redis Cluster slot)::

    llmgw:{ns:dep}:b:<bucket index>  hash field index → value; expires window + 2 buckets after
                                     its last write
    llmgw:{ns:dep}:seq:<replica>     string: the last batch seq applied for that replica; set
                                     with the same expiry by that replica's own writes only, so
                                     a replica gone (ids are random per process) leaves no trace
                                     after window + 2 buckets; that outlives any batch it could
                                     still send again (step 1)
    llmgw:{ns:dep}:inflight          hash replica → "count:redis_ms:order" (``order`` increases
                                     per exchange so a late call cannot undo a newer gauge);
                                     entries older than the staleness age by Redis's clock are
                                     deleted by readers, the key expires 2x that age after a write
    llmgw:{ns:dep}:probes            list of ProbeResult JSON, newest first, PROBE_HISTORY long,
                                     expires PROBE_TTL after the last push
    llmgw:{ns:dep}:lease             SET NX PX: the replica that probes next
    llmgw:{ns:dep}:trip              string "until_ms|replica|reason": the breaker trip that
                                     lasts longest (wall-clock ms), set with PX = until - now
                                     by the publisher's clock, so it vanishes when it is over

When Redis restarts, what it held is gone: the fleet view starts again from what replicas flush
afterwards (their local windows still hold their own history, and deltas that failed to flush
while Redis was away are delivered on reconnect, if still inside the window). Replicas of a
fleet must share the window settings and keep their wall clocks in step, because bucket indexes
are ``wall clock // width``; in-flight gauges depend on Redis's clock only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import socket
import time
from collections import deque
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import structlog
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from health.redis_ledger import Ledger, PulledView, Trip, as_text
from health.redis_script import KEY_PREFIX, SCRIPT, key_tag
from health.store import PROBE_HISTORY, ProbeResult, SharedStatus, WindowSettings
from health.window import SIZE, Clock, RollingWindow, WindowStats, add_into, empty, summarise

__all__ = ["KEY_PREFIX", "SCRIPT", "RedisStore", "key_tag"]

DEFAULT_NAMESPACE = "default"
DEFAULT_FLUSH_INTERVAL = 0.25  # seconds between exchanges with Redis
DEFAULT_TIMEOUT = 0.5  # seconds: connect, answer, and one whole exchange
MAX_BACKOFF = 2.0  # seconds between tries while Redis is down
STALE_AFTER_FLUSHES = 4  # a view older than this many flush intervals (and 1 s) is stale
MIN_STALE_AFTER = 1.0
PROBE_TTL = 3600.0  # seconds a probe history outlives its last push
MAX_REASON = 200  # characters of a trip's reason kept in Redis

log = structlog.get_logger("health.redis")


class RedisStore:
    """Metrics shared by a fleet through Redis; see the module docstring for the algorithm.

    ``client`` may be injected (e.g. ``fakeredis.aioredis.FakeRedis``); the caller then keeps
    ownership and closes it. Otherwise a client is built from ``url`` (which may carry a
    password: it is never kept in a repr, a log or an error message) and closed by :meth:`close`.
    ``replica`` (random per process by default) must not contain ``|``, the trip key's separator.
    """

    def __init__(
        self,
        url: str,
        settings: WindowSettings | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Clock = time.time,
        replica: str | None = None,
        client: Redis | None = None,
    ) -> None:
        if not namespace or "{" in namespace or "}" in namespace:
            raise ValueError("the Redis namespace must be non-empty and hold no braces")
        if flush_interval <= 0 or timeout <= 0:
            raise ValueError("flush_interval and timeout must be positive")
        if replica and "|" in replica:
            raise ValueError("the replica id must hold no '|'")
        self.settings = settings or WindowSettings()
        self.namespace = namespace
        host = socket.gethostname().replace("|", "-")
        self.replica = replica or f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.stale_after = max(MIN_STALE_AFTER, STALE_AFTER_FLUSHES * flush_interval)
        self.commands_sent = 0  # round trips to Redis (pipelines, script loads, pings, leases)
        self.duplicates_skipped = 0  # batches Redis had already applied (late replays)
        self._clock = clock
        self._secrets = _secrets_of(url)
        self._owns_client = client is None
        self._client: Redis = client or Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # the loop retries; a call must stay bounded
        )
        self._script = self._client.register_script(SCRIPT)
        self._deps: dict[str, Ledger] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._seq = 0
        self._last_ok: float | None = None  # monotonic time of the last successful sync
        self._error: str | None = "not synced yet"
        self._logged: tuple[str, ...] | None = None  # the state last logged (and why)

    def __repr__(self) -> str:
        return (
            f"RedisStore(namespace={self.namespace!r}, replica={self.replica!r}, "
            f"state={self.shared().state!r})"
        )

    # -- the MetricsStore protocol ------------------------------------------------------------

    def window(self, name: str) -> RollingWindow:
        return self._dep(name).window

    def names(self) -> list[str]:
        return list(self._deps)

    def stats(self, name: str) -> WindowStats:
        dep = self._deps.get(name)
        if dep is None:  # never registered: empty, and it stays out of every flush
            return summarise(empty(), self.settings.seconds)
        window = dep.window
        if not self._fresh():
            return window.stats()
        dep.stage()
        now_idx = window.index()
        oldest = now_idx - window.buckets
        total = dep.unsent(oldest, now_idx)
        others = 0
        if dep.view is not None:
            add_into(total, dep.view.merged(now_idx, window.buckets))
            others = dep.view.others_inflight
        return summarise(
            total,
            window.window_seconds,
            inflight=window.inflight + others,
            latency_ewma=window.latency_ewma,
            ttft_ewma=window.ttft_ewma,
        )

    def add_probe(self, name: str, result: ProbeResult) -> None:
        dep = self._dep(name)
        dep.history.appendleft(result)
        dep.queued.append(result)
        del dep.queued[:-PROBE_HISTORY]

    def probes(self, name: str) -> tuple[ProbeResult, ...]:
        """The last fleet view with this replica's later probes on top, fresh or stale."""
        dep = self._deps.get(name)
        return () if dep is None else tuple(dep.history)

    async def probe_lease(self, name: str, ttl: float) -> bool:
        """SET NX PX on the lease key; any Redis trouble answers True (each replica probes)."""
        key = f"{key_tag(self.namespace, name)}:lease"
        try:
            async with asyncio.timeout(self.timeout):
                self.commands_sent += 1
                got = await self._client.set(
                    key, self.replica, nx=True, px=max(1, round(ttl * 1000))
                )
        except Exception:
            return True
        return bool(got)

    def publish_trip(self, name: str, until: float, reason: str) -> None:
        """Queue this replica's trip of ``name`` (open until wall-clock ``until``) for the next
        flush; never awaits. A trip already over (or a non-finite ``until``) is ignored."""
        if not math.isfinite(until) or until <= self._clock():
            return
        self._dep(name).queue_trip(Trip(round(until * 1000), self.replica, reason[:MAX_REASON]))

    def remote_trips(self) -> dict[str, tuple[float, str, str]]:
        """name → (until, reason, replica) of the other replicas' trips still in force, as last
        pulled (kept while stale, each until its own ``until``)."""
        now = self._clock()
        return {
            name: (trip.until, trip.reason, trip.replica)
            for name, dep in self._deps.items()
            if (trip := dep.remote) is not None and trip.until > now
        }

    def shared(self) -> SharedStatus:
        age = None if self._last_ok is None else time.monotonic() - self._last_ok
        if self._fresh():
            return SharedStatus("redis", "fresh", age)
        error = self._error or f"no sync for {age:.1f} s"
        return SharedStatus("redis", "stale", age, error)

    async def sync(self) -> None:
        """One flush + pull now (bounded by ``timeout`` once it holds the lock). Never raises."""
        await self._sync()

    async def start(self) -> None:
        """Start the background loop and return at once (Redis may well be down)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="health.redis flush")

    async def close(self) -> None:
        """Stop the loop, flush once more (best effort, bounded) and close an owned client."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._sync()
        if self._owns_client:
            await self._client.aclose()

    # -- the exchange -------------------------------------------------------------------------

    def _dep(self, name: str) -> Ledger:
        dep = self._deps.get(name)
        if dep is None:
            if "{" in name or "}" in name:
                raise ValueError(f"deployment name {name!r} must not contain braces")
            s = self.settings
            window = RollingWindow(
                buckets=s.buckets, width=s.width, alpha=s.alpha, clock=self._clock,
                track_pending=True,
            )  # fmt: skip
            dep = self._deps[name] = Ledger(window, deque(maxlen=PROBE_HISTORY))
        return dep

    def _fresh(self) -> bool:
        return (
            self._error is None
            and self._last_ok is not None
            and time.monotonic() - self._last_ok <= self.stale_after
        )

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, time.time_ns() // 1000)
        return self._seq

    async def _run(self) -> None:
        """Exchange on a fixed cadence (every ``flush_interval`` from the start of the last
        exchange, so Redis sees D / flush_interval calls); back off up to MAX_BACKOFF while
        Redis is away."""
        delay = self.flush_interval
        while True:
            started = time.monotonic()
            try:
                ok = await self._sync()
            except Exception:  # _sync never raises; belt and braces for the loop's sake
                ok = False
            delay = self.flush_interval if ok else min(MAX_BACKOFF, delay * 2)
            await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))

    async def _sync(self) -> bool:
        async with self._lock:
            try:
                await self._exchange()
            except Exception as exc:
                self._failed(exc)
                return False
            self._succeeded()
            return True

    def _succeeded(self) -> None:
        self._last_ok = time.monotonic()
        self._error = None
        if self._logged != ("fresh",):
            self._logged = ("fresh",)
            log.info(
                "shared metrics fresh",
                namespace=self.namespace,
                replica=self.replica,
                deployments=len(self._deps),
            )

    def _failed(self, exc: Exception) -> None:
        cause, names = (exc.cause, exc.names) if isinstance(exc, _CallsFailed) else (exc, ())
        message = str(exc) or f"no answer within {self.timeout:g} s"
        for secret in self._secrets:
            message = message.replace(secret, "***")
        error_class = type(cause).__name__
        self._error = f"{error_class}: {message}"
        if self._logged != ("stale", *names):
            self._logged = ("stale", *names)
            extra = {"deployments": list(names)} if names else {}
            log.warning(
                "shared metrics stale",
                namespace=self.namespace,
                replica=self.replica,
                error_class=error_class,
                error=message,
                **extra,
            )

    async def _exchange(self) -> None:
        now = self._clock()
        order = str(self._next_seq())  # orders this exchange's in-flight gauges after earlier ones
        calls: dict[str, _Call] = {}
        for name, dep in self._deps.items():
            now_idx = dep.window.index(now)
            dep.cut(self._next_seq, now_idx)
            calls[name] = self._call(name, dep, now_idx, order, now)
        async with asyncio.timeout(self.timeout):
            if not calls:
                self.commands_sent += 1
                await self._client.ping()
                return
            results = await self._pipeline(calls)
            missing = [n for n, r in results.items() if isinstance(r, NoScriptError)]
            if missing:  # Redis restarted or flushed its scripts: load once, send those again
                self.commands_sent += 1
                await self._client.script_load(SCRIPT)
                results.update(await self._pipeline({n: calls[n] for n in missing}))
        failed: dict[str, Exception] = {}
        for name, result in results.items():
            if isinstance(result, Exception):
                failed[name] = result  # its batches stay unacknowledged; the others go on
            else:
                self._accept(self._deps[name], calls[name], result)
        if failed:
            raise _CallsFailed(failed)

    def _call(self, name: str, dep: Ledger, now_idx: int, order: str, now: float) -> _Call:
        """KEYS, ARGV, the bucket indexes read back and the trip sent, for one deployment's
        script call. A queued trip that is over by now is dropped instead of sent."""
        tag = key_tag(self.namespace, name)
        window = dep.window
        read = list(range(now_idx - window.buckets + 1, now_idx + 1))
        keys = [f"{tag}:seq:{self.replica}", f"{tag}:inflight", f"{tag}:probes", f"{tag}:trip"]
        keys += [f"{tag}:b:{i}" for i in read]
        position = {i: 5 + j for j, i in enumerate(read)}  # Lua's KEYS are 1-based
        trip, trip_ttl = dep.trip, 0
        if trip is not None:
            trip_ttl = trip.until_ms - round(now * 1000)
            if trip_ttl <= 0:
                trip = dep.trip = None
        bucket_ttl = round((window.window_seconds + 2 * window.width) * 1000)
        max_age = round(self.stale_after * 1000)
        args = [
            self.replica,
            str(window.inflight),
            order,
            str(max_age),
            str(bucket_ttl),
            str(2 * max_age),
            str(round(PROBE_TTL * 1000)),
            str(PROBE_HISTORY),
            str(len(read)),
            str(max((b.seq for b in dep.unacked), default=0)),
            str(len(dep.unacked)),
            "" if trip is None else trip.value(),
            "0" if trip is None else str(trip.until_ms),
            str(trip_ttl),
        ]
        for batch in dep.unacked:
            args += [str(batch.seq), str(len(batch.probes))]
            args += [json.dumps(p.to_dict()) for p in batch.probes]
            args.append(str(len(batch.deltas)))
            for idx, vec in batch.deltas.items():
                k = position.get(idx)
                if k is None:  # a bucket ahead of the clock (it went back): write, don't read
                    keys.append(f"{tag}:b:{idx}")
                    k = position[idx] = len(keys)
                fields = [(i, v) for i, v in enumerate(vec) if v]
                args += [str(k), str(len(fields))]
                for i, v in fields:
                    args += [str(i), repr(v)]
        return _Call(keys, args, read, trip)

    async def _pipeline(self, calls: dict[str, _Call]) -> dict[str, Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in calls.values():
            pipe.evalsha(self._script.sha, len(call.keys), *call.keys, *call.args)
        self.commands_sent += 1
        results = await pipe.execute(raise_on_error=False)
        return dict(zip(calls, results, strict=True))

    def _accept(self, dep: Ledger, call: _Call, result: Any) -> None:
        """Keep what one script call pulled; its batches (and trip) are now in Redis. The pulled
        probe list, with the probes queued meanwhile on top, becomes the local history; the
        pulled trip is kept when another replica published it."""
        raw_buckets, others, raw_probes, _applied, skipped, raw_trip = result
        buckets: dict[int, list[float]] = {}
        for idx, flat in zip(call.read, raw_buckets, strict=True):
            if not flat:
                continue
            vec = buckets[idx] = empty()
            for j in range(0, len(flat) - 1, 2):
                i = int(flat[j])
                if 0 <= i < SIZE:  # a replica with another layout writes fields we ignore
                    vec[i] = float(flat[j + 1])
        probes: list[ProbeResult] = []
        for raw in raw_probes:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                probes.append(ProbeResult.from_dict(json.loads(as_text(raw))))
        dep.unacked = []
        dep.view = PulledView(buckets, int(others))
        dep.history = deque([*reversed(dep.queued), *probes][:PROBE_HISTORY], maxlen=PROBE_HISTORY)
        self.duplicates_skipped += int(skipped)
        if call.trip is not None and dep.trip is call.trip:  # not replaced by a later one since
            dep.trip = None
        pulled = Trip.parse(raw_trip)
        dep.remote = pulled if pulled is not None and pulled.replica != self.replica else None


class _Call(NamedTuple):
    """One deployment's script call: what is sent and what its answer is read against."""

    keys: list[str]
    args: list[str]
    read: list[int]  # bucket indexes of the first ``len(read)`` bucket keys, in order
    trip: Trip | None  # the trip it publishes


class _CallsFailed(Exception):
    """Script calls that failed for some deployments (the others' results were accepted)."""

    def __init__(self, failed: dict[str, Exception]) -> None:
        self.names = tuple(failed)
        self.cause = failed[self.names[0]]
        label = "deployment" if len(self.names) == 1 else "deployments"
        named = ", ".join(repr(n) for n in self.names)
        super().__init__(f"{label} {named}: {self.cause}")


def _secrets_of(url: str) -> tuple[str, ...]:
    """Parts of ``url`` that must never be shown: the URL itself and its password."""
    found = {url}
    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
        if password:
            found.update((password, unquote(password)))
    return tuple(sorted(found, key=len, reverse=True))
