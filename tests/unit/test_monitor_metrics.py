"""health.monitor (report, snapshot, status_settings) and health.prometheus (the scrape)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from health.monitor import REPORTED_PROBES, DeploymentHealth, HealthMonitor, status_settings
from health.probes import Prober, ProbeSettings
from health.prometheus import PREFIX, registry, render
from health.status import STATES, StatusSettings
from health.store import MemoryStore
from health.window import ERROR_CLASSES

NOW = 1_000_000.0
PROBE = ProbeSettings(interval=10.0, timeout=2.0, healthy_threshold=2, unhealthy_threshold=3)
ALLOWED_LABELS = {"deployment", "outcome", "class", "direction", "state", "le"}


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def answer() -> float:
    return 0.01


async def refuse() -> float:
    raise ConnectionRefusedError("connection refused")


def make_monitor(clock: FakeClock) -> HealthMonitor:
    """Deployments ``a`` (probed, answers) and ``b`` (probed, refuses) and ``c`` (no probe)."""
    store = MemoryStore(clock=clock)
    prober = Prober(store, clock=clock)
    prober.add("a", PROBE, answer)
    prober.add("b", PROBE, refuse)
    prober.add("c", ProbeSettings(kind="none"), answer)
    settings = {
        "a": status_settings(PROBE),
        "b": status_settings(PROBE),
        "c": status_settings(ProbeSettings(kind="none")),
    }
    return HealthMonitor(store, prober, settings)


def traffic(monitor: HealthMonitor) -> None:
    """Three answers (two of them streams), four failures and two attempts in flight on ``a``."""
    w = monitor.window("a")
    w.success(0.02, tokens_in=10, tokens_out=5, cost=0.001)
    w.success(0.3, ttft=0.01, tokens_in=20, tokens_out=40, cost=0.002)
    w.success(2.5, ttft=0.1, tokens_in=30, tokens_out=80, cost=0.004)
    w.failure("timeout")
    w.failure("timeout")
    w.failure("server_error")
    w.failure("caller_error", tokens_in=7)
    w.inflight = 2


def probe(monitor: HealthMonitor, name: str, times: int) -> None:
    async def run() -> None:
        for _ in range(times):
            await monitor.prober.probe(name)

    asyncio.run(run())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def monitor(clock: FakeClock) -> HealthMonitor:
    m = make_monitor(clock)
    traffic(m)
    probe(m, "a", 1)
    probe(m, "b", 3)
    return m


# --- HealthMonitor ---------------------------------------------------------------------------


def test_report_has_store_replica_and_one_entry_per_deployment(monitor: HealthMonitor) -> None:
    """report() leads with the store's sharing state and lists every deployment in order."""
    report = monitor.report()
    json.dumps(report)  # the admin API serves it as JSON
    assert report["store"] == "memory"
    assert report["shared_metrics"] == "local"
    assert report["replica"] == "local"
    assert [d["name"] for d in report["deployments"]] == ["a", "b", "c"]
    for d in report["deployments"]:
        assert set(d) == {"name", "status", "reason", "window", "probe", "probes"}
        assert d["status"] in STATES
    by_name = {d["name"]: d for d in report["deployments"]}
    assert by_name["b"]["status"] == "ejected"
    assert by_name["b"]["reason"] == "3 probes failed: connection refused"
    assert by_name["c"]["status"] == "healthy"


def test_report_window_figures_in_milliseconds(monitor: HealthMonitor) -> None:
    """Window figures are reported with latencies in ms, rounded, and the errors by class."""
    a = next(d for d in monitor.report()["deployments"] if d["name"] == "a")
    stats = monitor.snapshot("a").stats
    window = a["window"]
    assert window["seconds"] == 60.0
    assert window["requests"] == 7
    assert window["successes"] == 3
    assert window["errors"] == {"timeout": 2, "server_error": 1, "caller_error": 1}
    assert window["error_rate"] == 0.5  # 3 failures over 6 judged requests
    assert window["inflight"] == 2
    assert window["tokens_in"] == 67
    assert window["tokens_out"] == 125
    assert window["cost_usd"] == 0.007
    latency = window["latency_ms"]
    assert set(latency) == {"p50", "p95", "p99", "mean", "ewma"}
    assert latency["mean"] == round((0.02 + 0.3 + 2.5) / 3 * 1000, 1)
    assert stats.latency.p95 is not None
    assert latency["p95"] == round(stats.latency.p95 * 1000, 1)
    assert latency["ewma"] == round((stats.latency.ewma or 0) * 1000, 1)
    assert window["ttft_ms"]["mean"] == 55.0
    empty = next(d for d in monitor.report()["deployments"] if d["name"] == "c")["window"]
    assert empty["latency_ms"] == dict.fromkeys(("p50", "p95", "p99", "mean", "ewma"))
    assert empty["errors"] == {}


