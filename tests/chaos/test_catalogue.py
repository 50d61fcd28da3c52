"""Every scenario of the standard catalogue (configs/chaos/*.yaml), compressed to its ``ci.scale``
and run for real: simulated upstreams, real ``gateway serve`` processes, a private redis-server
where the scenario needs one.

Each run must hold the scenario's own expectations (the checks its file declares: zero
client-visible failures when a healthy fallback exists, zero truncated successes, detection and
recovery within their bounds, retry amplification within the budget, ...). On top of those, the
test holds figures no scenario may opt out of, so that a run that did not really happen cannot
pass: traffic flowed at about the scenario's rate, every request is accounted for, the sampler
saw the gateway throughout, and every fault of the timeline was applied.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from gateway.chaos.runner import run
from gateway.chaos.scenario import (
    DEPLOYMENT_FAULT_KINDS,
    RUN_FAULT_KINDS,
    FaultSpec,
    Scenario,
    load_scenario,
)

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = sorted((ROOT / "configs" / "chaos").glob("*.yaml"))

pytestmark = pytest.mark.integration


def test_the_catalogue_covers_every_fault_kind() -> None:
    """The standard catalogue exercises every fault the runner can inject."""
    kinds = {f.kind for path in CATALOGUE for f in load_scenario(path).faults}
    assert kinds == set(DEPLOYMENT_FAULT_KINDS) | set(RUN_FAULT_KINDS)


# The simulated fault kind an upstream counts when a scenario's deployment fault hits it.
UPSTREAM_EVIDENCE = {
    "brownout": "status",
    "rate_limit": "status",
    "latency": "slow_first_token",
    "slow_first_token": "slow_first_token",
    "hang": "hang",
    "stream_cut": "stream_cut",
    "stream_stall": "stream_stall",
}


def _assert_fault_took_effect(result: dict[str, Any], fault: FaultSpec) -> None:
    """Evidence from outside the runner that a fault happened: the upstream counted the fault
    it served; the gateway counted failed attempts on a deployment whose port was closed; the
    traffic followed a rewritten policy. (Redis outages and replica kills are signals the
    runner sends to processes itself.)"""
    if fault.kind in UPSTREAM_EVIDENCE:
        applied = result["upstreams"][fault.target]["faults"]
        assert applied.get(UPSTREAM_EVIDENCE[fault.kind], 0) > 0, (fault.label(), applied)
    elif fault.kind in ("outage", "flap"):
        errors = _counter_growth(result["samples"], fault.target, "error")
        assert errors > 0, f"{fault.label()}: the gateway saw no failed attempt on the target"
    elif fault.kind == "policy_reload":
        leader = fault.params["policy"]["routes"][0]["candidates"][0]["deployment"]
        columns = result["requests"]["columns"]
        t, ok, who = (columns.index(c) for c in ("t", "ok", "deployment"))
        after = Counter(
            r[who]
            for r in result["requests"]["rows"]
            if r[ok] and fault.at + 0.5 <= r[t] < fault.at + 2
        )
        assert after.most_common(1)[0][0] == leader, (fault.label(), after)


def _counter_growth(samples: list[dict[str, Any]], deployment: str | None, outcome: str) -> float:
    growth = 0.0
    for replica in {s["replica"] for s in samples}:
        values = [
            s["attempts"].get(deployment, {}).get(outcome, 0.0)
            for s in samples
            if s["replica"] == replica
        ]
        growth += sum(max(0.0, b - a) for a, b in pairwise(values))
    return growth


def _expected_requests(scenario: Scenario) -> float:
    t = scenario.traffic
    if t.rate is not None:
        return t.rate * t.duration
    return 0.0  # closed loop: how many depends on latency; checked > 0 below


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", CATALOGUE, ids=lambda p: p.stem)
def test_compressed_scenario_holds_its_expectations(path: Path, tmp_path: Path) -> None:
    scenario = load_scenario(path, scale=load_scenario(path).ci_scale)
    assert scenario.traffic.duration <= 20.0, "keep the compressed run short: CI runs them all"
    result = asyncio.run(run(scenario, tmp_path))
    figures = result["figures"]
    failed = [f"{c['name']}: {c['detail']}" for c in result["checks"] if not c["passed"]]
    assert result["passed"], f"{scenario.name}: {failed}; report: {tmp_path / 'report.md'}"

    # Figures no scenario can opt out of.
    assert figures["truncated_successes"] == 0
    rows = result["requests"]["rows"]
    assert figures["requests"] == len(rows) > 0
    assert figures["requests"] >= 0.7 * _expected_requests(scenario)
    assert (
        figures["succeeded"] + figures["client_failures"] + figures["truncated_successes"]
        == (figures["requests"])
    )
    allowed = set(scenario.expect.allowed_failure_reasons)
    counted = sum(n for r, n in figures["failures_by_reason"].items() if r not in allowed)
    assert counted <= scenario.expect.max_client_failures
    assert figures["upstream_attempts"] >= figures["succeeded"]
    # the sampler read the gateway all along: about 4 readings a second per live replica
    assert len(result["samples"]) >= 3 * scenario.traffic.duration
    # every fault started (and ended, when it has a length) at its time, give or take
    for fault in scenario.faults:
        edges = {e["edge"]: e["t"] for e in result["events"] if e["fault"] == fault.index}
        assert edges["start"] == pytest.approx(fault.at, abs=0.5)
        if fault.end is not None:
            assert edges["end"] == pytest.approx(fault.end, abs=0.5)
        if fault.kind == "kill_replica" and fault.end is not None:
            assert edges["ready"] > edges["end"]  # the killed replica came back
    # and took effect where it was aimed (the runner's event log alone would not show that)
    for fault in scenario.faults:
        _assert_fault_took_effect(result, fault)
    assert (tmp_path / "report.md").is_file()
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
