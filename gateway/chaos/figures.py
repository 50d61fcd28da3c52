"""The figures of a chaos run and the checks of its expectations: pure functions of result.json.

``compute(result)`` turns the raw record of a run — one row per client request, the gateway's
counters sampled every 250 ms per replica, the upstreams' billing — into the numbers a reader
judges the run by; ``check(figures, scenario)`` holds them against the scenario's expectations.
Both are pure (same input, same output), so ``gateway chaos report DIR`` can recompute them from
result.json without running anything again. Times are seconds since traffic start.

1. **Requests.** Totals; client failures (not ok and not truncated) by reason; truncated
   successes (a 200 whose answer was incomplete or wrong, with no error signalled).
2. **Phases.** ``before`` = [0, first fault start); per fault ``during <label>`` = [at, end) and
   ``after <label>`` = [end, the next fault start at or after end, or the run end); a fault
   without a length (policy reload) has only ``after <label>``, from ``at``. Phases may overlap.
   A request belongs to the phase its send time falls in; percentiles are nearest-rank over the
   latencies (answer began) of its ok requests.
3. **Amplification.** Upstream attempts, divided by requests, is the larger of two counts that
   each miss something: the gateway's — Σ over replicas and deployments of the growth of the
   ``success`` + ``error`` counters between consecutive samples (a counter that went down — a
   restarted replica — counts from zero, as does one missing from the replica's earlier
   samples); it includes connections refused but not attempts cancelled (a hedge's loser, an
   attempt abandoned for the request's deadline) — and the upstreams' own count of requests
   received during the run (``upstreams[*].received``; refused connections never arrive).
   Its reference is the retry budget's allowance,
   ``1 + ratio + replicas * min_per_second * duration / requests``: what the budget would let
   through if every extra attempt spent a token. Re-sends and hedges do; fail-overs to an
   untried deployment and stream continuations do not (they move a request rather than
   multiply load on a failing deployment), so staying within it is an expectation about the
   whole system (breakers must stop the fail-overs), not a guarantee of the budget alone.
4. **Attempts per bin.** Time is cut into 0.25 s bins aligned to t = 0, bin k = [k*BIN,
   (k+1)*BIN). A sample carries the attempts that ended since the previous sample of its
   replica, somewhere in (previous time, its time]; the delta goes to the bin holding the
   MIDPOINT of that interval: the attempts' expected time, and the bin covering most of the
   interval. (Placing it by its own sample time would put it up to a bin late: the sampler
   reads a few ms after each 0.25 s tick, so nearly every delta would land one bin after the
   attempts it counts.) After a counter reset (a restarted replica) the interval starts at most
   one bin before the sample: the new process was read within one tick of coming up.
5. **Detection and recovery** (faults with a target). The baseline is the target's share over
   the ``before`` phase, or 1/N of the N deployments when fewer than 20 attempts fell there.
   Both look FORWARD over 1.0 s (4 bins), so a figure means "from this moment on, for the next
   second, traffic stayed away (came back)", with no smoothing lag:

   1. Detected at the start of the first bin k with at ≤ k*BIN < end from which the target's
      share of the attempts in bins [k, k+4), clipped to the fault's end (at least bin k), is
      ≤ 0.25 * baseline, and so is its share of bin k's own attempts (bin k holds at least one);
      ``time_to_detect = k*BIN - at``.
   2. Recovered at the start of the first bin k with k*BIN ≥ end from which the share over
      [k, k+4), clipped to the run's end, and the share in bin k itself (at least one attempt)
      are ≥ 0.75 * baseline; ``time_to_recover = k*BIN - end``.
   3. ``None`` = never shifted / not restored; recovery is not looked for when the fault was
      never detected, nor either when the baseline is 0.

   Why bin k on its own as well: "from this moment on" includes this moment. A window holding
   one whole bin of the old traffic and three of the new sits right on the threshold (1/4), so
   without it uneven traffic would decide whether the figure lands a bin before the switch.
   With it, on steady traffic, a switch in the first quarter of a bin is timed at that bin's
   start and a later one at the next bin's start: from ~60 ms early to ~190 ms late, centred
   near the true moment (a single-bin dip or return does not count: the window must agree).
6. **Share series** (for the picture): a deployment's share of all attempts over the centred
   1.0 s window of bins [k-2, k+2) (clipped to the run), so ``share[k]`` belongs at the start
   of bin k (``series.share_t``): there a clean switch shows as the curve crossing half way, at
   the moment detection or recovery reports.
7. **Spend.** Billed and wasted tokens (billed, answer never completed) priced per deployment.

The scenario is read from its JSON form (``Scenario.to_json()``, or an object with
``to_json()``). Keys used: ``name``; ``deployments[].name``; ``traffic.duration`` (only when the
result has no ``duration``); ``faults[]``: ``index``, ``kind``, ``at``, ``for`` (None or absent
for a fault without a length), ``target`` (None for run-wide faults), ``label``,
``detect_within``, ``recover_within``; ``expect``: ``max_client_failures``,
``allowed_failure_reasons``, ``max_retry_amplification`` (``"budget"`` or a number), ``max_p99``,
``max_wasted_share``. Durations are seconds (numbers; duration strings such as ``"3s"`` are
accepted too).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from gateway.units import parse_duration

__all__ = ["BIN", "LATENCY_BIN", "SHARE_WINDOW", "check", "compute", "percentile"]

BIN = 0.25  # seconds per bin of the share / attempts / error-rate series
SHARE_WINDOW = 1.0  # window of the traffic share: forward for detection, centred for the plot
LATENCY_BIN = 1.0  # seconds per bin of the latency series
MIN_BASELINE_ATTEMPTS = 20  # fewer attempts before the faults: assume an even split
DETECTED_BELOW = 0.25  # share ≤ this * baseline: traffic moved away
RECOVERED_ABOVE = 0.75  # share ≥ this * baseline: traffic came back
_WINDOW_BINS = round(SHARE_WINDOW / BIN)
_EPS = 1e-9


class _HasJson(Protocol):
    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class _Fault:
    """The part of a scenario fault the figures need."""

    index: int
    kind: str
    at: float
    end: float | None
    target: str | None
    label: str
    detect_within: float | None
    recover_within: float | None


@dataclass(frozen=True, slots=True)
class _Request:
    t: float
    latency: float | None
    ok: bool
    reason: str | None
    truncated: bool


# --- reading the inputs -------------------------------------------------------------------------


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_duration(value)
    return float(value)


def _scenario(scenario: Mapping[str, Any] | _HasJson) -> Mapping[str, Any]:
    return scenario if isinstance(scenario, Mapping) else scenario.to_json()


def _faults(scenario: Mapping[str, Any]) -> list[_Fault]:
    faults: list[_Fault] = []
    for i, raw in enumerate(scenario.get("faults") or ()):
        at = float(raw["at"])
        length = _seconds(raw.get("for"))
        target = raw.get("target")
        kind = str(raw["kind"])
        faults.append(
            _Fault(
                index=int(raw.get("index", i)),
                kind=kind,
                at=at,
                end=None if length is None else at + length,
                target=target,
                label=str(raw.get("label") or (f"{kind} of {target}" if target else kind)),
                detect_within=_seconds(raw.get("detect_within")),
                recover_within=_seconds(raw.get("recover_within")),
            )
        )
    labels = Counter(f.label for f in faults)  # two outages of one target: tell them apart
    return [
        f if labels[f.label] == 1 else replace(f, label=f"{f.label} at {f.at:g} s") for f in faults
    ]


def _requests(result: Mapping[str, Any]) -> list[_Request]:
    table = result.get("requests") or {}
    columns = {name: i for i, name in enumerate(table.get("columns") or ())}
    out = []
    for row in table.get("rows") or ():
        latency = row[columns["latency"]]
        out.append(
            _Request(
                t=float(row[columns["t"]]),
                latency=None if latency is None else float(latency),
                ok=bool(row[columns["ok"]]),
                reason=row[columns["reason"]],
                truncated=bool(row[columns["truncated"]]),
            )
        )
    return out


def _deployments(scenario: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> list[str]:
    names = [str(d["name"]) for d in scenario.get("deployments") or ()]
    seen = {dep for s in samples for dep in (s.get("attempts") or {})}
    return names + sorted(seen - set(names))


# --- small helpers ------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: int) -> float | None:
    """Nearest-rank percentile ``p`` (an integer 1 to 100) of ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (p * len(ordered) + 99) // 100
    return ordered[max(rank, 1) - 1]