def test_report_probe_settings_and_newest_probes(clock: FakeClock) -> None:
    """The probe block shows the settings (or kind none); probes list the newest, capped."""
    m = make_monitor(clock)

    async def run() -> None:
        for _ in range(REPORTED_PROBES + 5):
            clock.now += 1
            await m.prober.probe("a")

    asyncio.run(run())
    deployments = {d["name"]: d for d in m.report()["deployments"]}
    assert deployments["a"]["probe"] == {
        "kind": "models",
        "interval_s": 10.0,
        "timeout_s": 2.0,
        "healthy_threshold": 2,
        "unhealthy_threshold": 3,
    }
    assert deployments["c"]["probe"] == {"kind": "none"}
    probes = deployments["a"]["probes"]
    assert len(probes) == REPORTED_PROBES
    assert probes[0] == {
        "at": clock.now,
        "ok": True,
        "latency": 0.01,
        "detail": "ok",
        "replica": "local",
    }
    assert [p["at"] for p in probes] == sorted((p["at"] for p in probes), reverse=True)
    assert deployments["c"]["probes"] == []


def test_extra_hooks_merge_fields_per_deployment(monitor: HealthMonitor) -> None:
    """Each ``extra`` hook adds fields to every deployment's entry."""
    monitor.extra.append(lambda name: {"breaker": "closed", "weight": 2 if name == "b" else 1})
    monitor.extra.append(lambda name: {"tags": [name.upper()]})
    deployments = {d["name"]: d for d in monitor.report()["deployments"]}
    assert deployments["a"]["breaker"] == "closed"
    assert deployments["b"]["weight"] == 2
    assert deployments["c"]["weight"] == 1
    assert deployments["c"]["tags"] == ["C"]
    assert deployments["a"]["status"] == "healthy"  # the base fields are still there


def test_snapshot_is_the_state_the_engine_ranks_on(monitor: HealthMonitor) -> None:
    """snapshot() bundles status, window stats and probe history of one deployment."""
    snap = monitor.snapshot("b")
    assert isinstance(snap, DeploymentHealth)
    assert snap.name == "b"
    assert snap.status == monitor.status("b")
    assert snap.status.state == "ejected"
    assert snap.stats == monitor.store.stats("b")
    assert snap.probes == monitor.store.probes("b")
    assert len(snap.probes) == 3
    assert [s.name for s in monitor.snapshots()] == ["a", "b", "c"]
    assert [s.name for s in monitor.snapshots(["c", "a"])] == ["c", "a"]


def test_view_treats_latency_as_unmeasured_once_the_window_forgot_it(
    monitor: HealthMonitor, clock: FakeClock
) -> None:
    """The routing view ranks on the EWMAs while the window holds samples; once they left it
    (60 s here), latency and TTFT are unmeasured (None), not the last figures seen."""
    view = monitor.view(max_age=0).get("a")
    stats = monitor.snapshot("a").stats
    assert view.latency is not None and view.latency == stats.latency.ewma
    assert view.ttft is not None and view.ttft == stats.ttft.ewma
    assert view.latency_p95 is not None and view.ttft_p95 is not None
    clock.now += 61
    view = monitor.view(max_age=0).get("a")
    assert (view.latency, view.latency_p95, view.ttft, view.ttft_p95) == (None, None, None, None)
    a = next(d for d in monitor.report()["deployments"] if d["name"] == "a")["window"]
    assert a["latency_ms"] == a["ttft_ms"] == dict.fromkeys(("p50", "p95", "p99", "mean", "ewma"))


def test_deployment_without_settings_uses_the_defaults(clock: FakeClock) -> None:
    """A window created later is judged with the default status settings."""
    m = make_monitor(clock)
    w = m.window("late")
    for _ in range(10):
        w.failure("connection")
    assert "late" in m.names
    assert m.status("late").state == "unhealthy"


