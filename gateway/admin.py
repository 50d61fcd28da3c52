"""Operator routes: ``/admin/deployments``, ``/admin/policies``, ``/admin/policies/reload``,
``/admin/route/explain`` and ``/metrics``.

All of them answer only to a caller with ``admin.token`` as a bearer token (constant-time
compare) or, when no token is configured, to a caller on loopback — so a sidecar's figures and
routing never leak off the host by default. A refused call is recorded like any other request.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric

from gateway.errors import Forbidden, GatewayError, InvalidRequest, NotFound, Unauthorized
from gateway.http import describe_request, error_response, request_id_of
from gateway.validation import validate
from health.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from health.prometheus import registry, render
from health.snapshot import HealthSnapshot
from policies.types import Plan, RequestFeatures

if TYPE_CHECKING:
    from gateway.server import Gateway

ENDPOINTS = ("chat/completions", "completions", "embeddings")


class Admin:
    """The operator routes of one :class:`~gateway.server.Gateway`."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        token = gw.config.admin.token
        self._token = token.get_secret_value().encode() if token is not None else None
        extra = [self._request_families, gw.policies.metrics]
        if gw.resilience.breakers is not None:
            extra.append(gw.resilience.breakers.metrics)
        extra.append(self._retry_families)
        self._registry = registry(gw.monitor, *extra)

    def routes(self) -> list[tuple[str, str, Any]]:
        """(method, path, handler) of every operator route."""
        return [
            ("GET", "/metrics", self.metrics),
            ("GET", "/admin/deployments", self.deployments),
            ("GET", "/admin/policies", self.policies),
            ("POST", "/admin/policies/reload", self.reload),
            ("POST", "/admin/route/explain", self.explain),
            ("POST", "/admin/deployments/{name}/breaker", self.force_breaker),
        ]

    def denied(self, request: web.Request) -> web.Response | None:
        """An error response when ``request`` may not see admin data, else ``None``.

        With ``admin.token`` set: a matching bearer token (constant-time compare). Without one:
        only callers on loopback, so a sidecar's figures never leak off the host by default.
        """
        request_id = request_id_of(request)
        if self._token is not None:
            header = request.headers.get("Authorization", "")
            token = header[7:].strip().encode() if header[:7].lower() == "bearer " else b""
            if token and hmac.compare_digest(token, self._token):
                return None
            error: GatewayError = Unauthorized(
                "missing or invalid admin token: send `Authorization: Bearer <admin.token>`"
            )
        elif _is_loopback(request.remote):
            return None
        else:
            error = Forbidden(
                f"{request.path} answers only on loopback while admin.token is not set; "
                "set admin.token to reach it from elsewhere"
            )
        self.gw.record(request.path, request_id, None, None, error, time.perf_counter())
        return error_response(error, request_id)

    async def deployments(self, request: web.Request) -> web.Response:
        denied = self.denied(request)
        if denied is not None:
            return denied
        return web.Response(
            body=orjson.dumps(self.gw.monitor.report()), content_type="application/json"
        )

    async def policies(self, request: web.Request) -> web.Response:
        denied = self.denied(request)
        if denied is not None:
            return denied
        return web.json_response(self.gw.policies.status(), dumps=_dumps)

    async def reload(self, request: web.Request) -> web.Response:
        """Reload the policy now: 200 when it validated (swapped, or unchanged), 422 when it
        did not (the last good policy stays active; ``error`` says why)."""
        denied = self.denied(request)
        if denied is not None:
            return denied
        swapped, error = await self.gw.policies.reload("admin api")
        body = {"reloaded": swapped, "error": error, "policy": self.gw.policies.status()}
        return web.json_response(body, status=200 if error is None else 422, dumps=_dumps)

    async def explain(self, request: web.Request) -> web.Response:
        """The plan a request would get, with every score component and exclusion reason,
        without calling any provider.

        The body is either a request body (``{"model": ..., "messages": ...}``; the
        ``x-gateway-*`` headers of this call apply) or ``{"endpoint": "chat/completions",
        "body": {...}, "headers": {...}}``.
        """
        denied = self.denied(request)
        if denied is not None:
            return denied
        request_id = request_id_of(request)
        policy = self.gw.policies.current
        extra = {"x-request-id": request_id, "x-gateway-policy-version": policy.version}
        try:
            try:
                raw = await request.read()
                given = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
            endpoint, body, headers = _explain_input(given, request.headers)
            validate(endpoint, body)
            # the bare form sizes the prompt as the real request would (the caller's own bytes)
            size = len(raw) if body is given else len(orjson.dumps(body))
            features = describe_request(endpoint, body, size, headers)
            plan = self.gw.plan(policy, features, explain=True)
        except GatewayError as exc:
            return error_response(exc, request_id, extra=extra)
        extra["x-gateway-route"] = plan.route
        return web.json_response(
            _explain_body(plan, features, self.gw.monitor.view()), headers=extra, dumps=_dumps
        )

    async def force_breaker(self, request: web.Request) -> web.Response:
        """``{"mode": "open" | "closed" | "drained" | "auto"}``: an operator's override of one
        deployment's breaker (``auto`` hands it back to the automatic rules, closed)."""
        denied = self.denied(request)
        if denied is not None:
            return denied
        request_id = request_id_of(request)
        name = request.match_info["name"]
        breakers = self.gw.resilience.breakers
        try:
            if breakers is None or name not in self.gw.deployments:
                known = ", ".join(sorted(self.gw.deployments))
                raise NotFound(f"no deployment `{name}`; known: {known}")
            try:
                given = orjson.loads(await request.read())
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
            mode = given.get("mode") if isinstance(given, dict) else None
            if mode not in ("open", "closed", "drained", "auto"):
                raise InvalidRequest(
                    'send {"mode": "open" | "closed" | "drained" | "auto"}', param="mode"
                )
            breakers.force(name, mode)
        except GatewayError as exc:
            return error_response(exc, request_id)
        return web.json_response(
            {"deployment": name, **breakers.admin(name)},
            headers={"x-request-id": request_id},
            dumps=_dumps,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        denied = self.denied(request)
        if denied is not None:
            return denied
        return web.Response(
            body=render(self._registry), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    def _retry_families(self) -> list[Metric]:
        budget = self.gw.resilience.budget
        exhausted = CounterMetricFamily(
            "llm_gateway_retry_budget_exhausted",
            "Retries the retry budget refused (an outage must not become a retry storm).",
        )
        exhausted.add_metric([], budget.exhausted if budget is not None else 0)
        return [exhausted]

    def _request_families(self) -> list[Metric]:
        family = CounterMetricFamily(
            "llm_gateway_requests",
            "Responses to callers by endpoint and HTTP status (499: the caller left).",
            labels=["endpoint", "status"],
        )
        for (endpoint, status), n in sorted(self.gw.responses.items()):
            family.add_metric([endpoint, str(status)], n)
        return [family]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _explain_input(
    given: Any, own_headers: Mapping[str, str]
) -> tuple[str, dict[str, Any], Mapping[str, str]]:
    """(endpoint, body, headers) of an explain call: a bare request body, or a wrapper."""
    if not isinstance(given, dict):
        raise InvalidRequest("the body must be a JSON object: a request body, or {body, headers}")
    if "body" not in given:
        return "chat/completions", given, own_headers
    unknown = set(given) - {"endpoint", "body", "headers"}
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) {', '.join(sorted(unknown))}; use endpoint, body, headers",
            param=sorted(unknown)[0],
        )
    endpoint = given.get("endpoint", "chat/completions")
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}", param="endpoint"
        )
    body, headers = given["body"], given.get("headers", {})
    if not isinstance(body, dict):
        raise InvalidRequest("`body` must be a JSON object (the request body)", param="body")
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise InvalidRequest("`headers` must map header names to strings", param="headers")
    return endpoint, body, {k.lower(): v for k, v in headers.items()}


def _explain_body(plan: Plan, features: RequestFeatures, health: HealthSnapshot) -> dict[str, Any]:
    c = features.constraints
    return {
        "route": plan.route,
        "policy_version": plan.policy_version,
        "strategy": plan.strategy,
        "panic": plan.panic,
        "order": list(plan.order),
        "candidates": [
            {
                "name": s.name,
                "score": round(s.score, 6),
                "components": {k: round(v, 6) for k, v in s.components.items()},
                "status": health.get(s.name).status,
            }
            for s in plan.scored
        ],
        "excluded": [{"name": e.name, "reason": e.reason} for e in plan.excluded],
        "request": {
            "model": features.model,
            "endpoint": features.endpoint,
            "stream": features.stream,
            "capabilities": sorted(features.capabilities),
            "prompt_tokens_estimate": features.prompt_tokens,
            "max_output_tokens": features.max_output_tokens,
            "constraints": {
                "policy": c.policy,
                "max_price": c.max_price,
                "latency_slo": c.latency_slo,
                "tags": sorted(c.tags),
                "weights": dict(c.weights),
            },
        },
    }


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False  # a unix socket or something unexpected: not provably local
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1
    return address.is_loopback
