"""Figures and checks of a chaos run, from synthetic result documents with known answers.

Each test builds the smallest result.json that exercises one definition (requests rows, counter
samples every 250 ms, upstream billing) and asserts the exact figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest

from gateway.chaos.figures import check, compute, percentile
from gateway.chaos.load import OUTCOME_COLUMNS

COLUMNS = list(OUTCOME_COLUMNS)  # the driver's row layout in result.json


def fault(
    index: int,
    at: float,
    length: float | None,
    *,
    kind: str = "outage",
    target: str | None = "primary",
    detect_within: float | None = None,
    recover_within: float | None = None,
) -> dict[str, Any]:
    """A fault as Scenario.to_json() writes it."""
    label = f"{kind.replace('_', ' ')} of {target}" if target else kind.replace("_", " ")
    return {
        "index": index,
        "kind": kind,
        "at": at,
        "for": length,
        "target": target,
        "params": {},
        "detect_within": detect_within,
        "recover_within": recover_within,
        "label": label,
    }


def scenario(
    faults: Sequence[dict[str, Any]] = (),
    *,
    deployments: Sequence[str] = ("primary", "fallback"),
    duration: float = 30.0,
    **expect: Any,
) -> dict[str, Any]:
    """A scenario document with the keys the figures read."""
    return {
        "name": "synthetic",
        "description": "A made-up run with known figures.",
        "deployments": [{"name": d} for d in deployments],
        "traffic": {"duration": duration},
        "faults": list(faults),
        "expect": {
            "max_client_failures": 0,
            "allowed_failure_reasons": [],
            "max_retry_amplification": "budget",
            "max_p99": None,
            "max_wasted_share": None,
            **expect,
        },
    }


def req(
    t: float,
    latency: float | None = 0.1,
    *,
    ok: bool = True,
    reason: str | None = None,
    truncated: bool = False,
) -> list[Any]:
    """One requests row (the columns the runner writes)."""
    return [t, latency, 0.5, False, 200, ok, reason, truncated, "primary", 1, 0, 50, 8]


def samples(
    per_bin: Mapping[str, Sequence[int]],
    *,
    replica: int = 0,
    breaker: Mapping[str, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """Counter samples at t = 0, 0.25, ... whose deltas are ``per_bin[dep][k]`` in bin k."""
    bins = len(next(iter(per_bin.values())))
    totals = dict.fromkeys(per_bin, 0)
    out = []
    for k in range(bins + 1):
        if k:
            for dep, counts in per_bin.items():
                totals[dep] += counts[k - 1]
        out.append(
            {
                "t": k * 0.25,
                "replica": replica,
                # split arbitrarily: the figures add success and error
                "attempts": {
                    d: {"success": n - n // 3, "error": n // 3} for d, n in totals.items()
                },
                "breaker": {d: states[k] for d, states in (breaker or {}).items()},
                "status": {d: "healthy" for d in per_bin},
            }
        )
    return out


def result(
    scen: dict[str, Any],
    rows: Sequence[list[Any]] = (),
    sample_list: Sequence[dict[str, Any]] = (),
    *,
    upstreams: dict[str, Any] | None = None,
    replicas: int = 1,
    budget: tuple[float, float] = (0.2, 1.0),
) -> dict[str, Any]:
    """A result.json document without figures."""
    return {
        "version": 1,
        "scenario": scen,
        "started_at": "2026-11-27T22:10:00Z",
        "duration": scen["traffic"]["duration"],
        "replicas": replicas,
        "budget": {"ratio": budget[0], "min_per_second": budget[1]},
        "requests": {"columns": COLUMNS, "rows": list(rows)},
        "samples": list(sample_list),
        "upstreams": upstreams or {},
        "events": [],
    }


def by_name(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in checks}


# --- requests ------------------------------------------------------------------------------------


def test_counts_split_successes_failures_and_truncations() -> None:
    """Failures are counted by reason; a truncated success is counted apart, not as a failure."""
    rows = [
        req(0.1),
        req(0.2),
        req(0.3, None, ok=False, reason="http_502:upstream_error"),
        req(0.4, None, ok=False, reason="client_timeout"),
        req(0.5, None, ok=False, reason="http_502:upstream_error"),
        req(0.6, 0.1, ok=False, reason="truncated", truncated=True),
    ]
    f = compute(result(scenario(duration=1.0), rows))
    assert f["requests"] == 6
    assert f["succeeded"] == 2
    assert f["client_failures"] == 3
    assert f["failures_by_reason"] == {"client_timeout": 1, "http_502:upstream_error": 2}
    assert f["truncated_successes"] == 1


def test_percentile_is_nearest_rank() -> None:
    """p50/p95/p99 of 1..20 are the 10th, 19th and 20th values; none of nothing."""
    values = [float(v) for v in range(20, 0, -1)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (
        10.0,
        19.0,
        20.0,
    )
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0


def test_phases_cut_the_run_at_fault_boundaries() -> None:
    """before / during / after phases hold the requests sent in them, with their percentiles."""
    rows = [req(0.5 * i, latency=(i + 1) / 100) for i in range(20)]  # t 0..9.5, 10..200 ms
    rows += [req(10.0 + 0.5 * i, latency=1.0 + i) for i in range(4)]  # during: 1, 2, 3, 4 s
    rows += [req(12.0, None, ok=False, reason="client_timeout")]
    rows += [req(25.0, latency=0.3)]  # after the reload
    scen = scenario([fault(0, 10.0, 10.0), fault(1, 22.0, None, kind="policy_reload", target=None)])
    phases = compute(result(scen, rows))["phases"]
    assert [(p["name"], p["start"], p["end"]) for p in phases] == [
        ("before", 0.0, 10.0),
        ("during outage of primary", 10.0, 20.0),
        ("after outage of primary", 20.0, 22.0),
        ("after policy reload", 22.0, 30.0),  # no `for`: only an after phase, from `at`
    ]
    before, during, after, reload = phases
    assert (before["requests"], before["failures"]) == (20, 0)
    assert (before["p50"], before["p95"], before["p99"]) == (0.1, 0.19, 0.2)
    assert (during["requests"], during["failures"]) == (5, 1)
    assert (during["p50"], during["p95"], during["p99"]) == (2.0, 4.0, 4.0)
    assert after["requests"] == 0 and after["p99"] is None
    assert (reload["requests"], reload["p50"]) == (1, 0.3)


def test_overlapping_faults_give_overlapping_phases() -> None:
    """A fault that starts inside another still gets its own during phase."""
    scen = scenario([fault(0, 5.0, 10.0), fault(1, 8.0, 4.0, kind="brownout", target="fallback")])
    names = {p["name"]: (p["start"], p["end"]) for p in compute(result(scen))["phases"]}
    assert names == {
        "before": (0.0, 5.0),
        "during outage of primary": (5.0, 15.0),
        "after outage of primary": (15.0, 30.0),
        "during brownout of fallback": (8.0, 12.0),
        "after brownout of fallback": (12.0, 30.0),
    }


# --- amplification ------------------------------------------------------------------------------


def test_amplification_sums_counter_growth_over_replicas() -> None:
    """Attempts are counter deltas summed over replicas; the bound follows the retry budget."""
    rows = [req(0.01 * i) for i in range(100)]
    r0 = samples({"primary": [30, 20, 10, 0], "fallback": [5, 5, 0, 0]}, replica=0)
    r1 = samples({"primary": [10, 10, 10, 10], "fallback": [0, 0, 0, 15]}, replica=1)
    for s in r1:  # replica 1 had served traffic before t = 0: lifetime counters
        s["attempts"]["primary"]["success"] += 1000
    doc = result(scenario(duration=1.0), rows, r0 + r1, replicas=2, budget=(0.2, 1.0))
    f = compute(doc)
    assert f["upstream_attempts"] == 125
    assert f["retry_amplification"] == 1.25
    assert f["amplification_bound"] == pytest.approx(1 + 0.2 + 2 * 1.0 * 1.0 / 100)
    assert f["series"]["attempts"] == {"primary": [40, 30, 20, 10], "fallback": [5, 5, 0, 15]}


def test_restarted_replica_counts_from_zero() -> None:
    """A counter that goes down (a new process) counts its new value as growth."""
    s = samples({"primary": [10, 10, 10, 10]})
    s[3]["attempts"]["primary"] = {"success": 4, "error": 0}  # restarted between t=0.5 and 0.75
    s[4]["attempts"]["primary"] = {"success": 9, "error": 0}
    f = compute(result(scenario(duration=1.0), [req(0.1)] * 10, s))
    assert f["series"]["attempts"]["primary"] == [10, 10, 4, 5]
    assert f["upstream_attempts"] == 29


def test_a_replica_back_after_a_gap_counts_in_the_tick_before_its_first_sample() -> None:
    """Killed after 0.25 s, read again at 1.5 s with a fresh counter: its attempts belong to the
    last tick before that reading (bin 5), not to the middle of the gap."""
    s = samples({"primary": [10, 0, 0, 0, 0, 7]})
    del s[2:6]  # no reading while the replica was down
    s[-1]["attempts"]["primary"] = {"success": 7, "error": 0}  # a new process: from zero
    f = compute(result(scenario(duration=1.5), [req(0.1)] * 17, s))
    assert f["series"]["attempts"]["primary"] == [10, 0, 0, 0, 0, 7]
    assert f["upstream_attempts"] == 17


def test_late_samples_put_attempts_in_the_bin_they_happened_in() -> None:
    """Samples read ~25 ms after each tick: a delta lands in the bin holding the midpoint of the
    interval it covers (the bin before its own sample time), not one bin late."""
    s = samples({"primary": [4, 5, 6, 7], "fallback": [1, 0, 2, 0]})
    for sample, late in zip(s, (0.0235, 0.0236, 0.023, 0.025, 0.0239), strict=True):
        sample["t"] += late
    f = compute(result(scenario(duration=1.0), [req(0.1)], s))
    assert f["series"]["attempts"] == {"primary": [4, 5, 6, 7], "fallback": [1, 0, 2, 0]}


def test_a_missed_sample_puts_the_delta_at_the_middle_of_its_interval() -> None:
    """A delta over two ticks (a sample was lost) goes to the bin holding the interval's midpoint;
    a deployment missing from the replica's earlier samples counts from zero."""
    s = [
        {"t": 0.02, "replica": 0, "attempts": {"primary": {"success": 5}}},
        {"t": 0.27, "replica": 0, "attempts": {"primary": {"success": 9}}},  # mid 0.145: bin 0
        {"t": 0.77, "replica": 0, "attempts": {"primary": {"success": 19}}},  # mid 0.52: bin 2
        {"t": 1.02, "replica": 0, "attempts": {"primary": {"success": 22}, "spare": {"error": 3}}},
    ]
    f = compute(result(scenario(duration=1.0), [req(0.1)], s))
    assert f["series"]["attempts"] == {
        "primary": [4, 0, 10, 3],
        "fallback": [0] * 4,
        "spare": [0, 0, 0, 3],
    }
    assert f["upstream_attempts"] == 20


