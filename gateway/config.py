"""Gateway configuration: YAML validated by pydantic, with errors that name file, line and path.

``load_config(path)`` reads the file once, interpolates ``${ENV_VAR}`` (and ``${ENV_VAR:-default}``)
references, validates every section and cross-reference, and either returns a frozen
:class:`GatewayConfig` or raises :class:`ConfigError` listing every problem as
``FILE:LINE: PATH: reason``. Nothing starts half-configured. Secrets (keys, secret headers, query
parameters) are :class:`SecretStr`, never shown in a repr; a key or header that is present must
not be empty (an empty client key would let a request without credentials in).
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from gateway.providers.simulated.settings import SimulatedSettings
from gateway.units import parse_duration, parse_size
from gateway.yamlfile import ConfigError, ConfigIssue, YamlDocument, load_model, read_text

__all__ = ["ConfigError", "ConfigIssue", "GatewayConfig", "load_config", "parse_config"]


def _not_blank(value: SecretStr) -> SecretStr:
    secret = value.get_secret_value()
    if not secret:
        raise ValueError("must not be empty")
    if not secret.strip():
        raise ValueError("must not be only whitespace")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Secret = Annotated[SecretStr, AfterValidator(_not_blank)]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 120.0
DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_RESPONSE_TIMEOUT = 60.0
DEFAULT_FIRST_TOKEN_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_TAGS = ("chat", "completions", "stream")
ENDPOINT_TAGS = {
    "chat/completions": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
}

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Model):
    """Per-attempt limits; each is also capped by what is left of ``server.request_timeout``.

    ``connect``: the TCP/TLS connection. ``response``: a whole non-streaming answer.
    ``first_token``: a stream's first event. ``idle``: any later gap between stream events.
    A deployment that accepts the connection and never answers costs one of these, then the
    request fails over.
    """

    connect: Duration = DEFAULT_CONNECT_TIMEOUT
    response: Duration = DEFAULT_RESPONSE_TIMEOUT
    first_token: Duration = DEFAULT_FIRST_TOKEN_TIMEOUT
    idle: Duration = DEFAULT_IDLE_TIMEOUT


class Price(_Model):
    """US dollars per million tokens."""

    input: float = Field(default=0.0, ge=0.0)
    output: float = Field(default=0.0, ge=0.0)


ProbeKind = Literal["models", "completion", "none"]


class ProbeOverride(_Model):
    """A deployment's own probe settings; each field left out comes from ``health.probes``."""

    kind: ProbeKind | None = None
    interval: Duration | None = Field(default=None, gt=0)
    timeout: Duration | None = Field(default=None, gt=0)
    jitter: float | None = Field(default=None, ge=0, lt=1)
    healthy_threshold: int | None = Field(default=None, ge=1)
    unhealthy_threshold: int | None = Field(default=None, ge=1)


class _DeploymentBase(_Model):
    name: str = Field(pattern=_NAME, description="Unique id of this deployment.")
    model: str = Field(min_length=1, description="Model name sent upstream.")
    aliases: tuple[str, ...] = Field(
        default=(), description="Client-facing model names; default: the upstream model name."
    )
    tags: tuple[str, ...] = DEFAULT_TAGS
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    price: Price = Price()
    timeouts: Timeouts = Timeouts()
    max_concurrency: int | None = Field(default=None, gt=0)
    probe: ProbeOverride = ProbeOverride()

    @property
    def served_names(self) -> tuple[str, ...]:
        return self.aliases or (self.model,)

    def supports(self, endpoint: str) -> bool:
        return ENDPOINT_TAGS[endpoint] in self.tags


class OpenAIDeployment(_DeploymentBase):
    """Any upstream that speaks the OpenAI dialect (OpenAI, Azure-style, Groq, vLLM, Ollama ...)."""

    provider: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://", description="e.g. https://api.openai.com/v1")
    api_key: Secret | None = None
    api_key_header: Literal["authorization", "api-key"] = "authorization"
    query_params: dict[str, SecretStr] = Field(
        default_factory=dict, description="Added to every URL; values may be keys (`?key=`)."
    )
    headers: dict[str, Secret] = Field(default_factory=dict)


class LiteLLMDeployment(_DeploymentBase):
    """A provider with its own wire format, reached through ``litellm.acompletion``.

    ``params`` are extra keyword arguments for litellm (``vertex_project``, ``extra_headers``
    ...); the arguments the gateway sets itself (:attr:`RESERVED_PARAMS`) are refused.
    """

    # litellm arguments the gateway sets itself (-> how); in ``params`` they would break requests.
    RESERVED_PARAMS: ClassVar[dict[str, str]] = {
        "model": "from the deployment's `model`",
        "messages": "per request",
        "input": "per request",
        "stream": "per request",
        "stream_options": "per request",
        "timeout": "per request, from `timeouts`",
        "api_key": "from the deployment's `api_key`",
        "api_base": "from the deployment's `base_url`",
        "base_url": "from the deployment's `base_url`",
        "num_retries": "to 0 (the gateway retries, never litellm)",
        "max_retries": "to 0 (the gateway retries, never litellm)",
    }

    provider: Literal["litellm"]
    tags: tuple[str, ...] = ("chat", "stream")  # /v1/completions is not served through litellm
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    api_key: Secret | None = None
    params: dict[str, Any] = Field(default_factory=dict, repr=False)  # may hold credentials

    @field_validator("probe")
    @classmethod
    def _probe_kind(cls, value: ProbeOverride) -> ProbeOverride:
        if value.kind == "models":
            raise ValueError(
                "litellm deployments have no models endpoint to probe: use kind `completion` "
                "(one token per probe) or `none`"
            )
        return value

    @field_validator("params")
    @classmethod
    def _no_reserved_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        reasons = [
            f"`{key}` is set by the gateway {cls.RESERVED_PARAMS[key]}; remove it from params"
            for key in value
            if key in cls.RESERVED_PARAMS
        ]
        if reasons:
            raise ValueError("; ".join(reasons))
        return value


