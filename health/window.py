"""A sliding window of request outcomes per deployment: a ring of time buckets.

Every bucket is one flat ``list[float]`` laid out by :data:`LAYOUT` (counts, errors by class,
sums, then two fixed histograms). Flat vectors make the three things the window must do cheap:

1. **Record** (hot path, O(1)): find the bucket of ``clock()`` — ``int(now // width)`` — reset it
   if it still holds an older bucket's counts, add the outcome's numbers at fixed offsets, and
   do the same in the lifetime totals (for Prometheus) and, when the window is shared, in the
   pending delta of that bucket (what the Redis store has not flushed yet).
2. **Merge** (fleet view): element-wise addition, so buckets from other replicas add up.
3. **Summarise** (O(buckets)): add the buckets whose index is within the last ``buckets`` of now
   — a sliding window that drops one bucket at a time, not a tumbling one that empties at once —
   and read error rate, percentiles (linear interpolation within a histogram bin), means.

The clock is injected (wall-clock seconds by default, so replicas of a fleet agree on bucket
indexes). EWMA latency and time to first token are kept beside the buckets: they follow every
sample of this process (``alpha`` per sample) and are not merged across a fleet. An EWMA ages
with the window: once its newest sample has left the window it reads ``None`` (unmeasured), and
the next sample starts it afresh. A deployment that gets no traffic (one excluded for a latency
spike, say) must not keep its last figure forever: routing treats it as unmeasured instead.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

Clock = Callable[[], float]

# Error classes, as the gateway classifies a failed attempt. ``caller_error`` is a request the
# provider refused for its content (bad request, content policy, context too long): it is
# counted, but it says nothing about the deployment's health and is left out of the error rate.
ERROR_CLASSES: tuple[str, ...] = (
    "rate_limited",
    "server_error",
    "timeout",
    "connection",
    "stream_broken",
    "bad_response",
    "misconfigured",
    "caller_error",
)
CALLER_ERROR = "caller_error"

# Histogram bin upper bounds in seconds (the last bin is open: +Inf). Log-spaced from 5 ms to
# 2 min: the same bounds serve latency and time to first token, and the Prometheus histograms.
BOUNDS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.175,
    0.25,
    0.4,
    0.6,
    0.8,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    8.0,
    12.0,
    20.0,
    30.0,
    60.0,
    120.0,
)
BINS = len(BOUNDS) + 1


class _Layout:
    """Offsets of each figure in a bucket vector."""

    REQUESTS = 0
    SUCCESSES = 1
    ERRORS = 2  # one slot per ERROR_CLASSES entry
    LATENCY_SUM = ERRORS + len(ERROR_CLASSES)
    LATENCY_COUNT = LATENCY_SUM + 1
    TTFT_SUM = LATENCY_COUNT + 1
    TTFT_COUNT = TTFT_SUM + 1
    TOKENS_IN = TTFT_COUNT + 1
    TOKENS_OUT = TOKENS_IN + 1
    COST = TOKENS_OUT + 1
    LATENCY_HIST = COST + 1
    TTFT_HIST = LATENCY_HIST + BINS
    SIZE = TTFT_HIST + BINS


LAYOUT = _Layout
SIZE = _Layout.SIZE
_ERROR_INDEX = {name: _Layout.ERRORS + i for i, name in enumerate(ERROR_CLASSES)}
_CALLER_INDEX = _ERROR_INDEX[CALLER_ERROR]
# The id of a slot never written: below any bucket index a clock can give, so a fresh slot is
# never taken for a live bucket (``-1`` would be, for a clock in its first window or below zero).
_NEVER = -(2**63)


def empty() -> list[float]:
    return [0.0] * SIZE


def add_into(target: list[float], other: Sequence[float]) -> None:
    """``target += other``, element-wise."""
    for i, value in enumerate(other):
        if value:
            target[i] += value


def error_index(error_class: str) -> int:
    """The vector offset of ``error_class``; an unknown class is a programming error."""
    try:
        return _ERROR_INDEX[error_class]
    except KeyError:
        known = ", ".join(ERROR_CLASSES)
        raise ValueError(f"unknown error class {error_class!r}; known: {known}") from None


def _bin(seconds: float) -> int:
    return bisect.bisect_left(BOUNDS, seconds)


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Seconds; ``None`` when the window holds no sample."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    mean: float | None = None
    ewma: float | None = None


@dataclass(frozen=True, slots=True)
class WindowStats:
    """What one deployment's window says right now (a value; safe to keep and share)."""

    window_seconds: float
    requests: int = 0
    successes: int = 0
    errors: tuple[tuple[str, int], ...] = ()  # (class, count) for classes seen, in class order
    failures: int = 0  # errors that are the deployment's (every class but caller_error)
    error_rate: float = 0.0  # failures / (requests - caller errors); 0 with no traffic
    latency: Percentiles = Percentiles()  # of complete non-streaming answers only
    ttft: Percentiles = Percentiles()  # of streams that answered (time to first event)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    inflight: int = 0

    def error_count(self, error_class: str) -> int:
        return dict(self.errors).get(error_class, 0)


