"""What the policy engine ranks on: an immutable view of every deployment at one moment.

Building a :class:`DeploymentView` costs a window summary (O(buckets)); ranking must cost
microseconds. So :meth:`health.monitor.HealthMonitor.view` builds one :class:`HealthSnapshot`
for all deployments at most every ``max_age`` seconds (100 ms by default) and every request in
between reads the same object. Live in-flight counts, which move per request, are passed to the
engine separately.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

BreakerState = Literal["closed", "open", "half-open", "forced-open", "drained", "forced-closed"]


@dataclass(frozen=True, slots=True)
class DeploymentView:
    """One deployment as the engine sees it. Times in seconds; ``None``: unmeasured (no sample
    in the health window: none yet, or none since the window forgot the last one)."""

    name: str
    status: str = "healthy"  # healthy | degraded | unhealthy | ejected
    reason: str = "no data"
    requests: int = 0  # judged requests in the window (caller errors left out)
    error_rate: float = 0.0
    latency: float | None = None  # EWMA of complete non-streaming answers (else the p50)
    latency_p95: float | None = None
    ttft: float | None = None  # EWMA of time to first token of streams (else the p50)
    ttft_p95: float | None = None
    inflight: int = 0  # fleet-wide when the store is shared, at snapshot time
    breaker: BreakerState = "closed"  # set by the resilience layer once breakers exist


_EMPTY: Mapping[str, DeploymentView] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """Every deployment's view at ``taken_at`` (monotonic seconds)."""

    deployments: Mapping[str, DeploymentView] = field(default_factory=lambda: _EMPTY)
    taken_at: float = 0.0

    def get(self, name: str) -> DeploymentView:
        """``name``'s view; a deployment never seen yet is healthy with no data."""
        view = self.deployments.get(name)
        return view if view is not None else DeploymentView(name)
