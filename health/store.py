"""Where deployment metrics live: one protocol, an in-memory store, and the shared-state report.

The request hot path writes to a :class:`~health.window.RollingWindow` it got once from
:meth:`MetricsStore.window` (plain attribute arithmetic, no await, no I/O). Readers ask the store
for :meth:`MetricsStore.stats`, which is this process's window in memory mode and the fleet's
merged view in Redis mode (:mod:`health.redis_store`).

Probe results are kept per deployment, newest first, at most :data:`PROBE_HISTORY` of them. A
fleet shares them through the store, and :meth:`MetricsStore.probe_lease` lets one replica probe
a deployment per interval instead of all of them.

Breaker trips travel the same way: :meth:`MetricsStore.publish_trip` tells the fleet that this
replica's breaker of a deployment opened, and :meth:`MetricsStore.remote_trips` lists the trips
other replicas published that are still in force, so every replica stops sending within about a
second of one replica tripping (Redis mode; a single process has nobody to tell).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from health.window import Clock, RollingWindow, WindowStats, empty, summarise

PROBE_HISTORY = 20

SharedState = Literal["local", "fresh", "stale"]


@dataclass(frozen=True, slots=True)
class WindowSettings:
    buckets: int = 12
    width: float = 5.0  # seconds per bucket
    alpha: float = 0.3  # EWMA weight of the newest sample

    @property
    def seconds(self) -> float:
        return self.buckets * self.width


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One active probe of a deployment. ``detail`` is ``"ok"`` or the (redacted) error."""

    at: float  # wall-clock seconds
    ok: bool
    latency: float | None  # seconds, for a probe that answered
    detail: str
    replica: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "at": self.at,
            "ok": self.ok,
            "latency": self.latency,
            "detail": self.detail,
            "replica": self.replica,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ProbeResult:
        at, latency = data.get("at"), data.get("latency")
        return cls(
            at=float(at) if isinstance(at, int | float) else 0.0,
            ok=data.get("ok") is True,
            latency=float(latency) if isinstance(latency, int | float) else None,
            detail=str(data.get("detail", "")),
            replica=str(data.get("replica", "")),
        )


@dataclass(frozen=True, slots=True)
class SharedStatus:
    """How current the fleet view is: ``local`` (memory store), ``fresh`` or ``stale`` (Redis)."""

    store: Literal["memory", "redis"]
    state: SharedState
    last_sync_age: float | None = None  # seconds since the last successful sync
    error: str | None = None  # why the last sync failed, while stale

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"store": self.store, "shared_metrics": self.state}
        if self.last_sync_age is not None:
            out["last_sync_age_s"] = round(self.last_sync_age, 3)
        if self.error is not None:
            out["error"] = self.error
        return out


class MetricsStore(Protocol):
    """The contract both stores meet (``tests/unit/test_store_contract.py`` runs it on both)."""

    settings: WindowSettings
    replica: str

    def window(self, name: str) -> RollingWindow:
        """The hot-path window of deployment ``name`` (created on first use, then the same)."""
        ...

    def names(self) -> list[str]:
        """Every deployment with a window, in the order they were first seen."""
        ...

    def stats(self, name: str) -> WindowStats:
        """``name``'s figures: this process's in memory mode, the fleet's in Redis mode. A name
        never registered through :meth:`window` reads as empty and is not registered by it."""
        ...

    def add_probe(self, name: str, result: ProbeResult) -> None:
        """Record a probe result (shared with the fleet in Redis mode)."""
        ...

    def probes(self, name: str) -> tuple[ProbeResult, ...]:
        """Probe results of ``name``, newest first (empty, and nothing registered, for a name
        never seen)."""
        ...

    async def probe_lease(self, name: str, ttl: float) -> bool:
        """True when this replica should probe ``name`` now (it holds the lease for ``ttl`` s)."""
        ...

    def publish_trip(self, name: str, until: float, reason: str) -> None:
        """This replica's breaker of ``name`` opened until wall-clock ``until`` (seconds),
        because of ``reason``: tell the other replicas (Redis: with the next flush, keeping
        the latest ``until`` per deployment). Sync, never awaits, never does I/O; a trip already
        over is ignored; a no-op in memory."""
        ...

    def remote_trips(self) -> dict[str, tuple[float, str, str]]:
        """name → (until wall-clock seconds, reason, replica) of the trips OTHER replicas
        published that are still in force, as of the last successful exchange (Redis: while
        stale, the last known ones until their own ``until``). Always ``{}`` in memory."""
        ...

    def shared(self) -> SharedStatus: ...

    async def sync(self) -> None:
        """Exchange with the fleet now (Redis mode); a no-op in memory. Never raises."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """The embedded default: every figure lives in this process."""

    def __init__(
        self,
        settings: WindowSettings | None = None,
        *,
        clock: Clock = time.time,
        replica: str = "local",
    ) -> None:
        self.settings = settings or WindowSettings()
        self.replica = replica
        self._clock = clock
        self._windows: dict[str, RollingWindow] = {}
        self._probes: dict[str, deque[ProbeResult]] = {}

    def window(self, name: str) -> RollingWindow:
        window = self._windows.get(name)
        if window is None:
            s = self.settings
            window = self._windows[name] = RollingWindow(
                buckets=s.buckets, width=s.width, alpha=s.alpha, clock=self._clock
            )
        return window

    def attach(self, name: str, window: RollingWindow) -> None:
        """Adopt a window made elsewhere as ``name``'s (an embedded gateway built without a
        monitor keeps its deployments' own windows)."""
        self._windows[name] = window

    def names(self) -> list[str]:
        return list(self._windows)

    def stats(self, name: str) -> WindowStats:
        window = self._windows.get(name)
        if window is None:  # never registered through window(): empty, and not registered now
            return summarise(empty(), self.settings.seconds)
        return window.stats()

    def add_probe(self, name: str, result: ProbeResult) -> None:
        history = self._probes.get(name)
        if history is None:
            history = self._probes[name] = deque(maxlen=PROBE_HISTORY)
        history.appendleft(result)

    def probes(self, name: str) -> tuple[ProbeResult, ...]:
        return tuple(self._probes.get(name, ()))

    async def probe_lease(self, name: str, ttl: float) -> bool:
        return True

    def publish_trip(self, name: str, until: float, reason: str) -> None:
        return None  # a single process has no other replica to tell

    def remote_trips(self) -> dict[str, tuple[float, str, str]]:
        return {}

    def shared(self) -> SharedStatus:
        return SharedStatus("memory", "local")

    async def sync(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