def percentile(hist: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram over :data:`BOUNDS`, interpolated within its bin.

    1. ``rank = q * total``; walk the bins adding counts until the running count reaches it.
    2. Interpolate linearly between the bin's lower and upper bound by how far into the bin's
       count the rank falls. The open last bin reports its lower bound (120 s): a floor, not a
       guess.
    """
    total = sum(hist)
    if total <= 0:
        return None
    rank = q * total
    running = 0.0
    for i, count in enumerate(hist):
        if count <= 0:
            continue
        if running + count >= rank:
            lower = BOUNDS[i - 1] if i > 0 else 0.0
            if i >= len(BOUNDS):
                return lower
            upper = BOUNDS[i]
            return lower + (upper - lower) * max(0.0, rank - running) / count
        running += count
    return BOUNDS[-1]


def summarise(
    counts: Sequence[float],
    window_seconds: float,
    *,
    inflight: int = 0,
    latency_ewma: float | None = None,
    ttft_ewma: float | None = None,
) -> WindowStats:
    """Read a (merged) bucket vector into :class:`WindowStats`."""
    L = _Layout
    requests = int(counts[L.REQUESTS])
    successes = int(counts[L.SUCCESSES])
    errors = tuple(
        (name, int(counts[L.ERRORS + i]))
        for i, name in enumerate(ERROR_CLASSES)
        if counts[L.ERRORS + i]
    )
    caller = int(counts[_CALLER_INDEX])
    failures = sum(n for name, n in errors if name != CALLER_ERROR)
    judged = requests - caller
    lat_hist = counts[L.LATENCY_HIST : L.LATENCY_HIST + BINS]
    ttft_hist = counts[L.TTFT_HIST : L.TTFT_HIST + BINS]
    ttft_count = counts[L.TTFT_COUNT]
    latency_count = counts[L.LATENCY_COUNT]
    return WindowStats(
        window_seconds=window_seconds,
        requests=requests,
        successes=successes,
        errors=errors,
        failures=failures,
        error_rate=failures / judged if judged > 0 else 0.0,
        latency=Percentiles(
            percentile(lat_hist, 0.50),
            percentile(lat_hist, 0.95),
            percentile(lat_hist, 0.99),
            counts[L.LATENCY_SUM] / latency_count if latency_count else None,
            latency_ewma,
        ),
        ttft=Percentiles(
            percentile(ttft_hist, 0.50),
            percentile(ttft_hist, 0.95),
            percentile(ttft_hist, 0.99),
            counts[L.TTFT_SUM] / ttft_count if ttft_count else None,
            ttft_ewma,
        ),
        tokens_in=int(counts[L.TOKENS_IN]),
        tokens_out=int(counts[L.TOKENS_OUT]),
        cost=counts[L.COST],
        inflight=inflight,
    )


class RollingWindow:
    """One deployment's ring of ``buckets`` time buckets of ``width`` seconds each.

    ``inflight`` is a plain gauge the caller moves (+1 when an attempt starts, -1 when it ends).
    With ``track_pending=True`` every record is also added to :attr:`pending` (bucket index →
    vector) for a shared store to flush; :meth:`take_pending` hands it over and starts afresh.
    """

    __slots__ = (
        "_clock",
        "_ids",
        "_latency_at",
        "_latency_ewma",
        "_pending",
        "_slots",
        "_ttft_at",
        "_ttft_ewma",
        "alpha",
        "buckets",
        "inflight",
        "totals",
        "width",
    )

    def __init__(
        self,
        *,
        buckets: int = 12,
        width: float = 5.0,
        clock: Clock = time.time,
        alpha: float = 0.3,
        track_pending: bool = False,
    ) -> None:
        if buckets < 1:
            raise ValueError("a window needs at least one bucket")
        if not 0 < width < math.inf:  # also refuses NaN, which would fail every record
            raise ValueError("bucket width must be positive and finite")
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.buckets = buckets
        self.width = width
        self.alpha = alpha
        self._clock = clock
        self._slots = [empty() for _ in range(buckets)]
        self._ids = [_NEVER] * buckets
        self._pending: dict[int, list[float]] | None = {} if track_pending else None
        self.totals = empty()  # lifetime, never reset (Prometheus counters)
        self.inflight = 0
        self._latency_ewma: float | None = None
        self._latency_at = _NEVER  # bucket index of the newest latency sample
        self._ttft_ewma: float | None = None
        self._ttft_at = _NEVER

    @property
    def window_seconds(self) -> float:
        return self.buckets * self.width

    @property
    def latency_ewma(self) -> float | None:
        """EWMA of this process's latency samples; ``None`` once the newest left the window."""
        return self._ewmas(self.index() - self.buckets)[0]

    @property
    def ttft_ewma(self) -> float | None:
        """EWMA of this process's TTFT samples; ``None`` once the newest left the window."""
        return self._ewmas(self.index() - self.buckets)[1]

    def _ewmas(self, oldest: int) -> tuple[float | None, float | None]:
        """(latency, TTFT) EWMA, each ``None`` unless its newest sample is in a bucket after
        ``oldest`` (the index just before the window)."""
        return (
            self._latency_ewma if self._latency_at > oldest else None,
            self._ttft_ewma if self._ttft_at > oldest else None,
        )

    def index(self, now: float | None = None) -> int:
        """The absolute bucket index of ``now`` (default: the clock)."""
        return int((self._clock() if now is None else now) // self.width)

    def _targets(self, idx: int) -> Iterable[list[float]]:
        slot = idx % self.buckets
        vec = self._slots[slot]
        if self._ids[slot] != idx:
            self._ids[slot] = idx
            vec = self._slots[slot] = empty()
        if self._pending is None:
            return (vec, self.totals)
        pending = self._pending.get(idx)
        if pending is None:
            pending = self._pending[idx] = empty()
        return (vec, self.totals, pending)

    def success(
        self,
        latency: float | None,
        *,
        ttft: float | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost: float = 0.0,
    ) -> None:
        """An attempt that answered.

        ``latency``: seconds to a complete non-streaming answer. ``ttft``: seconds to a
        stream's first event. A stream passes ``latency=None``: how long it then runs says how
        much was generated, not how fast the deployment is, so it stays out of the latency
        figures (and out of a p95 that would otherwise degrade any deployment writing essays).
        """
        L = _Layout
        idx = int(self._clock() // self.width)
        lat_bin = L.LATENCY_HIST + _bin(latency) if latency is not None else -1
        ttft_bin = L.TTFT_HIST + _bin(ttft) if ttft is not None else -1
        for vec in self._targets(idx):
            vec[L.REQUESTS] += 1
            vec[L.SUCCESSES] += 1
            if latency is not None:
                vec[L.LATENCY_SUM] += latency
                vec[L.LATENCY_COUNT] += 1
                vec[lat_bin] += 1
            if ttft is not None:
                vec[L.TTFT_SUM] += ttft
                vec[L.TTFT_COUNT] += 1
                vec[ttft_bin] += 1
            if tokens_in:
                vec[L.TOKENS_IN] += tokens_in
            if tokens_out:
                vec[L.TOKENS_OUT] += tokens_out
            if cost:
                vec[L.COST] += cost
        self._ewma(latency, ttft, idx)

    def failure(self, error_class: str, *, tokens_in: int = 0, tokens_out: int = 0) -> None:
        """A failed attempt of ``error_class`` (see :data:`ERROR_CLASSES`).

        Latency figures describe answers only: a deployment that refuses connections in 1 ms
        must not look fast. Tokens of a failed attempt (a stream cut halfway) are counted as
        tokens, never as cost: nothing failed is billed as a completion.
        """
        L = _Layout
        err = error_index(error_class)
        for vec in self._targets(int(self._clock() // self.width)):
            vec[L.REQUESTS] += 1
            vec[err] += 1
            if tokens_in:
                vec[L.TOKENS_IN] += tokens_in
            if tokens_out:
                vec[L.TOKENS_OUT] += tokens_out

    def _ewma(self, latency: float | None, ttft: float | None, idx: int) -> None:
        """Move the EWMAs by ``alpha``; one whose newest sample left the window starts afresh."""
        a = self.alpha
        lat, first = self._ewmas(idx - self.buckets)
        if latency is not None:
            self._latency_ewma = latency if lat is None else lat + a * (latency - lat)
            self._latency_at = idx
        if ttft is not None:
            self._ttft_ewma = ttft if first is None else first + a * (ttft - first)
            self._ttft_at = idx

    def live(self, now: float | None = None) -> list[tuple[int, list[float]]]:
        """(bucket index, vector) of every bucket still inside the window at ``now``."""
        idx = self.index(now)
        oldest = idx - self.buckets
        return [
            (i, vec) for i, vec in zip(self._ids, self._slots, strict=True) if oldest < i <= idx
        ]

    def merged(self, now: float | None = None) -> list[float]:
        """The sum of the live buckets."""
        total = empty()
        for _, vec in self.live(now):
            add_into(total, vec)
        return total

    def stats(self, now: float | None = None) -> WindowStats:
        latency_ewma, ttft_ewma = self._ewmas(self.index(now) - self.buckets)
        return summarise(
            self.merged(now),
            self.window_seconds,
            inflight=self.inflight,
            latency_ewma=latency_ewma,
            ttft_ewma=ttft_ewma,
        )

    def take_pending(self) -> dict[int, list[float]]:
        """Hand over the records not yet flushed (bucket index → vector) and start afresh."""
        if self._pending is None:
            return {}
        pending, self._pending = self._pending, {}
        return pending

    def restore_pending(self, pending: dict[int, list[float]]) -> None:
        """Put back deltas a flush could not deliver, dropping buckets already out of the window."""
        if self._pending is None:
            return
        oldest = self.index() - self.buckets
        for idx, vec in pending.items():
            if idx <= oldest:
                continue
            mine = self._pending.get(idx)
            if mine is None:
                self._pending[idx] = vec
            else:
                add_into(mine, vec)
