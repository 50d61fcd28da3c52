"""Chaos scenario files: schema, loading, scaling, and what a run is built from.

A scenario (YAML) names the deployments of the gateway under test, the traffic to drive through
it, a timeline of faults and the expectations that must hold. :func:`load_scenario` reads it the
way the gateway reads its own config (:mod:`gateway.yamlfile`: line tracking, ``${ENV_VAR}``
interpolation, duplicate keys) and reports every problem at once as
:class:`~gateway.yamlfile.ConfigError`, each as ``FILE:LINE: path: reason``. A sketch (the full
example is ``configs/chaos/primary-outage.yaml``)::

    name: primary-outage
    seed: 1
    ci: {scale: 0.4}                 # the time scale the test suite runs it at
    deployments:
      - {name: primary, aliases: [chat], simulated: {latency: 40ms}}
      - {name: fallback, aliases: [chat], simulated: {latency: 20ms}}
    gateway: {replicas: 1, resilience: {breaker: {open_for: 1s}}}
    traffic: {model: chat, rate: 40, duration: 30s, stream_share: 0.3}
    faults:
      - {at: 10s, for: 10s, target: primary, kind: outage, detect_within: 3s}
    expect: {max_client_failures: 0}

Loading, step by step:

1. **Schema** (pydantic, unknown keys refused): durations as ``"250ms"``/``"10s"``/seconds;
   faults are a union on ``kind``, so a field of another kind is an unknown key.
2. **Deployments.** ``name``, ``model`` (default: the name), and exactly one of ``simulated:``
   (:class:`SimulatedSettings` without ``faults``, ``echo`` and ``content``: faults come from
   the timeline, and the upstream echoes so that answers can be checked) or ``upstream:``
   (``base_url`` and optionally ``api_key_env``, a real upstream behind the fault proxy). Every
   other key (``aliases``, ``tags``, ``price``, ``timeouts``, ...) goes unchanged into the
   gateway's deployment entry and is validated here by the gateway's own model, at its line;
   ``provider``, ``base_url`` and ``api_key`` are the runner's and are refused.
3. **Gateway section**, merged over the runner's base config (:meth:`Scenario.gateway_config`)
   and validated by the gateway's own model; ``replicas`` (1 or 2) is the runner's key.
   ``deployments``, ``policy`` and ``health.redis.url`` are the runner's and are refused.
4. **Cross-checks**: unique deployment names; a deployment fault's target exists; every fault
   ends within the traffic (``at + for <= traffic.duration``); ``policy_reload`` needs a
   top-level ``policy:``; ``kill_replica`` needs ``replicas: 2``; without a policy, some
   deployment serves ``traffic.model``; every policy (the top-level one and each
   ``policy_reload``'s) passes the policy schema and its cross-checks against the deployments.
   A ``redis_outage`` needs no ``health.store: redis``: it turns the redis store on by itself
   (:meth:`Scenario.uses_redis`), and is refused only when the scenario sets ``store: memory``.
   The load has bounds the driver can keep: ``rate`` at most :data:`MAX_RATE` requests/s,
   ``concurrency`` at most :data:`MAX_CONCURRENCY`, ``rate`` x scaled ``duration`` at most
   :data:`MAX_PLANNED_REQUESTS`, token ranges up to :data:`MAX_TOKENS`, ``timeout`` at most
   10 minutes and the scaled ``duration`` at most 24 hours.
5. **Scale**: ``traffic.duration`` and every fault's ``at``, ``for``, ``period`` and ``down``
   are multiplied by ``scale`` (``0 < scale <= 10``); delays, ``retry_after``, expectations and
   everything in ``gateway:``/``policy:`` are properties of the system under test and stay.

Times in a loaded :class:`Scenario` are seconds since traffic start (t = 0 when the first
request is due), already scaled. :meth:`Scenario.to_json` and :func:`scenario_from_json` carry a
scenario into ``result.json`` and back (``gateway chaos report``).

Secrets: ``${VAR}`` values are interpolated at load and kept in the scenario, because the gateway
config written for the run needs them (:meth:`Scenario.gateway_config`). They never leave it
otherwise: :meth:`Scenario.to_json` (``result.json`` is shared) writes :data:`REDACTED` in place
of every value the gateway types as a secret (a deployment's ``headers`` and ``query_params``,
``gateway.admin.token``, ``gateway.server.api_keys`` ...) and of every traffic header whose name
says it carries a credential; the dataclasses leave those sections out of their ``repr``.
"""

from __future__ import annotations

import copy
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretBytes,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.config import GatewayConfig, OpenAIDeployment, Price
from gateway.policy_loader import deployment_infos
from gateway.providers.simulated.settings import Fault, SimulatedSettings
from gateway.units import parse_duration
from gateway.yamlfile import (
    ConfigError,
    ConfigIssue,
    YamlDocument,
    load_model,
    read_text,
    validation_issues,
)
from policies.compile import check_policy
from policies.schema import PolicyDocument
from policies.types import DeploymentInfo

__all__ = [
    "DEPLOYMENT_FAULT_KINDS",
    "MAX_CLIENT_TIMEOUT",
    "MAX_CONCURRENCY",
    "MAX_DURATION",
    "MAX_PLANNED_REQUESTS",
    "MAX_RATE",
    "MAX_SCALE",
    "MAX_TOKENS",
    "REDACTED",
    "RUN_FAULT_KINDS",
    "ChaosDeployment",
    "Expectations",
    "FaultSpec",
    "Scenario",
    "Traffic",
    "load_scenario",
    "parse_scenario",
    "scenario_from_json",
]

