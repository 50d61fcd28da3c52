"""policies.engine.rank: route selection, filters, panic rule, scoring and every strategy.

Every case builds its policy, request and health snapshot directly from the value types
(:mod:`policies.types`, :mod:`health.snapshot`), so these tests do not depend on the YAML schema.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from health.monitor import HealthMonitor
from health.probes import Prober
from health.snapshot import DeploymentView, HealthSnapshot
from health.store import MemoryStore
from policies.engine import prepare, rank
from policies.strategies import Columns, panic, power_of_two, weighted
from policies.types import (
    CAPABILITIES,
    COMPONENTS,
    Candidate,
    DeploymentInfo,
    Match,
    Plan,
    PolicySnapshot,
    RequestConstraints,
    RequestFeatures,
    Route,
    RouteConstraints,
    RoutingError,
    Scored,
    Strategy,
    Weights,
)

MODEL = "m"
ALL_TAGS = frozenset(CAPABILITIES)  # a deployment that can do everything
DEFAULT_WEIGHTS = Weights()
NO_CONSTRAINTS = RouteConstraints()
ONLY = {  # weights that make one component decide the score
    c: Weights(**{k: (1.0 if k == c else 0.0) for k in COMPONENTS}) for c in COMPONENTS
}


def dep(
    name: str,
    *,
    tags: Iterable[str] = ALL_TAGS,
    endpoints: Iterable[str] = ("chat/completions",),
    ctx: int | None = None,
    price_in: float = 0.0,
    price_out: float = 0.0,
    cap: int | None = None,
    weight: float = 1.0,
    quality: float = 0.5,
) -> Candidate:
    """A candidate for deployment ``name`` (every capability, chat only, free, no cap)."""
    info = DeploymentInfo(
        name=name,
        tags=frozenset(tags),
        endpoints=frozenset(endpoints),
        context_window=ctx,
        price_in=price_in,
        price_out=price_out,
        max_concurrency=cap,
    )
    return Candidate(info, weight=weight, quality=quality)


def route(
    name: str,
    candidates: Iterable[Candidate],
    *,
    models: Iterable[str] = (MODEL,),
    strategy: Strategy = "score",
    weights: Weights = DEFAULT_WEIGHTS,
    constraints: RouteConstraints = NO_CONSTRAINTS,
    match: Match | None = None,
    out_tokens: int = 256,
    resilience: Mapping[str, Any] | None = None,
) -> Route:
    return Route(
        name=name,
        match=match if match is not None else Match(models=frozenset(models)),
        candidates=tuple(candidates),
        strategy=strategy,
        weights=weights,
        constraints=constraints,
        default_output_tokens=out_tokens,
        resilience=resilience or {},
    )


def policy(*routes: Route, default: Route | None = None) -> PolicySnapshot:
    return PolicySnapshot(routes=routes, default=default, version="v1", loaded_at=0.0)


def health(*views: DeploymentView) -> HealthSnapshot:
    return HealthSnapshot({v.name: v for v in views}, taken_at=1.0)


def view(name: str, **fields: Any) -> DeploymentView:
    return DeploymentView(name, **fields)


def request(
    *,
    model: str = MODEL,
    endpoint: str = "chat/completions",
    stream: bool = False,
    caps: Iterable[str] = (),
    prompt: int = 100,
    max_out: int | None = None,
    headers: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
    **constraints: Any,
) -> RequestFeatures:
    if "tags" in constraints:
        constraints["tags"] = frozenset(constraints["tags"])
    return RequestFeatures(
        model=model,
        endpoint=endpoint,
        stream=stream,
        capabilities=frozenset(caps) | ({"stream"} if stream else set()),
        prompt_tokens=prompt,
        max_output_tokens=max_out,
        headers=headers or {},
        metadata=metadata or {},
        constraints=RequestConstraints(**constraints),
    )


def plan_for(
    candidates: Iterable[Candidate],
    views: Iterable[DeploymentView] = (),
    req: RequestFeatures | None = None,
    **route_options: Any,
) -> Plan:
    """Rank ``req`` (a plain request by default) over one route of ``candidates``."""
    return rank(
        policy(route("r", candidates, **route_options)),
        req or request(),
        health(*views),
        rng=random.Random(1),
    )


def reasons(plan: Plan) -> dict[str, str]:
    return {e.name: e.reason for e in plan.excluded}


# --- strategies, table-driven ---------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One ranking over candidates a, b, c (or those given) and the order it must produce."""

    strategy: Strategy
    expected: tuple[str, ...]
    views: tuple[DeploymentView, ...] = ()
    candidates: tuple[Candidate, ...] = (dep("a"), dep("b"), dep("c"))
    weights: Weights = DEFAULT_WEIGHTS
    request: RequestFeatures = field(default_factory=request)
    inflight: Mapping[str, int] | None = None


LAT = (view("a", latency=1.0, ttft=0.1), view("b", latency=0.5, ttft=0.15))  # c: no data

