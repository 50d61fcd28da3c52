"""The rolling window: bucket boundaries, sliding expiry, ring reuse, figures and pending deltas.

Every test drives an injected fake clock (a mutable float), so bucket boundaries are crossed
exactly and nothing sleeps.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from health.window import (
    BINS,
    BOUNDS,
    CALLER_ERROR,
    ERROR_CLASSES,
    LAYOUT,
    SIZE,
    Percentiles,
    RollingWindow,
    WindowStats,
    add_into,
    empty,
    error_index,
    percentile,
    summarise,
)

DEPLOYMENT_ERRORS = tuple(c for c in ERROR_CLASSES if c != CALLER_ERROR)


class FakeClock:
    """A clock the test moves by hand: ``clock.t = 60.0``."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


Make = Callable[..., tuple[RollingWindow, FakeClock]]


@pytest.fixture
def make() -> Make:
    """Build a window (12 x 5 s unless told otherwise) on a fresh fake clock at ``start``."""

    def build(start: float = 0.0, **kwargs: object) -> tuple[RollingWindow, FakeClock]:
        clock = FakeClock(start)
        options: dict[str, object] = {"buckets": 12, "width": 5.0, **kwargs}
        return RollingWindow(clock=clock, **options), clock  # type: ignore[arg-type]

    return build


def requests_at(window: RollingWindow, clock: FakeClock, t: float) -> int:
    clock.t = t
    return window.stats().requests


def hist(counts: dict[int, float]) -> list[float]:
    """A histogram over BOUNDS with ``counts`` at the given bin indexes."""
    out = [0.0] * BINS
    for i, n in counts.items():
        out[i] = n
    return out


def bin_of(seconds: float) -> int:
    """The bin a value belongs to, found by a plain scan (upper bounds are inclusive)."""
    for i, upper in enumerate(BOUNDS):
        if seconds <= upper:
            return i
    return len(BOUNDS)


def bin_width(seconds: float) -> float:
    i = bin_of(seconds)
    lower = BOUNDS[i - 1] if i > 0 else 0.0
    return BOUNDS[i] - lower


def exact_quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile of a sample."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buckets": 0}, "at least one bucket"),
        ({"buckets": -3}, "at least one bucket"),
        ({"width": 0.0}, "width must be positive"),
        ({"width": -5.0}, "width must be positive"),
        ({"width": math.nan}, "width must be positive"),
        ({"width": math.inf}, "width must be positive"),
        ({"alpha": 0.0}, "alpha must be in"),
        ({"alpha": -0.1}, "alpha must be in"),
        ({"alpha": 1.01}, "alpha must be in"),
        ({"alpha": math.nan}, "alpha must be in"),
    ],
)
def test_constructor_refuses_invalid_settings(kwargs: dict[str, float], message: str) -> None:
    """Bucket count, bucket width and EWMA weight are checked when the window is built."""
    with pytest.raises(ValueError, match=message):
        RollingWindow(clock=FakeClock(), **kwargs)  # type: ignore[arg-type]


def test_constructor_defaults_are_twelve_five_second_buckets() -> None:
    """The defaults give a one-minute window with alpha 0.3 and no pending tracking."""
    window = RollingWindow(clock=FakeClock())
    assert (window.buckets, window.width, window.alpha) == (12, 5.0, 0.3)
    assert window.window_seconds == 60.0
    assert window.stats().window_seconds == 60.0
    window.success(0.1)
    assert window.take_pending() == {}


def test_single_bucket_and_alpha_one_are_accepted(make: Make) -> None:
    """The smallest legal window (one bucket) and alpha = 1 work."""
    window, clock = make(buckets=1, width=2.0, alpha=1.0)
    window.success(1.0)
    window.success(3.0)
    assert window.stats().requests == 2
    assert window.latency_ewma == 3.0
    assert requests_at(window, clock, 2.0) == 0


def test_layout_offsets_fit_the_vector() -> None:
    """Every named offset lies inside a vector of SIZE and the histograms are BINS wide."""
    assert len(empty()) == SIZE == LAYOUT.SIZE
    assert LAYOUT.TTFT_HIST - LAYOUT.LATENCY_HIST == BINS
    assert LAYOUT.SIZE - LAYOUT.TTFT_HIST == BINS
    assert len(BOUNDS) + 1 == BINS
    assert list(BOUNDS) == sorted(set(BOUNDS))
    offsets = {error_index(c) for c in ERROR_CLASSES}
    assert len(offsets) == len(ERROR_CLASSES)
    assert offsets.isdisjoint({LAYOUT.REQUESTS, LAYOUT.SUCCESSES, LAYOUT.LATENCY_SUM})


# -- bucket boundaries ----------------------------------------------------------------------


def test_index_floors_time_by_width(make: Make) -> None:
    """A bucket is [k*width, (k+1)*width): 4.999 is bucket 0, 5.0 is bucket 1."""
    window, clock = make()
    assert window.index(0.0) == 0
    assert window.index(4.999) == 0
    assert window.index(5.0) == 1
    assert window.index(59.999) == 11
    assert window.index(60.0) == 12
    clock.t = 12.5
    assert window.index() == 2