MAX_SCALE = 10.0
# Bounds of the load one driver process can plan, send and record.
MAX_RATE = 5000.0  # requests/s
MAX_CONCURRENCY = 2000  # closed-loop workers (the driver's in-flight cap)
MAX_PLANNED_REQUESTS = 200_000  # rate x scaled duration
MAX_TOKENS = 100_000  # upper end of prompt_tokens / output_tokens
MAX_CLIENT_TIMEOUT = 600.0  # traffic.timeout, seconds
MAX_DURATION = 24 * 3600.0  # scaled traffic.duration, seconds
REDACTED = "[redacted]"
# A traffic header whose lower-cased name contains one of these carries a credential.
_SENSITIVE_HEADER_PARTS = ("auth", "cookie", "key", "token", "secret", "password")
NAME_PATTERN = r"^[a-z0-9-]+$"
DEFAULT_PROMPT_TOKENS = (50, 400)
DEFAULT_OUTPUT_TOKENS = (8, 32)
DEFAULT_CLIENT_TIMEOUT = 30.0
MAX_FLAP_WINDOWS = 1000
POLICY_POLL_INTERVAL = "200ms"
RATE_LIMIT_CODE = "rate_limit_exceeded"
RATE_LIMIT_MESSAGE = "Rate limit reached (chaos)"

DEPLOYMENT_FAULT_KINDS = (
    "outage",
    "brownout",
    "rate_limit",
    "latency",
    "hang",
    "slow_first_token",
    "stream_cut",
    "stream_stall",
    "flap",
)
RUN_FAULT_KINDS = ("redis_outage", "policy_reload", "kill_replica")

# Keys of a deployment that are the scenario's own; every other key is the gateway's.
_CHAOS_KEYS = frozenset({"name", "model", "simulated", "upstream"})
# Keys of the gateway's deployment entry that the runner sets -> why they are refused.
_RUNNER_KEYS = {
    "provider": "every deployment is reached as `provider: openai` at its upstream's URL",
    "base_url": "it is the URL of the simulated upstream or of the fault proxy; for a real "
    "upstream give `upstream: {base_url: ...}`",
    "api_key": "for a real upstream give `upstream: {api_key_env: NAME}` (the key is read from "
    "that environment variable, never written down)",
}
# Simulated settings a chaos deployment may not set -> why.
_REFUSED_SIMULATED = {
    "faults": "faults come from the scenario's `faults:` timeline",
    "echo": "the chaos runner forces `echo: true` so that every answer can be checked",
    "content": "the chaos runner forces `echo: true` (the answer repeats the request) so that "
    "every answer can be checked",
}
# Keys of `gateway:` the runner sets -> why.
_RUNNER_GATEWAY_KEYS = {
    "deployments": "deployments come from the scenario's `deployments:`",
    "policy": "give the policy document as the scenario's top-level `policy:`",
}
_PLACEHOLDER_URL = "http://127.0.0.1:9/v1"
_EPS = 1e-9


# --- schema --------------------------------------------------------------------------------------

Duration = Annotated[float, BeforeValidator(parse_duration)]
Rate = Annotated[float, Field(gt=0, le=1)]


def _token_range(value: Any) -> Any:
    """``40`` -> ``(40, 40)``; ``[50, 400]`` -> ``(50, 400)``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number of tokens or [low, high], got {value!r}")
    if isinstance(value, int):
        value = [value, value]
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"expected a number of tokens or [low, high], got {value!r}")
    low, high = value
    if low < 0:
        raise ValueError(f"a number of tokens cannot be negative, got {low}")
    if low > high:
        raise ValueError(f"low ({low}) must not be above high ({high})")
    if high > MAX_TOKENS:
        raise ValueError(f"at most {MAX_TOKENS} tokens, got {high}")
    return (low, high)


def _amplification(value: Any) -> Any:
    if value == "budget":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a number or `budget`, got {value!r}")
    if value < 1:
        raise ValueError(f"must be at least 1 (every request makes an attempt), got {value!r}")
    return float(value)


TokenRange = Annotated[tuple[int, int], BeforeValidator(_token_range)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Ci(_Model):
    scale: float = Field(default=1.0, gt=0, le=MAX_SCALE)


class _Upstream(_Model):
    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Deployment(BaseModel):
    """The scenario's own keys; the rest (``model_extra``) is the gateway's, checked there."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str  # the gateway's entry check applies the gateway's rule
    model: str | None = Field(default=None, min_length=1)
    simulated: SimulatedSettings | None = None
    upstream: _Upstream | None = None

    @field_validator("simulated", mode="before")
    @classmethod
    def _drop_refused(cls, value: Any) -> Any:
        # Reported with their reason by the cross-check; dropped so the schema stays quiet.
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if k not in _REFUSED_SIMULATED}
        return value

    @model_validator(mode="after")
    def _one_upstream(self) -> _Deployment:
        if (self.simulated is None) == (self.upstream is None):
            raise ValueError(
                "give `simulated:` (an upstream simulated in the runner) or `upstream:` "
                "(a real one behind the fault proxy)"
                + (", not both" if self.simulated is not None else "")
            )
        return self


class _FaultBase(_Model):
    at: Duration


class _DeploymentFault(_FaultBase):
    for_: Duration = Field(alias="for", gt=0)
    target: str = Field(min_length=1)
    detect_within: Duration | None = Field(default=None, gt=0)
    recover_within: Duration | None = Field(default=None, gt=0)


class _Outage(_DeploymentFault):
    kind: Literal["outage"]


class _Brownout(_DeploymentFault):
    kind: Literal["brownout"]
    rate: Rate = 0.3
    status: int = Field(default=500, ge=400, le=599)


class _RateLimit(_DeploymentFault):
    kind: Literal["rate_limit"]
    rate: Rate = 1.0
    retry_after: Duration | None = None


class _Latency(_DeploymentFault):
    kind: Literal["latency"]
    delay: Duration = Field(gt=0)
    rate: Rate = 1.0


class _Hang(_DeploymentFault):
    kind: Literal["hang"]
    rate: Rate = 1.0


