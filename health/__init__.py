"""Health: what state is every deployment in right now (rolling metrics, probes, status).

Imports nothing of ``gateway`` or ``policies``.

- :mod:`health.window` — a sliding ring of time buckets per deployment (counts, errors by class,
  latency and time-to-first-token histograms, tokens, cost) and its summary, :class:`WindowStats`.
- :mod:`health.store` — the :class:`MetricsStore` protocol and the in-memory store;
  :mod:`health.redis_store` — the fleet-wide store (hot path in memory, flushed and merged in
  the background).
- :mod:`health.probes` — active probes on an interval, one replica per interval in a fleet.
- :mod:`health.status` — healthy / degraded / unhealthy / ejected, with the reason in words.
- :mod:`health.monitor` — the object the gateway holds; :mod:`health.prometheus` — ``/metrics``.
"""

from health.monitor import DeploymentHealth, HealthMonitor
from health.status import Status, StatusSettings
from health.store import MemoryStore, MetricsStore, ProbeResult, WindowSettings
from health.window import ERROR_CLASSES, Percentiles, RollingWindow, WindowStats

__all__ = [
    "ERROR_CLASSES",
    "DeploymentHealth",
    "HealthMonitor",
    "MemoryStore",
    "MetricsStore",
    "Percentiles",
    "ProbeResult",
    "RollingWindow",
    "Status",
    "StatusSettings",
    "WindowSettings",
    "WindowStats",
]
