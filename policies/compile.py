"""Policy documents -> one immutable :class:`~policies.types.PolicySnapshot`.

Pure: the caller reads and validates the files (the gateway's ``policy_loader``) and passes the
documents in file order with the deployments they may name. Problems are returned as
:class:`PolicyProblem` (file, path in that file's document, message) so that the caller can put a
line number on each.

Checks (:func:`check_policy`), all reported together:

1. ``defaults``, ``quality`` and ``default_route`` appear in at most one file (the second one
   is blamed and the first named).
2. Route names are unique across files.
3. ``default_route`` names a route, and the policy has at least one route.
4. A route's weights (merged over the defaults) are not all zero.
   (3 and 4 are skipped when ``partial``: parts of the policy failed validation and are
   missing, so these checks could blame what is not wrong.)
5. With deployments: every ``deployment:`` candidate exists, every tag selector selects at least
   one deployment, and every ``quality`` entry names a deployment.

Compilation (:func:`compile_policy`), once the checks pass:

1. Take ``defaults``/``quality``/``default_route`` from whichever file gives them.
2. Per route, merge ``strategy``, ``weights``, ``constraints`` (field by field),
   ``default_output_tokens`` and the resilience sections (key by key) over the defaults.
3. Resolve candidates in document order: a deployment by name, a tag selector to every
   deployment carrying all its tags (in the order of ``deployments``); a deployment reached twice
   is kept once, at its first position, with that position's weight and quality.
4. Quality of a candidate: its own ``quality``, else the document's ``quality`` map, else 0.5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from policies.schema import (
    CandidateSpec,
    ConstraintsSpec,
    DefaultsSpec,
    MatchSpec,
    PolicyDocument,
    RouteSpec,
    WeightsSpec,
)
from policies.types import (
    Candidate,
    DeploymentInfo,
    Match,
    PolicySnapshot,
    Route,
    RouteConstraints,
    Strategy,
    Weights,
)

__all__ = [
    "DEFAULT_QUALITY",
    "DEFAULT_STRATEGY",
    "RESILIENCE_SECTIONS",
    "PolicyCompileError",
    "PolicyProblem",
    "check_policy",
    "compile_policy",
]

DEFAULT_QUALITY = 0.5
DEFAULT_STRATEGY: Strategy = "score"
RESILIENCE_SECTIONS = ("retry", "fallback", "breaker", "hedge")
_SINGLETONS = ("defaults", "quality", "default_route")

Documents = Sequence[tuple[str, PolicyDocument]]
DocPath = tuple[str | int, ...]


class PolicyProblem(NamedTuple):
    """One problem: the file, the path in its document (``("routes", 0, "name")``), why."""

    file: str
    path: DocPath
    message: str


class PolicyCompileError(ValueError):
    """The documents do not make a policy; ``problems`` lists every reason."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{p.file}: {p.path}: {p.message}" for p in problems))


def check_policy(
    documents: Documents,
    deployments: Mapping[str, DeploymentInfo] | None = None,
    *,
    partial: bool = False,
) -> list[PolicyProblem]:
    """Every cross-reference problem of ``documents`` (see the module docstring), in file order.

    ``deployments`` None: the deployment checks are skipped (a document checked on its own).
    ``partial``: parts of the policy failed validation and are missing from ``documents``, so
    skip the checks that need all of it (``default_route`` target, some route, weights).
    """
    problems: list[PolicyProblem] = []
    first: dict[str, str] = {}
    for file, doc in documents:
        for key in _SINGLETONS:
            if getattr(doc, key) is None:
                continue
            if key in first:
                problems.append(
                    PolicyProblem(
                        file,
                        (key,),
                        f"`{key}` may appear in only one policy file; it is also in {first[key]}",
                    )
                )
            else:
                first[key] = file
    problems.extend(_route_names(documents))
    names = {r.name for _, doc in documents for r in doc.routes}
    if not partial:
        if not names:
            file = documents[0][0] if documents else "<policy>"
            problems.append(PolicyProblem(file, (), "the policy defines no route"))
        for file, doc in documents:
            if doc.default_route is not None and doc.default_route not in names:
                known = ", ".join(sorted(names)) or "none"
                problems.append(
                    PolicyProblem(
                        file,
                        ("default_route",),
                        f"default_route `{doc.default_route}` names no route (routes: {known})",
                    )
                )
        problems.extend(_zero_weights(documents, _singleton(documents, "defaults")))
    if deployments is not None:
        problems.extend(_deployment_problems(documents, deployments))
    return problems