def test_amplification_takes_the_upstreams_count_when_the_gateway_counted_fewer() -> None:
    """A hedge's loser or an abandoned attempt reaches the upstream but is not in the gateway's
    success/error counters: the larger of the two counts is the figure, each one is kept."""
    rows = [req(0.01 * i) for i in range(100)]
    s = samples({"primary": [50, 50, 0, 0]})
    upstreams = {"primary": {"received": 144}, "fallback": {"received": 0}}
    f = compute(result(scenario(duration=1.0), rows, s, upstreams=upstreams))
    assert (f["gateway_counted_attempts"], f["upstream_received"]) == (100, 144)
    assert f["upstream_attempts"] == 144 and f["retry_amplification"] == 1.44
    # refused connections never reach the upstream: then the gateway's count is the larger
    upstreams["primary"]["received"] = 60
    f = compute(result(scenario(duration=1.0), rows, s, upstreams=upstreams))
    assert f["upstream_attempts"] == 100


def test_no_requests_means_no_amplification_and_a_failed_check() -> None:
    """Without requests there is nothing to divide by: the amplification check fails."""
    scen = scenario(duration=1.0)
    f = compute(result(scen))
    assert (f["retry_amplification"], f["amplification_bound"]) == (None, None)
    amp = by_name(check(f, scen))["retry_amplification"]
    assert amp["passed"] is False
    assert amp["detail"] == "no request was sent"


