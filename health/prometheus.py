"""``GET /metrics``: the monitor's figures in the Prometheus text format, read at scrape time.

Nothing is counted twice: the windows already keep lifetime totals (requests, errors by class,
latency and TTFT histograms over :data:`health.window.BOUNDS`, tokens, cost), and a custom
collector turns them into metric families when Prometheus scrapes. The hot path pays nothing
for metrics beyond the window it writes anyway.

Figures are this replica's own (Prometheus adds replicas up); status is the fleet's view.
Labels are low-cardinality by construction: ``deployment`` (from config), ``class`` (the fixed
error classes), ``state`` (four statuses), ``outcome`` (ok / failed), ``direction`` (in / out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from health.monitor import HealthMonitor
from health.status import STATES
from health.window import BINS, BOUNDS, ERROR_CLASSES, LAYOUT

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "llm_gateway"


def _histogram(name: str, doc: str, monitor: HealthMonitor, offset: int, sum_at: int) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["deployment"])
    for dep in monitor.names:
        totals = monitor.window(dep).totals
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for i in range(BINS):
            running += totals[offset + i]
            bound = str(BOUNDS[i]) if i < len(BOUNDS) else "+Inf"
            buckets.append((bound, running))
        family.add_metric([dep], buckets, totals[sum_at])
    return family


class HealthCollector(Collector):
    """Reads a :class:`HealthMonitor` on every scrape; ``extra`` adds families of the caller's."""

    def __init__(
        self, monitor: HealthMonitor, extra: Iterable[Callable[[], Iterable[Metric]]] = ()
    ) -> None:
        self.monitor = monitor
        self.extra = list(extra)

    def collect(self) -> Iterator[Metric]:
        m = self.monitor
        L = LAYOUT
        attempts = CounterMetricFamily(
            f"{PREFIX}_deployment_attempts",
            "Attempts sent to a deployment, by outcome.",
            labels=["deployment", "outcome"],
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_deployment_errors",
            "Failed attempts by error class.",
            labels=["deployment", "class"],
        )
        tokens = CounterMetricFamily(
            f"{PREFIX}_deployment_tokens", "Tokens in and out.", labels=["deployment", "direction"]
        )
        cost = CounterMetricFamily(
            f"{PREFIX}_deployment_cost_usd", "Cost of answered attempts.", labels=["deployment"]
        )
        inflight = GaugeMetricFamily(
            f"{PREFIX}_deployment_inflight", "Attempts in flight here.", labels=["deployment"]
        )
        status = GaugeMetricFamily(
            f"{PREFIX}_deployment_status",
            "1 for the deployment's current status, 0 for the others.",
            labels=["deployment", "state"],
        )
        probes = CounterMetricFamily(
            f"{PREFIX}_probes",
            "Active probes run by this replica, by outcome.",
            labels=["deployment", "outcome"],
        )
        for dep in m.names:
            window = m.window(dep)
            t = window.totals
            attempts.add_metric([dep, "success"], t[L.SUCCESSES])
            attempts.add_metric([dep, "error"], t[L.REQUESTS] - t[L.SUCCESSES])
            for i, name in enumerate(ERROR_CLASSES):
                errors.add_metric([dep, name], t[L.ERRORS + i])
            tokens.add_metric([dep, "in"], t[L.TOKENS_IN])
            tokens.add_metric([dep, "out"], t[L.TOKENS_OUT])
            cost.add_metric([dep], t[L.COST])
            inflight.add_metric([dep], window.inflight)
            state = m.status(dep).state
            for s in STATES:
                status.add_metric([dep, s], 1.0 if s == state else 0.0)
            outcomes = m.prober.outcomes.get(dep)
            if outcomes is not None:
                for outcome, n in outcomes.items():
                    probes.add_metric([dep, outcome], n)
        yield attempts
        yield errors
        yield _histogram(
            f"{PREFIX}_deployment_latency_seconds",
            "Latency of answered attempts.",
            m,
            L.LATENCY_HIST,
            L.LATENCY_SUM,
        )
        yield _histogram(
            f"{PREFIX}_deployment_ttft_seconds",
            "Time to first token of answered streams.",
            m,
            L.TTFT_HIST,
            L.TTFT_SUM,
        )
        yield tokens
        yield cost
        yield inflight
        yield status
        yield probes
        stale = GaugeMetricFamily(
            f"{PREFIX}_shared_metrics_stale",
            "1 while the Redis store cannot sync (serving on local figures).",
        )
        stale.add_metric([], 1.0 if m.store.shared().state == "stale" else 0.0)
        yield stale
        for more in self.extra:
            yield from more()


def registry(monitor: HealthMonitor, *extra: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding the monitor's collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HealthCollector(monitor, extra))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