def test_records_either_side_of_a_boundary_land_in_different_buckets(make: Make) -> None:
    """A record at t=4.999 and one at t=5.0 fill buckets 0 and 1, one request each."""
    window, clock = make()
    clock.t = 4.999
    window.success(0.1)
    clock.t = 5.0
    window.failure("timeout")
    live = sorted(window.live())
    assert [i for i, _ in live] == [0, 1]
    assert live[0][1][LAYOUT.REQUESTS] == 1
    assert live[0][1][LAYOUT.SUCCESSES] == 1
    assert live[1][1][LAYOUT.REQUESTS] == 1
    assert live[1][1][error_index("timeout")] == 1
    # The split shows in expiry too: bucket 0 leaves at 60, bucket 1 at 65.
    assert requests_at(window, clock, 60.0) == 1
    assert requests_at(window, clock, 65.0) == 0


def test_record_exactly_at_the_window_edge_is_counted_until_one_window_later(make: Make) -> None:
    """A record at t=60.0 (the first instant of bucket 12) counts from 60 up to just before 120."""
    window, clock = make()
    window.success(0.1)  # t=0, bucket 0
    clock.t = 60.0
    window.success(0.2)  # bucket 12: reuses slot 0
    assert window.stats().requests == 1
    assert requests_at(window, clock, 119.999) == 1
    assert requests_at(window, clock, 120.0) == 0


# -- sliding expiry -------------------------------------------------------------------------


def test_record_at_zero_expires_at_sixty_and_record_at_five_at_sixty_five(make: Make) -> None:
    """The window slides one bucket at a time: t=0 counts until t<60, t=5 until t<65."""
    window, clock = make()
    window.success(0.1)
    clock.t = 5.0
    window.success(0.1)
    assert requests_at(window, clock, 59.999) == 2
    assert requests_at(window, clock, 60.0) == 1
    assert requests_at(window, clock, 64.999) == 1
    assert requests_at(window, clock, 65.0) == 0


def test_buckets_drop_out_one_at_a_time_not_all_at_once(make: Make) -> None:
    """One record per bucket for a minute, then every 5 s exactly one of them leaves."""
    window, clock = make()
    for k in range(12):
        clock.t = k * 5.0 + 2.5
        window.success(0.1)
    assert window.stats().requests == 12
    for step in range(1, 13):
        assert requests_at(window, clock, 55.0 + step * 5.0) == 12 - step
        assert requests_at(window, clock, 55.0 + step * 5.0 - 0.001) == 13 - step


def test_window_does_not_empty_at_a_minute_boundary(make: Make) -> None:
    """Regression for a tumbling window: a record at 55 s is still there at 60 s and 114 s."""
    window, clock = make()
    clock.t = 55.0
    window.success(0.1)
    assert requests_at(window, clock, 60.0) == 1
    assert requests_at(window, clock, 114.999) == 1
    assert requests_at(window, clock, 115.0) == 0


def test_stats_and_merged_accept_an_explicit_now(make: Make) -> None:
    """``stats(now)``, ``merged(now)`` and ``live(now)`` read the window as of ``now``."""
    window, clock = make()
    window.success(0.1)
    clock.t = 30.0
    window.success(0.1)
    assert window.stats(59.0).requests == 2
    assert window.stats(61.0).requests == 1
    assert window.merged(61.0)[LAYOUT.REQUESTS] == 1
    assert [i for i, _ in window.live(61.0)] == [6]
    # A "now" before a bucket leaves that bucket out (it is in the future).
    assert window.stats(10.0).requests == 1
    assert window.stats().requests == 2  # the clock itself did not move


# -- ring reuse -----------------------------------------------------------------------------


def test_slot_reused_after_a_full_lap_starts_from_zero(make: Make) -> None:
    """Bucket 12 shares slot 0 with bucket 0; writing to it wipes bucket 0's figures first."""
    window, clock = make()
    window.failure("server_error")
    window.failure("server_error")
    window.success(9.0, ttft=4.0, tokens_in=5, cost=1.0)
    clock.t = 61.0
    window.success(0.2)
    live = window.live()
    assert [i for i, _ in live] == [12]
    stats = window.stats()
    assert (stats.requests, stats.successes, stats.errors) == (1, 1, ())
    assert stats.latency.mean == pytest.approx(0.2)
    assert stats.ttft.mean is None
    assert (stats.tokens_in, stats.cost) == (0, 0.0)
    vec = live[0][1]
    assert sum(vec[LAYOUT.LATENCY_HIST : LAYOUT.LATENCY_HIST + BINS]) == 1
    assert sum(vec[LAYOUT.TTFT_HIST : LAYOUT.TTFT_HIST + BINS]) == 0


def test_slot_reused_after_several_laps_starts_from_zero(make: Make) -> None:
    """A slot last written two laps ago (bucket 0, then bucket 24) also resets."""
    window, clock = make()
    window.success(0.1)
    clock.t = 120.0
    window.success(0.1)
    assert window.stats().requests == 1
    assert [i for i, _ in window.live()] == [24]


def test_gap_longer_than_the_window_leaves_nothing(make: Make) -> None:
    """After a silence longer than the window, every bucket is stale and nothing is counted."""
    window, clock = make()
    for t in (0.0, 12.0, 33.0, 58.0):
        clock.t = t
        window.failure("timeout")
        window.success(0.3)
    clock.t = 1000.0
    assert window.live() == []
    assert window.merged() == empty()
    stats = window.stats()
    assert (stats.requests, stats.errors, stats.error_rate) == (0, (), 0.0)
    assert stats.latency.p50 is None
    window.success(0.1)
    assert window.stats().requests == 1