def compile_policy(
    documents: Documents,
    deployments: Mapping[str, DeploymentInfo],
    loaded_at: float,
    version: str,
) -> PolicySnapshot:
    """The snapshot of ``documents`` (in file order) against ``deployments`` (in config order).

    Raises :class:`PolicyCompileError` listing every problem :func:`check_policy` finds.
    """
    problems = check_policy(documents, deployments)
    if problems:
        raise PolicyCompileError(problems)
    defaults = _singleton(documents, "defaults") or DefaultsSpec()
    quality: Mapping[str, float] = _singleton(documents, "quality") or {}
    default_name: str | None = _singleton(documents, "default_route")
    routes = tuple(
        _route(spec, defaults, quality, deployments) for _, doc in documents for spec in doc.routes
    )
    default = next((r for r in routes if r.name == default_name), None)
    return PolicySnapshot(
        routes=routes,
        default=default,
        version=version,
        loaded_at=loaded_at,
        sources=tuple(file for file, _ in documents),
    )


# --- checks --------------------------------------------------------------------------------------


def _singleton(documents: Documents, key: str) -> Any:
    """``key``'s value from the first file that gives it (the checks allow only one)."""
    return next((getattr(doc, key) for _, doc in documents if getattr(doc, key) is not None), None)


def _route_names(documents: Documents) -> list[PolicyProblem]:
    problems: list[PolicyProblem] = []
    seen: dict[str, tuple[str, int]] = {}
    for file, doc in documents:
        for i, route in enumerate(doc.routes):
            if route.name not in seen:
                seen[route.name] = (file, i)
                continue
            other_file, j = seen[route.name]
            where = f"routes[{j}]" + (f" in {other_file}" if other_file != file else "")
            problems.append(
                PolicyProblem(
                    file,
                    ("routes", i, "name"),
                    f"route name `{route.name}` is already used by {where}",
                )
            )
    return problems


def _zero_weights(documents: Documents, defaults: DefaultsSpec | None) -> list[PolicyProblem]:
    reason = "the weights are all zero: give at least one component a positive weight"
    problems: list[PolicyProblem] = []
    base = defaults.weights if defaults is not None else None
    if base is not None and _sum(_weights(base)) == 0:
        file = next(f for f, doc in documents if doc.defaults is not None)
        problems.append(PolicyProblem(file, ("defaults", "weights"), reason))
    for file, doc in documents:
        for i, route in enumerate(doc.routes):
            if route.weights is not None and _sum(_weights(base, route.weights)) == 0:
                problems.append(PolicyProblem(file, ("routes", i, "weights"), reason))
    return problems


def _sum(weights: Weights) -> float:
    return sum(getattr(weights, f.name) for f in dataclasses.fields(weights))


def _deployment_problems(
    documents: Documents, deployments: Mapping[str, DeploymentInfo]
) -> list[PolicyProblem]:
    problems: list[PolicyProblem] = []
    known = ", ".join(sorted(deployments)) or "none"
    for file, doc in documents:
        for name in doc.quality or {}:
            if name not in deployments:
                problems.append(
                    PolicyProblem(
                        file,
                        ("quality", name),
                        f"quality names unknown deployment `{name}` (known: {known})",
                    )
                )
        for i, route in enumerate(doc.routes):
            for j, cand in enumerate(route.candidates):
                where = ("routes", i, "candidates", j)
                if cand.deployment is not None and cand.deployment not in deployments:
                    problems.append(
                        PolicyProblem(
                            file,
                            (*where, "deployment"),
                            f"route `{route.name}` candidate {j}: unknown deployment "
                            f"`{cand.deployment}` (known: {known})",
                        )
                    )
                elif cand.tags is not None and not _select(cand, deployments):
                    in_use = ", ".join(sorted({t for d in deployments.values() for t in d.tags}))
                    problems.append(
                        PolicyProblem(
                            file,
                            (*where, "tags"),
                            f"route `{route.name}` candidate {j}: no deployment carries all of "
                            f"the tags {', '.join(cand.tags)} (tags in use: {in_use or 'none'})",
                        )
                    )
    return problems


