"""The Redis store's local ledger per deployment: deltas staged, batches sent but not yet
acknowledged, the breaker trip waiting to be published, and the last fleet view pulled (see
:mod:`health.redis_store`, steps 1 and 3)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from health.store import PROBE_HISTORY, ProbeResult
from health.window import RollingWindow, add_into, empty


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(slots=True)
class Batch:
    """Deltas and probes sent under one ``seq``, kept until Redis acknowledges them."""

    seq: int
    cut_at: int  # bucket index when it was cut
    deltas: dict[int, list[float]]
    probes: list[ProbeResult]


@dataclass(frozen=True, slots=True)
class Trip:
    """A breaker trip as the trip key holds it: ``"until_ms|replica|reason"``, where
    ``until_ms`` is the wall-clock time (ms) the breaker stays open until."""

    until_ms: int
    replica: str
    reason: str

    @property
    def until(self) -> float:
        """Wall-clock seconds."""
        return self.until_ms / 1000

    def value(self) -> str:
        return f"{self.until_ms}|{self.replica}|{self.reason}"

    @classmethod
    def parse(cls, raw: Any) -> Trip | None:
        """The trip ``raw`` holds, or None for nothing or a value of another shape."""
        if raw is None:
            return None
        until, sep, rest = as_text(raw).partition("|")
        replica, sep2, reason = rest.partition("|")
        if not (sep and sep2 and until.isdigit()):
            return None
        return cls(int(until), replica, reason)


@dataclass(slots=True)
class PulledView:
    """What the last successful exchange pulled for one deployment."""

    buckets: dict[int, list[float]]
    others_inflight: int
    cached_at: int = -1  # bucket index the cached sum is for
    cached: list[float] = field(default_factory=list)

    def merged(self, now_idx: int, buckets: int) -> list[float]:
        if self.cached_at != now_idx:
            total = empty()
            for idx, vec in self.buckets.items():
                if now_idx - buckets < idx <= now_idx:
                    add_into(total, vec)
            self.cached, self.cached_at = total, now_idx
        return self.cached  # shared: callers add it into their own vector


@dataclass(slots=True)
class Ledger:
    window: RollingWindow
    history: deque[ProbeResult]  # the last fleet view, then local probes on top; newest first
    staged: dict[int, list[float]] = field(default_factory=dict)  # taken, not yet batched
    queued: list[ProbeResult] = field(default_factory=list)  # probes not yet batched, oldest first
    unacked: list[Batch] = field(default_factory=list)
    view: PulledView | None = None
    trip: Trip | None = None  # this replica's trip to publish, until Redis acknowledges it
    remote: Trip | None = None  # another replica's trip, as last pulled

    def queue_trip(self, trip: Trip) -> None:
        """Publish ``trip`` with the next flush, unless one already queued lasts longer (the
        key keeps the latest ``until`` anyway, so the shorter one would change nothing)."""
        if self.trip is None or trip.until_ms > self.trip.until_ms:
            self.trip = trip

    def stage(self) -> None:
        """Move the window's pending deltas here (so they can be read without being lost)."""
        for idx, vec in self.window.take_pending().items():
            mine = self.staged.get(idx)
            if mine is None:
                self.staged[idx] = vec
            else:
                add_into(mine, vec)

    def cut(self, next_seq: Callable[[], int], now_idx: int) -> None:
        """Turn staged deltas and queued probes into a batch; forget buckets out of the window
        and batches cut more than a window ago (their seq guard in Redis may have expired)."""
        oldest = now_idx - self.window.buckets
        self.stage()
        if self.staged or self.queued:
            self.unacked.append(Batch(next_seq(), now_idx, self.staged, self.queued))
            self.staged, self.queued = {}, []
        kept: list[Batch] = []
        room = PROBE_HISTORY
        for batch in reversed(self.unacked):  # newest first: older probes are trimmed anyway
            if batch.cut_at <= oldest:
                continue
            batch.deltas = {i: v for i, v in batch.deltas.items() if i > oldest}
            batch.probes = batch.probes[-room:] if room else []
            room -= len(batch.probes)
            if batch.deltas or batch.probes:
                kept.append(batch)
        kept.reverse()
        self.unacked = kept

    def unsent(self, oldest: int, now_idx: int) -> list[float]:
        """Local deltas not yet in the pulled view (in flight or staged), inside the window."""
        total = empty()
        for deltas in [*(b.deltas for b in self.unacked), self.staged]:
            for idx, vec in deltas.items():
                if oldest < idx <= now_idx:
                    add_into(total, vec)
        return total
