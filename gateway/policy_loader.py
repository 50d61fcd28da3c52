"""Policy files -> a compiled :class:`~policies.types.PolicySnapshot`, or every problem at once.

The gateway side of :mod:`policies.compile`: this module reads files, the policy package never
does. Loading, step by step:

1. **Find** the sources: the file itself, or every ``*.yaml``/``*.yml`` file of a directory in
   lexical order (not recursive).
2. **Read** each file once, as bytes; the version is the first 12 hex digits of the sha256 of
   (file name, NUL, bytes) of each file in order, so any edit, rename or added file changes it.
3. **Validate** each file with :func:`gateway.yamlfile.load_model` (duplicate keys,
   ``${ENV_VAR}`` interpolation, the schema of :mod:`policies.schema`) and keep its YAML nodes.
4. **Cross-check** with :func:`policies.compile.check_policy`: names across files and, given the
   deployments, every deployment and tag selector; each problem is put back on its file's line.
5. **Report** every problem from every file as one :class:`ConfigError`, sorted by file and line;
   or **compile** the snapshot.

Without a ``policy:`` section the gateway routes by its config: :func:`snapshot_from_routes`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from gateway.config import ENDPOINT_TAGS, GatewayConfig
from gateway.yamlfile import ConfigError, ConfigIssue, YamlDocument, format_path, load_model
from policies.compile import PolicyProblem, check_policy, compile_policy
from policies.schema import DefaultsSpec, PolicyDocument, RouteSpec
from policies.types import Candidate, DeploymentInfo, Match, PolicySnapshot, Route

__all__ = [
    "CONFIG_SOURCE",
    "SUFFIXES",
    "PolicySource",
    "deployment_infos",
    "load_configured_policy",
    "load_policy",
    "policy_files",
    "policy_version",
    "read_policy",
    "snapshot_from_routes",
]

SUFFIXES = (".yaml", ".yml")
CONFIG_SOURCE = "<config routes>"
_VERSION_DIGITS = 12


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Validated policy documents in file order, and the version of their bytes."""

    path: str  # what was asked for: a file or a directory
    documents: tuple[tuple[str, PolicyDocument], ...]
    version: str
    yaml: Mapping[str, YamlDocument] = field(default_factory=dict, repr=False)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(file for file, _ in self.documents)