# --- compilation ---------------------------------------------------------------------------------


def _select(cand: CandidateSpec, deployments: Mapping[str, DeploymentInfo]) -> list[DeploymentInfo]:
    """The deployments a candidate entry stands for, in ``deployments`` order."""
    if cand.deployment is not None:
        info = deployments.get(cand.deployment)
        return [info] if info is not None else []
    wanted = frozenset(cand.tags or ())
    return [info for info in deployments.values() if wanted <= info.tags]


def _weights(*specs: WeightsSpec | None) -> Weights:
    given: dict[str, float] = {}
    for spec in specs:
        if spec is not None:
            given.update({k: v for k, v in spec if v is not None})
    return dataclasses.replace(Weights(), **given)


def _constraints(*specs: ConstraintsSpec | None) -> RouteConstraints:
    given: dict[str, Any] = {}
    for spec in specs:
        if spec is not None:
            given.update({k: v for k, v in spec if v is not None})
    for key in ("exclude_statuses", "require_tags"):
        if key in given:
            given[key] = frozenset(given[key])
    return dataclasses.replace(RouteConstraints(), **given)


def _match(spec: MatchSpec) -> Match:
    bounds = spec.prompt_tokens
    return Match(
        models=frozenset(spec.models or ()),
        headers=MappingProxyType(
            {k.lower(): frozenset(v) for k, v in (spec.headers or {}).items()}
        ),
        metadata=MappingProxyType({k: frozenset(v) for k, v in (spec.metadata or {}).items()}),
        tags=frozenset(spec.tags or ()),
        capabilities=frozenset(spec.capabilities or ()),
        min_prompt_tokens=bounds.min if bounds is not None else None,
        max_prompt_tokens=bounds.max if bounds is not None else None,
    )


def _freeze(value: Any) -> Any:
    """Read-only copies of YAML data: mappings become proxies, lists tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _resilience(defaults: DefaultsSpec, spec: RouteSpec) -> Mapping[str, Any]:
    """Each section the defaults or the route give, the route's keys over the defaults'."""
    out: dict[str, Any] = {}
    for section in RESILIENCE_SECTIONS:
        base, own = getattr(defaults, section), getattr(spec, section)
        if base is not None or own is not None:
            out[section] = _freeze({**(base or {}), **(own or {})})
    return MappingProxyType(out)


def _route(
    spec: RouteSpec,
    defaults: DefaultsSpec,
    quality: Mapping[str, float],
    deployments: Mapping[str, DeploymentInfo],
) -> Route:
    candidates: list[Candidate] = []
    seen: set[str] = set()
    for cand in spec.candidates:
        for info in _select(cand, deployments):
            if info.name in seen:
                continue
            seen.add(info.name)
            q = cand.quality if cand.quality is not None else quality.get(info.name)
            candidates.append(
                Candidate(info, weight=cand.weight, quality=DEFAULT_QUALITY if q is None else q)
            )
    output_tokens = spec.default_output_tokens or defaults.default_output_tokens
    extra = {} if output_tokens is None else {"default_output_tokens": output_tokens}
    return Route(
        name=spec.name,
        match=_match(spec.match),
        candidates=tuple(candidates),
        strategy=spec.strategy or defaults.strategy or DEFAULT_STRATEGY,
        weights=_weights(defaults.weights, spec.weights),
        constraints=_constraints(defaults.constraints, spec.constraints),
        resilience=_resilience(defaults, spec),
        **extra,
    )