# --- detection and recovery ---------------------------------------------------------------------


def split(primary: Sequence[int]) -> dict[str, list[int]]:
    """16 attempts per bin: ``primary[k]`` of them to primary, the rest to fallback."""
    return {"primary": list(primary), "fallback": [16 - p for p in primary]}


def shifting_traffic(
    *, moves_at: int | None, returns_at: int | None, bins: int = 120
) -> dict[str, list[int]]:
    """8 attempts per bin on each deployment; primary's go to fallback from bin ``moves_at``
    until bin ``returns_at``."""
    away = range(bins if moves_at is None else moves_at, bins if returns_at is None else returns_at)
    return split([0 if k in away else 8 for k in range(bins)])


def test_a_clean_shift_is_timed_at_the_bin_it_happened() -> None:
    """Traffic leaves primary exactly at bin 44 (11.0 s) and returns at bin 82 (20.5 s): detected
    1.0 s after the fault began, recovered 0.5 s after it ended; the centred share crosses half
    the 50 % baseline exactly at those moments."""
    scen = scenario([fault(0, 10.0, 10.0, detect_within=2.0, recover_within=0.25)])
    doc = result(scen, [req(0.1)], samples(shifting_traffic(moves_at=44, returns_at=82)))
    f = compute(doc)
    (measured,) = f["faults"]
    assert measured["baseline"] == 0.5
    assert measured["baseline_from"] == "before"
    assert measured["time_to_detect"] == 1.0
    assert measured["time_to_recover"] == 0.5
    series = f["series"]
    share = series["share"]["primary"]
    assert series["share_t"][42:47] == [10.5, 10.75, 11.0, 11.25, 11.5]
    assert share[42:47] == [0.5, 0.375, 0.25, 0.125, 0.0]  # centred on each bin's start
    assert series["share_t"][82] == 20.5 and share[80:85] == [0.0, 0.125, 0.25, 0.375, 0.5]
    checks = by_name(check(f, scen))
    assert checks["detect outage of primary"]["passed"] is True
    assert checks["detect outage of primary"]["value"] == 1.0
    assert checks["detect outage of primary"]["detail"] == (
        "traffic moved off primary 1.00 s after the fault began"
    )
    recover = checks["recover outage of primary"]
    assert (recover["passed"], recover["value"], recover["limit"]) == (False, 0.5, 0.25)