def test_records_in_the_same_bucket_accumulate(make: Make) -> None:
    """Writes within one bucket add up instead of resetting it."""
    window, clock = make()
    for t in (10.0, 11.0, 14.999):
        clock.t = t
        window.success(0.1)
    assert [(i, vec[LAYOUT.REQUESTS]) for i, vec in window.live()] == [(2, 3.0)]


def test_live_lists_only_buckets_that_were_written(make: Make) -> None:
    """In the clock's first window, slots never written are not reported as bucket -1."""
    window, clock = make()
    assert window.live() == []
    clock.t = 12.0
    window.success(0.1)
    assert [i for i, _ in window.live()] == [2]


def test_negative_times_are_ordinary_buckets(make: Make) -> None:
    """A clock below zero (bucket -1 at t=-2.5) gives one live bucket that expires in turn."""
    window, clock = make(start=-2.5, track_pending=True)
    window.success(0.1)
    live = window.live()
    assert [(i, v[LAYOUT.REQUESTS]) for i, v in live] == [(-1, 1.0)]
    assert list(window.take_pending()) == [-1]
    assert requests_at(window, clock, 54.999) == 1
    assert requests_at(window, clock, 55.0) == 0


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("error_class", ERROR_CLASSES)
def test_each_error_class_is_counted_under_its_own_name(make: Make, error_class: str) -> None:
    """A failure counts as a request and as one error of its class, never a success."""
    window, _ = make()
    window.failure(error_class)
    stats = window.stats()
    assert (stats.requests, stats.successes) == (1, 0)
    assert stats.errors == ((error_class, 1),)
    assert stats.error_count(error_class) == 1
    assert window.merged()[error_index(error_class)] == 1


def test_errors_list_seen_classes_in_class_order(make: Make) -> None:
    """``errors`` holds only classes with a count, in ERROR_CLASSES order, not arrival order."""
    window, _ = make()
    window.failure("timeout")
    window.failure("rate_limited")
    window.failure("timeout")
    window.failure("caller_error")
    stats = window.stats()
    assert stats.errors == (("rate_limited", 1), ("timeout", 2), ("caller_error", 1))
    assert stats.error_count("server_error") == 0


def test_error_rate_leaves_caller_errors_out(make: Make) -> None:
    """failures / (requests - caller errors): the caller's bad requests say nothing of health."""
    window, _ = make()
    window.success(0.1)
    window.success(0.1)
    window.failure("server_error")
    window.failure("timeout")
    for _ in range(4):
        window.failure("caller_error")
    stats = window.stats()
    assert stats.requests == 8
    assert stats.failures == 2
    assert stats.error_count("caller_error") == 4
    assert stats.error_rate == pytest.approx(2 / 4)


def test_every_deployment_error_class_counts_as_a_failure(make: Make) -> None:
    """All classes but caller_error are the deployment's failures."""
    window, _ = make()
    for name in DEPLOYMENT_ERRORS:
        window.failure(name)
    stats = window.stats()
    assert stats.failures == len(DEPLOYMENT_ERRORS)
    assert stats.error_rate == 1.0


def test_only_caller_errors_give_a_zero_error_rate(make: Make) -> None:
    """With nothing to judge the deployment by, the error rate is 0, not a division by zero."""
    window, _ = make()
    window.failure("caller_error")
    window.failure("caller_error")
    stats = window.stats()
    assert (stats.requests, stats.failures, stats.error_rate) == (2, 0, 0.0)


def test_no_traffic_gives_a_zero_error_rate(make: Make) -> None:
    """An empty window reports no errors and a 0 error rate."""
    window, _ = make()
    stats = window.stats()
    assert (stats.requests, stats.failures, stats.error_rate, stats.errors) == (0, 0, 0.0, ())


def test_unknown_error_class_is_refused_naming_the_known_ones(make: Make) -> None:
    """A typo in an error class is a programming error: ValueError listing every known class."""
    window, _ = make(track_pending=True)
    with pytest.raises(ValueError, match="unknown error class 'server_eror'") as info:
        window.failure("server_eror")
    for name in ERROR_CLASSES:
        assert name in str(info.value)
    # Nothing was half-recorded.
    assert window.stats().requests == 0
    assert window.totals == empty()
    assert window.take_pending() == {}


def test_error_index_refuses_an_unknown_class() -> None:
    """``error_index`` maps known classes to distinct offsets and refuses the rest."""
    assert error_index("rate_limited") == LAYOUT.ERRORS
    with pytest.raises(ValueError, match="known: rate_limited, server_error"):
        error_index("nope")


# -- latency --------------------------------------------------------------------------------


def test_failures_do_not_move_latency(make: Make) -> None:
    """Latency describes answers only: failures change no percentile, mean or EWMA."""
    window, _ = make()
    window.success(0.2, ttft=0.1)
    before = window.stats()
    for name in ERROR_CLASSES:
        window.failure(name)
    after = window.stats()
    assert after.requests == before.requests + len(ERROR_CLASSES)
    assert after.latency == before.latency
    assert after.ttft == before.ttft
    assert after.latency.mean == pytest.approx(0.2)