def policy_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a policy path stands for (see step 1); :class:`ConfigError` if there are none."""
    source = Path(path)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix in SUFFIXES and p.is_file())
        if not files:
            reason = "no policy file here (expected *.yaml or *.yml files)"
            raise ConfigError([ConfigIssue(str(source), None, "", reason)])
        return files
    if not source.exists():
        raise ConfigError([ConfigIssue(str(source), None, "", "no such file or directory")])
    return [source]


def policy_version(contents: Iterable[tuple[str, bytes]]) -> str:
    """The version of (file name, bytes) pairs in order (see step 2)."""
    digest = hashlib.sha256()
    for name, data in contents:
        digest.update(name.encode("utf-8") + b"\0" + data)
    return digest.hexdigest()[:_VERSION_DIGITS]


def read_policy(
    path: str | os.PathLike[str], deployments: Mapping[str, DeploymentInfo] | None = None
) -> PolicySource:
    """Read and validate the policy at ``path`` (steps 1-5, without compiling).

    ``deployments`` None: only the documents themselves are checked (``gateway policy check``
    without a config). Raises :class:`ConfigError` listing every problem.
    """
    files = policy_files(path)
    issues: list[ConfigIssue] = []
    contents: list[tuple[str, bytes]] = []
    documents: list[tuple[str, PolicyDocument]] = []
    nodes: dict[str, YamlDocument] = {}
    salvaged: dict[str, list[int]] = {}  # file -> document index of each route kept
    partial = False  # some part of the policy failed validation
    for file in files:
        name = str(file)
        try:
            data = file.read_bytes()
        except OSError as exc:
            issues.append(ConfigIssue(name, None, "", f"cannot read file: {exc.strerror}"))
            partial = True
            continue
        contents.append((file.name, data))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            issues.append(ConfigIssue(name, None, "", "file is not valid UTF-8"))
            partial = True
            continue
        kept: list[tuple[dict[str, Any], YamlDocument]] = []

        def keep(
            data: dict[str, Any], doc: YamlDocument, kept: list[Any] = kept
        ) -> list[ConfigIssue]:
            kept.append((data, doc))  # the interpolated data and its nodes, for step 4
            return []

        try:
            document = load_model(
                PolicyDocument,
                text,
                name,
                expected="a mapping with a `routes` list",
                empty_ok=True,
                cross_check=keep,
            )
        except ConfigError as exc:
            issues.extend(exc.issues)
            partial = True
            if not kept:  # not YAML, or not a mapping: nothing to cross-check
                continue
            document, salvaged[name] = _salvage(kept[0][0])
        documents.append((name, document))
        nodes[name] = kept[0][1]
    for problem in check_policy(documents, deployments, partial=partial):
        issues.append(_issue(problem, nodes, salvaged.get(problem.file)))
    if issues:
        order = {str(f): i for i, f in enumerate(files)}
        issues.sort(key=lambda i: (order.get(i.file, -1), i.line or 0))
        raise ConfigError(issues)
    return PolicySource(str(path), tuple(documents), policy_version(contents), nodes)


def load_policy(
    path: str | os.PathLike[str],
    deployments: Mapping[str, DeploymentInfo],
    *,
    loaded_at: float | None = None,
) -> PolicySnapshot:
    """Read, validate and compile the policy at ``path``; :class:`ConfigError` on any problem."""
    source = read_policy(path, deployments)
    _check_resilience(source)
    when = time.time() if loaded_at is None else loaded_at
    return compile_policy(source.documents, deployments, when, source.version)


def _check_resilience(source: PolicySource) -> None:
    """The free-form ``retry`` and ``hedge`` sections (defaults and routes) must be settings the
    gateway understands, and ``breaker`` / ``fallback`` (which it does not read from a policy)
    must be absent — never accepted silently. Reported with file and line."""
    from gateway.hedging import hedge_delay
    from gateway.retrying import RetrySettings

    def unsupported(key: str, instead: str) -> Callable[[Any], None]:
        def check(section: Any) -> None:
            raise ValueError(f"`{key}` settings are not read from policies; {instead}")

        return check

    checks: dict[str, Callable[[Any], Any]] = {
        "retry": RetrySettings.from_mapping,
        "hedge": lambda section: hedge_delay(section, None),
        "breaker": unsupported(
            "breaker", "breakers belong to deployments: set resilience.breaker in the config"
        ),
        "fallback": unsupported(
            "fallback", "the candidates' order and the retry settings decide fall-back"
        ),
    }
    issues: list[ConfigIssue] = []
    for file, document in source.documents:
        sections: list[tuple[tuple[Any, ...], Any]] = []
        for key in checks:
            if document.defaults is not None:
                sections.append((("defaults", key), getattr(document.defaults, key)))
            sections.extend(
                (("routes", i, key), getattr(r, key)) for i, r in enumerate(document.routes)
            )
        for where, section in sections:
            if not section:
                continue
            try:
                checks[where[-1]](section)
            except ValueError as exc:
                doc = source.yaml.get(file)
                reason = str(exc)
                if doc is None:
                    issues.append(ConfigIssue(file, None, format_path(where), reason))
                else:
                    issues.append(doc.issue(where, reason))
    if issues:
        raise ConfigError(issues)


def _salvage(data: dict[str, Any]) -> tuple[PolicyDocument, list[int]]:
    """The valid parts of a document that failed validation, so that the cross-checks of step 4
    still run on them (an unknown deployment is reported with a typo elsewhere, not after it is
    fixed). Returns the document and, per route kept, its index in the file."""
    routes: list[RouteSpec] = []
    index: list[int] = []
    raw_routes = data.get("routes")
    for i, raw in enumerate(raw_routes if isinstance(raw_routes, list) else ()):
        try:
            routes.append(RouteSpec.model_validate(raw))
        except ValidationError:
            continue
        index.append(i)
    parts: dict[str, Any] = {}
    for key, value in (("defaults", DefaultsSpec()), ("quality", {}), ("default_route", "?")):
        if data.get(key) is None:
            continue
        try:  # the part alone, if valid; else a stand-in that still says "given in this file"
            parts[key] = getattr(PolicyDocument.model_validate({key: data[key]}), key)
        except ValidationError:
            parts[key] = value
    return PolicyDocument.model_construct(routes=tuple(routes), **parts), index


def _issue(
    problem: PolicyProblem, nodes: Mapping[str, YamlDocument], index: list[int] | None
) -> ConfigIssue:
    path = problem.path
    if index is not None and len(path) > 1 and path[0] == "routes" and isinstance(path[1], int):
        path = ("routes", index[path[1]], *path[2:])
    doc = nodes.get(problem.file)
    if doc is None:  # a problem of the policy as a whole (e.g. no route anywhere)
        return ConfigIssue(problem.file, None, format_path(path), problem.message)
    return doc.issue(path, problem.message)


# --- from the gateway config ---------------------------------------------------------------------


def deployment_infos(config: GatewayConfig) -> dict[str, DeploymentInfo]:
    """The static facts of every configured deployment, in config order."""
    return {
        d.name: DeploymentInfo(
            name=d.name,
            tags=frozenset(d.tags),
            endpoints=frozenset(ep for ep, tag in ENDPOINT_TAGS.items() if tag in d.tags),
            context_window=d.context_window,
            max_output_tokens=d.max_output_tokens,
            price_in=d.price.input,
            price_out=d.price.output,
            max_concurrency=d.max_concurrency,
        )
        for d in config.deployments
    }


def snapshot_from_routes(
    config: GatewayConfig, *, loaded_at: float | None = None
) -> PolicySnapshot:
    """The policy of a config without ``policy:``: one ``ordered`` route per client-facing name
    of :meth:`GatewayConfig.route_table` (in its order), its deployments in config order, no
    default route; version ``config-`` + a hash of the table and the deployments' facts."""
    infos = deployment_infos(config)
    table = config.route_table()
    routes = tuple(
        Route(
            name=model,
            match=Match(models=frozenset({model})),
            candidates=tuple(Candidate(infos[name]) for name in names),
            strategy="ordered",
        )
        for model, names in table.items()
    )
    facts = [
        (i.name, sorted(i.tags), sorted(i.endpoints), i.context_window, i.max_output_tokens)
        for i in infos.values()
    ]
    prices = [(i.price_in, i.price_out, i.max_concurrency) for i in infos.values()]
    text = orjson.dumps([list(table.items()), facts, prices])
    return PolicySnapshot(
        routes=routes,
        default=None,
        version="config-" + hashlib.sha256(text).hexdigest()[:_VERSION_DIGITS],
        loaded_at=time.time() if loaded_at is None else loaded_at,
        sources=(CONFIG_SOURCE,),
    )


def load_configured_policy(config: GatewayConfig) -> PolicySnapshot:
    """The policy ``config`` names under ``policy.path``, else :func:`snapshot_from_routes`."""
    if config.policy is None:
        return snapshot_from_routes(config)
    return load_policy(config.policy.path, deployment_infos(config))