class _SlowFirstToken(_DeploymentFault):
    kind: Literal["slow_first_token"]
    delay: Duration = Field(gt=0)
    rate: Rate = 1.0


class _StreamCut(_DeploymentFault):
    kind: Literal["stream_cut"]
    after_chunks: int = Field(default=3, ge=0)
    rate: Rate = 1.0


class _StreamStall(_DeploymentFault):
    kind: Literal["stream_stall"]
    after_chunks: int = Field(default=3, ge=0)
    rate: Rate = 1.0


class _Flap(_DeploymentFault):
    kind: Literal["flap"]
    period: Duration = Field(gt=0)
    down: Duration = Field(gt=0)

    @model_validator(mode="after")
    def _windows(self) -> _Flap:
        if self.down >= self.period:
            raise ValueError(
                f"`down` ({self.down:g}s) must be shorter than `period` ({self.period:g}s)"
            )
        if self.for_ / self.period > MAX_FLAP_WINDOWS:
            raise ValueError(
                f"{self.for_ / self.period:.0f} flap periods in `for`: at most "
                f"{MAX_FLAP_WINDOWS} (lengthen `period`)"
            )
        return self


class _RedisOutage(_FaultBase):
    kind: Literal["redis_outage"]
    for_: Duration = Field(alias="for", gt=0)
    mode: Literal["kill", "freeze"] = "kill"


class _PolicyReload(_FaultBase):
    kind: Literal["policy_reload"]
    policy: PolicyDocument


class _KillReplica(_FaultBase):
    kind: Literal["kill_replica"]
    replica: int = Field(default=1, ge=0)
    for_: Duration | None = Field(default=None, alias="for", gt=0)


_FaultModel = Annotated[
    _Outage
    | _Brownout
    | _RateLimit
    | _Latency
    | _Hang
    | _SlowFirstToken
    | _StreamCut
    | _StreamStall
    | _Flap
    | _RedisOutage
    | _PolicyReload
    | _KillReplica,
    Field(discriminator="kind"),
]
_COMMON_FAULT_FIELDS = frozenset(
    {"kind", "at", "for_", "target", "detect_within", "recover_within"}
)


