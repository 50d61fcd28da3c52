"""The values that flow through the policy engine (all immutable, all plain data).

- :class:`DeploymentInfo` — the static facts of a configured deployment (the gateway builds them
  from its config; the engine never sees pydantic models or providers).
- :class:`PolicySnapshot` — a compiled policy document: routes with their candidates resolved to
  deployments, a version (hash of the source) and when it was loaded. Swapped atomically on
  reload; a request keeps the snapshot it started with.
- :class:`RequestFeatures` — what routing needs from one request (see :mod:`policies.request`).
- :class:`Plan` — the engine's answer: deployments in the order to try them, each with its score
  breakdown, and every excluded candidate with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Strategy = Literal[
    "score", "ordered", "lowest-latency", "least-busy", "p2c", "cheapest", "weighted"
]
STRATEGIES: tuple[Strategy, ...] = (
    "score",
    "ordered",
    "lowest-latency",
    "least-busy",
    "p2c",
    "cheapest",
    "weighted",
)
# Score components, each normalised to [0, 1] where 1 is best, then weighted.
COMPONENTS: tuple[str, ...] = ("latency", "error_rate", "load", "price", "quality")

# Capabilities a request can require (policies.request derives them from the body).
CAPABILITIES: tuple[str, ...] = ("vision", "tools", "json", "stream", "prefill")


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """Static facts of one deployment. Prices in US dollars per million tokens."""

    name: str
    tags: frozenset[str] = frozenset()
    endpoints: frozenset[str] = frozenset({"chat/completions"})
    context_window: int | None = None
    max_output_tokens: int | None = None
    price_in: float = 0.0
    price_out: float = 0.0
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Weights:
    """How much each normalised component counts in the ``score`` and ``p2c`` strategies."""

    latency: float = 1.0
    error_rate: float = 2.0
    load: float = 1.0
    price: float = 0.5
    quality: float = 0.5


@dataclass(frozen=True, slots=True)
class RouteConstraints:
    """Hard limits a route puts on its candidates (a request can tighten them, never loosen)."""

    max_price: float | None = None  # US dollars per request, estimated (see policies.request)
    latency_slo: float | None = None  # seconds of p95 latency (TTFT p95 for streams)
    max_error_rate: float | None = None  # exclude candidates above this rate (with volume)
    min_requests: int = 10  # volume below which max_error_rate is not applied
    exclude_statuses: frozenset[str] = frozenset({"ejected"})
    require_tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Candidate:
    """A deployment as a candidate of one route: its facts and its per-route weights."""

    info: DeploymentInfo
    weight: float = 1.0  # the `weighted` strategy's share
    quality: float = 0.5  # static quality in [0, 1]


@dataclass(frozen=True, slots=True)
class Match:
    """When a route applies. Every field given must hold; an empty Match matches everything."""

    models: frozenset[str] = frozenset()  # client-facing names
    headers: Mapping[str, frozenset[str]] = field(default_factory=dict)  # lowercase name -> values
    metadata: Mapping[str, frozenset[str]] = field(default_factory=dict)  # body.metadata key
    tags: frozenset[str] = frozenset()  # the request's x-gateway-tags must include these
    capabilities: frozenset[str] = frozenset()  # the request must require all of these
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A compiled route: resolved candidates (in the order the document gives them)."""

    name: str
    match: Match
    candidates: tuple[Candidate, ...]
    strategy: Strategy = "score"
    weights: Weights = Weights()
    constraints: RouteConstraints = RouteConstraints()
    default_output_tokens: int = 256  # output estimate when the request sets no max_tokens
    # the route's `retry` and `hedge` mappings, for the gateway's executor (which validates
    # them when the policy loads); the engine carries them without reading them.
    resilience: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """A compiled policy: routes tried in order; ``default`` when none matches."""

    routes: tuple[Route, ...]
    default: Route | None
    version: str  # short hash of the source text(s)
    loaded_at: float  # wall-clock seconds
    sources: tuple[str, ...] = ()  # files it was loaded from ("<config routes>" when derived)

    def route(self, name: str) -> Route | None:
        for route in self.routes:
            if route.name == name:
                return route
        if self.default is not None and self.default.name == name:
            return self.default
        return None


@dataclass(frozen=True, slots=True)
class RequestConstraints:
    """The caller's own goals and limits (headers ``x-gateway-*`` or body ``gateway: {...}``)."""

    policy: str | None = None  # a route name to use instead of matching
    max_price: float | None = None  # US dollars per request
    latency_slo: float | None = None  # seconds
    tags: frozenset[str] = frozenset()  # candidates must carry all of them
    weights: Mapping[str, float] = field(default_factory=dict)  # component -> weight override


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What routing needs from one request, read from the parsed body without copying it."""

    model: str
    endpoint: str = "chat/completions"
    stream: bool = False
    capabilities: frozenset[str] = frozenset()
    prompt_tokens: int = 0  # estimate
    max_output_tokens: int | None = None  # the request's max_tokens / max_completion_tokens
    headers: Mapping[str, str] = field(default_factory=dict)  # lowercase names
    metadata: Mapping[str, str] = field(default_factory=dict)
    constraints: RequestConstraints = RequestConstraints()


@dataclass(frozen=True, slots=True)
class Scored:
    """A candidate in the plan: its total and each weighted component (for explanations)."""

    name: str
    score: float
    components: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Exclusion:
    name: str
    reason: str  # e.g. "status ejected: 3 probes failed: ...", "needs vision"


@dataclass(frozen=True, slots=True)
class Plan:
    """Deployments to try, in order, and why; ``panic`` when every candidate was excluded by
    health and the least bad ones are tried anyway."""

    route: str
    policy_version: str
    strategy: Strategy
    order: tuple[str, ...]
    scored: tuple[Scored, ...] = ()
    excluded: tuple[Exclusion, ...] = ()
    panic: bool = False
    resilience: Mapping[str, Any] = field(default_factory=dict)


class RoutingError(ValueError):
    """A request the policy cannot route: bad constraint, unknown policy, nothing eligible.

    ``param`` names the offending header or field; ``status`` is the HTTP status to answer.
    """

    def __init__(self, message: str, *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