def test_failures_alone_leave_latency_unknown(make: Make) -> None:
    """A window of failures only has no latency figures at all."""
    window, _ = make()
    window.failure("connection")
    window.failure("timeout")
    stats = window.stats()
    assert stats.latency == Percentiles()
    assert stats.ttft == Percentiles()


def test_latency_mean_is_over_successes(make: Make) -> None:
    """The mean divides the latency sum by the successes, not the requests."""
    window, _ = make()
    window.success(0.1)
    window.success(0.3)
    window.failure("timeout")
    assert window.stats().latency.mean == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("seconds", "expected_bin"),
    [(0.0, 0), (0.005, 0), (0.0051, 1), (0.1, 4), (0.1001, 5), (120.0, 20), (120.5, 21)],
)
def test_a_value_on_a_bound_falls_in_that_bounds_bin(
    make: Make, seconds: float, expected_bin: int
) -> None:
    """Upper bounds are inclusive (Prometheus ``le``); beyond the last bound is the open bin."""
    window, _ = make()
    window.success(seconds, ttft=seconds)
    vec = window.merged()
    lat = vec[LAYOUT.LATENCY_HIST : LAYOUT.LATENCY_HIST + BINS]
    ttft = vec[LAYOUT.TTFT_HIST : LAYOUT.TTFT_HIST + BINS]
    assert lat == hist({expected_bin: 1})
    assert ttft == hist({expected_bin: 1})
    assert bin_of(seconds) == expected_bin


# -- percentiles ----------------------------------------------------------------------------


def test_empty_window_has_no_percentiles(make: Make) -> None:
    """No answers: p50/p95/p99/mean/EWMA are all None."""
    window, _ = make()
    stats = window.stats()
    assert stats.latency == Percentiles(None, None, None, None, None)
    assert stats.ttft == Percentiles(None, None, None, None, None)


def test_everything_in_the_open_last_bin_reports_its_floor(make: Make) -> None:
    """Answers slower than the last bound report 120 s for every percentile (a floor)."""
    window, _ = make()
    window.success(300.0)
    window.success(500.0)
    latency = window.stats().latency
    assert (latency.p50, latency.p95, latency.p99) == (120.0, 120.0, 120.0)
    assert latency.mean == pytest.approx(400.0)


def test_percentiles_interpolate_inside_a_bin(make: Make) -> None:
    """Four answers in (0.1, 0.175]: p50 sits half way into the bin, p95 95 % of the way."""
    window, _ = make()
    for latency in (0.12, 0.13, 0.14, 0.15):
        window.success(latency)
    stats = window.stats().latency
    assert stats.p50 == pytest.approx(0.1 + 0.075 * 0.50)
    assert stats.p95 == pytest.approx(0.1 + 0.075 * 0.95)
    assert stats.p99 == pytest.approx(0.1 + 0.075 * 0.99)


def _uniform(rng: random.Random) -> list[float]:
    return [rng.uniform(0.0, 2.0) for _ in range(2000)]


def _exponential(rng: random.Random) -> list[float]:
    return [rng.expovariate(1 / 0.4) for _ in range(2000)]


def _lognormal(rng: random.Random) -> list[float]:
    return [rng.lognormvariate(math.log(0.3), 0.9) for _ in range(2000)]


def _bimodal(rng: random.Random) -> list[float]:
    fast = [rng.uniform(0.02, 0.06) for _ in range(1800)]
    slow = [rng.uniform(4.0, 9.0) for _ in range(200)]
    return fast + slow


@pytest.mark.parametrize("draw", [_uniform, _exponential, _lognormal, _bimodal])
def test_percentiles_of_known_distributions_are_within_one_bin(
    make: Make, draw: Callable[[random.Random], list[float]]
) -> None:
    """p50/p95/p99 from the histogram are within one bin's width of the exact sample quantile."""
    values = draw(random.Random(20240517))
    window, _ = make()
    for v in values:
        window.success(v, ttft=v / 2)
    stats = window.stats()
    for q, got, got_ttft in (
        (0.50, stats.latency.p50, stats.ttft.p50),
        (0.95, stats.latency.p95, stats.ttft.p95),
        (0.99, stats.latency.p99, stats.ttft.p99),
    ):
        exact = exact_quantile(values, q)
        assert got is not None
        assert abs(got - exact) <= bin_width(exact), (q, got, exact)
        exact_ttft = exact_quantile([v / 2 for v in values], q)
        assert got_ttft is not None
        assert abs(got_ttft - exact_ttft) <= bin_width(exact_ttft), (q, got_ttft, exact_ttft)
    assert stats.latency.mean == pytest.approx(sum(values) / len(values))


def test_uniform_answers_give_interpolated_percentiles(make: Make) -> None:
    """Evenly spread answers in (0, 2]: interpolation recovers the quantiles closely."""
    window, _ = make()
    values = [(k + 0.5) / 500 for k in range(1000)]  # evenly spread in (0, 2)
    for v in values:
        window.success(v)
    latency = window.stats().latency
    # Within the bins (1.0, 1.5] and (1.5, 2.0] the spread is even, so the estimate is close.
    assert latency.p50 == pytest.approx(1.0, abs=0.01)
    assert latency.p95 == pytest.approx(1.9, abs=0.01)
    assert latency.p99 == pytest.approx(1.98, abs=0.01)