class _Traffic(_Model):
    model: str = Field(min_length=1)
    rate: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    concurrency: int | None = Field(default=None, ge=1)
    duration: Duration = Field(gt=0)
    stream_share: float = Field(default=0.0, ge=0, le=1)
    prompt_tokens: TokenRange = DEFAULT_PROMPT_TOKENS
    output_tokens: TokenRange = DEFAULT_OUTPUT_TOKENS
    timeout: Duration = Field(default=DEFAULT_CLIENT_TIMEOUT, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("output_tokens")
    @classmethod
    def _some_output(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] < 1:
            raise ValueError("at least 1 output token (the answer is the echoed payload)")
        return value

    @field_validator("rate")
    @classmethod
    def _rate_bound(cls, value: float | None) -> float | None:
        if value is not None and value > MAX_RATE:
            raise ValueError(f"at most {MAX_RATE:g} requests/s, got {value:g}")
        return value

    @field_validator("concurrency")
    @classmethod
    def _concurrency_bound(cls, value: int | None) -> int | None:
        if value is not None and value > MAX_CONCURRENCY:
            raise ValueError(f"at most {MAX_CONCURRENCY} workers, got {value}")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout_bound(cls, value: float) -> float:
        if value > MAX_CLIENT_TIMEOUT:
            raise ValueError(f"at most 10m ({MAX_CLIENT_TIMEOUT:g}s), got {value:g}s")
        return value

    @model_validator(mode="after")
    def _one_loop(self) -> _Traffic:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError(
                "give exactly one of `rate` (requests/s, open loop) or `concurrency` "
                "(workers, closed loop)"
            )
        return self


class _Expect(_Model):
    max_client_failures: int = Field(default=0, ge=0)
    allowed_failure_reasons: tuple[str, ...] = ()
    max_retry_amplification: Annotated[
        float | Literal["budget"], BeforeValidator(_amplification)
    ] = "budget"
    max_p99: Duration | None = Field(default=None, gt=0)
    max_wasted_share: float | None = Field(default=None, ge=0, le=1)


class _ScenarioFile(_Model):
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    description: str = ""
    seed: int = Field(default=0, ge=0)
    ci: _Ci = _Ci()
    deployments: tuple[_Deployment, ...]
    gateway: dict[str, Any] = Field(default_factory=dict)
    policy: PolicyDocument | None = None
    traffic: _Traffic
    faults: tuple[_FaultModel, ...] = ()
    expect: _Expect = _Expect()

    @field_validator("deployments")
    @classmethod
    def _not_empty(cls, value: tuple[_Deployment, ...]) -> tuple[_Deployment, ...]:
        if not value:
            raise ValueError("list at least one deployment")
        return value


# --- the loaded scenario -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosDeployment:
    """One deployment of the gateway under test and the upstream behind it.

    ``simulated`` has ``echo`` forced on and no faults (they come from the timeline); for a real
    upstream ``upstream_url`` is set instead. ``extra`` holds the keys that go unchanged into the
    gateway's deployment entry (``aliases``, ``tags``, ``timeouts`` ...; the price is in
    ``price_input``/``price_output``, USD per million tokens). It may hold secrets (``headers``,
    ``query_params``), so it is not part of the ``repr``.
    """

    name: str
    model: str
    price_input: float
    price_output: float
    simulated: SimulatedSettings | None
    upstream_url: str | None
    api_key_env: str | None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def gateway_entry(self, base_url: str) -> dict[str, Any]:
        """This deployment's entry in the gateway config, reached at ``base_url``.

        A real upstream's key is written as a ``${VAR}`` reference (the gateway interpolates
        it at load), never as its value; a simulated upstream needs no key.
        """
        entry: dict[str, Any] = {
            "name": self.name,
            "provider": "openai",
            "model": self.model,
            "base_url": base_url,
        }
        if self.api_key_env is not None:
            entry["api_key"] = f"${{{self.api_key_env}}}"
        entry["price"] = {"input": self.price_input, "output": self.price_output}
        entry.update(copy.deepcopy(self.extra))
        return entry


@dataclass(frozen=True)
class Traffic:
    """What the load driver sends. Exactly one of ``rate`` (open loop) and ``concurrency``.

    ``headers`` go on every request and may carry credentials: not part of the ``repr``.
    """

    model: str
    rate: float | None
    concurrency: int | None
    duration: float
    stream_share: float
    prompt_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    timeout: float
    headers: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class FaultSpec:
    """One fault of the timeline; ``at``/``duration`` scaled, in seconds since traffic start.

    ``params`` holds the kind's own fields (durations in seconds; ``period``/``down`` scaled;
    a ``policy_reload``'s ``policy`` as the document's plain data).
    """

    index: int
    kind: str
    at: float
    duration: float | None
    target: str | None
    params: dict[str, Any]
    detect_within: float | None
    recover_within: float | None

    @property
    def end(self) -> float | None:
        return None if self.duration is None else self.at + self.duration

    def label(self) -> str:
        """A short name for reports: ``outage of primary``, ``redis outage (kill)``."""
        if self.kind == "redis_outage":
            return f"redis outage ({self.params.get('mode', 'kill')})"
        if self.kind == "policy_reload":
            return "policy reload"
        if self.kind == "kill_replica":
            return f"kill of replica {self.params.get('replica', 1)}"
        words = {
            "outage": "outage of",
            "brownout": "brownout of",
            "rate_limit": "rate limiting of",
            "latency": "latency spike on",
            "hang": "hangs on",
            "slow_first_token": "slow first token on",
            "stream_cut": "stream cuts on",
            "stream_stall": "stream stalls on",
            "flap": "flapping of",
        }
        return f"{words.get(self.kind, self.kind)} {self.target}"

    def simulated_faults(self) -> tuple[Fault, ...]:
        """This fault as entries of the simulated upstream's schedule (deployment faults only).

        A ``flap`` is one ``refuse`` window ``[at + k*period, at + k*period + down)`` per period
        that starts inside ``[at, end)``, the last one cut at ``end``.
        """
        if self.target is None or self.duration is None:
            return ()
        start, end, p = self.at, self.at + self.duration, self.params
        window: dict[str, Any] = {"start": start, "end": end}
        match self.kind:
            case "outage":
                return (Fault(kind="refuse", **window),)
            case "brownout":
                return (Fault(kind="status", status=p["status"], rate=p["rate"], **window),)
            case "rate_limit":
                return (
                    Fault(
                        kind="status",
                        status=429,
                        retry_after=p["retry_after"],
                        rate=p["rate"],
                        code=RATE_LIMIT_CODE,
                        message=RATE_LIMIT_MESSAGE,
                        **window,
                    ),
                )
            case "latency" | "slow_first_token":
                return (Fault(kind="slow_first_token", delay=p["delay"], rate=p["rate"], **window),)
            case "hang":
                return (Fault(kind="hang", rate=p["rate"], **window),)
            case "stream_cut" | "stream_stall":
                return (
                    Fault(kind=self.kind, after_chunks=p["after_chunks"], rate=p["rate"], **window),
                )
            case "flap":
                windows = []
                k = 0
                while (down_at := start + k * p["period"]) < end - _EPS:
                    up_at = min(down_at + p["down"], end)
                    windows.append(Fault(kind="refuse", start=down_at, end=up_at))
                    k += 1
                return tuple(windows)
        raise ValueError(f"unknown deployment fault kind {self.kind!r}")


@dataclass(frozen=True)
class Expectations:
    """Run-wide expectations (truncated successes must be 0 in every scenario, always)."""

    max_client_failures: int
    allowed_failure_reasons: tuple[str, ...]
    max_retry_amplification: float | Literal["budget"]
    max_p99: float | None
    max_wasted_share: float | None


@dataclass(frozen=True)
class Scenario:
    """A loaded, scaled scenario: everything a run is built from.

    ``gateway`` may hold secrets (``admin.token``, ``server.api_keys``): not part of the ``repr``.
    """

    name: str
    description: str
    file: str
    seed: int
    scale: float
    deployments: tuple[ChaosDeployment, ...]
    replicas: int
    gateway: dict[str, Any] = field(repr=False)  # `gateway:` minus `replicas`
    policy: dict[str, Any] | None
    traffic: Traffic
    faults: tuple[FaultSpec, ...]  # scaled, in file order
    expect: Expectations
    ci_scale: float = 1.0  # `ci.scale`: the scale the test suite loads this scenario at

    def deployment_faults(self) -> dict[str, tuple[Fault, ...]]:
        """Every deployment's simulated fault schedule, in file order (the first match wins)."""
        out: dict[str, list[Fault]] = {d.name: [] for d in self.deployments}
        for spec in self.faults:
            if spec.target is not None:
                out[spec.target].extend(spec.simulated_faults())
        return {name: tuple(faults) for name, faults in out.items()}

    def uses_redis(self) -> bool:
        """Whether the run needs a redis-server: two replicas, the redis store, or an outage."""
        return (
            self.replicas > 1
            or _health_store(self.gateway) == "redis"
            or any(f.kind == "redis_outage" for f in self.faults)
        )

    def admin_token(self) -> str | None:
        """The bearer token the gateway requires on ``/admin/*`` and ``/metrics``
        (``gateway.admin.token``, interpolated), or None when the scenario sets none."""
        admin = self.gateway.get("admin")
        token = admin.get("token") if isinstance(admin, dict) else None
        return token if isinstance(token, str) else None

    def gateway_config(
        self, upstream_urls: dict[str, str], *, redis_url: str | None, policy_path: str | None
    ) -> dict[str, Any]:
        """The full gateway config document for this run.

        The runner's base (loopback, port 0, 30 s request timeout, warning-level JSON logs, the
        memory store, or the redis store at ``redis_url`` when :meth:`uses_redis`), the
        scenario's ``gateway:`` merged over it key by key, one ``provider: openai`` entry per
        deployment at ``upstream_urls[name]``, and ``policy`` watching ``policy_path`` when
        given. Secrets are in it as values: write it where only the run can read it. Raises
        ``ValueError`` when something the scenario needs is missing.
        """
        missing = [d.name for d in self.deployments if d.name not in upstream_urls]
        if missing:
            raise ValueError(f"no upstream URL for deployment(s) {', '.join(missing)}")
        if self.uses_redis() and redis_url is None:
            raise ValueError("this scenario needs redis: pass redis_url")
        if self.policy is not None and policy_path is None:
            raise ValueError("this scenario has a policy: pass policy_path (where it is written)")
        document = _deep_merge(_base_config(redis_url if self.uses_redis() else None), self.gateway)
        document["deployments"] = [d.gateway_entry(upstream_urls[d.name]) for d in self.deployments]
        if policy_path is not None:
            document["policy"] = {
                "path": policy_path,
                "watch": True,
                "poll_interval": POLICY_POLL_INTERVAL,
            }
        return document

    def to_json(self) -> dict[str, Any]:
        """Everything above as plain JSON data (faults also with ``end`` and ``label``), with
        :data:`REDACTED` for every secret: each value the gateway's own models type as a secret
        (in a deployment's passthrough keys and in ``gateway``) and each traffic header whose
        name says it carries a credential. :func:`scenario_from_json` loads such a document
        back for reports; it cannot be run."""
        return {
            "name": self.name,
            "description": self.description,
            "file": self.file,
            "seed": self.seed,
            "scale": self.scale,
            "ci_scale": self.ci_scale,
            "deployments": [
                {
                    "name": d.name,
                    "model": d.model,
                    "price_input": d.price_input,
                    "price_output": d.price_output,
                    "simulated": None
                    if d.simulated is None
                    else d.simulated.model_dump(mode="json"),
                    "upstream_url": d.upstream_url,
                    "api_key_env": d.api_key_env,
                    "extra": _redact(d.extra, OpenAIDeployment),
                }
                for d in self.deployments
            ],
            "replicas": self.replicas,
            "gateway": _redact(self.gateway, GatewayConfig),
            "policy": copy.deepcopy(self.policy),
            "traffic": {
                "model": self.traffic.model,
                "rate": self.traffic.rate,
                "concurrency": self.traffic.concurrency,
                "duration": self.traffic.duration,
                "stream_share": self.traffic.stream_share,
                "prompt_tokens": list(self.traffic.prompt_tokens),
                "output_tokens": list(self.traffic.output_tokens),
                "timeout": self.traffic.timeout,
                "headers": {
                    name: REDACTED if _sensitive_header(name) else value
                    for name, value in self.traffic.headers.items()
                },
            },
            "faults": [
                {
                    "index": f.index,
                    "kind": f.kind,
                    "at": f.at,
                    "for": f.duration,
                    "end": f.end,
                    "target": f.target,
                    "label": f.label(),
                    "params": copy.deepcopy(f.params),
                    "detect_within": f.detect_within,
                    "recover_within": f.recover_within,
                }
                for f in self.faults
            ],
            "expect": {
                "max_client_failures": self.expect.max_client_failures,
                "allowed_failure_reasons": list(self.expect.allowed_failure_reasons),
                "max_retry_amplification": self.expect.max_retry_amplification,
                "max_p99": self.expect.max_p99,
                "max_wasted_share": self.expect.max_wasted_share,
            },
        }


def scenario_from_json(data: dict[str, Any]) -> Scenario:
    """The inverse of :meth:`Scenario.to_json` (``end`` and ``label`` are derived, not read).

    Secrets come back as :data:`REDACTED`: the scenario serves reports, not runs.
    """
    traffic = data["traffic"]
    expect = data["expect"]
    return Scenario(
        name=data["name"],
        description=data["description"],
        file=data["file"],
        seed=data["seed"],
        scale=data["scale"],
        ci_scale=data.get("ci_scale", 1.0),
        deployments=tuple(
            ChaosDeployment(
                name=d["name"],
                model=d["model"],
                price_input=d["price_input"],
                price_output=d["price_output"],
                simulated=None
                if d["simulated"] is None
                else SimulatedSettings.model_validate(d["simulated"]),
                upstream_url=d["upstream_url"],
                api_key_env=d["api_key_env"],
                extra=copy.deepcopy(d["extra"]),
            )
            for d in data["deployments"]
        ),
        replicas=data["replicas"],
        gateway=copy.deepcopy(data["gateway"]),
        policy=copy.deepcopy(data["policy"]),
        traffic=Traffic(
            model=traffic["model"],
            rate=traffic["rate"],
            concurrency=traffic["concurrency"],
            duration=traffic["duration"],
            stream_share=traffic["stream_share"],
            prompt_tokens=_pair(traffic["prompt_tokens"]),
            output_tokens=_pair(traffic["output_tokens"]),
            timeout=traffic["timeout"],
            headers=dict(traffic["headers"]),
        ),
        faults=tuple(
            FaultSpec(
                index=f["index"],
                kind=f["kind"],
                at=f["at"],
                duration=f["for"],
                target=f["target"],
                params=copy.deepcopy(f["params"]),
                detect_within=f["detect_within"],
                recover_within=f["recover_within"],
            )
            for f in data["faults"]
        ),
        expect=Expectations(
            max_client_failures=expect["max_client_failures"],
            allowed_failure_reasons=tuple(expect["allowed_failure_reasons"]),
            max_retry_amplification=expect["max_retry_amplification"],
            max_p99=expect["max_p99"],
            max_wasted_share=expect["max_wasted_share"],
        ),
    )


def _pair(value: Any) -> tuple[int, int]:
    low, high = value
    return (int(low), int(high))


# --- redaction -----------------------------------------------------------------------------------


def _sensitive_header(name: str) -> bool:
    """Whether a request header called ``name`` carries a credential (``Authorization``,
    ``Cookie``, ``X-Api-Key``, ``X-Session-Token`` ...)."""
    lowered = name.lower()
    return any(part in lowered for part in _SENSITIVE_HEADER_PARTS)


def _redact(value: Any, annotation: Any) -> Any:
    """A copy of ``value`` (plain config data of type ``annotation``) with :data:`REDACTED` for
    every part the type declares a secret, found by walking the type: models field by field
    (under their YAML names), containers item by item, and every variant of a union (a part that
    any variant declares a secret is redacted). Parts of other types are copied unchanged."""
    origin, args = get_origin(annotation), get_args(annotation)
    if value is None:
        return None
    if origin is Annotated:
        return _redact(value, args[0])
    if isinstance(annotation, type) and issubclass(annotation, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not isinstance(value, dict):
            return copy.deepcopy(value)
        fields = {f.alias or n: f.annotation for n, f in annotation.model_fields.items()}
        return {
            k: _redact(v, fields[k]) if k in fields else copy.deepcopy(v) for k, v in value.items()
        }
    if origin is Union or origin is types.UnionType:
        for arg in args:
            value = _redact(value, arg)
        return value
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {k: _redact(v, args[1]) for k, v in value.items()}
    if origin in (list, tuple, set, frozenset) and isinstance(value, list | tuple) and args:
        if origin is tuple and args[-1] is not Ellipsis and len(args) == len(value):
            return [_redact(v, a) for v, a in zip(value, args, strict=True)]
        return [_redact(v, args[0]) for v in value]
    return copy.deepcopy(value)


# --- loading -------------------------------------------------------------------------------------


def load_scenario(path: str | Path, scale: float | None = None) -> Scenario:
    """Read, validate and scale the scenario at ``path``; raise :class:`ConfigError`."""
    file = str(path)
    _check_scale(file, scale)
    return parse_scenario(read_text(path), file, scale)


def parse_scenario(text: str, file: str = "<scenario>", scale: float | None = None) -> Scenario:
    """Validate and scale a scenario given as text (``file`` names it in errors; its stem is
    the default name)."""
    _check_scale(file, scale)
    raw: list[dict[str, Any]] = []

    def cross_check(data: dict[str, Any], doc: YamlDocument) -> list[ConfigIssue]:
        raw.append(data)
        return _cross_check(data, doc, 1.0 if scale is None else float(scale))

    model = load_model(
        _ScenarioFile,
        text,
        file,
        expected="a mapping with `deployments`, `traffic` and `faults`",
        cross_check=cross_check,
    )
    return _build(model, raw[0], file, 1.0 if scale is None else float(scale))


def _check_scale(file: str, scale: float | None) -> None:
    if scale is None:
        return
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not math.isfinite(scale)
        or not 0 < scale <= MAX_SCALE
    ):
        reason = f"the time scale must be above 0 and at most {MAX_SCALE:g}, got {scale!r}"
        raise ConfigError([ConfigIssue(file, None, "scale", reason)])


def _build(model: _ScenarioFile, data: dict[str, Any], file: str, scale: float) -> Scenario:
    gateway = {k: v for k, v in model.gateway.items() if k != "replicas"}
    deployments = []
    for d in model.deployments:
        extra = dict(d.model_extra or {})
        price = Price.model_validate(extra.pop("price", {}))
        simulated = None
        if d.simulated is not None:
            simulated = d.simulated.model_copy(update={"echo": True, "faults": ()})
        deployments.append(
            ChaosDeployment(
                name=d.name,
                model=d.model or d.name,
                price_input=price.input,
                price_output=price.output,
                simulated=simulated,
                upstream_url=d.upstream.base_url if d.upstream else None,
                api_key_env=d.upstream.api_key_env if d.upstream else None,
                extra=copy.deepcopy(extra),
            )
        )
    faults = []
    for i, f in enumerate(model.faults):
        params = {
            name: getattr(f, name)
            for name in type(f).model_fields
            if name not in _COMMON_FAULT_FIELDS
        }
        if isinstance(f, _Flap):
            params["period"] *= scale
            params["down"] *= scale
        if isinstance(f, _PolicyReload):
            params["policy"] = copy.deepcopy(data["faults"][i]["policy"])
        length = getattr(f, "for_", None)
        faults.append(
            FaultSpec(
                index=i,
                kind=f.kind,
                at=f.at * scale,
                duration=None if length is None else length * scale,
                target=getattr(f, "target", None),
                params=params,
                detect_within=getattr(f, "detect_within", None),
                recover_within=getattr(f, "recover_within", None),
            )
        )
    t, e = model.traffic, model.expect
    return Scenario(
        name=model.name or Path(file).stem,
        description=model.description,
        file=file,
        seed=model.seed,
        scale=scale,
        ci_scale=model.ci.scale,
        deployments=tuple(deployments),
        replicas=int(model.gateway.get("replicas", 1)),
        gateway=copy.deepcopy(gateway),
        policy=copy.deepcopy(data["policy"]) if model.policy is not None else None,
        traffic=Traffic(
            model=t.model,
            rate=t.rate,
            concurrency=t.concurrency,
            duration=t.duration * scale,
            stream_share=t.stream_share,
            prompt_tokens=t.prompt_tokens,
            output_tokens=t.output_tokens,
            timeout=t.timeout,
            headers=dict(t.headers),
        ),
        faults=tuple(faults),
        expect=Expectations(
            max_client_failures=e.max_client_failures,
            allowed_failure_reasons=e.allowed_failure_reasons,
            max_retry_amplification=e.max_retry_amplification,
            max_p99=e.max_p99,
            max_wasted_share=e.max_wasted_share,
        ),
    )


# --- the gateway config --------------------------------------------------------------------------


def _base_config(redis_url: str | None) -> dict[str, Any]:
    health: dict[str, Any] = {"store": "memory"}
    if redis_url is not None:
        health = {"store": "redis", "redis": {"url": redis_url}}
    return {
        "server": {"host": "127.0.0.1", "port": 0, "request_timeout": "30s"},
        "logging": {"level": "warning", "format": "json"},
        "health": health,
        "admin": {},
    }


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _health_store(gateway: Any) -> Any:
    health = gateway.get("health") if isinstance(gateway, dict) else None
    return health.get("store") if isinstance(health, dict) else None


# --- cross-checks (on the raw document, so they are reported with the schema's errors) ----------


class _Entries(BaseModel):
    """The gateway's deployment entries, located like the scenario's ``deployments``."""

    deployments: list[OpenAIDeployment]


class _GatewaySection(BaseModel):
    """The merged gateway config, located like the scenario's ``gateway``."""

    gateway: GatewayConfig


def _cross_check(data: dict[str, Any], doc: YamlDocument, scale: float) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    _check_load(data.get("traffic"), scale, doc, issues)
    if data.get("name") is None and not re.match(NAME_PATTERN, Path(doc.file).stem):
        issues.append(
            doc.issue(
                (),
                f"no `name:`, and the file name `{Path(doc.file).stem}` is not a scenario name "
                "(lower-case letters, digits and `-`): set `name:`",
            )
        )
    deployments = _list(data.get("deployments"))
    infos = _check_deployments(deployments, doc, issues)
    names = [
        d["name"] for d in deployments if isinstance(d, dict) and isinstance(d.get("name"), str)
    ]
    raw_gateway = data.get("gateway")
    gateway: dict[str, Any] = raw_gateway if isinstance(raw_gateway, dict) else {}
    replicas = _check_gateway(gateway, names, doc, issues)
    _check_faults(data, names, replicas, doc, issues)
    if data.get("policy") is None:
        _check_served(data, deployments, gateway, doc, issues)
    else:
        issues.extend(_policy_issues(data["policy"], ("policy",), infos, doc))
    for i, fault in enumerate(_list(data.get("faults"))):
        if isinstance(fault, dict) and fault.get("kind") == "policy_reload" and "policy" in fault:
            issues.extend(_policy_issues(fault["policy"], ("faults", i, "policy"), infos, doc))
    return issues


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _seconds(value: Any) -> float | None:
    try:
        return parse_duration(value)
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    """A finite positive number as pydantic reads it (YAML reads ``1e9`` as a string), else
    None (the schema reports what is wrong with it)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _check_load(traffic: Any, scale: float, doc: YamlDocument, issues: list[ConfigIssue]) -> None:
    """The scaled duration and the requests an open loop plans stay within what one driver
    process sends and records."""
    if not isinstance(traffic, dict):
        return
    duration = _seconds(traffic.get("duration"))
    if duration is None or duration <= 0:
        return
    at_scale = "" if scale == 1 else f" at scale {scale:g}"
    if duration * scale > MAX_DURATION + _EPS:
        reason = (
            f"the traffic lasts {duration * scale:g}s{at_scale}: at most 24h ({MAX_DURATION:g}s)"
        )
        issues.append(doc.issue(("traffic", "duration"), reason))
        return
    rate = _number(traffic.get("rate"))
    if rate is None or rate > MAX_RATE:
        return
    planned = rate * duration * scale
    if planned > MAX_PLANNED_REQUESTS + _EPS:
        reason = (
            f"rate x duration plans {planned:.0f} requests ({rate:g}/s for "
            f"{duration * scale:g}s{at_scale}): at most {MAX_PLANNED_REQUESTS}; lower `rate` "
            "or shorten `duration`"
        )
        issues.append(doc.issue(("traffic", "rate"), reason))


def _check_deployments(
    deployments: list[Any], doc: YamlDocument, issues: list[ConfigIssue]
) -> dict[str, DeploymentInfo] | None:
    """Names, the runner's keys, refused simulated settings, and the gateway's own check of
    every passthrough key. Returns the deployments' facts (for the policy checks) when valid."""
    seen: dict[str, int] = {}
    entries: list[dict[str, Any]] = []
    for i, item in enumerate(deployments):
        d = item if isinstance(item, dict) else {}  # the schema reports what it is instead
        name = d.get("name")
        if isinstance(name, str):
            if name in seen:
                reason = f"deployment name `{name}` is already used by deployments[{seen[name]}]"
                issues.append(doc.issue(("deployments", i, "name"), reason))
            seen.setdefault(name, i)
        for key, why in _RUNNER_KEYS.items():
            if key in d:
                issues.append(doc.issue(("deployments", i, key), f"set by the chaos runner: {why}"))
        simulated = d.get("simulated")
        for key, why in _REFUSED_SIMULATED.items():
            if isinstance(simulated, dict) and key in simulated:
                issues.append(doc.issue(("deployments", i, "simulated", key), f"not here: {why}"))
        model = d.get("model")
        entries.append(
            {
                "name": name if isinstance(name, str) else "chaos",
                "provider": "openai",
                "model": model if isinstance(model, str) and model else "chaos",
                "base_url": _PLACEHOLDER_URL,
                **{k: v for k, v in d.items() if k not in _CHAOS_KEYS and k not in _RUNNER_KEYS},
            }
        )
    try:
        checked = _Entries.model_validate({"deployments": entries})
    except ValidationError as exc:
        issues.extend(validation_issues(exc, doc))
        return None
    if not checked.deployments or len(seen) != len(deployments):
        return None
    return deployment_infos(GatewayConfig(deployments=tuple(checked.deployments)))


def _check_gateway(
    gateway: dict[str, Any], names: list[str], doc: YamlDocument, issues: list[ConfigIssue]
) -> int:
    """``replicas``, the runner's keys, and the gateway's own check of the merged section.
    Returns the number of replicas (1 when it is not valid)."""
    replicas = gateway.get("replicas", 1)
    if isinstance(replicas, bool) or replicas not in (1, 2):
        reason = f"replicas must be 1 or 2, got {replicas!r}"
        issues.append(doc.issue(("gateway", "replicas"), reason))
        replicas = 1
    rest = {k: v for k, v in gateway.items() if k != "replicas"}
    for key, why in _RUNNER_GATEWAY_KEYS.items():
        if key in rest:
            issues.append(doc.issue(("gateway", key), f"set by the chaos runner: {why}"))
            del rest[key]
    redis = rest.get("health", {}).get("redis") if isinstance(rest.get("health"), dict) else None
    if isinstance(redis, dict) and "url" in redis:
        reason = "set by the chaos runner: it starts a private redis-server for the run"
        issues.append(doc.issue(("gateway", "health", "redis", "url"), reason))
        rest = copy.deepcopy(rest)
        del rest["health"]["redis"]["url"]
    merged = _deep_merge(_base_config(None), rest)
    merged["deployments"] = [{"name": "chaos", "provider": "simulated", "model": "chaos"}]
    try:
        _GatewaySection.model_validate({"gateway": merged})
    except ValidationError as exc:
        issues.extend(validation_issues(exc, doc))
    routes = rest.get("routes")
    for route, listed in routes.items() if isinstance(routes, dict) else ():
        for j, name in enumerate(_list(listed)):
            if isinstance(name, str) and name not in names:
                reason = (
                    f"route `{route}` references unknown deployment `{name}` "
                    f"(known: {', '.join(names)})"
                )
                issues.append(doc.issue(("gateway", "routes", route, j), reason))
    return int(replicas)


def _check_faults(
    data: dict[str, Any],
    names: list[str],
    replicas: int,
    doc: YamlDocument,
    issues: list[ConfigIssue],
) -> None:
    traffic = data.get("traffic")
    duration = _seconds(traffic.get("duration")) if isinstance(traffic, dict) else None
    for i, f in enumerate(_list(data.get("faults"))):
        if not isinstance(f, dict):
            continue
        kind = f.get("kind")
        where = ("faults", i)
        target = f.get("target")
        if kind in DEPLOYMENT_FAULT_KINDS and isinstance(target, str) and target not in names:
            reason = f"unknown deployment `{target}` (known: {', '.join(names) or 'none'})"
            issues.append(doc.issue((*where, "target"), reason))
        at = _seconds(f.get("at"))
        length = _seconds(f.get("for")) if "for" in f else None
        if duration is not None and at is not None:
            if length is not None and at + length > duration + _EPS:
                reason = (
                    f"the fault ends at {at + length:g}s (at + for), after the traffic "
                    f"ends ({duration:g}s)"
                )
                issues.append(doc.issue((*where, "for"), reason))
            elif at > duration + _EPS:
                reason = f"`at` ({at:g}s) is after the traffic ends ({duration:g}s)"
                issues.append(doc.issue((*where, "at"), reason))
        if kind == "policy_reload" and data.get("policy") is None:
            reason = "a policy_reload needs a top-level `policy:` (the policy the run starts with)"
            issues.append(doc.issue((*where, "kind"), reason))
        if kind == "kill_replica":
            replica = f.get("replica", 1)
            if replicas < 2:
                reason = "kill_replica needs `gateway.replicas: 2` (one replica must keep serving)"
                issues.append(doc.issue((*where, "kind"), reason))
            elif isinstance(replica, int) and not isinstance(replica, bool) and replica >= replicas:
                reason = f"replica {replica} does not exist (replicas: {replicas}, counted from 0)"
                issues.append(doc.issue((*where, "replica"), reason))
        if kind == "redis_outage" and _health_store(data.get("gateway")) == "memory":
            reason = (
                "a redis_outage needs the redis store, but `gateway.health.store` is `memory` "
                "(leave `store` out: a redis_outage turns the redis store on)"
            )
            issues.append(doc.issue((*where, "kind"), reason))


def _check_served(
    data: dict[str, Any],
    deployments: list[Any],
    gateway: dict[str, Any],
    doc: YamlDocument,
    issues: list[ConfigIssue],
) -> None:
    """Without a policy, the gateway routes by model name: something must serve the traffic's."""
    traffic = data.get("traffic")
    model = traffic.get("model") if isinstance(traffic, dict) else None
    if not isinstance(model, str):
        return
    served: set[str] = set(gateway.get("routes") or ()) if isinstance(gateway, dict) else set()
    for d in deployments:
        if not isinstance(d, dict):
            continue
        aliases = d.get("aliases")
        if isinstance(aliases, list) and aliases:
            served.update(a for a in aliases if isinstance(a, str))
        else:
            served.add(str(d.get("model") or d.get("name")))
    if model not in served:
        reason = (
            f"no deployment serves model `{model}` (served: {', '.join(sorted(served))}); add it "
            "to a deployment's `aliases` or give a `policy:`"
        )
        issues.append(doc.issue(("traffic", "model"), reason))


def _policy_issues(
    raw: Any,
    where: tuple[Any, ...],
    infos: dict[str, DeploymentInfo] | None,
    doc: YamlDocument,
) -> list[ConfigIssue]:
    """The policy's cross-checks against the deployments (its schema errors come from the
    scenario's schema)."""
    try:
        document = PolicyDocument.model_validate(raw)
    except ValidationError:
        return []
    problems = check_policy([(doc.file, document)], infos)
    return [doc.issue((*where, *p.path), p.message) for p in problems]