CASES = {
    # score: best weighted score first, ties in document order
    "score/all-equal-keeps-document-order": Case("score", ("a", "b", "c")),
    "score/latency": Case("score", ("b", "a", "c"), LAT, weights=ONLY["latency"]),
    "score/latency-stream-uses-ttft": Case(
        "score", ("a", "b", "c"), LAT, weights=ONLY["latency"], request=request(stream=True)
    ),
    "score/error-rate": Case(
        "score",
        ("b", "c", "a"),
        (view("a", error_rate=0.2), view("b"), view("c", error_rate=0.1)),
        weights=ONLY["error_rate"],
    ),
    "score/load": Case(
        "score",
        ("b", "a", "c"),
        (view("a", inflight=5), view("b"), view("c", inflight=3)),
        candidates=(dep("a", cap=10), dep("b", cap=10), dep("c")),  # c: 1/(1+3) < a: 1-5/10
        weights=ONLY["load"],
    ),
    "score/price": Case(
        "score",
        ("c", "b", "a"),
        candidates=(dep("a", price_in=4.0), dep("b", price_in=2.0), dep("c", price_in=1.0)),
        weights=ONLY["price"],
    ),
    "score/price-free-wins": Case(
        "score",
        ("c", "a", "b"),
        candidates=(dep("a", price_in=4.0), dep("b", price_in=2.0), dep("c")),
        weights=ONLY["price"],  # a and b both score 0 next to a free c: document order
    ),
    "score/quality": Case(
        "score",
        ("b", "c", "a"),
        candidates=(dep("a", quality=0.2), dep("b", quality=0.9), dep("c", quality=0.5)),
        weights=ONLY["quality"],
    ),
    "score/request-weights-override-route": Case(
        "score",
        ("b", "c", "a"),
        LAT,
        candidates=(dep("a", quality=0.2), dep("b", quality=0.9), dep("c", quality=0.5)),
        weights=ONLY["latency"],  # alone it would give b, a, c
        request=request(weights={"latency": 0.0, "quality": 1.0}),
    ),
    # a has no live count, so its view's 9 applies (1/(1+9) = 0.1); live: c 1 (0.5), b 4 (0.2)
    "score/live-inflight-overrides-view": Case(
        "score",
        ("c", "b", "a"),
        (view("a", inflight=9), view("b"), view("c", inflight=7)),
        weights=ONLY["load"],
        inflight={"b": 4, "c": 1},
    ),
    # ordered: document order whatever the scores, filters still apply
    "ordered/ignores-scores": Case("ordered", ("a", "b", "c"), LAT, weights=ONLY["latency"]),
    "ordered/drops-excluded": Case("ordered", ("a", "c"), (view("b", status="ejected"),)),
    # lowest-latency: fastest first; no data counts as the fastest measured (so it is measured)
    "lowest-latency/latency": Case("lowest-latency", ("b", "c", "a"), LAT),
    "lowest-latency/stream-uses-ttft": Case(
        "lowest-latency", ("a", "c", "b"), LAT, request=request(stream=True)
    ),
    "lowest-latency/no-data-ties-with-the-fastest-in-document-order": Case(
        "lowest-latency", ("a", "b", "c"), (view("c", latency=2.0),)
    ),
    "lowest-latency/nothing-measured-keeps-document-order": Case("lowest-latency", ("a", "b", "c")),
    "lowest-latency/tie-keeps-document-order": Case(
        "lowest-latency",
        ("a", "b", "c"),
        (view("a", latency=0.5), view("b", latency=0.5), view("c", latency=0.5)),
    ),
    # least-busy: in-flight / cap (or in-flight) ascending
    "least-busy/ratio-and-count": Case(
        "least-busy",
        ("c", "a", "b"),
        (view("a", inflight=5), view("b", inflight=2), view("c")),
        candidates=(dep("a", cap=10), dep("b"), dep("c")),  # 0.5, 2, 0
    ),
    "least-busy/live-inflight": Case(
        "least-busy",
        ("a", "b", "c"),
        (view("a", inflight=5), view("b", inflight=2), view("c")),
        candidates=(dep("a", cap=10), dep("b"), dep("c")),
        inflight={"c": 9},
    ),
    "least-busy/tie-keeps-document-order": Case("least-busy", ("a", "b", "c")),
    # cheapest: price ascending, ties by score
    "cheapest/price": Case(
        "cheapest",
        ("b", "c", "a"),
        candidates=(dep("a", price_in=3.0), dep("b", price_in=1.0), dep("c", price_out=2.0)),
        request=request(prompt=1000, max_out=1000),
    ),
    "cheapest/tie-by-score": Case(
        "cheapest",
        ("b", "a", "c"),
        (view("a", error_rate=0.3), view("b")),
        candidates=(dep("a", price_in=1.0), dep("b", price_in=1.0), dep("c", price_in=5.0)),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_strategy_orders_candidates(case: Case) -> None:
    """Each strategy puts the candidates in the order its algorithm defines."""
    plan = rank(
        policy(route("r", case.candidates, strategy=case.strategy, weights=case.weights)),
        case.request,
        health(*case.views),
        inflight=case.inflight,
        rng=random.Random(0),
    )
    assert plan.order == case.expected
    assert plan.strategy == case.strategy
    assert [s.name for s in plan.scored] == list(plan.order)
    assert not plan.panic


def test_p2c_leads_with_the_better_of_two_and_then_follows_score() -> None:
    """p2c: the worst never leads, the best two both lead for some seed, the rest by score."""
    candidates = (dep("a", quality=0.1), dep("b", quality=0.9), dep("c", quality=0.5))
    snapshot = policy(route("r", candidates, strategy="p2c", weights=ONLY["quality"]))
    leaders = set()
    for seed in range(64):
        plan = rank(snapshot, request(), health(), rng=random.Random(seed))
        scores = {s.name: s.score for s in plan.scored}
        leaders.add(plan.order[0])
        rest = [scores[n] for n in plan.order[1:]]
        assert rest == sorted(rest, reverse=True)
        assert sorted(plan.order) == ["a", "b", "c"]
    assert leaders == {"b", "c"}


def test_p2c_with_two_candidates_always_puts_the_better_first() -> None:
    """With two candidates the pair is always both of them: the better goes first."""
    snapshot = policy(route("r", (dep("a", quality=0.2), dep("b", quality=0.8)), strategy="p2c"))
    orders = {rank(snapshot, request(), health(), rng=random.Random(s)).order for s in range(32)}
    assert orders == {("b", "a")}


def test_p2c_breaks_score_ties_by_document_order() -> None:
    """Equal scores: the earlier candidate of the random pair leads."""
    columns = Columns([0.5, 0.5, 0.5], [0.0] * 3, [0.0] * 3, [0.0] * 3, [1.0] * 3)
    for seed in range(32):
        order = power_of_two(columns, random.Random(seed))
        assert sorted(order) == [0, 1, 2]
        assert order[0] in (0, 1)  # the pair's earlier member; 2 is never the earlier


def test_weighted_follows_weights_and_is_deterministic() -> None:
    """weighted: a candidate leads in proportion to its weight; same seed, same order."""
    snapshot = policy(route("r", (dep("a", weight=3), dep("b", weight=1)), strategy="weighted"))
    rng = random.Random(42)
    firsts = [rank(snapshot, request(), health(), rng=rng).order[0] for _ in range(2000)]
    assert 0.70 < firsts.count("a") / len(firsts) < 0.80
    again = [rank(snapshot, request(), health(), rng=random.Random(s)).order for s in range(20)]
    assert again == [
        rank(snapshot, request(), health(), rng=random.Random(s)).order for s in range(20)
    ]


def test_weighted_puts_nonpositive_weights_last() -> None:
    """A weight of 0 never leads (the schema forbids it; the strategy still copes)."""
    columns = Columns([0.5] * 3, [0.0] * 3, [0.0] * 3, [0.0] * 3, [0.0, 1.0, 2.0])
    for seed in range(32):
        assert weighted(columns, random.Random(seed))[-1] == 0


def test_panic_order_is_severity_then_error_rate_then_document_order() -> None:
    """panic: healthy < degraded < unhealthy < ejected, then error rate, then position."""
    assert panic([3, 1, 1, 0, 1], [0.0, 0.5, 0.2, 0.9, 0.2]) == [3, 2, 4, 1, 0]


# --- filters: every exclusion reason --------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "views", "req", "route_options", "reason"),
    [
        pytest.param(
            dep("x"),
            (),
            request(endpoint="embeddings"),
            {},
            "does not serve /v1/embeddings",
            id="endpoint",
        ),
        pytest.param(
            dep("x", tags={"tools"}), (), request(stream=True), {}, "needs stream", id="stream"
        ),
        pytest.param(
            dep("x", tags={"stream", "tools"}),
            (),
            request(caps={"vision", "json"}),
            {},
            "needs json, vision",
            id="capabilities",
        ),
        pytest.param(
            dep("x"),
            (),
            request(),
            {"constraints": RouteConstraints(require_tags=frozenset({"eu"}))},
            "missing tags eu",
            id="route-require-tags",
        ),
        pytest.param(
            dep("x", tags=ALL_TAGS | {"eu"}),
            (),
            request(tags={"gold", "eu"}),
            {},
            "missing tags gold",
            id="request-tags",
        ),
        pytest.param(
            dep("x", ctx=8000),
            (),
            request(prompt=8800, max_out=300),
            {},
            "context window 8000 < 9100 tokens",
            id="context-window-max-tokens",
        ),
        pytest.param(
            dep("x", ctx=1000),
            (),
            request(prompt=800),
            {"out_tokens": 512},
            "context window 1000 < 1312 tokens",
            id="context-window-default-output",
        ),
        pytest.param(
            dep("x", price_in=10.0, price_out=30.0),
            (),
            request(prompt=1000, max_out=1000),
            {"constraints": RouteConstraints(max_price=0.01)},
            "estimated price $0.04 > max price $0.01",
            id="route-max-price",
        ),
        pytest.param(
            dep("x", price_in=10.0, price_out=30.0),
            (),
            request(prompt=1000, max_out=1000, max_price=0.02),
            {"constraints": RouteConstraints(max_price=0.05)},
            "estimated price $0.04 > max price $0.02",
            id="request-max-price-lower",
        ),
        pytest.param(
            dep("x", price_in=10.0, price_out=30.0),
            (),
            request(prompt=1000, max_out=1000, max_price=0.5),
            {"constraints": RouteConstraints(max_price=0.03)},
            "estimated price $0.04 > max price $0.03",
            id="route-max-price-lower",
        ),
        pytest.param(
            dep("x"),
            (view("x", status="ejected", reason="3 probes failed"),),
            request(),
            {},
            "status ejected: 3 probes failed",
            id="status-ejected",
        ),
        pytest.param(
            dep("x"),
            (view("x", status="degraded", reason="slow"),),
            request(),
            {"constraints": RouteConstraints(exclude_statuses=frozenset({"degraded"}))},
            "status degraded: slow",
            id="status-custom",
        ),
        pytest.param(
            dep("x"),
            (view("x", breaker="open"),),
            request(),
            {},
            "breaker open",
            id="breaker-open",
        ),
        pytest.param(
            dep("x"),
            (view("x", breaker="forced-open"),),
            request(),
            {},
            "breaker forced-open",
            id="breaker-forced-open",
        ),
        pytest.param(
            dep("x"),
            (view("x", breaker="drained"),),
            request(),
            {},
            "breaker drained",
            id="breaker-drained",
        ),
        pytest.param(
            dep("x"),
            (view("x", latency_p95=3.0),),
            request(),
            {"constraints": RouteConstraints(latency_slo=2.0)},
            "p95 latency 3000ms > latency slo 2000ms",
            id="route-slo",
        ),
        pytest.param(
            dep("x"),
            (view("x", latency_p95=1.5),),
            request(latency_slo=0.8),
            {"constraints": RouteConstraints(latency_slo=2.0)},
            "p95 latency 1500ms > latency slo 800ms",
            id="request-slo-lower",
        ),
        pytest.param(
            dep("x"),
            (view("x", latency_p95=0.1, ttft_p95=0.9),),
            request(stream=True),
            {"constraints": RouteConstraints(latency_slo=0.5)},
            "p95 ttft 900ms > latency slo 500ms",
            id="stream-slo-uses-ttft",
        ),
        pytest.param(
            dep("x"),
            (view("x", requests=20, error_rate=0.6),),
            request(),
            {"constraints": RouteConstraints(max_error_rate=0.5)},
            "error rate 0.6 > 0.5 over 20 requests",
            id="error-rate",
        ),
        pytest.param(
            dep("x", endpoints=()),
            (view("x", status="ejected"),),
            request(),
            {},
            "does not serve /v1/chat/completions",
            id="first-reason-wins",
        ),
    ],
)
def test_candidate_is_excluded_with_its_reason(
    candidate: Candidate,
    views: tuple[DeploymentView, ...],
    req: RequestFeatures,
    route_options: dict[str, Any],
    reason: str,
) -> None:
    """Each hard constraint excludes a candidate and says why; a second one stays eligible."""
    ok = dep("ok", tags=ALL_TAGS | {"eu", "gold"}, endpoints={"chat/completions", "embeddings"})
    plan = plan_for((candidate, ok), views, req, **route_options)
    assert plan.order == ("ok",)
    assert reasons(plan) == {"x": reason}
    assert not plan.panic


@pytest.mark.parametrize(
    ("views", "req", "route_options"),
    [
        pytest.param((view("x", breaker="half-open"),), request(), {}, id="half-open-breaker"),
        pytest.param((view("x", status="degraded"),), request(), {}, id="degraded-by-default"),
        pytest.param(
            (view("x", requests=5, error_rate=0.9),),
            request(),
            {"constraints": RouteConstraints(max_error_rate=0.5)},
            id="error-rate-low-volume",
        ),
        pytest.param(
            (view("x", latency=5.0),),
            request(latency_slo=1.0),
            {},
            id="slo-without-p95",
        ),
        pytest.param(
            (view("x", latency_p95=2.0),),
            request(latency_slo=2.0),
            {},
            id="slo-at-limit",
        ),
        pytest.param((), request(prompt=7744, max_out=256), {}, id="context-exactly-full"),
    ],
)
def test_candidate_within_limits_stays_eligible(
    views: tuple[DeploymentView, ...], req: RequestFeatures, route_options: dict[str, Any]
) -> None:
    """Limits that are not crossed (or cannot be judged) exclude nothing."""
    plan = plan_for((dep("x", ctx=8000),), views, req, **route_options)
    assert plan.order == ("x",)
    assert plan.excluded == ()


def test_exclusions_are_listed_in_document_order() -> None:
    """Excluded candidates appear in the order the route lists them, whatever the reason."""
    candidates = (dep("a"), dep("b", tags=()), dep("c"), dep("d", ctx=10), dep("e"))
    plan = plan_for(candidates, (view("a", breaker="open"),), request(caps={"tools"}))
    assert [e.name for e in plan.excluded] == ["a", "b", "d"]
    assert plan.order == ("c", "e")


def test_static_verdicts_follow_the_request_shape() -> None:
    """Remembered static verdicts never leak from one request shape into another."""
    snapshot = policy(route("r", (dep("a", tags={"tools", "eu"}), dep("b", tags=ALL_TAGS))))
    for _ in range(2):
        assert rank(snapshot, request(), health()).order == ("a", "b")
        assert rank(snapshot, request(caps={"vision"}), health()).order == ("b",)
        assert rank(snapshot, request(tags={"eu"}), health()).order == ("a",)
        assert rank(snapshot, request(stream=True), health()).order == ("b",)


def test_duplicate_candidate_counts_once() -> None:
    """A deployment listed twice is planned once, at its first position."""
    plan = plan_for((dep("a"), dep("b"), dep("a")), strategy="ordered")
    assert plan.order == ("a", "b")


def test_unseen_deployment_is_healthy_without_data() -> None:
    """A deployment missing from the health snapshot is eligible with neutral latency."""
    plan = rank(policy(route("r", (dep("new"),))), request(), health(), explain=True)
    assert plan.order == ("new",)
    assert plan.scored[0].components["latency"] == 0.5


# --- panic rule -----------------------------------------------------------------------------


def test_panic_ranks_health_excluded_candidates_least_bad_first() -> None:
    """Nothing healthy is left: try the health-excluded ones by severity, then error rate."""
    views = (
        view("a", status="ejected", reason="down", error_rate=0.1),
        view("b", breaker="open", error_rate=0.9),
        view("c", status="ejected", reason="down", error_rate=0.05),
        view("d", requests=50, error_rate=0.8, status="unhealthy"),
    )
    plan = plan_for(
        (dep("a"), dep("b"), dep("c"), dep("d")),
        views,
        constraints=RouteConstraints(max_error_rate=0.5),
    )
    assert plan.panic
    assert plan.order == ("b", "d", "c", "a")
    assert [s.name for s in plan.scored] == list(plan.order)
    assert reasons(plan) == {
        "a": "status ejected: down",
        "b": "breaker open",
        "c": "status ejected: down",
        "d": "error rate 0.8 > 0.5 over 50 requests",
    }


def test_panic_never_includes_statically_excluded_candidates() -> None:
    """Capability, endpoint, context or price exclusions stay excluded even in panic."""
    views = (view("a", status="ejected"), view("b", status="ejected"))
    plan = plan_for((dep("a"), dep("b", tags=()), dep("c", ctx=10)), views, request(caps={"json"}))
    assert plan.panic
    assert plan.order == ("a",)
    assert set(reasons(plan)) == {"a", "b", "c"}


def test_no_panic_while_one_candidate_is_healthy() -> None:
    """One eligible candidate is enough: the health-excluded ones stay out of the plan."""
    plan = plan_for((dep("a"), dep("b")), (view("a", status="ejected"),))
    assert not plan.panic
    assert plan.order == ("b",)


def test_nothing_can_serve_the_request_is_a_400_listing_every_reason() -> None:
    """Every candidate statically excluded: RoutingError 400 naming each one and why."""
    with pytest.raises(RoutingError) as caught:
        plan_for(
            (dep("a", tags={"stream"}), dep("b", tags=ALL_TAGS, ctx=8000)),
            (view("b", status="ejected"),),
            request(caps={"vision"}, prompt=8800, max_out=300),
            models=("m",),
        )
    assert caught.value.status == 400
    assert caught.value.message == (
        "no deployment of route `r` can serve this request: a: needs vision; "
        "b: context window 8000 < 9100 tokens"
    )


# --- route selection ------------------------------------------------------------------------


def routed(req: RequestFeatures, *routes: Route, default: Route | None = None) -> str:
    return rank(policy(*routes, default=default), req, health()).route


ANY = (dep("a", tags=ALL_TAGS | {"premium", "eu"}),)


@pytest.mark.parametrize(
    ("match", "req", "matches"),
    [
        pytest.param(Match(models=frozenset({"m"})), request(), True, id="model"),
        pytest.param(Match(models=frozenset({"x", "y"})), request(), False, id="other-model"),
        pytest.param(Match(), request(model="anything"), True, id="empty-match"),
        pytest.param(
            Match(headers={"x-team": frozenset({"ml", "research"})}),
            request(headers={"x-team": "ml"}),
            True,
            id="header",
        ),
        pytest.param(
            Match(headers={"x-team": frozenset({"ml"})}),
            request(headers={"x-team": "web"}),
            False,
            id="header-other-value",
        ),
        pytest.param(
            Match(headers={"x-team": frozenset({"ml"})}), request(), False, id="header-missing"
        ),
        pytest.param(
            Match(metadata={"tier": frozenset({"gold"})}),
            request(metadata={"tier": "gold"}),
            True,
            id="metadata",
        ),
        pytest.param(
            Match(metadata={"tier": frozenset({"gold"})}),
            request(metadata={"tier": "free"}),
            False,
            id="metadata-other-value",
        ),
        pytest.param(
            Match(tags=frozenset({"premium"})), request(tags={"premium", "eu"}), True, id="tags"
        ),
        pytest.param(
            Match(tags=frozenset({"premium", "eu"})),
            request(tags={"premium"}),
            False,
            id="tags-missing-one",
        ),
        pytest.param(
            Match(capabilities=frozenset({"vision"})),
            request(caps={"vision", "tools"}),
            True,
            id="capabilities",
        ),
        pytest.param(
            Match(capabilities=frozenset({"vision"})),
            request(caps={"tools"}),
            False,
            id="capabilities-missing",
        ),
        pytest.param(
            Match(capabilities=frozenset({"stream"})),
            RequestFeatures(model=MODEL, stream=True),
            True,
            id="capabilities-stream-flag",
        ),
        pytest.param(
            Match(min_prompt_tokens=100, max_prompt_tokens=200),
            request(prompt=100),
            True,
            id="prompt-at-min",
        ),
        pytest.param(
            Match(min_prompt_tokens=100, max_prompt_tokens=200),
            request(prompt=200),
            True,
            id="prompt-at-max",
        ),
        pytest.param(Match(min_prompt_tokens=100), request(prompt=99), False, id="prompt-small"),
        pytest.param(Match(max_prompt_tokens=200), request(prompt=201), False, id="prompt-big"),
        pytest.param(
            Match(
                models=frozenset({"m"}),
                headers={"x-team": frozenset({"ml"})},
                metadata={"tier": frozenset({"gold"})},
            ),
            request(headers={"x-team": "ml"}, metadata={"tier": "free"}),
            False,
            id="every-field-must-hold",
        ),
    ],
)
def test_route_match(match: Match, req: RequestFeatures, matches: bool) -> None:
    """A route applies when every field of its match holds; otherwise the next one is tried."""
    chosen = routed(req, route("special", ANY, match=match), route("fallback", ANY, models=()))
    assert chosen == ("special" if matches else "fallback")


def test_first_matching_route_wins_in_document_order() -> None:
    """Two routes match: the earlier one is used."""
    first = route("first", ANY, match=Match(models=frozenset({"m"}), min_prompt_tokens=50))
    assert routed(request(), first, route("second", ANY), route("third", ANY, models=())) == (
        "first"
    )
    assert routed(request(prompt=10), first, route("second", ANY)) == "second"


def test_default_route_when_nothing_matches() -> None:
    """No route matches: the default route is used."""
    default = route("fallback", ANY, models=("other",))
    assert routed(request(model="x"), route("r", ANY), default=default) == "fallback"


def test_no_route_is_a_404() -> None:
    """No route matches and there is no default: RoutingError 404 naming the model."""
    with pytest.raises(RoutingError) as caught:
        routed(request(model="x"), route("r", ANY, models=("m", "n")))
    assert caught.value.status == 404
    assert caught.value.message.startswith("no route matches model `x`;")
    assert "m, n" in caught.value.message


def test_policy_name_picks_the_route_without_matching() -> None:
    """x-gateway-policy names a route (or the default route), whatever its match says."""
    special = route("special", ANY, models=("other",))
    default = route("dflt", ANY, models=("nothing",))
    routes = (route("r", ANY), special)
    assert routed(request(policy="special"), *routes, default=default) == "special"
    assert routed(request(policy="dflt"), *routes, default=default) == "dflt"


def test_unknown_policy_name_is_a_400() -> None:
    """A policy name no route has: RoutingError 400 on x-gateway-policy, listing the routes."""
    with pytest.raises(RoutingError) as caught:
        routed(request(policy="nope"), route("r", ANY), route("s", ANY))
    assert caught.value.status == 400
    assert caught.value.param == "x-gateway-policy"
    assert "`nope`" in caught.value.message
    assert "r, s" in caught.value.message


def test_new_snapshots_are_never_confused_with_old_ones() -> None:
    """The compiled cache follows each snapshot object, even when ids are reused."""
    for i in range(40):
        snapshot = policy(route(f"r{i}", (dep(f"d{i}"),)))
        if i % 2:
            prepare(snapshot)
        plan = rank(snapshot, request(), health())
        assert (plan.route, plan.order) == (f"r{i}", (f"d{i}",))
        del snapshot, plan


# --- request constraints --------------------------------------------------------------------


def test_request_tags_select_tagged_candidates() -> None:
    """x-gateway-tags: only candidates carrying every tag are planned."""
    candidates = (dep("a", tags={"eu"}), dep("b", tags={"eu", "gold"}), dep("c"))
    plan = plan_for(candidates, req=request(tags={"eu", "gold"}))
    assert plan.order == ("b",)
    assert reasons(plan) == {"a": "missing tags gold", "c": "missing tags eu, gold"}


def test_request_weights_change_the_score() -> None:
    """x-gateway-weights override the route's weights component by component."""
    candidates = (dep("a", quality=0.9), dep("b", quality=0.1))
    views = (view("a", latency=2.0), view("b", latency=1.0))
    base = plan_for(candidates, views, weights=ONLY["latency"])
    assert base.order == ("b", "a")
    tilted = plan_for(candidates, views, request(weights={"quality": 3.0}), weights=ONLY["latency"])
    assert tilted.order == ("a", "b")
    # a: (1 * 0.5 + 3 * 0.9) / 4, b: (1 * 1 + 3 * 0.1) / 4
    assert {s.name: s.score for s in tilted.scored} == pytest.approx({"a": 0.8, "b": 0.325})


# --- explanations ---------------------------------------------------------------------------


def test_explain_gives_every_component_and_score_is_their_weighted_mean() -> None:
    """explain=True: five components in [0, 1] per candidate; score = Σ w·c / Σ w."""
    weights = Weights(latency=1.0, error_rate=2.0, load=1.5, price=0.5, quality=0.25)
    candidates = (
        dep("a", price_in=2.0, cap=10, quality=0.7),
        dep("b", price_in=1.0, quality=0.4),
        dep("c", price_out=3.0, cap=4, quality=0.9),
    )
    views = (
        view("a", latency=0.8, error_rate=0.1, inflight=5),
        view("b", latency=0.4, error_rate=0.3, inflight=1),
        view("c", error_rate=0.0, inflight=8),
    )
    plan = rank(
        policy(route("r", candidates, weights=weights)),
        request(prompt=1000, max_out=100),
        health(*views),
        explain=True,
    )
    expected = {
        # prices: a 1000 x $2/M = $0.002, b $0.001, c 100 x $3/M = $0.0003 (the cheapest)
        "a": {"latency": 0.5, "error_rate": 0.9, "load": 0.5, "price": 0.15, "quality": 0.7},
        "b": {"latency": 1.0, "error_rate": 0.7, "load": 0.5, "price": 0.3, "quality": 0.4},
        "c": {"latency": 0.5, "error_rate": 1.0, "load": 0.0, "price": 1.0, "quality": 0.9},
    }
    w = {"latency": 1.0, "error_rate": 2.0, "load": 1.5, "price": 0.5, "quality": 0.25}
    for scored in plan.scored:
        assert set(scored.components) == set(COMPONENTS)
        assert all(0.0 <= v <= 1.0 for v in scored.components.values())
        mean = sum(w[k] * v for k, v in scored.components.items()) / sum(w.values())
        assert scored.score == pytest.approx(mean)
    for scored in plan.scored:
        assert scored.components == pytest.approx(expected[scored.name]), scored.name


def test_explain_off_gives_the_same_plan_without_components() -> None:
    """explain only adds components: same order and scores for the same seed."""
    candidates = tuple(dep(n, price_in=i, cap=i or None) for i, n in enumerate("abcde"))
    views = tuple(view(n, latency=0.1 * (i + 1), inflight=i) for i, n in enumerate("abcd"))
    for strategy in ("score", "p2c", "weighted", "cheapest", "least-busy"):
        snapshot = policy(route("r", candidates, strategy=strategy))
        on = rank(snapshot, request(), health(*views), rng=random.Random(5), explain=True)
        off = rank(snapshot, request(), health(*views), rng=random.Random(5))
        assert off.order == on.order
        assert [s.score for s in off.scored] == [s.score for s in on.scored]
        assert all(s.components == {} for s in off.scored)
        assert all(len(s.components) == len(COMPONENTS) for s in on.scored)


def test_stream_scores_latency_on_ttft() -> None:
    """A streaming request's latency component comes from time to first token."""
    views = (view("a", latency=1.0, ttft=0.2), view("b", latency=0.5, ttft=0.4))
    snapshot = policy(route("r", (dep("a"), dep("b"))))
    plain = rank(snapshot, request(), health(*views), explain=True)
    stream = rank(snapshot, request(stream=True), health(*views), explain=True)
    assert {s.name: s.components["latency"] for s in plain.scored} == {"a": 0.5, "b": 1.0}
    assert {s.name: s.components["latency"] for s in stream.scored} == {"a": 1.0, "b": 0.5}


def test_plan_carries_route_version_and_resilience() -> None:
    """The plan names its route, the policy version and the route's resilience settings."""
    resilience = {"retry": {"attempts": 2}}
    snapshot = policy(route("r", ANY, strategy="ordered", resilience=resilience))
    plan = rank(snapshot, request(), health())
    assert plan == Plan(
        route="r",
        policy_version="v1",
        strategy="ordered",
        order=("a",),
        scored=(Scored("a", plan.scored[0].score),),
        excluded=(),
        panic=False,
        resilience=resilience,
    )
    assert 0.0 <= plan.scored[0].score <= 1.0


# --- review fixes ----------------------------------------------------------------------------


def test_huge_request_weights_keep_scores_finite_and_proportional() -> None:
    """Weights whose sum overflows (1e308 each) are rescaled, never inf * 0 = NaN."""
    cands = [dep("a", quality=0.9), dep("b", quality=0.1)]
    huge = {"quality": 1e308, "latency": 1e308, "load": 1e308}
    plan = rank(
        policy(route("r", cands)),
        request(weights=huge),
        health(),
        rng=random.Random(1),
        explain=True,
    )
    assert all(0.0 <= s.score <= 1.0 for s in plan.scored)
    assert plan.order == ("a", "b")


def test_tags_a_route_matched_on_do_not_also_filter_its_candidates() -> None:
    """A route chosen by the caller's tag `premium` keeps candidates that lack that tag; the
    caller's other tags still filter."""
    premium = route(
        "premium",
        [dep("a", tags={"chat", "stream", "eu"}), dep("b", tags={"chat", "stream"})],
        match=Match(models=frozenset({MODEL}), tags=frozenset({"premium"})),
    )
    plan = rank(policy(premium), request(tags={"premium"}), health(), rng=random.Random(1))
    assert set(plan.order) == {"a", "b"}
    plan = rank(policy(premium), request(tags={"premium", "eu"}), health(), rng=random.Random(1))
    assert plan.order == ("a",) and reasons(plan) == {"b": "missing tags eu"}


def test_max_tokens_above_a_deployments_max_output_excludes_it() -> None:
    small = Candidate(DeploymentInfo("small", tags=ALL_TAGS, max_output_tokens=4096))
    plan = plan_for([small, dep("big")], req=request(max_out=8000))
    assert plan.order == ("big",)
    assert reasons(plan) == {"small": "max_tokens 8000 > its max output 4096"}


def test_a_zero_latency_figure_does_not_make_slower_candidates_score_as_fast() -> None:
    plan = rank(
        policy(route("r", [dep("a"), dep("b")], weights=ONLY["latency"])),
        request(),
        health(view("a", latency=0.0), view("b", latency=1.0)),
        rng=random.Random(1),
        explain=True,
    )
    scores = {s.name: s.components["latency"] for s in plan.scored}
    assert scores["a"] == 1.0 and scores["b"] < 0.001


@pytest.mark.parametrize("strategy", ["score", "lowest-latency"])
def test_a_deployment_whose_latency_aged_out_is_ranked_again_as_unmeasured(
    strategy: Strategy,
) -> None:
    """A primary excluded by the latency SLO during a spike gets no traffic, so nothing refreshes
    its figures. Once its window has forgotten the slow answers it is eligible again, and its
    latency reads as unmeasured (neutral in the score), not as the spike's last EWMA."""
    now = [1_000_000.0]
    store = MemoryStore(clock=lambda: now[0])  # a window of 12 x 5 s
    monitor = HealthMonitor(store, Prober(store, clock=lambda: now[0]), {})
    for _ in range(20):
        monitor.window("primary").success(0.7)
        monitor.window("fallback").success(0.05)
    snapshot = policy(
        route(
            "r",
            (dep("primary", quality=0.9), dep("fallback", quality=0.4)),
            strategy=strategy,
            weights=Weights(latency=1, error_rate=2, load=0, price=0, quality=3),
            constraints=RouteConstraints(latency_slo=0.4),
        )
    )
    plan = rank(snapshot, request(), monitor.view(max_age=0), explain=True)
    assert plan.order == ("fallback",)
    assert reasons(plan) == {"primary": "p95 latency 790ms > latency slo 400ms"}

    now[0] += 61  # the fallback kept answering; the primary got nothing
    monitor.window("fallback").success(0.05)
    views = monitor.view(max_age=0)
    assert views.get("primary").latency is None
    plan = rank(snapshot, request(), views, explain=True)
    assert plan.excluded == ()
    assert set(plan.order) == {"primary", "fallback"}
    latency = {s.name: s.components["latency"] for s in plan.scored}
    assert latency == {"primary": 0.5, "fallback": 1.0}
    # score: its quality lead counts again; lowest-latency: unmeasured is keyed by the fastest
    # measured latency, so the primary (first in the document) is tried and measured again
    assert plan.order == ("primary", "fallback")