@pytest.mark.parametrize(
    ("still_on", "back", "timed"),
    [
        (1, 7, (1.0, 0.5)),  # 1 of 8 attempts before the switch: it came early in the bin
        (4, 4, (1.25, 0.75)),  # half way through the bin: timed at the next bin's start
    ],
)
def test_a_shift_inside_a_bin_is_timed_at_the_nearer_bin_start(
    still_on: int, back: int, timed: tuple[float, float]
) -> None:
    """Traffic leaves during bin 44 and comes back during bin 82: early in the bin (the bin is
    already past the threshold on its own) it is timed at that bin's start, else at the next."""
    primary = shifting_traffic(moves_at=44, returns_at=82)["primary"]
    primary[44], primary[82] = still_on, back
    scen = scenario([fault(0, 10.0, 10.0)])
    (measured,) = compute(result(scen, [req(0.1)], samples(split(primary))))["faults"]
    assert (measured["time_to_detect"], measured["time_to_recover"]) == timed


def test_a_bin_of_old_traffic_in_the_window_is_not_a_shift() -> None:
    """As in a real run: primary had all the traffic, and the last bin before it came back was
    light (3 attempts on fallback). The forward window from that bin is already 30 / 33 on
    primary, but the bin itself is not: recovery is timed at the next bin, where it came back."""
    per_bin = {
        "primary": [10] * 40 + [0] * 44 + [10] * 36,
        "fallback": [0] * 40 + [10] * 43 + [3] + [0] * 36,
    }
    scen = scenario([fault(0, 10.0, 10.0)])
    (measured,) = compute(result(scen, [req(0.1)], samples(per_bin)))["faults"]
    assert (measured["baseline"], measured["time_to_detect"]) == (1.0, 0.0)
    assert measured["time_to_recover"] == 1.0  # bin 84 = 21.0 s, not bin 83