def _bin_count(horizon: float, width: float) -> int:
    return max(0, math.ceil(horizon / width - _EPS))


def _bin_holding(t: float) -> int:
    """Index of the bin [start, end) holding time ``t``."""
    return math.floor(t / BIN + _EPS)


def _clean(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


# --- the figures --------------------------------------------------------------------------------


def compute(result: Mapping[str, Any]) -> dict[str, Any]:
    """Figures of a run from its result.json document (see the module docstring)."""
    scenario = result.get("scenario") or {}
    duration = float(result.get("duration") or (scenario.get("traffic") or {}).get("duration", 0))
    replicas = int(result.get("replicas") or 1)
    budget = result.get("budget") or {}
    samples = sorted(result.get("samples") or (), key=lambda s: (s["replica"], s["t"]))
    faults = _faults(scenario)
    requests = _requests(result)
    deployments = _deployments(scenario, samples)

    failures = [r for r in requests if not r.ok and not r.truncated]
    figures: dict[str, Any] = {
        "duration": duration,
        "replicas": replicas,
        "deployments": deployments,
        "requests": len(requests),
        "succeeded": sum(r.ok for r in requests),
        "client_failures": len(failures),
        "failures_by_reason": dict(sorted(Counter(str(r.reason) for r in failures).items())),
        "truncated_successes": sum(r.truncated for r in requests),
        "phases": _phases(requests, faults, duration),
    }

    attempts, counted = _attempts(samples, deployments, _bin_count(duration, BIN))
    received = sum(int(u.get("received", 0)) for u in (result.get("upstreams") or {}).values())
    figures["gateway_counted_attempts"] = counted
    figures["upstream_received"] = received
    figures["upstream_attempts"] = total_attempts = max(counted, received)
    figures.update(_amplification(total_attempts, len(requests), replicas, budget, duration))

    before_end = min((f.at for f in faults), default=duration)
    figures["faults"] = [_fault_figures(f, attempts, before_end, len(deployments)) for f in faults]
    figures.update(_spend(result.get("upstreams") or {}))
    share = _centred_share(attempts)
    figures["series"] = _series(requests, samples, attempts, share, deployments, duration)
    return figures


def _phase(
    name: str, fault: int | None, start: float, end: float, requests: Iterable[_Request]
) -> dict[str, Any]:
    inside = [r for r in requests if start <= r.t < end]
    latencies = [r.latency for r in inside if r.ok and r.latency is not None]
    return {
        "name": name,
        "fault": fault,
        "start": start,
        "end": end,
        "requests": len(inside),
        "failures": sum(not r.ok and not r.truncated for r in inside),
        "truncated": sum(r.truncated for r in inside),
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
    }


def _phases(requests: list[_Request], faults: list[_Fault], duration: float) -> list[dict]:
    first = min((f.at for f in faults), default=duration)
    phases = [_phase("before", None, 0.0, first, requests)]
    for f in faults:
        if f.end is not None:
            phases.append(_phase(f"during {f.label}", f.index, f.at, f.end, requests))
        after = f.at if f.end is None else f.end
        nxt = min((g.at for g in faults if g is not f and g.at >= after), default=duration)
        phases.append(_phase(f"after {f.label}", f.index, after, max(nxt, after), requests))
    return phases


def _attempts(
    samples: Sequence[Mapping[str, Any]], deployments: Sequence[str], bins: int
) -> tuple[dict[str, list[int]], int]:
    """Per deployment, upstream attempts per bin (all replicas), and the total over the run.

    A delta goes to the bin holding the midpoint of the interval it covers (module docstring,
    step 4).
    """
    per_bin = {dep: [0] * bins for dep in deployments}
    last: dict[tuple[int, str], int] = {}
    last_t: dict[int, float] = {}  # replica -> time of its previous sample
    total = 0
    for sample in samples:  # sorted by replica, then time
        replica, t = int(sample["replica"]), float(sample["t"])
        since = last_t.get(replica)
        last_t[replica] = t
        for dep, counters in (sample.get("attempts") or {}).items():
            value = int(counters.get("success", 0)) + int(counters.get("error", 0))
            key = (replica, dep)
            previous = last.get(key, 0)
            last[key] = value
            if since is None:  # the replica's first reading: the reference
                continue
            start = since
            if value < previous:  # a new process: it counts from zero, since it came up
                previous, start = 0, max(since, t - BIN)
            delta = value - previous
            total += delta
            index = _bin_holding((start + t) / 2)
            if delta and 0 <= index < bins:
                per_bin[dep][index] += delta
    return per_bin, total


def _window_share(attempts: Mapping[str, list[int]], dep: str, lo: int, hi: int) -> float | None:
    """``dep``'s part of all attempts in bins [lo, hi); ``None`` when there were none."""
    total = sum(sum(a[lo:hi]) for a in attempts.values())
    return sum(attempts[dep][lo:hi]) / total if total else None


def _centred_share(attempts: Mapping[str, list[int]]) -> dict[str, list[float | None]]:
    """Per deployment and bin k, the share over bins [k-2, k+2): centred on the start of bin k."""
    bins = len(next(iter(attempts.values()), []))
    half = _WINDOW_BINS // 2
    return {
        dep: [
            _window_share(attempts, dep, max(0, k - half), min(bins, k + _WINDOW_BINS - half))
            for k in range(bins)
        ]
        for dep in attempts
    }


def _amplification(
    attempts: int, requests: int, replicas: int, budget: Mapping[str, Any], duration: float
) -> dict[str, Any]:
    if not requests:
        return {"retry_amplification": None, "amplification_bound": None}
    ratio = float(budget.get("ratio", 0.0))
    floor = float(budget.get("min_per_second", 0.0))
    return {
        "retry_amplification": attempts / requests,
        "amplification_bound": 1 + ratio + replicas * floor * duration / requests,
    }


def _fault_figures(
    fault: _Fault,
    attempts: Mapping[str, list[int]],
    before_end: float,
    n_deployments: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": fault.index,
        "kind": fault.kind,
        "label": fault.label,
        "target": fault.target,
        "at": fault.at,
        "end": fault.end,
        "baseline": None,
        "baseline_from": None,
        "time_to_detect": None,
        "time_to_recover": None,
        "note": None,
    }
    if fault.target is None or fault.target not in attempts:
        out["note"] = "not a deployment fault: traffic share is not measured"
        return out
    quiet = [k for k in range(len(attempts[fault.target])) if (k + 1) * BIN <= before_end + _EPS]
    target_sum = sum(attempts[fault.target][k] for k in quiet)
    all_sum = sum(a[k] for a in attempts.values() for k in quiet)
    if all_sum >= MIN_BASELINE_ATTEMPTS:
        baseline, source = target_sum / all_sum, "before"
    else:
        baseline, source = 1 / max(n_deployments, 1), "even split"
    out["baseline"], out["baseline_from"] = _clean(baseline), source
    if baseline <= 0:
        out["note"] = "the target carried no traffic before the faults: no shift to measure"
        return out
    bins = len(attempts[fault.target])
    fault_end = bins if fault.end is None else min(bins, _first_bin_from(fault.end))
    detected = _first_window(
        attempts,
        fault.target,
        _first_bin_from(fault.at),
        fault_end,
        lambda s: s <= DETECTED_BELOW * baseline + _EPS,
    )
    if detected is None:
        out["note"] = "never shifted: no recovery to measure"
        return out
    out["time_to_detect"] = _clean(detected * BIN - fault.at)
    if fault.end is not None:
        recovered = _first_window(
            attempts,
            fault.target,
            _first_bin_from(fault.end),
            bins,
            lambda s: s >= RECOVERED_ABOVE * baseline - _EPS,
        )
        out["time_to_recover"] = None if recovered is None else _clean(recovered * BIN - fault.end)
    return out


def _first_bin_from(t: float) -> int:
    """Index of the first bin starting at or after ``t``."""
    return max(0, math.ceil(t / BIN - _EPS))


def _first_window(
    attempts: Mapping[str, list[int]],
    dep: str,
    first: int,
    stop: int,
    hit: Callable[[float], bool],
) -> int | None:
    """The first bin k in [first, stop) from which ``dep``'s share is one ``hit`` accepts: over
    the forward window [k, k+4) clipped to ``stop``, and in bin k itself (which holds attempts)."""
    for k in range(first, stop):
        own = _window_share(attempts, dep, k, k + 1)
        if own is None or not hit(own):
            continue
        share = _window_share(attempts, dep, k, min(k + _WINDOW_BINS, stop))
        if share is not None and hit(share):
            return k
    return None


def _spend(upstreams: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for name in sorted(upstreams):
        stats = upstreams[name]
        price = stats.get("price") or {}
        p_in, p_out = float(price.get("input", 0.0)), float(price.get("output", 0.0))

        def usd(prompt: int, completion: int, p_in: float = p_in, p_out: float = p_out) -> float:
            return (prompt * p_in + completion * p_out) / 1e6

        wasted_p = int(stats.get("wasted_prompt_tokens", 0))
        wasted_c = int(stats.get("wasted_completion_tokens", 0))
        per[name] = {
            "billed_usd": usd(
                int(stats.get("billed_prompt_tokens", 0)),
                int(stats.get("billed_completion_tokens", 0)),
            ),
            "wasted_usd": usd(wasted_p, wasted_c),
            "wasted_tokens": wasted_p + wasted_c,
        }
    total = sum(d["billed_usd"] for d in per.values())
    wasted = sum(d["wasted_usd"] for d in per.values())
    return {
        "total_spend_usd": total,
        "wasted_tokens": sum(d["wasted_tokens"] for d in per.values()),
        "wasted_spend_usd": wasted,
        "wasted_share": wasted / total if total else None,
        "spend": per,
    }


def _series(
    requests: Sequence[_Request],
    samples: Sequence[Mapping[str, Any]],
    attempts: Mapping[str, list[int]],
    share: Mapping[str, list[float | None]],
    deployments: Sequence[str],
    duration: float,
) -> dict[str, Any]:
    bins = _bin_count(duration, BIN)
    sent = [0] * bins
    failed = [0] * bins
    for r in requests:
        k = math.floor(r.t / BIN + _EPS)
        if 0 <= k < bins:
            sent[k] += 1
            failed[k] += not r.ok
    lat_bins = _bin_count(duration, LATENCY_BIN)
    latencies: list[list[float]] = [[] for _ in range(lat_bins)]
    for r in requests:
        k = math.floor(r.t / LATENCY_BIN + _EPS)
        if r.ok and r.latency is not None and 0 <= k < lat_bins:
            latencies[k].append(r.latency)
    return {
        "t": [_clean((k + 1) * BIN) for k in range(bins)],
        "share_t": [_clean(k * BIN) for k in range(bins)],
        "share": {d: [_clean(s, 4) for s in share[d]] for d in deployments},
        "attempts": {d: list(attempts[d]) for d in deployments},
        "client_error_rate": [
            _clean(f / n, 4) if n else None for f, n in zip(failed, sent, strict=True)
        ],
        "latency_t": [_clean((k + 1) * LATENCY_BIN) for k in range(lat_bins)],
        "p50": [percentile(xs, 50) for xs in latencies],
        "p95": [percentile(xs, 95) for xs in latencies],
        "p99": [percentile(xs, 99) for xs in latencies],
        "breaker": _breaker_series(samples, deployments, bins),
    }


def _breaker_series(
    samples: Sequence[Mapping[str, Any]], deployments: Sequence[str], bins: int
) -> dict[str, list[str | None]]:
    """Replica 0's breaker state per deployment at each bin end, carried forward between samples."""
    first = [s for s in samples if int(s["replica"]) == 0]
    out: dict[str, list[str | None]] = {d: [] for d in deployments}
    state: dict[str, str | None] = dict.fromkeys(deployments)
    i = 0
    for k in range(bins):
        end = (k + 1) * BIN
        while i < len(first) and float(first[i]["t"]) <= end + _EPS:
            for dep, value in (first[i].get("breaker") or {}).items():
                if dep in state and value is not None:
                    state[dep] = str(value)
            i += 1
        for dep in deployments:
            out[dep].append(state[dep])
    return out


# --- the checks ---------------------------------------------------------------------------------


def _check(
    name: str,
    limit: float | None,
    value: float | None,
    unit: str,
    detail: str,
    passed: bool | None = None,
) -> dict[str, Any]:
    if passed is None:
        passed = value is not None and limit is not None and value <= limit + _EPS
    return {
        "name": name,
        "limit": limit,
        "value": value,
        "unit": unit,
        "passed": passed,
        "detail": detail,
    }


def _s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def check(
    figures: Mapping[str, Any], scenario: Mapping[str, Any] | _HasJson
) -> list[dict[str, Any]]:
    """The scenario's expectations held against ``figures``: one dict per check.

    Each check is ``{name, limit, value, unit, passed, detail}``; ``unit`` is ``count``,
    ``ratio``, ``s`` or ``share``. A check whose value could not be measured (``None``) fails.
    """
    doc = _scenario(scenario)
    expect = doc.get("expect") or {}
    checks = [_truncated_check(figures), _failures_check(figures, expect)]
    checks.append(_amplification_check(figures, expect))
    max_p99 = _seconds(expect.get("max_p99"))
    if max_p99 is not None:
        checks.extend(_p99_check(p, max_p99) for p in figures["phases"] if p["requests"])
    max_wasted = expect.get("max_wasted_share")
    if max_wasted is not None:
        checks.append(_wasted_check(figures, float(max_wasted)))
    measured = {f["index"]: f for f in figures.get("faults") or ()}
    for fault in _faults(doc):
        got = measured.get(fault.index) or {}
        if fault.detect_within is not None:
            checks.append(_detect_check(fault, got, fault.detect_within))
        if fault.recover_within is not None:
            checks.append(_recover_check(fault, got, fault.recover_within))
    return checks


def _truncated_check(figures: Mapping[str, Any]) -> dict[str, Any]:
    n = figures["truncated_successes"]
    detail = (
        "no answer looked successful while incomplete or wrong"
        if not n
        else f"{n} answer(s) looked successful (200, no error signalled) but were incomplete"
        " or wrong"
    )
    return _check("truncated_successes", 0, n, "count", detail)


def _failures_check(figures: Mapping[str, Any], expect: Mapping[str, Any]) -> dict[str, Any]:
    allowed = set(expect.get("allowed_failure_reasons") or ())
    by_reason: Mapping[str, int] = figures["failures_by_reason"]
    excused = {r: n for r, n in by_reason.items() if r in allowed}
    counted = figures["client_failures"] - sum(excused.values())
    parts = [f"{n} {r}" for r, n in by_reason.items() if r not in allowed]
    detail = "failures: " + ", ".join(parts) if parts else "no counted client failure"
    if excused:
        detail += "; not counted (allowed): " + ", ".join(f"{n} {r}" for r, n in excused.items())
    limit = int(expect.get("max_client_failures") or 0)
    return _check("client_failures", limit, counted, "count", detail)


def _amplification_check(figures: Mapping[str, Any], expect: Mapping[str, Any]) -> dict[str, Any]:
    wanted = expect.get("max_retry_amplification", "budget")
    value = figures["retry_amplification"]
    bound = figures["amplification_bound"]
    if wanted in (None, "budget"):
        limit, source = bound, "the retry budget's allowance"
    else:
        limit, source = float(wanted), "the scenario's limit"
    if value is None or limit is None:
        return _check("retry_amplification", limit, None, "ratio", "no request was sent")
    detail = (
        f"{figures['upstream_attempts']} upstream attempts for {figures['requests']} requests"
        f" = {value:.3f}; {source} is {limit:.3f}"
    )
    return _check("retry_amplification", limit, value, "ratio", detail)


def _p99_check(phase: Mapping[str, Any], limit: float) -> dict[str, Any]:
    value = phase["p99"]
    window = f"[{phase['start']:g} s, {phase['end']:g} s)"
    if value is None:
        detail = f"no request sent in {window} succeeded: no latency to measure"
    else:
        detail = f"p99 {_s(value)} over the ok requests sent in {window}"
    return _check(f"p99 {phase['name']}", limit, value, "s", detail)


def _wasted_check(figures: Mapping[str, Any], limit: float) -> dict[str, Any]:
    value = figures["wasted_share"]
    if value is None:
        return _check("wasted_share", limit, None, "share", "no upstream spend", passed=True)
    detail = (
        f"${figures['wasted_spend_usd']:.6f} of ${figures['total_spend_usd']:.6f} upstream"
        " spend paid for answers never completed"
    )
    return _check("wasted_share", limit, value, "share", detail)


def _detect_check(fault: _Fault, got: Mapping[str, Any], limit: float) -> dict[str, Any]:
    value = got.get("time_to_detect")
    if fault.target is None:
        detail = "not a deployment fault: traffic share is not measured"
    elif got.get("baseline") == 0:
        detail = str(got.get("note"))
    elif value is None:
        detail = (
            f"never shifted: the share of {fault.target} never fell to"
            f" below {DETECTED_BELOW:.0%} of its baseline for a second during the fault"
        )
    else:
        detail = f"traffic moved off {fault.target} {_s(value)} after the fault began"
    return _check(f"detect {fault.label}", limit, value, "s", detail)


def _recover_check(fault: _Fault, got: Mapping[str, Any], limit: float) -> dict[str, Any]:
    value = got.get("time_to_recover")
    if fault.target is None:
        detail = "not a deployment fault: traffic share is not measured"
    elif got.get("time_to_detect") is None:
        detail = "no shift to recover from"
    elif value is None:
        detail = (
            f"not restored: the share of {fault.target} never came back above"
            f" {RECOVERED_ABOVE:.0%} of its baseline for a second before the run ended"
        )
    else:
        detail = f"traffic came back to {fault.target} {_s(value)} after the fault ended"
    return _check(f"recover {fault.label}", limit, value, "s", detail)
