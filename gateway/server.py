"""The OpenAI-compatible HTTP surface, and the one place that drives a request.

The request path (keep this list true):

1. **Accept**: size limit (``server.max_body_size`` → 413), optional client auth
   (``server.api_keys``, constant-time compare → 401), parse the JSON body once with orjson (→ 400).
2. **Describe**: :func:`gateway.validation.validate` checks the fields routing relies on and names
   the bad one (→ 400); the client-facing ``model`` picks a route (→ 404 listing the known names).
3. **Rank**: the route's deployments in configured order, keeping those whose tags serve the
   endpoint (and ``stream`` for streaming requests); the policy engine replaces this step.
4. **Execute**: :func:`gateway.executor.execute` walks the plan under one overall deadline
   (``server.request_timeout``), retrying or failing over by error class; a stream counts as
   answered only once its first event arrived. Every attempt's outcome goes into its
   deployment's health window as it ends (a stream's when the stream ends).
5. **Relay**: a non-streaming body goes back as the upstream sent it; SSE events are written one
   by one as they arrive. A stream that breaks after its first event ends with an in-band
   ``error`` event and no ``[DONE]``: a truncated answer is never presented as complete.
6. **Record**: a count per endpoint and status for ``/metrics``; one ``request`` log event
   (request id, model, deployment, attempts, status, latency, tokens, every failed attempt and
   why); every response of the ``/v1`` request endpoints carries ``x-request-id`` and
   ``x-gateway-attempts``, and ``x-gateway-deployment`` once a deployment answered or failed.

Operators: ``GET /admin/deployments`` (status, reason, window figures, probes) and ``GET /metrics``
(Prometheus), both behind ``admin.token`` or, without one, on loopback only.

Anything unexpected becomes a JSON 500 naming the request id, logged with its traceback; the
caller never sees a traceback or aiohttp's text page.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import re
import time
from typing import Any

import orjson
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric

from gateway.config import GatewayConfig
from gateway.errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    ProviderError,
    Unauthorized,
)
from gateway.executor import Attempt, Deployment, execute
from gateway.logs import get_logger
from gateway.providers.base import ProviderCall, ProviderResponse
from gateway.validation import validate
from health.monitor import HealthMonitor
from health.probes import Prober
from health.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from health.prometheus import registry, render
from health.status import StatusSettings
from health.store import MemoryStore

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
ENDPOINTS = ("chat/completions", "completions", "embeddings")


class Gateway:
    """Routes, deployments and handlers for one loaded configuration."""

    def __init__(
        self,
        config: GatewayConfig,
        deployments: dict[str, Deployment],
        monitor: HealthMonitor | None = None,
    ) -> None:
        self.config = config
        self.deployments = deployments
        if monitor is None:  # embedded use and tests: the deployments' own windows, no probes
            store = MemoryStore()
            for name, dep in deployments.items():
                store.attach(name, dep.window)
            monitor = HealthMonitor(
                store, Prober(store), {name: StatusSettings() for name in deployments}
            )
        self.monitor = monitor
        admin = config.admin.token
        self._admin_token = admin.get_secret_value().encode() if admin is not None else None
        self._metrics = registry(monitor, self._request_families)
        # (endpoint, status) -> responses; endpoint is one of ENDPOINTS or "other"
        self.responses: dict[tuple[str, int], int] = {}
        self._max_body = config.server.max_body_size
        self._timeout = config.server.request_timeout
        self._keys = [k.get_secret_value().encode() for k in config.server.api_keys]
        self._log = get_logger("gateway.request")
        # client-facing model -> (endpoint, stream) -> ordered deployments that can serve it
        self.routes: dict[str, dict[tuple[str, bool], list[Deployment]]] = {}
        for name, names in config.route_table().items():
            plans: dict[tuple[str, bool], list[Deployment]] = {}
            for endpoint in ENDPOINTS:
                serving = [config.deployment(d) for d in names]
                serving = [d for d in serving if d.supports(endpoint)]
                plans[endpoint, False] = [deployments[d.name] for d in serving]
                plans[endpoint, True] = [deployments[d.name] for d in serving if "stream" in d.tags]
            self.routes[name] = plans
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "gateway"}
                    for name in sorted(self.routes)
                ],
            }
        )

    # --- application ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body + 1)
        for endpoint in ENDPOINTS:
            resource = app.router.add_resource(f"/v1/{endpoint}")
            resource.add_route("POST", self._handler(endpoint))
            resource.add_route("*", self._method_not_allowed)
        for path, handler in (
            ("/v1/models", self.models),
            ("/healthz", self.healthz),
            ("/readyz", self.readyz),
            ("/metrics", self.metrics),
            ("/admin/deployments", self.admin_deployments),
        ):
            resource = app.router.add_resource(path)
            resource.add_route("GET", handler)
            resource.add_route("*", self._method_not_allowed)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def models(self, request: web.Request) -> web.Response:
        if self._keys:
            try:
                self._authorize(request)
            except Unauthorized as exc:
                return _error_response(exc, _request_id(request))
        return web.Response(body=self._models_body, content_type="application/json")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready while some deployment has capacity.

        Upstream health does not make the gateway unready: with every deployment ejected (or a
        probe that is wrong about all of them) the gateway still answers each request with a
        clear error, or from a deployment that works after all, where an unready pod behind a
        load balancer would give callers connection errors. ``ejected`` counts them for the
        operator; ``/admin/deployments`` says why.
        """
        routable = sum(1 for d in self.deployments.values() if _has_capacity(d))
        ejected = sum(
            1 for d in self.deployments.values() if self.monitor.status(d.name).state == "ejected"
        )
        status = 200 if routable else 503
        return web.json_response(
            {
                "status": "ready" if routable else "unavailable",
                "routable_deployments": routable,
                "ejected_deployments": ejected,
            },
            status=status,
        )

    # --- operators ----------------------------------------------------------------------

    def _admin(self, request: web.Request) -> web.Response | None:
        """An error response when ``request`` may not see admin data, else ``None``.

        With ``admin.token`` set: a matching bearer token (constant-time compare). Without one:
        only callers on loopback, so a sidecar's figures never leak off the host by default.
        """
        request_id = _request_id(request)
        if self._admin_token is not None:
            header = request.headers.get("Authorization", "")
            token = header[7:].strip().encode() if header[:7].lower() == "bearer " else b""
            if token and hmac.compare_digest(token, self._admin_token):
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
        self._record(request.path, request_id, None, None, error, time.perf_counter())
        return _error_response(error, request_id)

    async def admin_deployments(self, request: web.Request) -> web.Response:
        denied = self._admin(request)
        if denied is not None:
            return denied
        return web.Response(
            body=orjson.dumps(self.monitor.report()), content_type="application/json"
        )

    async def metrics(self, request: web.Request) -> web.Response:
        denied = self._admin(request)
        if denied is not None:
            return denied
        return web.Response(
            body=render(self._metrics), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    def _request_families(self) -> list[Metric]:
        family = CounterMetricFamily(
            "llm_gateway_requests",
            "Responses to callers by endpoint and HTTP status (499: the caller left).",
            labels=["endpoint", "status"],
        )
        for (endpoint, status), n in sorted(self.responses.items()):
            family.add_metric([endpoint, str(status)], n)
        return [family]

    async def _not_found(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        error = NotFound(f"no route for {request.method} {request.path}; see GET /v1/models")
        request_id = _request_id(request)
        self._record(request.path, request_id, None, None, error, started)
        return _error_response(error, request_id)

    async def _method_not_allowed(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        allowed = "POST" if request.path.removeprefix("/v1/") in ENDPOINTS else "GET"
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}; use {allowed}"
        )
        request_id = _request_id(request)
        self._record(request.path, request_id, None, None, error, started)
        resp = _error_response(error, request_id)
        resp.headers["Allow"] = allowed
        return resp

    # --- the request path ----------------------------------------------------------------

    def _handler(self, endpoint: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(endpoint, request)

        return handle

    async def handle(self, endpoint: str, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = _request_id(request)
        model = None
        attempt: Attempt | None = None
        error: GatewayError | None = None
        gone = False  # the caller disconnected (aiohttp cancels the handler)
        try:
            # 1. Accept
            if self._keys:
                self._authorize(request)
            if request.content_length is not None and request.content_length > self._max_body:
                raise _too_large(self._max_body)
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise _too_large(self._max_body) from None
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
            # 2. Describe
            validate(endpoint, body)
            model = body["model"]
            route = self.routes.get(model)
            if route is None:
                known = ", ".join(sorted(self.routes))
                raise ModelNotFound(
                    f"model `{model}` is not served here; available: {known}",
                    param="model",
                )
            # 3. Rank
            stream = body.get("stream") is True
            plan = route[endpoint, stream]
            if not plan:
                what = f"streams /v1/{endpoint}" if stream else f"serves /v1/{endpoint}"
                raise InvalidRequest(
                    f"model `{model}` has no deployment that {what}", param="model"
                )
            # 4. Execute
            call = ProviderCall(endpoint, body, raw, stream, request_id, self._timeout)
            loop = asyncio.get_running_loop()
            attempt = await execute(plan, call, deadline=loop.time() + self._timeout)
            # 5. Relay
            headers = {
                "x-request-id": request_id,
                "x-gateway-deployment": attempt.deployment.name,
                "x-gateway-attempts": str(attempt.attempts),
            }
            result = attempt.result
            if isinstance(result, ProviderResponse):
                attempt.release()
                headers["Content-Type"] = result.content_type
                return web.Response(body=result.body, headers=headers)
            return await self._relay(request, attempt, headers)
        except GatewayError as exc:
            error = exc
            return _error_response(exc, request_id, attempt=exc.attempts)
        except asyncio.CancelledError:
            gone = True
            raise
        except Exception:
            self._log.exception("unexpected error", request_id=request_id, endpoint=endpoint)
            error = _internal(request_id)
            return _error_response(error, request_id)
        finally:
            # 6. Record
            self._record(endpoint, request_id, model, attempt, error, started, gone=gone)

    async def _relay(
        self, request: web.Request, attempt: Attempt, headers: dict[str, str]
    ) -> web.StreamResponse:
        stream = attempt.result
        assert not isinstance(stream, ProviderResponse)
        resp = web.StreamResponse(headers={**headers, **_SSE_HEADERS})
        broken: ProviderError | None = None
        record = True  # a caller that left, or a bug of ours, says nothing of the deployment
        try:
            await resp.prepare(request)
            assert attempt.first is not None
            await resp.write(attempt.first)
            try:
                async for event in stream:
                    await resp.write(event)
            except ProviderError as exc:
                broken = exc
                attempt.errors.append(exc)
                attempt.outcome = exc.label
                await resp.write(_sse_error(exc))
            except ConnectionError:
                raise  # the caller went away while we wrote: handled below
            except Exception:
                self._log.exception(
                    "unexpected error mid-stream", request_id=headers["x-request-id"]
                )
                attempt.outcome = "internal"
                record = False
                await resp.write(_sse_error(_internal(headers["x-request-id"])))
        except ConnectionError:
            attempt.outcome = _CALLER_GONE  # nothing left to tell the caller
            record = broken is not None
            return resp
        except asyncio.CancelledError:
            attempt.outcome = _CALLER_GONE
            record = broken is not None
            raise
        finally:
            try:
                await stream.aclose()
            finally:  # even if closing fails or is cancelled: the slot comes back, once
                attempt.finish(broken, record=record)
        await resp.write_eof()
        return resp

    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip().encode() if header[:7].lower() == "bearer " else b""
        # Compare against every key so timing does not reveal which one nearly matched.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(token, key)
        ok = ok and bool(token)  # an empty token never authenticates, whatever was configured
        if not ok:
            raise Unauthorized(
                "missing or invalid API key: send `Authorization: Bearer <key>` with a key from "
                "server.api_keys"
            )

    def _record(
        self,
        endpoint: str,
        request_id: str,
        model: str | None,
        attempt: Attempt | None,
        error: GatewayError | None,
        started: float,
        *,
        gone: bool = False,
    ) -> None:
        """The one log event of a request. A caller that left is logged as 499, not an error."""
        if attempt is not None and attempt.outcome == _CALLER_GONE:
            gone = True
        status = 499 if gone else error.status if error is not None else 200
        key = (endpoint if endpoint in ENDPOINTS else "other", status)
        self.responses[key] = self.responses.get(key, 0) + 1
        fields: dict[str, Any] = {
            "request_id": request_id,
            "endpoint": endpoint,
            "model": model,
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        if attempt is not None:
            fields["deployment"] = attempt.deployment.name
            fields["attempts"] = attempt.attempts
            result = attempt.result
            usage = result.usage if isinstance(result, ProviderResponse) else result.state.usage
            if usage is not None:
                fields["prompt_tokens"] = usage.prompt_tokens
                fields["completion_tokens"] = usage.completion_tokens
            if attempt.errors:
                fields["failed_attempts"] = [f"{e.deployment}:{e.label}" for e in attempt.errors]
            if attempt.outcome is not None:
                fields["outcome"] = attempt.outcome
        elif error is not None:
            fields["attempts"] = error.attempts
            fields["error"] = error.label
            if error.history:
                fields["deployment"] = error.history[-1].deployment
                fields["failed_attempts"] = [f"{e.deployment}:{e.label}" for e in error.history]
        if gone:
            fields["outcome"] = _CALLER_GONE
            self._log.info("request", **fields)
        elif error is not None or "outcome" in fields:
            self._log.warning("request", **fields)
        else:
            self._log.info("request", **fields)


_CALLER_GONE = "caller_disconnected"


def _internal(request_id: str) -> GatewayError:
    return GatewayError(
        f"internal error in the gateway (request id {request_id}); the gateway log has the details"
    )


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


def _has_capacity(d: Deployment) -> bool:
    return d.max_concurrency is None or d.inflight < d.max_concurrency


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than the limit of {limit} bytes (server.max_body_size)"
    )


def _request_id(request: web.Request) -> str:
    incoming = request.headers.get("x-request-id")
    if incoming is not None and _REQUEST_ID.match(incoming):
        return incoming
    return os.urandom(12).hex()


def _error_response(exc: GatewayError, request_id: str, *, attempt: int = 0) -> web.Response:
    headers = {"x-request-id": request_id, "x-gateway-attempts": str(attempt), **exc.headers()}
    deployment = getattr(exc, "deployment", "") or getattr(
        getattr(exc, "last", None), "deployment", ""
    )
    if deployment:
        headers["x-gateway-deployment"] = deployment
    return web.Response(
        status=exc.status,
        body=orjson.dumps({"error": exc.to_openai()}),
        content_type="application/json",
        headers=headers,
    )


def _sse_error(exc: GatewayError) -> bytes:
    return b"data: " + orjson.dumps({"error": exc.to_openai()}) + b"\n\n"