def test_a_breaker_opening_between_late_samples_is_detected_in_its_bin() -> None:
    """As in a real run: samples ~25 ms after each tick, the fault at 4.0 s, the breaker opening
    between the samples at 4.025 and 4.275 s (6 of the 13 attempts in between still on primary:
    it opened half way): detected at the next bin, 4.25 s, where placing deltas by sample time
    would have said 4.5 s. All back on primary from 8.0 s: recovered at once."""
    per_bin = {
        "primary": [10] * 16 + [6] + [0] * 15 + [10] * 8,
        "fallback": [0] * 16 + [7] + [10] * 15 + [0] * 8,
    }
    s = samples(per_bin)
    for sample in s[1:]:
        sample["t"] += 0.025
    scen = scenario([fault(0, 4.0, 4.0)], duration=10.0)
    (measured,) = compute(result(scen, [req(0.1)], s))["faults"]
    assert (measured["baseline"], measured["time_to_detect"]) == (1.0, 0.25)
    assert measured["time_to_recover"] == 0.0


@pytest.mark.parametrize(("away", "detected"), [(1, 5.0), (2, 5.0), (3, 1.0)])
def test_a_blip_shorter_than_a_second_is_not_a_detection(away: int, detected: float) -> None:
    """Traffic leaves primary for 1 or 2 bins at 11.0 s and comes back: the forward second still
    holds too much of it, so detection waits for the real shift at bin 60 (15.0 s). Away for 3
    bins of 4, the window is exactly at the threshold (a quarter of the baseline): detected."""
    primary = shifting_traffic(moves_at=60, returns_at=None)["primary"]
    primary[44 : 44 + away] = [0] * away
    scen = scenario([fault(0, 10.0, 10.0)])
    (measured,) = compute(result(scen, [req(0.1)], samples(split(primary))))["faults"]
    assert measured["time_to_detect"] == detected


def test_a_flickering_return_is_recovered_when_traffic_stays() -> None:
    """Traffic comes back for one bin at 20.5 s, leaves again for three bins, then stays from
    21.5 s: recovery is 1.5 s after the fault ended, not 0.5 s."""
    primary = shifting_traffic(moves_at=44, returns_at=82)["primary"]
    primary[83:86] = [0, 0, 0]
    scen = scenario([fault(0, 10.0, 10.0, recover_within=1.0)])
    f = compute(result(scen, [req(0.1)], samples(split(primary))))
    assert f["faults"][0]["time_to_recover"] == 1.5
    recover = by_name(check(f, scen))["recover outage of primary"]
    assert (recover["passed"], recover["value"]) == (False, 1.5)


def test_a_fault_that_never_moves_traffic_is_not_detected() -> None:
    """No shift during the fault: detection is None, recovery is not looked for, both fail."""
    scen = scenario([fault(0, 10.0, 10.0, detect_within=3.0, recover_within=6.0)])
    doc = result(scen, [req(0.1)], samples(shifting_traffic(moves_at=None, returns_at=None)))
    f = compute(doc)
    (measured,) = f["faults"]
    assert (measured["time_to_detect"], measured["time_to_recover"]) == (None, None)
    checks = by_name(check(f, scen))
    detect, recover = checks["detect outage of primary"], checks["recover outage of primary"]
    assert (detect["passed"], detect["value"]) == (False, None)
    assert detect["detail"].startswith("never shifted")
    assert (recover["passed"], recover["detail"]) == (False, "no shift to recover from")


def test_windows_without_attempts_detect_nothing() -> None:
    """No attempt at all during the fault: no share, so no detection."""
    per_bin = shifting_traffic(moves_at=None, returns_at=None)
    for counts in per_bin.values():
        counts[40:80] = [0] * 40
    scen = scenario([fault(0, 10.0, 10.0)])
    assert (
        compute(result(scen, [req(0.1)], samples(per_bin)))["faults"][0]["time_to_detect"] is None
    )


def test_a_shift_after_the_fault_ended_is_not_a_detection() -> None:
    """Only bins starting inside [at, end) count as detecting the fault."""
    scen = scenario([fault(0, 10.0, 2.0)])
    doc = result(scen, [req(0.1)], samples(shifting_traffic(moves_at=60, returns_at=None)))
    assert compute(doc)["faults"][0]["time_to_detect"] is None


