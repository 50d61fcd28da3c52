"""One object the gateway holds: the store, the probes and each deployment's status rules.

:class:`HealthMonitor` answers the three questions the rest of the gateway asks of ``health``:
where to record (:meth:`window`), what state a deployment is in (:meth:`status`, :meth:`snapshot`)
and what to show an operator (:meth:`report` for ``GET /admin/deployments``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from health.probes import Prober, ProbeSettings
from health.snapshot import BreakerState, DeploymentView, HealthSnapshot
from health.status import Status, StatusSettings, derive
from health.store import MetricsStore, ProbeResult
from health.window import CALLER_ERROR, Percentiles, RollingWindow, WindowStats

REPORTED_PROBES = 10


@dataclass(frozen=True, slots=True)
class DeploymentHealth:
    """A deployment's state at one moment: what the policy engine ranks on."""

    name: str
    status: Status
    stats: WindowStats
    probes: tuple[ProbeResult, ...]


class HealthMonitor:
    """Store + prober + per-deployment status settings for a fixed set of deployments."""

    def __init__(
        self,
        store: MetricsStore,
        prober: Prober,
        status_settings: dict[str, StatusSettings],
    ) -> None:
        self.store = store
        self.prober = prober
        self._settings = status_settings
        self._default = StatusSettings()
        self.extra: list[Callable[[str], dict[str, Any]]] = []  # more fields per deployment
        self.breaker_state: Callable[[str], BreakerState] = lambda name: "closed"
        self._view: HealthSnapshot | None = None
        for name in status_settings:
            store.window(name)

    @property
    def names(self) -> list[str]:
        return self.store.names()

    def window(self, name: str) -> RollingWindow:
        return self.store.window(name)

    def snapshot(self, name: str) -> DeploymentHealth:
        stats = self.store.stats(name)
        probes = self.store.probes(name)
        status = derive(stats, probes, self._settings.get(name, self._default))
        return DeploymentHealth(name, status, stats, probes)

    def status(self, name: str) -> Status:
        return self.snapshot(name).status

    def invalidate(self) -> None:
        """Rebuild the view on the next read (a breaker changed state: routing must see it now,
        not up to ``max_age`` later)."""
        self._view = None

    def view(self, max_age: float = 0.1) -> HealthSnapshot:
        """Every deployment's :class:`DeploymentView`, rebuilt at most every ``max_age``
        seconds (requests in between share one immutable snapshot).

        Latency and TTFT are this process's EWMAs, else the window's p50 (samples of other
        replicas), else ``None``: an EWMA whose newest sample has left the window reads as
        ``None`` (see :mod:`health.window`), so a deployment nobody sent traffic to for a whole
        window is unmeasured again, not stuck with its last figure."""
        now = time.monotonic()
        cached = self._view
        if cached is not None and now - cached.taken_at < max_age:
            return cached
        views = {}
        for h in self.snapshots():
            s = h.stats
            views[h.name] = DeploymentView(
                name=h.name,
                status=h.status.state,
                reason=h.status.reason,
                requests=s.requests - s.error_count(CALLER_ERROR),
                error_rate=s.error_rate,
                latency=s.latency.ewma if s.latency.ewma is not None else s.latency.p50,
                latency_p95=s.latency.p95,
                ttft=s.ttft.ewma if s.ttft.ewma is not None else s.ttft.p50,
                ttft_p95=s.ttft.p95,
                inflight=s.inflight,
                breaker=self.breaker_state(h.name),
            )
        self._view = HealthSnapshot(MappingProxyType(views), now)
        return self._view

    def snapshots(self, names: Iterable[str] | None = None) -> list[DeploymentHealth]:
        return [self.snapshot(n) for n in (self.names if names is None else names)]

    def report(self) -> dict[str, Any]:
        """The JSON body of ``GET /admin/deployments``."""
        return {
            **self.store.shared().to_dict(),
            "replica": self.store.replica,
            "deployments": [self._describe(h) for h in self.snapshots()],
        }

    def _describe(self, h: DeploymentHealth) -> dict[str, Any]:
        s = h.stats
        probe = self.prober.settings(h.name)
        out: dict[str, Any] = {
            "name": h.name,
            "status": h.status.state,
            "reason": h.status.reason,
            "window": {
                "seconds": s.window_seconds,
                "requests": s.requests,
                "successes": s.successes,
                "errors": dict(s.errors),
                "error_rate": round(s.error_rate, 4),
                "inflight": s.inflight,
                "latency_ms": _ms(s.latency),
                "ttft_ms": _ms(s.ttft),
                "tokens_in": s.tokens_in,
                "tokens_out": s.tokens_out,
                "cost_usd": round(s.cost, 6),
            },
            "probe": (
                {
                    "kind": probe.kind,
                    "interval_s": probe.interval,
                    "timeout_s": probe.timeout,
                    "healthy_threshold": probe.healthy_threshold,
                    "unhealthy_threshold": probe.unhealthy_threshold,
                }
                if probe is not None
                else {"kind": "none"}
            ),
            "probes": [p.to_dict() for p in h.probes[:REPORTED_PROBES]],
        }
        for extra in self.extra:
            out.update(extra(h.name))
        return out

    async def start(self) -> None:
        await self.store.start()
        await self.prober.start()

    async def close(self) -> None:
        await self.prober.close()
        await self.store.close()


def _ms(p: Percentiles) -> dict[str, float | None]:
    return {
        key: None if value is None else round(value * 1000, 1)
        for key, value in (
            ("p50", p.p50),
            ("p95", p.p95),
            ("p99", p.p99),
            ("mean", p.mean),
            ("ewma", p.ewma),
        )
    }


def status_settings(
    probe: ProbeSettings, *, defaults: StatusSettings | None = None
) -> StatusSettings:
    """The status rules of one deployment: the fleet-wide rates with its probe thresholds."""
    return replace(
        defaults or StatusSettings(),
        healthy_threshold=probe.healthy_threshold,
        unhealthy_threshold=probe.unhealthy_threshold,
    )