class SimulatedDeployment(_DeploymentBase):
    """The built-in simulated provider (in-process; no socket, no key)."""

    provider: Literal["simulated"]
    simulated: SimulatedSettings = SimulatedSettings()


Deployment = Annotated[
    OpenAIDeployment | LiteLLMDeployment | SimulatedDeployment, Field(discriminator="provider")
]


class ServerSettings(_Model):
    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    max_body_size: Size = DEFAULT_MAX_BODY_SIZE
    request_timeout: Duration = DEFAULT_REQUEST_TIMEOUT
    drain_timeout: Duration = Field(
        default=DEFAULT_DRAIN_TIMEOUT,
        description="On SIGTERM/SIGINT: stop accepting, let requests in flight finish this long.",
    )
    api_keys: tuple[Secret, ...] = Field(
        default=(), description="When set, callers must send one of these as a bearer token."
    )

    @field_validator("request_timeout", "drain_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than zero")
        return value


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class WindowConfig(_Model):
    """The rolling window: ``buckets`` of ``bucket`` seconds each, sliding a bucket at a time."""

    buckets: int = Field(default=12, ge=1, le=720)
    bucket: Duration = Field(default=5.0, gt=0)
    ewma_alpha: float = Field(default=0.3, gt=0, le=1)


class RedisSettings(_Model):
    url: Secret = SecretStr("redis://127.0.0.1:6379/0")  # may carry a password: never shown
    namespace: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Fleet name: replicas with the same namespace share one view.",
    )
    flush_interval: Duration = Field(default=0.25, gt=0)
    timeout: Duration = Field(default=0.5, gt=0)


class StatusConfig(_Model):
    min_requests: int = Field(default=10, ge=1)
    degraded_error_rate: float = Field(default=0.1, gt=0, le=1)
    unhealthy_error_rate: float = Field(default=0.5, gt=0, le=1)
    degraded_latency: Duration | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> StatusConfig:
        if self.unhealthy_error_rate < self.degraded_error_rate:
            raise ValueError(
                f"unhealthy_error_rate ({self.unhealthy_error_rate}) must not be below "
                f"degraded_error_rate ({self.degraded_error_rate})"
            )
        return self


class ProbeDefaults(_Model):
    """Probe settings for every deployment (each can override any of them under ``probe``).

    ``kind: auto`` probes ``GET /models`` on openai and simulated deployments and does not probe
    litellm ones (a probe there costs a completion); set ``completion`` on one to probe it.
    """

    kind: Literal["auto", "models", "completion", "none"] = "auto"
    interval: Duration = Field(default=15.0, gt=0)
    timeout: Duration = Field(default=5.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, lt=1)
    healthy_threshold: int = Field(default=2, ge=1)
    unhealthy_threshold: int = Field(default=3, ge=1)


class HealthSettings(_Model):
    store: Literal["memory", "redis"] = "memory"
    redis: RedisSettings = RedisSettings()
    window: WindowConfig = WindowConfig()
    status: StatusConfig = StatusConfig()
    probes: ProbeDefaults = ProbeDefaults()


class RetryBudgetSettings(_Model):
    """Retries allowed over ``window``: ``ratio`` of the requests, plus ``min_per_second``."""

    ratio: float = Field(default=0.2, ge=0)
    min_per_second: float = Field(default=1.0, ge=0)
    window: Duration = Field(default=10.0, gt=0)


class ResilienceSettings(_Model):
    """Defaults for every route (a policy's ``retry:`` section overrides per route)."""

    retry: dict[str, Any] = Field(
        default_factory=dict,
        description="max_attempts, base_delay, max_delay, retry_after_cap, "
        "same_deployment_retries.",
    )
    breaker: dict[str, Any] = Field(
        default_factory=dict,
        description="consecutive_failures, failure_rate, min_volume, open_for, open_max, "
        "backoff, jitter, half_open_trials, close_after.",
    )
    retry_budget: RetryBudgetSettings = RetryBudgetSettings()

    @field_validator("retry")
    @classmethod
    def _retry(cls, value: dict[str, Any]) -> dict[str, Any]:
        from gateway.retrying import RetrySettings

        RetrySettings.from_mapping(value)
        return value

    @field_validator("breaker")
    @classmethod
    def _breaker(cls, value: dict[str, Any]) -> dict[str, Any]:
        from gateway.breakers import BreakerSettings

        BreakerSettings.from_mapping(value)
        return value