def test_the_detection_window_ends_with_the_fault() -> None:
    """A shift in the fault's last bin is a detection: the forward window stops at the end."""
    scen = scenario([fault(0, 10.0, 2.0)])
    doc = result(scen, [req(0.1)], samples(shifting_traffic(moves_at=47, returns_at=48)))
    assert compute(doc)["faults"][0]["time_to_detect"] == 1.75


def test_traffic_that_never_returns_is_not_restored() -> None:
    """Detected but never back above 75 % of the baseline: recovery None, its check fails."""
    scen = scenario([fault(0, 10.0, 10.0, recover_within=6.0)])
    doc = result(scen, [req(0.1)], samples(shifting_traffic(moves_at=40, returns_at=None)))
    f = compute(doc)
    assert f["faults"][0]["time_to_detect"] == 0.0
    assert f["faults"][0]["time_to_recover"] is None
    recover = by_name(check(f, scen))["recover outage of primary"]
    assert recover["passed"] is False
    assert recover["detail"].startswith("not restored")


def test_a_return_in_the_last_bin_of_the_run_is_a_recovery() -> None:
    """The recovery window stops at the run's end: traffic back in the last bin counts."""
    scen = scenario([fault(0, 10.0, 10.0)])
    doc = result(scen, [req(0.1)], samples(shifting_traffic(moves_at=40, returns_at=119)))
    assert compute(doc)["faults"][0]["time_to_recover"] == 9.75


def test_thin_traffic_before_the_faults_assumes_an_even_split() -> None:
    """Fewer than 20 attempts before the first fault: the baseline is 1/N of N deployments."""
    per_bin = {"primary": [1, 1, 1, 0, 0, 0, 0, 0], "fallback": [0, 0, 0, 1, 1, 1, 1, 1]}
    scen = scenario([fault(0, 0.75, 1.0)], deployments=("primary", "fallback", "spare"), duration=2)
    f = compute(result(scen, [req(0.1)], samples(per_bin)))
    (measured,) = f["faults"]
    assert (measured["baseline"], measured["baseline_from"]) == (0.333333, "even split")
    assert measured["time_to_detect"] == 0.0  # bins [3, 7): share 0 < 1/12


def test_run_wide_faults_are_not_measured_and_fail_a_detection_expectation() -> None:
    """A fault without a target has no share to follow."""
    scen = scenario([fault(0, 5.0, 5.0, kind="redis_outage", target=None, detect_within=1.0)])
    f = compute(result(scen, [req(0.1)]))
    assert f["faults"][0]["time_to_detect"] is None
    detect = by_name(check(f, scen))["detect redis outage"]
    assert detect["passed"] is False
    assert "not a deployment fault" in detect["detail"]


def test_two_faults_with_one_label_are_told_apart() -> None:
    """Phase and check names stay unique when a target fails twice."""
    scen = scenario([fault(0, 5.0, 2.0, detect_within=1.0), fault(1, 15.0, 2.0, detect_within=1.0)])
    f = compute(result(scen, [req(0.1)]))
    names = [c["name"] for c in check(f, scen) if c["name"].startswith("detect")]
    assert names == ["detect outage of primary at 5 s", "detect outage of primary at 15 s"]


# --- spend ---------------------------------------------------------------------------------------


def test_spend_prices_billed_and_wasted_tokens() -> None:
    """Spend is tokens times price per million; the wasted share divides wasted by total spend."""
    upstreams = {
        "primary": {
            "billed_prompt_tokens": 1_000_000,
            "billed_completion_tokens": 100_000,
            "wasted_prompt_tokens": 200_000,
            "wasted_completion_tokens": 50_000,
            "price": {"input": 2.0, "output": 10.0},
        },
        "fallback": {
            "billed_prompt_tokens": 500_000,
            "billed_completion_tokens": 0,
            "wasted_prompt_tokens": 0,
            "wasted_completion_tokens": 0,
            "price": {"input": 2.0, "output": 4.0},
        },
    }
    f = compute(result(scenario(duration=1.0), upstreams=upstreams))
    assert f["total_spend_usd"] == pytest.approx(2.0 + 1.0 + 1.0)
    assert f["wasted_tokens"] == 250_000
    assert f["wasted_spend_usd"] == pytest.approx(0.4 + 0.5)
    assert f["wasted_share"] == pytest.approx(0.9 / 4.0)
    assert f["spend"]["primary"]["wasted_usd"] == pytest.approx(0.9)