def test_status_settings_take_the_probe_thresholds() -> None:
    """status_settings() keeps the fleet-wide rates and takes the probe's thresholds."""
    probe = ProbeSettings(healthy_threshold=4, unhealthy_threshold=5)
    defaults = StatusSettings(min_requests=50, degraded_error_rate=0.2, degraded_latency=1.5)
    merged = status_settings(probe, defaults=defaults)
    assert merged == StatusSettings(
        min_requests=50,
        degraded_error_rate=0.2,
        unhealthy_error_rate=0.5,
        degraded_latency=1.5,
        healthy_threshold=4,
        unhealthy_threshold=5,
    )
    assert status_settings(probe) == StatusSettings(healthy_threshold=4, unhealthy_threshold=5)


def test_probe_thresholds_decide_ejection(clock: FakeClock) -> None:
    """A monitor built with status_settings() ejects after the probe's unhealthy_threshold."""
    store = MemoryStore(clock=clock)
    prober = Prober(store, clock=clock)
    quick = ProbeSettings(unhealthy_threshold=2)
    prober.add("b", quick, refuse)
    m = HealthMonitor(store, prober, {"b": status_settings(quick)})
    probe(m, "b", 1)
    assert m.status("b").state == "degraded"
    probe(m, "b", 1)
    assert m.status("b").reason == "2 probes failed: connection refused"


def test_start_and_close_run_the_probe_loops(clock: FakeClock) -> None:
    """start() starts the store and a loop per probed deployment; close() ends them all."""
    m = make_monitor(clock)

    async def run() -> tuple[int, int]:
        await m.start()
        running = len(asyncio.all_tasks()) - 1
        await m.close()
        return running, len(asyncio.all_tasks()) - 1

    assert asyncio.run(run()) == (2, 0)  # a and b; c has no probe


# --- Prometheus ------------------------------------------------------------------------------