def test_percentile_of_an_empty_histogram_is_none() -> None:
    """No samples, no quantile."""
    assert percentile([0.0] * BINS, 0.5) is None
    assert percentile([], 0.5) is None


def test_percentile_interpolates_within_a_single_bin() -> None:
    """All samples in bin (0.25, 0.4]: q moves linearly from the lower to the upper bound."""
    h = hist({7: 10})
    assert percentile(h, 0.0) == pytest.approx(0.25)
    assert percentile(h, 0.5) == pytest.approx(0.325)
    assert percentile(h, 0.9) == pytest.approx(0.25 + 0.15 * 0.9)
    assert percentile(h, 1.0) == pytest.approx(0.4)


def test_percentile_first_bin_starts_at_zero() -> None:
    """The first bin is (0, 5 ms]; its lower bound is 0."""
    h = hist({0: 4})
    assert percentile(h, 0.5) == pytest.approx(0.0025)
    assert percentile(h, 0.25) == pytest.approx(0.00125)


def test_percentile_walks_bins_and_skips_empty_ones() -> None:
    """1 sample in (0, 5 ms], 3 in (10 ms, 25 ms]: ranks past the first fall in the third bin."""
    h = hist({0: 1, 2: 3})
    assert percentile(h, 0.25) == pytest.approx(0.005)  # rank 1: the top of the first bin
    assert percentile(h, 0.5) == pytest.approx(0.01 + 0.015 * (1 / 3))
    assert percentile(h, 1.0) == pytest.approx(0.025)


def test_percentile_in_the_open_last_bin_is_its_lower_bound() -> None:
    """The open bin has no upper bound, so any quantile landing in it reports 120 s."""
    assert percentile(hist({BINS - 1: 7}), 0.5) == 120.0
    assert percentile(hist({BINS - 1: 7}), 0.01) == 120.0
    h = hist({3: 90, BINS - 1: 10})
    assert percentile(h, 0.5) == pytest.approx(0.025 + 0.025 * (50 / 90))
    assert percentile(h, 0.99) == 120.0


def test_percentile_is_monotonic_in_q() -> None:
    """A higher quantile never reports a smaller value."""
    h = hist({1: 3, 4: 5, 9: 2, 15: 1, BINS - 1: 1})
    qs = [i / 100 for i in range(101)]
    values = [percentile(h, q) for q in qs]
    assert all(v is not None for v in values)
    assert values == sorted(values)  # type: ignore[type-var]


# -- EWMA -----------------------------------------------------------------------------------


def test_ewma_starts_at_the_first_sample_then_moves_by_alpha(make: Make) -> None:
    """EWMA = first sample, then prev + alpha * (sample - prev) per answer."""
    window, _ = make(alpha=0.5)
    assert window.latency_ewma is None
    window.success(1.0)
    assert window.latency_ewma == 1.0
    window.success(3.0)
    assert window.latency_ewma == pytest.approx(2.0)
    window.success(0.0)
    assert window.latency_ewma == pytest.approx(1.0)
    assert window.stats().latency.ewma == pytest.approx(1.0)


def test_ewma_uses_the_configured_alpha(make: Make) -> None:
    """With alpha 0.3 a step from 1 to 2 moves the EWMA to 1.3."""
    window, _ = make()
    window.success(1.0)
    window.success(2.0)
    assert window.latency_ewma == pytest.approx(1.3)


def test_ttft_ewma_only_follows_samples_with_a_ttft(make: Make) -> None:
    """Non-stream answers (no ttft) move the latency EWMA but leave the ttft EWMA alone."""
    window, _ = make(alpha=0.5)
    window.success(1.0)
    assert window.ttft_ewma is None
    window.success(1.0, ttft=0.4)
    assert window.ttft_ewma == pytest.approx(0.4)
    window.success(3.0)
    assert window.ttft_ewma == pytest.approx(0.4)
    window.success(1.0, ttft=0.8)
    assert window.ttft_ewma == pytest.approx(0.6)
    assert window.latency_ewma == pytest.approx(1.5)  # 1, 1, then 2 (after 3.0), then 1.5
    stats = window.stats()
    assert stats.ttft.ewma == pytest.approx(0.6)
    assert stats.ttft.mean == pytest.approx(0.6)  # (0.4 + 0.8) / 2, over the two streams only


def test_ttft_figures_come_only_from_streams(make: Make) -> None:
    """ttft percentiles and mean count the answers that reported one, not every answer."""
    window, _ = make()
    window.success(5.0)
    window.success(5.0)
    window.success(5.0, ttft=0.3)
    stats = window.stats()
    assert stats.ttft.mean == pytest.approx(0.3)
    assert stats.ttft.p50 is not None and 0.25 < stats.ttft.p50 <= 0.4
    assert window.merged()[LAYOUT.TTFT_COUNT] == 1


def test_failures_do_not_move_the_ewma(make: Make) -> None:
    """A failure is not a latency sample for the EWMA either."""
    window, _ = make()
    window.failure("timeout")
    assert window.latency_ewma is None
    window.success(0.5, ttft=0.2)
    window.failure("connection")
    assert (window.latency_ewma, window.ttft_ewma) == (0.5, 0.2)