def test_no_spend_has_no_wasted_share_and_passes() -> None:
    """Nothing billed: the wasted share is undefined, and nothing was wasted."""
    scen = scenario(duration=1.0, max_wasted_share=0.1)
    f = compute(result(scen, [req(0.1)]))
    assert f["wasted_share"] is None
    wasted = by_name(check(f, scen))["wasted_share"]
    assert (wasted["passed"], wasted["value"]) == (True, None)


# --- series -------------------------------------------------------------------------------------


def test_series_bin_errors_latency_and_breaker_state() -> None:
    """Error rate per 0.25 s bin by send time, latency per 1 s bin, breaker carried forward."""
    rows = [
        req(0.0, 0.2),
        req(0.1, None, ok=False, reason="client_timeout"),
        req(0.3, 0.4),
        req(1.2, 0.9),
        req(1.3, 0.1, ok=False, reason="truncated", truncated=True),
    ]
    breaker = {"primary": ["closed", "closed", "open", "open", "half-open", "half-open", "open"]}
    s = samples({"primary": [1, 1, 1, 1, 1, 1]}, breaker=breaker)
    del s[3]["breaker"]["primary"]  # a sample without the state: carried forward
    f = compute(result(scenario(duration=1.5), rows, s))
    series = f["series"]
    assert series["t"] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    assert series["client_error_rate"] == [0.5, 0.0, None, None, 0.0, 1.0]
    assert series["latency_t"] == [1.0, 2.0]
    assert (series["p50"], series["p99"]) == ([0.2, 0.9], [0.4, 0.9])
    assert series["breaker"]["primary"] == [
        "closed",
        "open",
        "open",
        "half-open",
        "half-open",
        "open",  # the sample at 1.5 s closes the last bin
    ]
    assert series["breaker"]["fallback"] == [None] * 6


def test_compute_is_pure_and_plain_json() -> None:
    """Same input, same output; the figures serialise as plain JSON."""
    scen = scenario([fault(0, 10.0, 10.0)])
    doc = result(
        scen,
        [req(0.1 * i) for i in range(50)],
        samples(shifting_traffic(moves_at=40, returns_at=82)),
    )
    first = compute(doc)
    assert compute(doc) == first
    assert orjson.loads(orjson.dumps(first)) == first


# --- checks -------------------------------------------------------------------------------------


def test_a_clean_run_passes_every_check() -> None:
    """Every expectation held: every check passes, with the limits the scenario set."""
    scen = scenario(
        [fault(0, 10.0, 10.0, detect_within=2.0, recover_within=2.0)],
        max_p99=1.0,
        max_wasted_share=0.5,
        max_retry_amplification=1.5,
    )
    rows = [req(i / 64, latency=0.2) for i in range(1920)]  # as many as attempts: 16 per bin
    upstreams = {"primary": {"billed_prompt_tokens": 100, "price": {"input": 1.0, "output": 1.0}}}
    doc = result(
        scen, rows, samples(shifting_traffic(moves_at=44, returns_at=82)), upstreams=upstreams
    )
    f = compute(doc)
    checks = check(f, scen)
    assert [c["name"] for c in checks] == [
        "truncated_successes",
        "client_failures",
        "retry_amplification",
        "p99 before",
        "p99 during outage of primary",
        "p99 after outage of primary",
        "wasted_share",
        "detect outage of primary",
        "recover outage of primary",
    ]
    assert all(c["passed"] for c in checks), [c for c in checks if not c["passed"]]
    assert set(checks[0]) == {"name", "limit", "value", "unit", "passed", "detail"}
    amp = by_name(checks)["retry_amplification"]
    assert (amp["limit"], amp["value"]) == (1.5, 1.0)


def test_truncated_successes_always_fail() -> None:
    """One truncated answer fails the run, whatever the scenario allows."""
    scen = scenario(duration=1.0, max_client_failures=100)
    f = compute(result(scen, [req(0.1, truncated=True, ok=False, reason="truncated")]))
    truncated = by_name(check(f, scen))["truncated_successes"]
    assert (truncated["passed"], truncated["value"], truncated["limit"]) == (False, 1, 0)