def scrape(m: HealthMonitor, *extra: Any) -> dict[str, Any]:
    text = render(registry(m, *extra)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    """The one sample ``{PREFIX}_{sample}`` with exactly these labels."""
    matches = [
        s.value
        for family in families.values()
        for s in family.samples
        if s.name == f"{PREFIX}_{sample}" and s.labels == labels
    ]
    assert len(matches) == 1, (sample, labels, matches)
    return float(matches[0])


def buckets(families: dict[str, Any], family: str, deployment: str) -> list[tuple[float, float]]:
    return sorted(
        (float(s.labels["le"]), s.value)
        for s in families[f"{PREFIX}_{family}"].samples
        if s.name.endswith("_bucket") and s.labels["deployment"] == deployment
    )


def test_attempts_errors_tokens_cost_and_inflight(monitor: HealthMonitor) -> None:
    """Counters and gauges carry this replica's totals per deployment."""
    f = scrape(monitor)
    attempts = "deployment_attempts_total"
    assert value(f, attempts, deployment="a", outcome="success") == 3
    assert value(f, attempts, deployment="a", outcome="error") == 4
    expected = {"timeout": 2, "server_error": 1, "caller_error": 1}
    for error_class in ERROR_CLASSES:
        got = value(f, "deployment_errors_total", deployment="a", **{"class": error_class})
        assert got == expected.get(error_class, 0), error_class
    assert value(f, "deployment_tokens_total", deployment="a", direction="in") == 67
    assert value(f, "deployment_tokens_total", deployment="a", direction="out") == 125
    assert value(f, "deployment_cost_usd_total", deployment="a") == pytest.approx(0.007)
    assert value(f, "deployment_inflight", deployment="a") == 2
    assert value(f, "deployment_inflight", deployment="b") == 0
    assert value(f, "shared_metrics_stale") == 0


def test_latency_histogram_is_cumulative_and_counts_answers(monitor: HealthMonitor) -> None:
    """Latency buckets are cumulative; +Inf and _count equal the answered attempts."""
    f = scrape(monitor)
    series = buckets(f, "deployment_latency_seconds", "a")
    counts = [count for _, count in series]
    assert counts == sorted(counts)
    assert series[-1] == (math.inf, 3)
    le = dict(series)
    assert le[0.01] == 0
    assert le[0.025] == 1  # 0.02 s
    assert le[0.25] == 1
    assert le[0.4] == 2  # 0.3 s
    assert le[2.0] == 2
    assert le[3.0] == 3  # 2.5 s
    name = "deployment_latency_seconds"
    assert value(f, f"{name}_count", deployment="a") == 3
    assert value(f, f"{name}_sum", deployment="a") == pytest.approx(2.82)
    assert buckets(f, name, "b")[-1] == (math.inf, 0)


def test_ttft_histogram_counts_answered_streams(monitor: HealthMonitor) -> None:
    """The TTFT histogram holds the two streams only."""
    f = scrape(monitor)
    name = "deployment_ttft_seconds"
    series = dict(buckets(f, name, "a"))
    assert series[0.005] == 0
    assert series[0.01] == 1
    assert series[0.1] == 2
    assert series[math.inf] == 2
    assert value(f, f"{name}_count", deployment="a") == 2
    assert value(f, f"{name}_sum", deployment="a") == pytest.approx(0.11)


def test_status_is_one_hot_per_deployment(monitor: HealthMonitor) -> None:
    """Exactly one state is 1 for every deployment, and it is the monitor's status."""
    f = scrape(monitor)
    samples = f[f"{PREFIX}_deployment_status"].samples
    for dep in monitor.names:
        mine = {s.labels["state"]: s.value for s in samples if s.labels["deployment"] == dep}
        assert set(mine) == set(STATES)
        assert sorted(mine.values()) == [0, 0, 0, 1]
        assert mine[monitor.status(dep).state] == 1
    assert value(f, "deployment_status", deployment="b", state="ejected") == 1


def test_probe_outcomes_are_counted(monitor: HealthMonitor) -> None:
    """Probe counters by outcome, for probed deployments only."""
    f = scrape(monitor)
    assert value(f, "probes_total", deployment="a", outcome="ok") == 1
    assert value(f, "probes_total", deployment="a", outcome="failed") == 0
    assert value(f, "probes_total", deployment="b", outcome="failed") == 3
    assert not [s for s in f[f"{PREFIX}_probes"].samples if s.labels["deployment"] == "c"]


def test_labels_are_the_documented_low_cardinality_ones(monitor: HealthMonitor) -> None:
    """Only deployment/outcome/class/direction/state/le labels, with bounded values."""
    f = scrape(monitor)
    seen: dict[str, set[str]] = {}
    for family in f.values():
        for sample in family.samples:
            for key, label in sample.labels.items():
                seen.setdefault(key, set()).add(label)
    assert set(seen) <= ALLOWED_LABELS
    assert seen["deployment"] == {"a", "b", "c"}
    assert seen["outcome"] == {"success", "error", "ok", "failed"}
    assert seen["class"] == set(ERROR_CLASSES)
    assert seen["direction"] == {"in", "out"}
    assert seen["state"] == set(STATES)


def test_extra_families_are_included(monitor: HealthMonitor) -> None:
    """Families from the caller's callbacks appear in the same scrape."""

    def reloads() -> Iterable[Metric]:
        family = GaugeMetricFamily(f"{PREFIX}_policy_reload_errors", "Invalid reloads.")
        family.add_metric([], 2)
        return [family]

    f = scrape(monitor, reloads)
    assert value(f, "policy_reload_errors") == 2
    assert f"{PREFIX}_deployment_attempts" in f


def test_totals_survive_window_expiry(monitor: HealthMonitor, clock: FakeClock) -> None:
    """Once the window slides past the traffic its figures are 0, but counters keep the totals."""
    before = scrape(monitor)
    clock.now += 65
    stats = monitor.snapshot("a").stats
    assert stats.requests == 0
    assert stats.tokens_in == 0
    after = scrape(monitor)
    for sample, labels in [
        ("deployment_attempts_total", {"outcome": "success"}),
        ("deployment_attempts_total", {"outcome": "error"}),
        ("deployment_tokens_total", {"direction": "in"}),
        ("deployment_cost_usd_total", {}),
        ("deployment_latency_seconds_count", {}),
        ("deployment_ttft_seconds_count", {}),
    ]:
        old = value(before, sample, deployment="a", **labels)
        assert old > 0
        assert value(after, sample, deployment="a", **labels) == old