def test_ewma_ages_out_with_its_newest_sample(make: Make) -> None:
    """An EWMA reads as unmeasured (None) from the moment its newest sample leaves the window
    (12 x 5 s: at 60 s for a sample taken at 0 s), like the window's other figures."""
    window, clock = make()
    window.success(0.5, ttft=0.2)
    clock.t = 59.999
    stats = window.stats()
    assert (stats.latency.ewma, stats.ttft.ewma) == (0.5, 0.2)
    assert (window.latency_ewma, window.ttft_ewma) == (0.5, 0.2)
    clock.t = 60.0
    stats = window.stats()
    assert (stats.latency.p50, stats.latency.ewma) == (None, None)
    assert (stats.ttft.p50, stats.ttft.ewma) == (None, None)
    assert (window.latency_ewma, window.ttft_ewma) == (None, None)
    assert window.stats(now=59.0).latency.ewma == 0.5  # judged at the time asked for


def test_a_newer_sample_keeps_the_ewma_alive(make: Make) -> None:
    """Each sample restarts the EWMA's time in the window; latency and TTFT age separately."""
    window, clock = make()
    window.success(1.0, ttft=0.4)
    clock.t = 50.0
    window.success(2.0)  # a latency sample only
    clock.t = 100.0
    assert window.latency_ewma == pytest.approx(1.3)
    assert window.ttft_ewma is None
    clock.t = 110.0
    assert window.latency_ewma is None


def test_an_aged_out_ewma_restarts_at_the_next_sample(make: Make) -> None:
    """The first sample after a silence longer than the window is the new EWMA: the stale
    figure does not drag it (0.7 s then, 0.05 s now reads 0.05 s, not 0.505 s)."""
    window, clock = make()
    window.success(0.7, ttft=0.7)
    clock.t = 60.0
    window.success(0.05, ttft=0.05)
    assert (window.latency_ewma, window.ttft_ewma) == (0.05, 0.05)
    window.success(0.15)
    assert window.latency_ewma == pytest.approx(0.08)


# -- tokens, cost, inflight, totals ---------------------------------------------------------


def test_tokens_count_on_every_attempt_and_cost_only_on_success(make: Make) -> None:
    """Tokens of a cut stream are counted; cost is billed only for answers."""
    window, _ = make()
    window.success(0.1, tokens_in=10, tokens_out=20, cost=0.25)
    window.success(0.1, tokens_in=1, tokens_out=2, cost=0.5)
    window.failure("stream_broken", tokens_in=5, tokens_out=7)
    stats = window.stats()
    assert (stats.tokens_in, stats.tokens_out) == (16, 29)
    assert stats.cost == pytest.approx(0.75)
    assert window.totals[LAYOUT.COST] == pytest.approx(0.75)


def test_tokens_and_cost_expire_with_their_bucket(make: Make) -> None:
    """Tokens and cost are windowed figures like the counts."""
    window, clock = make()
    window.success(0.1, tokens_in=10, tokens_out=20, cost=1.0)
    clock.t = 30.0
    window.success(0.1, tokens_in=1, tokens_out=2, cost=0.5)
    clock.t = 60.0
    stats = window.stats()
    assert (stats.tokens_in, stats.tokens_out, stats.cost) == (1, 2, 0.5)


def test_inflight_shows_in_stats(make: Make) -> None:
    """The in-flight gauge the caller moves is reported as is."""
    window, _ = make()
    assert window.stats().inflight == 0
    window.inflight += 3
    window.inflight -= 1
    assert window.stats().inflight == 2
    assert window.stats(1000.0).inflight == 2


def test_totals_are_lifetime_and_survive_expiry_and_slot_reuse(make: Make) -> None:
    """``totals`` keep counting across expiry and ring reuse (they feed Prometheus counters)."""
    window, clock = make()
    window.success(0.1, tokens_in=3, cost=0.5)
    window.failure("timeout")
    clock.t = 60.0  # bucket 12 reuses slot 0
    window.success(0.2)
    clock.t = 5000.0
    window.failure("caller_error")
    assert window.stats().requests == 1
    totals = window.totals
    assert totals[LAYOUT.REQUESTS] == 4
    assert totals[LAYOUT.SUCCESSES] == 2
    assert totals[error_index("timeout")] == 1
    assert totals[error_index("caller_error")] == 1
    assert totals[LAYOUT.TOKENS_IN] == 3
    assert totals[LAYOUT.COST] == 0.5
    assert totals[LAYOUT.LATENCY_SUM] == pytest.approx(0.3)
    assert sum(totals[LAYOUT.LATENCY_HIST : LAYOUT.LATENCY_HIST + BINS]) == 2


# -- pending deltas -------------------------------------------------------------------------


def test_pending_is_off_by_default(make: Make) -> None:
    """Without track_pending nothing is kept for a store: take gives {}, restore does nothing."""
    window, _ = make()
    window.success(0.1)
    window.failure("timeout")
    assert window.take_pending() == {}
    delta = empty()
    delta[LAYOUT.REQUESTS] = 5
    window.restore_pending({0: delta})
    assert window.take_pending() == {}
    assert window.stats().requests == 2


