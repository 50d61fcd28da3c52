"""Gateway configuration: YAML validated by pydantic, with errors that name file, line and path.

``load_config(path)`` reads the file once, interpolates ``${ENV_VAR}`` (and ``${ENV_VAR:-default}``)
references, validates every section and cross-reference, and either returns a frozen
:class:`GatewayConfig` or raises :class:`ConfigError` listing every problem as
``FILE:LINE: PATH: reason``. Nothing starts half-configured.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from gateway.providers.simulated.settings import SimulatedSettings
from gateway.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 120.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_FIRST_TOKEN_TIMEOUT = 60.0
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_TAGS = ("chat", "completions", "stream")
ENDPOINT_TAGS = {"chat/completions": "chat", "completions": "completions", "embeddings": "embeddings"}

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$"
_DISCRIMINATORS = ("provider",)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Model):
    """Per-attempt limits. The overall deadline is ``server.request_timeout``."""

    connect: Duration = DEFAULT_CONNECT_TIMEOUT
    first_token: Duration = DEFAULT_FIRST_TOKEN_TIMEOUT
    idle: Duration = DEFAULT_IDLE_TIMEOUT


class Price(_Model):
    """US dollars per million tokens."""

    input: float = Field(default=0.0, ge=0.0)
    output: float = Field(default=0.0, ge=0.0)


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

    @property
    def served_names(self) -> tuple[str, ...]:
        return self.aliases or (self.model,)

    def supports(self, endpoint: str) -> bool:
        return ENDPOINT_TAGS[endpoint] in self.tags


class OpenAIDeployment(_DeploymentBase):
    """Any upstream that speaks the OpenAI dialect (OpenAI, Azure-style, Groq, vLLM, Ollama ...)."""

    provider: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://", description="e.g. https://api.openai.com/v1")
    api_key: SecretStr | None = None
    api_key_header: Literal["authorization", "api-key"] = "authorization"
    query_params: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, SecretStr] = Field(default_factory=dict)


class LiteLLMDeployment(_DeploymentBase):
    """A provider with its own wire format, reached through ``litellm.acompletion``."""

    provider: Literal["litellm"]
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    api_key: SecretStr | None = None
    params: dict[str, Any] = Field(default_factory=dict)


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
    api_keys: tuple[SecretStr, ...] = Field(
        default=(), description="When set, callers must send one of these as a bearer token."
    )

    @field_validator("request_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("request_timeout must be greater than zero")
        return value


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class GatewayConfig(_Model):
    server: ServerSettings = ServerSettings()
    logging: LoggingSettings = LoggingSettings()
    deployments: tuple[Deployment, ...] = Field(min_length=1)
    routes: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Client-facing model name -> deployments to try, in order. Names not listed "
        "here route to every deployment that serves them, in config order.",
    )

    def deployment(self, name: str) -> OpenAIDeployment | LiteLLMDeployment | SimulatedDeployment:
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(name)

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


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int | None
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path or '<document>'}: {self.reason}"


class ConfigError(Exception):
    """A configuration file was rejected. ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def _format_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Document:
    """A YAML document kept as nodes so that any path can be traced back to its line."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([ConfigIssue(file, line, "", f"invalid YAML: {problem}")]) from None

    def resolve(self, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], int | None]:
        """Follow ``loc`` through the nodes; return the path that exists and its line.

        Elements that name no node (such as pydantic's union tags) are skipped.
        """
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        kept: list[Any] = []
        for part in loc:
            child = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if key.value == str(part):
                        child = (value, key.start_mark.line + 1)
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if 0 <= part < len(node.value):
                    child = (node.value[part], node.value[part].start_mark.line + 1)
            if child is None:
                if isinstance(part, int) or not isinstance(node, yaml.MappingNode):
                    continue
                if _is_union_tag(node, part):
                    continue
                # A missing key: report it at its parent's position, but keep it in the path.
                kept.append(part)
                continue
            node, line = child
            kept.append(part)
        return tuple(kept), line

    def issue(self, loc: tuple[Any, ...], reason: str) -> ConfigIssue:
        path, line = self.resolve(loc)
        return ConfigIssue(self.file, line, _format_path(path), reason)


def _is_union_tag(node: yaml.MappingNode, part: Any) -> bool:
    """pydantic puts the discriminator's value (``provider: openai`` -> ``openai``) in paths."""
    return any(
        key.value in _DISCRIMINATORS and getattr(value, "value", None) == part
        for key, value in node.value
    )


def _interpolate(value: Any, loc: tuple[Any, ...], doc: _Document, issues: list[ConfigIssue]) -> Any:
    if isinstance(value, str):
        if "${" not in value:
            return value

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            found = os.environ.get(name)
            if found is None or (found == "" and default is not None):
                if default is not None:
                    return default
                issues.append(
                    doc.issue(loc, f"environment variable {name} is not set (referenced as ${{{name}}})")
                )
                return ""
            return found

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, (*loc, k), doc, issues) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*loc, i), doc, issues) for i, v in enumerate(value)]
    return value


def _pydantic_issues(exc: ValidationError, doc: _Document) -> Iterator[ConfigIssue]:
    errors = exc.errors(include_url=False)
    for err in errors:
        if err["type"] == "too_short" and any(
            len(o["loc"]) > len(err["loc"]) and o["loc"][: len(err["loc"])] == err["loc"]
            for o in errors
        ):
            continue  # a list emptied by its own invalid items: the items' errors say why
        reason = err["msg"]
        if err["type"] == "extra_forbidden":
            reason = "unknown key (check the spelling; see the config reference in README.md)"
        elif err["type"] == "missing":
            reason = "required key is missing"
        elif err["type"] == "value_error":
            reason = reason.removeprefix("Value error, ")
        yield doc.issue(tuple(err["loc"]), reason)


def _cross_reference(config: GatewayConfig, doc: _Document) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    seen: dict[str, int] = {}
    for i, d in enumerate(config.deployments):
        if d.name in seen:
            issues.append(
                doc.issue(
                    ("deployments", i, "name"),
                    f"deployment name `{d.name}` is already used by deployments[{seen[d.name]}]",
                )
            )
        seen.setdefault(d.name, i)
    for route, names in config.routes.items():
        if not names:
            issues.append(doc.issue(("routes", route), f"route `{route}` lists no deployment"))
        for j, name in enumerate(names):
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
    """Validate a configuration document given as text."""
    doc = _Document(file, text)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # pragma: no cover - compose() above already caught it
        raise ConfigError([ConfigIssue(file, None, "", f"invalid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigIssue(file, 1, "", "the document must be a mapping with a `deployments` list")]
        )
    issues: list[ConfigIssue] = []
    data = _interpolate(data, (), doc, issues)
    if issues:
        raise ConfigError(issues)
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(list(_pydantic_issues(exc, doc))) from None
    issues = _cross_reference(config, doc)
    if issues:
        raise ConfigError(issues)
    return config


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a configuration file; raise :class:`ConfigError` on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(p), None, "", f"cannot read file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(str(p), None, "", "file is not valid UTF-8")]) from None
    return parse_config(text, str(p))