def test_allowed_failure_reasons_are_not_counted() -> None:
    """Failures with an allowed reason are excused; the rest count against the limit."""
    rows = [req(0.1, None, ok=False, reason="replica_killed")] * 3
    rows += [req(0.2, None, ok=False, reason="client_timeout")]
    allowing = scenario(duration=1.0, allowed_failure_reasons=["replica_killed"])
    failures = by_name(check(compute(result(allowing, rows)), allowing))["client_failures"]
    assert (failures["passed"], failures["value"]) == (False, 1)
    assert failures["detail"] == (
        "failures: 1 client_timeout; not counted (allowed): 3 replica_killed"
    )
    lenient = scenario(
        duration=1.0, allowed_failure_reasons=["replica_killed"], max_client_failures=1
    )
    assert by_name(check(compute(result(lenient, rows)), lenient))["client_failures"]["passed"]
    strict = scenario(duration=1.0)
    counted = by_name(check(compute(result(strict, rows)), strict))["client_failures"]
    assert (counted["passed"], counted["value"]) == (False, 4)


def test_amplification_over_the_budget_bound_fails() -> None:
    """With "budget", the limit is the computed bound; a number replaces it."""
    rows = [req(0.01 * i) for i in range(100)]
    s = samples({"primary": [100, 60, 0, 0]})
    budget = scenario(duration=1.0)
    f = compute(result(budget, rows, s, budget=(0.2, 10.0)))
    amp = by_name(check(f, budget))["retry_amplification"]
    assert (amp["value"], amp["limit"], amp["passed"]) == (1.6, pytest.approx(1.3), False)
    generous = scenario(duration=1.0, max_retry_amplification=2.0)
    assert by_name(check(f, generous))["retry_amplification"]["passed"] is True


def test_p99_is_checked_in_every_phase_with_requests() -> None:
    """A slow phase fails its own p99 check; a phase without requests has no check."""
    rows = [req(1.0, 0.2), req(11.0, 3.5), req(12.0, 0.5)]
    scen = scenario([fault(0, 10.0, 5.0), fault(1, 15.0, 5.0)], max_p99=3.0)
    checks = by_name(check(compute(result(scen, rows)), scen))
    assert checks["p99 before"]["passed"] is True
    slow = checks["p99 during outage of primary at 10 s"]
    assert (slow["passed"], slow["value"], slow["limit"]) == (False, 3.5, 3.0)
    assert not any(name.startswith("p99 after") for name in checks)
    assert "p99 during outage of primary at 15 s" not in checks


def test_a_phase_where_nothing_succeeded_fails_its_p99_check() -> None:
    """Requests but no successes: no latency to hold against the limit."""
    rows = [req(1.0, None, ok=False, reason="client_timeout")]
    scen = scenario(duration=2.0, max_p99=1.0, max_client_failures=5)
    p99 = by_name(check(compute(result(scen, rows)), scen))["p99 before"]
    assert (p99["passed"], p99["value"]) == (False, None)


def test_wasted_share_over_the_limit_fails() -> None:
    """More wasted spend than the scenario allows fails the check."""
    upstreams = {
        "primary": {
            "billed_prompt_tokens": 1000,
            "billed_completion_tokens": 0,
            "wasted_prompt_tokens": 600,
            "wasted_completion_tokens": 0,
            "price": {"input": 1.0, "output": 1.0},
        }
    }
    scen = scenario(duration=1.0, max_wasted_share=0.5)
    wasted = by_name(check(compute(result(scen, upstreams=upstreams)), scen))["wasted_share"]
    assert (wasted["passed"], wasted["value"], wasted["limit"]) == (False, pytest.approx(0.6), 0.5)


def test_check_accepts_a_scenario_object() -> None:
    """Anything with to_json() (the Scenario dataclass) reads the same as its JSON."""
    scen = scenario(duration=1.0, max_client_failures=1)

    class Scenario:
        def to_json(self) -> dict[str, Any]:
            return scen

    f = compute(result(scen, [req(0.1, None, ok=False, reason="client_timeout")]))
    assert check(f, Scenario()) == check(f, scen)
    assert by_name(check(f, Scenario()))["client_failures"]["passed"] is True