def test_take_pending_returns_per_bucket_deltas_and_resets(make: Make) -> None:
    """Records are kept per absolute bucket index until taken; a second take is empty."""
    window, clock = make(track_pending=True)
    window.success(0.1, tokens_in=4, cost=0.5)
    window.failure("rate_limited")
    clock.t = 7.0
    window.success(0.2)
    pending = window.take_pending()
    assert sorted(pending) == [0, 1]
    assert pending[0][LAYOUT.REQUESTS] == 2
    assert pending[0][LAYOUT.SUCCESSES] == 1
    assert pending[0][error_index("rate_limited")] == 1
    assert pending[0][LAYOUT.TOKENS_IN] == 4
    assert pending[0][LAYOUT.COST] == 0.5
    assert pending[1][LAYOUT.REQUESTS] == 1
    assert window.take_pending() == {}
    # Taking hands over the deltas, not the window's own figures.
    assert window.stats().requests == 3


def test_pending_after_take_holds_only_new_records(make: Make) -> None:
    """Records after a take start fresh deltas, even in a bucket that was taken before."""
    window, clock = make(track_pending=True)
    window.success(0.1)
    first = window.take_pending()
    window.success(0.1)
    clock.t = 5.0
    window.success(0.1)
    second = window.take_pending()
    assert first[0][LAYOUT.REQUESTS] == 1
    assert {i: v[LAYOUT.REQUESTS] for i, v in second.items()} == {0: 1, 1: 1}
    # The taken vectors are no longer written to.
    assert first[0][LAYOUT.REQUESTS] == 1


def test_pending_deltas_equal_the_window_buckets(make: Make) -> None:
    """Before any take, each pending vector equals the live bucket with the same index."""
    window, clock = make(track_pending=True)
    for t, latency in ((0.0, 0.1), (3.0, 0.7), (9.0, 2.5), (21.0, 0.05)):
        clock.t = t
        window.success(latency, ttft=latency / 2, tokens_out=7)
        window.failure("bad_response")
    assert window.take_pending() == dict(window.live())


def test_restore_pending_merges_back(make: Make) -> None:
    """Deltas a flush could not deliver are added to what was recorded since."""
    window, clock = make(track_pending=True)
    window.success(0.1)
    clock.t = 5.0
    window.failure("timeout")
    failed_flush = window.take_pending()
    window.success(0.2)  # bucket 1 again
    clock.t = 10.0
    window.success(0.3)  # bucket 2, new
    window.restore_pending(failed_flush)
    pending = window.take_pending()
    assert {i: v[LAYOUT.REQUESTS] for i, v in pending.items()} == {0: 1, 1: 2, 2: 1}
    assert pending[1][error_index("timeout")] == 1
    assert pending[1][LAYOUT.SUCCESSES] == 1
    # Restoring is about the store's deltas; the window itself is unchanged by it.
    assert window.stats().requests == 4


def test_restore_pending_drops_buckets_out_of_the_window(make: Make) -> None:
    """At t=60 bucket 0 has left the window, so its undelivered delta is dropped; bucket 1 stays."""
    window, clock = make(track_pending=True)
    window.success(0.1)
    clock.t = 5.0
    window.success(0.1)
    undelivered = window.take_pending()
    clock.t = 60.0
    window.restore_pending(undelivered)
    assert sorted(window.take_pending()) == [1]
    window.restore_pending(undelivered)
    clock.t = 65.0
    window.restore_pending(window.take_pending())
    assert window.take_pending() == {}


def test_restore_pending_after_a_long_gap_keeps_nothing(make: Make) -> None:
    """Deltas older than a whole window are all dropped."""
    window, clock = make(track_pending=True)
    for t in (0.0, 20.0, 40.0):
        clock.t = t
        window.success(0.1)
    undelivered = window.take_pending()
    clock.t = 500.0
    window.restore_pending(undelivered)
    assert window.take_pending() == {}


# -- merged / live / summarise --------------------------------------------------------------


def test_merged_is_the_sum_of_the_live_buckets(make: Make) -> None:
    """``merged`` adds the live vectors element-wise and leaves stale ones out."""
    window, clock = make()
    window.success(9.0)  # bucket 0: stale by t=62
    for t in (10.0, 30.0, 61.0):
        clock.t = t
        window.success(0.2, ttft=0.1, tokens_in=2)
        window.failure("server_error")
    clock.t = 62.0
    live = window.live()
    assert sorted(i for i, _ in live) == [2, 6, 12]
    expected = empty()
    for _, vec in live:
        for k, value in enumerate(vec):
            expected[k] += value
    merged = window.merged()
    assert merged == expected
    assert merged[LAYOUT.REQUESTS] == 6
    assert merged[LAYOUT.TOKENS_IN] == 6


def test_merged_is_a_copy(make: Make) -> None:
    """Changing the merged vector does not change the window."""
    window, _ = make()
    window.success(0.1)
    merged = window.merged()
    merged[LAYOUT.REQUESTS] = 100
    assert window.stats().requests == 1


def test_add_into_adds_element_wise() -> None:
    """``add_into`` is in-place vector addition."""
    target = [1.0, 0.0, 2.5]
    add_into(target, [0.5, 3.0, 0.0])
    assert target == [1.5, 3.0, 2.5]


