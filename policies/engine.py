"""Ranking: one request, a policy snapshot and a health snapshot → an ordered :class:`Plan`.

:func:`rank` is pure (no I/O, no awaits, no clock) and runs on every request, so it is written
for microseconds:

1. **Route.** ``x-gateway-policy`` (``request.constraints.policy``) names a route: unknown name
   → :class:`RoutingError` 400. Otherwise the first route in document order whose ``match``
   holds (an index by model narrows the routes to look at), else the snapshot's default route,
   else :class:`RoutingError` 404.
2. **Filter.** Each candidate, in document order, is excluded for the first reason that holds:
   endpoint not served; stream requested and no ``stream`` tag; a required capability missing
   from its tags (``vision``, ``tools``, ``json``, ``prefill``); a required tag missing (route
   ``require_tags`` and the request's tags); context window < prompt estimate + output
   estimate; estimated price > max price (the lower of request and route) — these are the
   *static* reasons. Then the *health* reasons: status in ``exclude_statuses``; breaker
   ``open``/``forced-open``/``drained``; p95 latency (TTFT p95 for streams) over the latency
   SLO (the lower of request and route); error rate over ``max_error_rate`` with at least
   ``min_requests`` requests.
3. **Panic.** Nothing left, but some candidates were excluded for health reasons only: rank
   those by (status severity, error rate) and set ``plan.panic`` (they stay listed in
   ``plan.excluded`` with their reasons). Nothing left and none of that kind →
   :class:`RoutingError` 400 listing every candidate's reason.
4. **Score.** Each survivor gets five components in [0, 1], 1 = best: latency = min latency /
   latency among those with data (TTFT for streams; no data → 0.5), error_rate = 1 - rate,
   load = 1 - in-flight / max_concurrency (no cap: 1 / (1 + in-flight)), price = min price /
   price (free → 1), quality = the candidate's static quality. Score = Σ weight * component /
   Σ weights, with the request's weights overriding the route's component by component.
5. **Order** with the route's strategy (:mod:`policies.strategies`).
6. **Plan**: names in order, a :class:`Scored` per planned candidate in the same order (the
   components only when ``explain=True``), the exclusions in document order, the route's
   resilience settings.

Every strategy gets the scores (the plan always carries them). A deployment listed twice in a
route counts once, at its first place.

Speed (targets: ≤ 20 µs for 5 candidates, ≤ 200 µs for 50; see ``bench/policy.py``):

- everything that depends only on the snapshot (the model index, match predicates, each
  candidate's facts as one flat tuple, prices per token, weights, constraints) is compiled once
  per snapshot and kept in a small module-level cache keyed by ``id(snapshot)`` (each entry
  holds its snapshot, so the id cannot be reused while cached; the snapshot stays immutable).
  :func:`prepare` compiles eagerly, e.g. when a new snapshot is swapped in;
- the static verdicts (endpoint, stream, capabilities, tags) depend only on the request's
  shape, so each compiled route remembers them per shape, as shared frozen exclusions;
- with ``explain=False`` the per-candidate work allocates one small tuple and the plan's own
  :class:`Scored` (built through its slots, which halves the cost of a frozen dataclass).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from health.snapshot import DeploymentView, HealthSnapshot
from policies.strategies import NO_DATA, STRATEGY_FUNCTIONS, Columns, panic
from policies.types import (
    COMPONENTS,
    Exclusion,
    Match,
    Plan,
    PolicySnapshot,
    RequestFeatures,
    Route,
    RoutingError,
    Scored,
    Strategy,
)

_CACHE_SIZE = 8  # snapshots kept compiled (the live one, plus a few during reloads)
_VERDICTS_PER_ROUTE = 64  # request shapes whose static verdicts a route remembers
_BLOCKING_BREAKERS = frozenset({"open", "forced-open", "drained"})
_SEVERITY: Mapping[str, int] = MappingProxyType(
    {"healthy": 0, "degraded": 1, "unhealthy": 2, "ejected": 3}
)
_UNKNOWN_SEVERITY = len(_SEVERITY)
_STREAM = frozenset({"stream"})
_NEUTRAL_LATENCY = 0.5  # the latency component of a candidate without a sample
_MIN_LATENCY = 1e-6  # seconds: the floor of a latency figure
_UNSEEN = DeploymentView("<unseen>")  # healthy, no data: any deployment missing from health
_EMPTY: Mapping[str, float] = MappingProxyType({})
_COMPONENT_INDEX: Mapping[str, int] = MappingProxyType({c: i for i, c in enumerate(COMPONENTS)})
_DEFAULT_RNG = random.Random()

# One candidate, flattened for tuple unpacking in the hot loop: (name, context_window,
# US dollars per prompt token, per output token, max_concurrency, quality, weight).
# name, context window, $/token in, $/token out, max concurrency, quality, weight, max output
_Cand = tuple[str, int | None, float, float, int | None, float, float, int | None]
# What the static filter depends on: (endpoint, stream flag, capabilities, request tags).
_Shape = tuple[str, bool, frozenset[str], frozenset[str]]
_Verdicts = tuple[Exclusion | None, ...]


class _CompiledRoute:
    """A :class:`Route` with everything the hot loop reads precomputed.

    ``verdicts`` remembers, per request shape, the static exclusions that do not depend on
    the prompt size (endpoint, stream, capabilities, tags): one frozen :class:`Exclusion` or
    None per candidate. At most :data:`_VERDICTS_PER_ROUTE` shapes are kept (request tags come
    from callers, so the set of shapes is open); others are judged per request.
    """

    __slots__ = (
        "cands",
        "check",
        "exclude",
        "facts",
        "match_tags",
        "max_error_rate",
        "max_price",
        "min_requests",
        "name",
        "out_tokens",
        "require_tags",
        "route",
        "slo",
        "strategy",
        "verdicts",
        "weights",
    )

    def __init__(self, route: Route) -> None:
        self.route = route
        self.name = route.name
        self.strategy = STRATEGY_FUNCTIONS[route.strategy]
        seen: set[str] = set()
        cands: list[_Cand] = []
        facts: list[tuple[str, frozenset[str], frozenset[str]]] = []
        for c in route.candidates:  # a deployment listed twice counts once, at its first place
            info = c.info
            if info.name in seen:
                continue
            seen.add(info.name)
            facts.append((info.name, info.tags, info.endpoints))
            cands.append(
                (
                    info.name,
                    info.context_window,
                    info.price_in / 1e6,
                    info.price_out / 1e6,
                    info.max_concurrency or None,
                    float(c.quality),
                    float(c.weight),
                    info.max_output_tokens,
                )
            )
        self.cands: tuple[_Cand, ...] = tuple(cands)
        self.facts = tuple(facts)
        self.verdicts: dict[_Shape, _Verdicts] = {}
        w = route.weights
        self.weights = (
            float(w.latency),
            float(w.error_rate),
            float(w.load),
            float(w.price),
            float(w.quality),
        )
        k = route.constraints
        self.max_price = k.max_price
        self.slo = k.latency_slo
        self.max_error_rate = k.max_error_rate
        self.min_requests = k.min_requests
        self.exclude = k.exclude_statuses
        self.require_tags = k.require_tags
        self.match_tags = route.match.tags
        self.out_tokens = route.default_output_tokens
        self.check = _matcher(route.match)

    def judge(self, shape: _Shape) -> _Verdicts:
        """The static verdict on each candidate for requests of this ``shape`` (remembered)."""
        endpoint, stream, caps, tags = shape
        stream = stream or "stream" in caps
        needs = caps - _STREAM
        # The caller's tags a route matched on chose the route; the others filter candidates.
        want = self.require_tags | (tags - self.match_tags)
        verdicts: list[Exclusion | None] = []
        for name, have, endpoints in self.facts:
            if endpoint not in endpoints:
                reason = f"does not serve /v1/{endpoint}"
            elif stream and "stream" not in have:
                reason = "needs stream"
            elif not needs <= have:
                reason = "needs " + ", ".join(sorted(needs - have))
            elif not want <= have:
                reason = "missing tags " + ", ".join(sorted(want - have))
            else:
                verdicts.append(None)
                continue
            verdicts.append(Exclusion(name, reason))
        result = tuple(verdicts)
        if len(self.verdicts) < _VERDICTS_PER_ROUTE:
            self.verdicts[shape] = result
        return result


class _CompiledSnapshot:
    """A :class:`PolicySnapshot` indexed for route selection."""

    __slots__ = ("by_model", "by_name", "default", "snapshot", "wildcard")

    def __init__(self, snapshot: PolicySnapshot) -> None:
        self.snapshot = snapshot
        routes = [_CompiledRoute(r) for r in snapshot.routes]
        self.wildcard = tuple(cr for cr in routes if not cr.route.match.models)
        models = {m for cr in routes for m in cr.route.match.models}
        self.by_model: dict[str, tuple[_CompiledRoute, ...]] = {
            m: tuple(cr for cr in routes if not cr.route.match.models or m in cr.route.match.models)
            for m in models
        }
        by_name: dict[str, _CompiledRoute] = {}
        for cr in routes:
            by_name.setdefault(cr.name, cr)
        self.default: _CompiledRoute | None = None
        if snapshot.default is not None:
            same = [cr for cr in routes if cr.route is snapshot.default]
            self.default = same[0] if same else _CompiledRoute(snapshot.default)
            by_name.setdefault(self.default.name, self.default)
        self.by_name = by_name


_compiled: dict[int, _CompiledSnapshot] = {}


def prepare(snapshot: PolicySnapshot) -> None:
    """Compile ``snapshot`` now (route index, flattened candidates), not on its first request."""
    _compile(snapshot)


def _compile(snapshot: PolicySnapshot) -> _CompiledSnapshot:
    key = id(snapshot)
    compiled = _compiled.get(key)
    if compiled is None or compiled.snapshot is not snapshot:
        compiled = _CompiledSnapshot(snapshot)
        while len(_compiled) >= _CACHE_SIZE:
            _compiled.pop(next(iter(_compiled)), None)
        _compiled[key] = compiled
    return compiled


def _matcher(match: Match) -> Callable[[RequestFeatures], bool] | None:
    """A predicate for everything in ``match`` but the model (the index handles that); None
    when the model is all there is."""
    headers = tuple(match.headers.items())
    metadata = tuple(match.metadata.items())
    tags = match.tags
    caps = match.capabilities
    low = match.min_prompt_tokens
    high = match.max_prompt_tokens
    if not (headers or metadata or tags or caps) and low is None and high is None:
        return None

    def check(request: RequestFeatures) -> bool:
        if low is not None and request.prompt_tokens < low:
            return False
        if high is not None and request.prompt_tokens > high:
            return False
        if caps:
            have = request.capabilities
            if request.stream:
                have = have | _STREAM
            if not caps <= have:
                return False
        if tags and not tags <= request.constraints.tags:
            return False
        for name, values in headers:
            if request.headers.get(name) not in values:
                return False
        return all(request.metadata.get(key) in values for key, values in metadata)

    return check


def _select(compiled: _CompiledSnapshot, request: RequestFeatures) -> _CompiledRoute:
    policy = request.constraints.policy
    if policy is not None:
        named = compiled.by_name.get(policy)
        if named is None:
            known = ", ".join(sorted(compiled.by_name)) or "none"
            raise RoutingError(
                f"unknown policy `{policy}`: no route has that name (routes: {known})",
                param="x-gateway-policy",
                status=400,
            )
        return named
    for cr in compiled.by_model.get(request.model, compiled.wildcard):
        if cr.check is None or cr.check(request):
            return cr
    if compiled.default is not None:
        return compiled.default
    models = sorted(compiled.by_model)
    raise RoutingError(
        f"no route matches model `{request.model}`; the policy has no default route"
        f" (models routed: {', '.join(models) or 'none'})",
        param="model",
        status=404,
    )


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 10 else f"{value:.3g}s"


def rank(
    snapshot: PolicySnapshot,
    request: RequestFeatures,
    health: HealthSnapshot,
    *,
    inflight: Mapping[str, int] | None = None,
    rng: random.Random | None = None,
    explain: bool = False,
) -> Plan:
    """The plan for ``request``: which deployments to try, in what order, and why.

    ``inflight`` holds live in-flight counts by deployment (they move per request, unlike
    ``health``); a deployment missing from it uses its view's count. ``rng`` drives ``p2c`` and
    ``weighted`` (a module-level generator when omitted): the same inputs with the same seeded
    generator give the same plan. ``explain=True`` adds each candidate's components to its
    :class:`Scored`. Raises :class:`RoutingError` (400 unknown policy or nothing can serve the
    request, 404 no route).
    """
    cr = _select(_compile(snapshot), request)

    # 2. Filter, in document order: static verdicts (remembered per request shape), then the
    # prompt-size and price limits, then health.
    constraints = request.constraints
    caps = request.capabilities
    stream = request.stream or "stream" in caps
    shape = (request.endpoint, request.stream, caps, constraints.tags)
    verdicts = cr.verdicts.get(shape) or cr.judge(shape)
    prompt = request.prompt_tokens
    asked_out = request.max_output_tokens
    out = asked_out or cr.out_tokens
    context_needed = prompt + out
    max_price = cr.max_price
    asked = constraints.max_price
    if asked is not None and (max_price is None or asked < max_price):
        max_price = asked
    slo = cr.slo
    asked = constraints.latency_slo
    if asked is not None and (slo is None or asked < slo):
        slo = asked
    max_error_rate = cr.max_error_rate
    min_requests = cr.min_requests
    exclude = cr.exclude
    views = health.deployments

    # (candidate, view, estimated price, latency or None) of each survivor
    pool: list[tuple[_Cand, DeploymentView, float, float | None]] = []
    sick: list[tuple[_Cand, DeploymentView, float, float | None]] = []  # health-only exclusions
    excluded: list[Exclusion] = []
    min_latency = math.inf
    min_price = math.inf
    for cand, verdict in zip(cr.cands, verdicts, strict=True):
        if verdict is not None:
            excluded.append(verdict)
            continue
        name, ctx, per_in, per_out, _, _, _, max_out = cand
        if ctx is not None and ctx < context_needed:
            excluded.append(Exclusion(name, f"context window {ctx} < {context_needed} tokens"))
            continue
        if asked_out is not None and max_out is not None and asked_out > max_out:
            excluded.append(Exclusion(name, f"max_tokens {asked_out} > its max output {max_out}"))
            continue
        price = prompt * per_in + out * per_out
        if max_price is not None and price > max_price:
            reason = f"estimated price ${price:.6g} > max price ${max_price:.6g}"
            excluded.append(Exclusion(name, reason))
            continue
        view = views.get(name) or _UNSEEN
        latency = view.ttft if stream else view.latency
        if latency is not None and latency < _MIN_LATENCY:
            latency = _MIN_LATENCY  # a 0 s figure must not make everyone else "as fast"
        status = view.status
        if status in exclude:
            reason = f"status {status}: {view.reason}"
        elif view.breaker in _BLOCKING_BREAKERS:
            reason = f"breaker {view.breaker}"
        elif (
            slo is not None
            and (p95 := view.ttft_p95 if stream else view.latency_p95) is not None
            and p95 > slo
        ):
            what = "ttft" if stream else "latency"
            reason = f"p95 {what} {_seconds(p95)} > latency slo {_seconds(slo)}"
        elif (
            max_error_rate is not None
            and view.requests >= min_requests
            and view.error_rate > max_error_rate
        ):
            reason = (
                f"error rate {view.error_rate:.3g} > {max_error_rate:.3g}"
                f" over {view.requests} requests"
            )
        else:
            pool.append((cand, view, price, latency))
            if latency is not None and 0 < latency < min_latency:
                min_latency = latency
            if price < min_price:
                min_price = price
            continue
        excluded.append(Exclusion(name, reason))
        sick.append((cand, view, price, latency))

    # 3. Panic rule.
    is_panic = not pool
    if is_panic:
        if not sick:
            detail = "; ".join(f"{e.name}: {e.reason}" for e in excluded) or "it has no candidates"
            raise RoutingError(
                f"no deployment of route `{cr.name}` can serve this request: {detail}",
                status=400,
            )
        pool = sick
        min_price = min(p[2] for p in pool)
        min_latency = min((lat for *_, lat in pool if lat is not None and lat > 0), default=0.0)

    # 4. Score.
    weights = cr.weights
    if constraints.weights:
        override = list(weights)
        for key, value in constraints.weights.items():
            at = _COMPONENT_INDEX.get(key)
            if at is not None:
                override[at] = float(value)
        weights = (override[0], override[1], override[2], override[3], override[4])
    total = sum(weights)
    if not math.isfinite(total):  # huge weights: keep their proportions, never inf * 0 = NaN
        top = max(weights)
        weights = tuple(  # type: ignore[assignment]
            (1.0 if w == top else 0.0) if top == math.inf else w / top for w in weights
        )
        total = sum(weights)
    w_lat, w_err, w_load, w_price, w_qual = weights
    scale = 1.0 / total if total > 0 else 0.0

    names: list[str] = []
    scores: list[float] = []
    latencies: list[float] = []
    busies: list[float] = []
    prices: list[float] = []
    shares: list[float] = []
    components: list[Mapping[str, float]] = []
    for cand, view, price, latency in pool:
        name, _, _, _, cap, quality, share, _ = cand
        if latency is None:
            c_lat = _NEUTRAL_LATENCY
            latency = NO_DATA
        else:
            c_lat = min_latency / latency if latency > 0 else 1.0
        rate = view.error_rate
        c_err = 1.0 - rate if rate < 1.0 else 0.0
        count = view.inflight if inflight is None else inflight.get(name, view.inflight)
        if cap is None:
            busy = float(count)
            c_load = 1.0 / (1.0 + busy)
        else:
            busy = count / cap
            c_load = 1.0 - busy if busy < 1.0 else 0.0
        c_price = min_price / price if price > 0 else 1.0
        names.append(name)
        scores.append(
            (w_lat * c_lat + w_err * c_err + w_load * c_load + w_price * c_price + w_qual * quality)
            * scale
        )
        latencies.append(latency)
        busies.append(busy)
        prices.append(price)
        shares.append(share)
        if explain:
            components.append(
                {
                    "latency": c_lat,
                    "error_rate": c_err,
                    "load": c_load,
                    "price": c_price,
                    "quality": quality,
                }
            )

    # 5. Order.
    if is_panic:
        order = panic(
            [_SEVERITY.get(p[1].status, _UNKNOWN_SEVERITY) for p in pool],
            [p[1].error_rate for p in pool],
        )
    else:
        columns = Columns(scores, latencies, busies, prices, shares)
        order = cr.strategy(columns, rng if rng is not None else _DEFAULT_RNG)

    # 6. Plan.
    if explain:
        scored = tuple([_scored(names[i], scores[i], components[i]) for i in order])
    else:
        scored = tuple([_scored(names[i], scores[i], _EMPTY) for i in order])
    route = cr.route
    return _plan(
        route.name,
        snapshot.version,
        route.strategy,
        tuple([names[i] for i in order]),
        scored,
        tuple(excluded),
        is_panic,
        route.resilience,
    )


# Frozen dataclasses set each field through ``object.__setattr__`` in ``__init__``, which costs
# about as much as the rest of the per-candidate work. The plan's own objects are built through
# the slot descriptors instead (same objects, same equality), as long as the fields are the ones
# listed here; otherwise the ordinary constructors are used.
_new = object.__new__


def _fast_scored() -> Callable[[str, float, Mapping[str, float]], Scored]:
    if tuple(f.name for f in dataclasses.fields(Scored)) != ("name", "score", "components"):
        return Scored
    set_name = Scored.__dict__["name"].__set__
    set_score = Scored.__dict__["score"].__set__
    set_components = Scored.__dict__["components"].__set__

    def scored(name: str, score: float, components: Mapping[str, float]) -> Scored:
        obj = _new(Scored)
        set_name(obj, name)
        set_score(obj, score)
        set_components(obj, components)
        return obj

    return scored


_PLAN_FIELDS = (
    "route",
    "policy_version",
    "strategy",
    "order",
    "scored",
    "excluded",
    "panic",
    "resilience",
)


def _fast_plan() -> Callable[..., Plan]:
    if tuple(f.name for f in dataclasses.fields(Plan)) != _PLAN_FIELDS:
        return Plan
    s_route, s_version, s_strategy, s_order, s_scored, s_excluded, s_panic, s_resilience = (
        Plan.__dict__[name].__set__ for name in _PLAN_FIELDS
    )

    def plan(
        route: str,
        policy_version: str,
        strategy: Strategy,
        order: tuple[str, ...],
        scored: tuple[Scored, ...],
        excluded: tuple[Exclusion, ...],
        panic: bool,
        resilience: Mapping[str, Any],
    ) -> Plan:
        obj = _new(Plan)
        s_route(obj, route)
        s_version(obj, policy_version)
        s_strategy(obj, strategy)
        s_order(obj, order)
        s_scored(obj, scored)
        s_excluded(obj, excluded)
        s_panic(obj, panic)
        s_resilience(obj, resilience)
        return obj

    return plan


_scored = _fast_scored()
_plan = _fast_plan()