class AdminSettings(_Model):
    token: Secret | None = Field(
        default=None,
        description="Bearer token for /admin/* and /metrics; without one they answer only on "
        "loopback.",
    )


class PolicySettings(_Model):
    """Where the routing policy lives (a YAML file, or a directory of them) and whether to watch
    it. A relative ``path`` is relative to the config file's directory; the loaded config holds
    the resolved path."""

    path: str = Field(min_length=1, description="Policy file or directory (*.yaml, *.yml).")
    watch: bool = Field(default=True, description="Reload when the files change.")
    poll_interval: Duration = Field(default=0.5, gt=0, description="How often to look for changes.")


class GatewayConfig(_Model):
    server: ServerSettings = ServerSettings()
    logging: LoggingSettings = LoggingSettings()
    health: HealthSettings = HealthSettings()
    admin: AdminSettings = AdminSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    policy: PolicySettings | None = Field(
        default=None,
        description="A policy document to route by; without one, the `routes` table (ordered).",
    )
    deployments: tuple[Deployment, ...]
    routes: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Client-facing model name -> deployments to try, in order. Names not listed "
        "here route to every deployment that serves them, in config order.",
    )

    @field_validator("deployments")
    @classmethod
    def _not_empty(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        if not value:
            raise ValueError("list at least one deployment")
        return value

    def deployment(self, name: str) -> OpenAIDeployment | LiteLLMDeployment | SimulatedDeployment:
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(name)

    def probe(self, name: str) -> tuple[ProbeKind, ProbeDefaults]:
        """The effective probe of deployment ``name``: its kind and the merged settings."""
        d = self.deployment(name)
        merged = self.health.probes.model_copy(
            update={k: v for k, v in d.probe.model_dump().items() if v is not None}
        )
        kind = d.probe.kind or merged.kind
        if kind == "auto" or (kind == "models" and d.provider == "litellm"):
            kind = "none" if d.provider == "litellm" else "models"
        return kind, merged

    def route_table(self) -> dict[str, tuple[str, ...]]:
        """Every client-facing name -> ordered deployment names (explicit routes win)."""
        table: dict[str, list[str]] = {}
        for d in self.deployments:
            for served in d.served_names:
                table.setdefault(served, []).append(d.name)
        merged = {name: tuple(names) for name, names in table.items()}
        merged.update(self.routes)
        return merged


# --- loading -------------------------------------------------------------------------------------


def _cross_reference(data: dict[str, Any], doc: YamlDocument) -> list[ConfigIssue]:
    """Duplicate deployment names, and routes that list no deployment, an unknown one or one
    twice (on the raw document, so these are reported together with any schema error)."""
    issues: list[ConfigIssue] = []
    deployments = data.get("deployments")
    seen: dict[str, int] = {}
    for i, d in enumerate(deployments if isinstance(deployments, list) else ()):
        name = d.get("name") if isinstance(d, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            issues.append(
                doc.issue(
                    ("deployments", i, "name"),
                    f"deployment name `{name}` is already used by deployments[{seen[name]}]",
                )
            )
        seen.setdefault(name, i)
    routes = data.get("routes")
    for route, names in routes.items() if isinstance(routes, dict) else ():
        if not isinstance(names, list):
            continue  # the schema check reports the wrong type
        if not names:
            issues.append(doc.issue(("routes", route), f"route `{route}` lists no deployment"))
        listed: dict[str, int] = {}
        for j, name in enumerate(names):
            if not isinstance(name, str):
                continue  # the schema check reports the wrong type
            listed[name] = listed.get(name, 0) + 1
            if listed[name] > 1:
                if listed[name] == 2:  # reported once, at its second place
                    reason = f"route `{route}` lists deployment `{name}` twice"
                    issues.append(doc.issue(("routes", route, j), reason))
                continue
            if name not in seen:
                known = ", ".join(sorted(seen))
                issues.append(
                    doc.issue(
                        ("routes", route, j),
                        f"route `{route}` references unknown deployment `{name}` (known: {known})",
                    )
                )
    return issues


def parse_config(text: str, file: str = "<config>") -> GatewayConfig:
    """Validate a configuration document given as text. ``file`` also anchors a relative
    ``policy.path`` (unless it is a placeholder such as ``<config>``: then the working
    directory does)."""
    config = load_model(
        GatewayConfig,
        text,
        file,
        expected="a mapping with a `deployments` list",
        cross_check=_cross_reference,
    )
    if config.policy is not None:
        base = "" if file.startswith("<") else os.path.dirname(file)
        path = os.path.abspath(os.path.join(base, os.path.expanduser(config.policy.path)))
        config = config.model_copy(
            update={"policy": config.policy.model_copy(update={"path": path})}
        )
    return config


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a configuration file; raise :class:`ConfigError` on any problem."""
    return parse_config(read_text(path), str(path))