def test_summarise_of_two_merged_windows_equals_one_window_of_all_records(make: Make) -> None:
    """Mergeability: vectors of two replicas added up read as one window that saw everything."""
    a, clock_a = make()
    b, clock_b = make()
    both, clock_both = make()
    records: list[tuple[float, str, float]] = [
        (1.0, "ok", 0.25),
        (3.0, "timeout", 0.0),
        (7.0, "ok", 1.5),
        (12.0, "caller_error", 0.0),
        (20.0, "ok", 0.125),
        (33.0, "server_error", 0.0),
        (41.0, "ok", 3.0),
        (58.0, "ok", 150.0),
    ]
    for n, (t, outcome, latency) in enumerate(records):
        replica = (a, clock_a) if n % 2 else (b, clock_b)
        for window, clock in (replica, (both, clock_both)):
            clock.t = t
            if outcome == "ok":
                window.success(latency, ttft=latency / 2, tokens_in=n, tokens_out=2 * n, cost=0.5)
            else:
                window.failure(outcome, tokens_in=n)
    now = 59.0
    combined = a.merged(now)
    add_into(combined, b.merged(now))
    assert combined == both.merged(now)
    fleet = summarise(combined, 60.0)
    assert fleet == summarise(both.merged(now), 60.0)
    sa, sb = summarise(a.merged(now), 60.0), summarise(b.merged(now), 60.0)
    assert fleet.requests == sa.requests + sb.requests == len(records)
    assert fleet.successes == sa.successes + sb.successes == 5
    assert fleet.failures == sa.failures + sb.failures == 2
    assert fleet.error_rate == pytest.approx(2 / 7)
    assert fleet.tokens_in == sa.tokens_in + sb.tokens_in
    assert fleet.tokens_out == sa.tokens_out + sb.tokens_out
    assert fleet.cost == sa.cost + sb.cost == 2.5
    assert fleet.latency.mean == pytest.approx((0.25 + 1.5 + 0.125 + 3.0 + 150.0) / 5)


def test_summarise_passes_window_seconds_inflight_and_ewmas_through() -> None:
    """The extra figures a vector cannot carry are taken from the arguments."""
    stats = summarise(empty(), 30.0, inflight=4, latency_ewma=0.5, ttft_ewma=0.25)
    assert stats == WindowStats(
        window_seconds=30.0,
        inflight=4,
        latency=Percentiles(ewma=0.5),
        ttft=Percentiles(ewma=0.25),
    )


def test_window_stats_is_a_frozen_value(make: Make) -> None:
    """Stats are a snapshot: later records do not change one already taken."""
    window, _ = make()
    window.success(0.1)
    snapshot = window.stats()
    window.success(0.1)
    assert snapshot.requests == 1
    with pytest.raises(AttributeError):
        snapshot.requests = 5  # type: ignore[misc]


# -- property: sliding membership -----------------------------------------------------------

OUTCOMES = ("ok", *ERROR_CLASSES)


@settings(max_examples=150, deadline=None, database=None)
@given(
    buckets=st.integers(min_value=1, max_value=6),
    width=st.sampled_from([0.5, 1.0, 2.0, 5.0]),
    start=st.integers(min_value=-40, max_value=40),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=60), st.sampled_from(OUTCOMES)),
        max_size=40,
    ),
    later=st.integers(min_value=0, max_value=80),
)
def test_request_count_equals_records_in_the_last_buckets(
    buckets: int,
    width: float,
    start: int,
    steps: list[tuple[int, str]],
    later: int,
) -> None:
    """For any record sequence, the count is the records whose bucket is among the last ones.

    Times move forward in quarter seconds (exact in binary), so the expected bucket index
    ``floor(t / width)`` is computed without rounding doubt.
    """
    clock = FakeClock(start / 4)
    window = RollingWindow(buckets=buckets, width=width, clock=clock, track_pending=True)
    recorded: list[tuple[int, str]] = []

    def expected(now: float) -> tuple[int, int]:
        current = math.floor(now / width)
        inside = [o for i, o in recorded if current - buckets < i <= current]
        failures = sum(1 for o in inside if o != "ok" and o != CALLER_ERROR)
        return len(inside), failures

    for delta, outcome in steps:
        clock.t += delta / 4
        if outcome == "ok":
            window.success(0.1)
        else:
            window.failure(outcome)
        recorded.append((math.floor(clock.t / width), outcome))
        stats = window.stats()
        assert (stats.requests, stats.failures) == expected(clock.t)
    clock.t += later / 4
    stats = window.stats()
    assert (stats.requests, stats.failures) == expected(clock.t)
    assert window.totals[LAYOUT.REQUESTS] == len(recorded)
    pending = window.take_pending()
    assert sum(v[LAYOUT.REQUESTS] for v in pending.values()) == len(recorded)


def test_a_stream_success_moves_ttft_but_not_latency() -> None:
    """``success(None, ttft=...)`` (a stream) counts a success and its time to first token; the
    latency figures (histogram, mean, EWMA) describe complete non-streaming answers only."""
    window = RollingWindow(clock=lambda: 100.0)
    window.success(0.2)
    window.success(None, ttft=0.05)
    stats = window.stats()
    assert (stats.requests, stats.successes) == (2, 2)
    assert stats.latency.mean == pytest.approx(0.2)
    assert stats.latency.ewma == pytest.approx(0.2)
    assert stats.ttft.mean == pytest.approx(0.05)
    assert sum(window.totals[LAYOUT.LATENCY_HIST : LAYOUT.LATENCY_HIST + BINS]) == 1
    assert window.totals[LAYOUT.LATENCY_COUNT] == 1
