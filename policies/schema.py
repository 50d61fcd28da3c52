"""The policy document (YAML) as pydantic models: what may be written, and nothing else.

Every model forbids unknown keys and is frozen. A field left out (``None``) inherits: a route's
``strategy``, ``weights``, ``constraints``, ``default_output_tokens`` and resilience sections fall
back to ``defaults`` and then to the engine's defaults (:mod:`policies.types`), field by field.
References between parts of the policy (route names, ``default_route``, deployments, tag
selectors) are checked by :mod:`policies.compile`, which sees every file and the deployments.

A sketch (the full reference is in the policy spec and ``configs/policies/demo.yaml``)::

    version: 1
    defaults: {strategy: score, weights: {latency: 1, price: 0.5}, constraints: {latency_slo: 2s}}
    quality: {sim-primary: 0.9}
    routes:
      - name: premium
        match: {models: [demo-chat], headers: {x-team: [research]}, capabilities: [vision]}
        candidates:
          - {deployment: sim-primary, weight: 3}
          - {tags: [tier:cheap, tools]}
        strategy: ordered
    default_route: premium
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from policies.types import Strategy
from policies.units import parse_duration

__all__ = [
    "ROUTE_NAME_PATTERN",
    "STATUSES",
    "CandidateSpec",
    "ConstraintsSpec",
    "DefaultsSpec",
    "MatchSpec",
    "PolicyDocument",
    "PromptTokens",
    "RouteSpec",
    "WeightsSpec",
]

ROUTE_NAME_PATTERN = r"^[A-Za-z0-9._:-]+$"
STATUSES = ("healthy", "degraded", "unhealthy", "ejected")
Status = Literal["healthy", "degraded", "unhealthy", "ejected"]
Capability = Literal["vision", "tools", "json", "stream", "prefill"]


def _one_or_many(value: Any) -> Any:
    """A single string where a list is expected means a list of that one string."""
    return [value] if isinstance(value, str) else value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Names = Annotated[tuple[str, ...], BeforeValidator(_one_or_many)]
Values = Annotated[tuple[Annotated[str, Field(min_length=1)], ...], BeforeValidator(_one_or_many)]
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Quality = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Section = dict[str, Any]  # retry / hedge: read by the gateway; breaker / fallback: refused


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeightsSpec(_Model):
    """How much each score component counts (any subset; omitted ones inherit)."""

    latency: Weight | None = None
    error_rate: Weight | None = None
    load: Weight | None = None
    price: Weight | None = None
    quality: Weight | None = None


class ConstraintsSpec(_Model):
    """Hard limits on a route's candidates (any subset; omitted ones inherit)."""

    max_price: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # USD per request
    latency_slo: Duration | None = Field(default=None, gt=0)  # p95 (TTFT p95 for streams)
    max_error_rate: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    min_requests: int | None = Field(default=None, ge=0)  # volume before max_error_rate applies
    exclude_statuses: tuple[Status, ...] | None = None
    require_tags: Names | None = None


class DefaultsSpec(_Model):
    """What every route inherits unless it says otherwise (a route has the same fields)."""

    strategy: Strategy | None = None
    weights: WeightsSpec | None = None
    constraints: ConstraintsSpec | None = None
    default_output_tokens: int | None = Field(default=None, gt=0)
    retry: Section | None = None
    fallback: Section | None = None
    breaker: Section | None = None
    hedge: Section | None = None


class PromptTokens(_Model):
    """Bounds on the request's estimated prompt size, inclusive; either side optional."""

    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> PromptTokens:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be above max ({self.max})")
        return self


class MatchSpec(_Model):
    """When a route applies: every field given must hold; an empty match holds for any request.

    ``headers`` and ``metadata`` map a name to the accepted values (one string or a list);
    header names are case-insensitive.
    """

    models: Annotated[Names, Field(min_length=1)] | None = None
    headers: dict[str, Annotated[Values, Field(min_length=1)]] | None = None
    metadata: dict[str, Annotated[Values, Field(min_length=1)]] | None = None
    tags: Names | None = None
    capabilities: tuple[Capability, ...] | None = None
    prompt_tokens: PromptTokens | None = None

    @field_validator("headers")
    @classmethod
    def _header_names_once(
        cls, value: dict[str, tuple[str, ...]] | None
    ) -> dict[str, tuple[str, ...]] | None:
        seen: dict[str, str] = {}
        for name in value or {}:
            if name.lower() in seen:
                raise ValueError(
                    f"header `{name}` is also given as `{seen[name.lower()]}` "
                    "(header names are case-insensitive)"
                )
            seen[name.lower()] = name
        return value


class CandidateSpec(_Model):
    """One deployment by name, or every deployment carrying all of ``tags`` (a selector)."""

    deployment: str | None = Field(default=None, min_length=1)
    tags: Annotated[Names, Field(min_length=1)] | None = None
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)  # the `weighted` share
    quality: Quality | None = None  # overrides the document's `quality` map for this route

    @model_validator(mode="after")
    def _one_kind(self) -> CandidateSpec:
        if self.deployment is not None and self.tags is not None:
            raise ValueError("give `deployment` or `tags`, not both")
        if self.deployment is None and self.tags is None:
            raise ValueError(
                "give `deployment` (one deployment by name) or `tags` (every deployment "
                "carrying all of them)"
            )
        return self


class RouteSpec(DefaultsSpec):
    """A route: when it applies, its candidates in order, and how to rank them."""

    name: str = Field(pattern=ROUTE_NAME_PATTERN)
    match: MatchSpec = MatchSpec()
    candidates: tuple[CandidateSpec, ...]

    @field_validator("candidates")
    @classmethod
    def _not_empty(cls, value: tuple[CandidateSpec, ...]) -> tuple[CandidateSpec, ...]:
        if not value:
            raise ValueError("list at least one candidate (a deployment or a tag selector)")
        return value


class PolicyDocument(_Model):
    """One policy file. A directory of them is one policy: routes concatenated in file order;
    ``defaults``, ``quality`` and ``default_route`` in at most one file."""

    version: int = 1
    defaults: DefaultsSpec | None = None
    quality: dict[str, Quality] | None = None  # static quality per deployment (default 0.5)
    routes: tuple[RouteSpec, ...] = ()
    default_route: str | None = Field(default=None, min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_one(cls, value: Any) -> int:
        if isinstance(value, bool) or value != 1:
            raise ValueError(f"unsupported version {value!r}: only version 1 exists")
        return 1
