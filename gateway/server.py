"""The OpenAI-compatible HTTP surface, and the one place that drives a request.

The request path (keep this list true):

1. **Accept**: size limit (``server.max_body_size`` → 413), optional client auth
   (``server.api_keys``, constant-time compare → 401), parse the JSON body once with orjson (→ 400).
2. **Describe**: :func:`gateway.validation.validate` checks the fields routing relies on and names
   the bad one (→ 400); :func:`policies.request.describe` reads what routing needs (capabilities,
   prompt estimate, the caller's ``x-gateway-*`` / ``"gateway"`` constraints; a bad one → 400).
   The body's ``gateway`` key is removed before anything goes upstream.
3. **Rank**: :func:`policies.engine.rank` on the active policy snapshot (the request keeps it to
   the end, whatever reloads meanwhile) and the health view: route, filters, strategy → the plan
   (no route → 404 listing the models; nothing can serve it → 400 saying why for each candidate).
4. **Execute**: :func:`gateway.executor.execute` walks the plan under one overall deadline
   (``server.request_timeout``), retrying or failing over by error class; a stream counts as
   answered only once its first event arrived. Every attempt's outcome goes into its
   deployment's health window as it ends (a stream's when the stream ends).
5. **Relay**: a non-streaming body goes back as the upstream sent it; SSE events are written one
   by one as they arrive. A stream that breaks after its first event is continued on a
   fallback (assistant prefill, else a restart whose text is checked against what was sent:
   :mod:`gateway.continuation`), else it ends with an in-band ``error`` event for the original
   cause and no ``[DONE]``: a truncated answer is never presented as complete.
6. **Record**: a count per endpoint and status for ``/metrics``; one ``request`` log event
   (request id, model, deployment, attempts, status, latency, tokens, every failed attempt and
   why); every response of the ``/v1`` request endpoints carries ``x-request-id``,
   ``x-gateway-attempts`` and ``x-gateway-policy-version``, ``x-gateway-route`` once a route was
   chosen, and ``x-gateway-deployment`` once a deployment answered or failed.

Operators: :mod:`gateway.admin` (deployments, policies, reload, explain, ``/metrics``), behind
``admin.token`` or, without one, on loopback only.

Anything unexpected becomes a JSON 500 naming the request id, logged with its traceback; the
caller never sees a traceback or aiohttp's text page.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.admin import Admin
from gateway.config import GatewayConfig
from gateway.continuation import continue_stream
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    ProviderError,
    Unauthorized,
)
from gateway.executor import Attempt, Deployment, Resilience, execute
from gateway.http import (
    describe_request,
    error_response,
    internal_error,
    request_id_of,
    sse_error,
)
from gateway.logs import get_logger
from gateway.policy_loader import snapshot_from_routes
from gateway.policy_manager import PolicyManager
from gateway.providers.base import ProviderCall, ProviderResponse
from gateway.retrying import RetrySettings
from gateway.units import parse_duration
from gateway.validation import validate
from health.monitor import HealthMonitor
from health.probes import Prober
from health.status import StatusSettings
from health.store import MemoryStore
from policies.engine import rank
from policies.types import Plan, PolicySnapshot, RequestFeatures, RoutingError

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
ENDPOINTS = ("chat/completions", "completions", "embeddings")


class Gateway:
    """Routes, deployments and handlers for one loaded configuration."""

    def __init__(
        self,
        config: GatewayConfig,
        deployments: dict[str, Deployment],
        monitor: HealthMonitor | None = None,
        policies: PolicyManager | None = None,
        resilience: Resilience | None = None,
    ) -> None:
        self.config = config
        self.deployments = deployments
        if policies is None:  # the config's routes, in order (no policy file)
            policies = PolicyManager(snapshot_from_routes(config))
        self.policies = policies
        self._inflight = _LiveInflight(deployments)
        self._rng = random.Random()
        self._models: tuple[str, bytes] = ("", b"")  # (policy version, GET /v1/models body)
        if monitor is None:  # embedded use and tests: the deployments' own windows, no probes
            store = MemoryStore()
            for name, dep in deployments.items():
                store.attach(name, dep.window)
            monitor = HealthMonitor(
                store, Prober(store), {name: StatusSettings() for name in deployments}
            )
        self.monitor = monitor
        # (endpoint, status) -> responses; endpoint is one of ENDPOINTS or "other"
        self.responses: dict[tuple[str, int], int] = {}
        self.resilience = resilience if resilience is not None else Resilience()
        self._retry_cache: dict[tuple[str, str], RetrySettings] = {}
        self.admin = Admin(self)
        self._max_body = config.server.max_body_size
        self._timeout = config.server.request_timeout
        self._keys = [k.get_secret_value().encode() for k in config.server.api_keys]
        self._log = get_logger("gateway.request")

    # --- application ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body + 1)
        for endpoint in ENDPOINTS:
            resource = app.router.add_resource(f"/v1/{endpoint}")
            resource.add_route("POST", self._handler(endpoint))
            resource.add_route("*", self._method_not_allowed)
        for method, path, handler in (
            ("GET", "/v1/models", self.models),
            ("GET", "/healthz", self.healthz),
            ("GET", "/readyz", self.readyz),
            *self.admin.routes(),
        ):
            resource = app.router.add_resource(path)
            resource.add_route(method, handler)
            resource.add_route("*", self._method_not_allowed)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def models(self, request: web.Request) -> web.Response:
        if self._keys:
            try:
                self._authorize(request)
            except Unauthorized as exc:
                return error_response(exc, request_id_of(request), extra=self._version())
        return web.Response(
            body=self._models_body(), content_type="application/json", headers=self._version()
        )

    def _version(self, path: str = "/v1/") -> dict[str, str]:
        """The policy-version header every ``/v1`` response carries."""
        if path.startswith("/v1/"):
            return {"x-gateway-policy-version": self.policies.current.version}
        return {}

    def _models_body(self) -> bytes:
        """The client-facing names of the active policy (cached per policy version)."""
        policy = self.policies.current
        if self._models[0] != policy.version:
            body = orjson.dumps(
                {
                    "object": "list",
                    "data": [
                        {"id": name, "object": "model", "created": 0, "owned_by": "gateway"}
                        for name in served_models(policy)
                    ],
                }
            )
            self._models = (policy.version, body)
        return self._models[1]

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

    async def _not_found(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        error = NotFound(f"no route for {request.method} {request.path}; see GET /v1/models")
        request_id = request_id_of(request)
        self.record(request.path, request_id, None, None, error, started)
        return error_response(error, request_id, extra=self._version(request.path))

    async def _method_not_allowed(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        post = request.path in _POST_PATHS or request.path.endswith("/breaker")
        allowed = "POST" if post else "GET"
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}; use {allowed}"
        )
        request_id = request_id_of(request)
        self.record(request.path, request_id, None, None, error, started)
        resp = error_response(error, request_id, extra=self._version(request.path))
        resp.headers["Allow"] = allowed
        return resp

    # --- the request path ----------------------------------------------------------------

    def _handler(self, endpoint: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(endpoint, request)

        return handle

    async def handle(self, endpoint: str, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request_id_of(request)
        model = None
        attempt: Attempt | None = None
        error: GatewayError | None = None
        gone = False  # the caller disconnected (aiohttp cancels the handler)
        policy = self.policies.current  # this request keeps this snapshot to the end
        route_headers = {"x-gateway-policy-version": policy.version}
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
            features = describe_request(endpoint, body, len(raw), request.headers)
            if "gateway" in body:  # the caller's routing constraints never go upstream
                del body["gateway"]
                raw = orjson.dumps(body)
            # 3. Rank
            plan = self.plan(policy, features)
            route_headers["x-gateway-route"] = plan.route
            # 4. Execute
            timeout = self._deadline_for(request)
            call = ProviderCall(endpoint, body, raw, features.stream, request_id, timeout)
            loop = asyncio.get_running_loop()
            deployments = [self.deployments[name] for name in plan.order]
            deadline = loop.time() + timeout
            attempt = await execute(
                deployments,
                call,
                deadline=deadline,
                resilience=self.resilience,
                retry=self._retry_settings(plan),
                hedge=plan.resilience.get("hedge"),
            )
            if call.stream:  # what it needs to continue elsewhere if it breaks mid-way;
                # who may take it over is decided when it breaks (_prepare_continuation)
                attempt.call, attempt.deadline = call, deadline
                attempt.rest = [d for d in deployments if d is not attempt.deployment]
            # 5. Relay
            headers = {
                "x-request-id": request_id,
                "x-gateway-deployment": attempt.deployment.name,
                "x-gateway-attempts": str(attempt.attempts),
                **route_headers,
            }
            result = attempt.result
            if isinstance(result, ProviderResponse):
                attempt.release()
                headers["Content-Type"] = result.content_type
                return web.Response(body=result.body, headers=headers)
            return await self._relay(request, attempt, headers)
        except GatewayError as exc:
            error = exc
            return error_response(exc, request_id, attempt=exc.attempts, extra=route_headers)
        except asyncio.CancelledError:
            gone = True
            raise
        except Exception:
            self._log.exception("unexpected error", request_id=request_id, endpoint=endpoint)
            error = internal_error(request_id)
            return error_response(error, request_id, extra=route_headers)
        finally:
            # 6. Record
            self.record(endpoint, request_id, model, attempt, error, started, gone=gone)

    async def _relay(
        self, request: web.Request, attempt: Attempt, headers: dict[str, str]
    ) -> web.StreamResponse:
        stream = attempt.result
        assert not isinstance(stream, ProviderResponse)
        resp = web.StreamResponse(headers={**headers, **_SSE_HEADERS})
        broken: ProviderError | None = None
        record = True  # a caller that left, or a bug of ours, says nothing of the deployment
        rescue = None  # the continuation on a fallback, once the stream broke
        try:
            await resp.prepare(request)
            assert attempt.first is not None
            await resp.write(attempt.first)
            try:
                try:
                    async for event in stream:
                        await resp.write(event)
                except ProviderError as exc:
                    broken = exc
                    attempt.finish(exc)  # the break is the deployment's: recorded, slot back
                    self._prepare_continuation(attempt)
                    rescue = continue_stream(attempt, exc, budget=self.resilience.budget)
                if rescue is not None:  # finish the answer elsewhere, or end with the error
                    async for event in rescue:
                        await resp.write(event)
            except ConnectionError:
                raise  # the caller went away while we wrote: handled below
            except Exception:
                self._log.exception(
                    "unexpected error mid-stream", request_id=headers["x-request-id"]
                )
                attempt.outcome = "internal"
                record = False
                await resp.write(sse_error(internal_error(headers["x-request-id"])))
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
                try:
                    if rescue is not None:  # gives back a fallback's slot if the caller left
                        await rescue.aclose()
                finally:
                    await stream.aclose()
            finally:  # even if closing fails or is cancelled: the slot comes back, once
                attempt.finish(broken, record=record)
        await resp.write_eof()
        return resp

    def _prepare_continuation(self, attempt: Attempt) -> None:
        """Who may finish a stream that broke mid-way, decided when it broke: deployments of
        the plan other than the one that broke, that did not fail earlier in this request and
        whose breaker would admit them now; and a deadline of its own (a long answer may break
        after the request's deadline has passed). No retry-budget token is spent for them: a
        leg moves the request to a deployment that did not fail in it, it adds no load to a
        failing one (:mod:`gateway.continuation` charges a second leg on the same deployment)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        failed = {e.deployment for e in attempt.errors}
        breakers = self.resilience.breakers
        attempt.rest = [
            d
            for d in attempt.rest
            if d.name not in failed and (breakers is None or breakers.get(d.name).can_admit(now))
        ]
        attempt.deadline = max(attempt.deadline, now + self._timeout)

    def _deadline_for(self, request: web.Request) -> float:
        """The request's overall deadline in seconds: ``server.request_timeout``, or less when
        the caller asks for less with ``x-gateway-timeout`` (never more)."""
        asked = request.headers.get("x-gateway-timeout")
        if not asked:
            return self._timeout
        try:
            seconds = parse_duration(asked.strip())
        except ValueError as exc:
            raise InvalidRequest(f"x-gateway-timeout: {exc}", param="x-gateway-timeout") from None
        if seconds <= 0:
            raise InvalidRequest(
                "x-gateway-timeout must be greater than zero", param="x-gateway-timeout"
            )
        return min(seconds, self._timeout)

    def _retry_settings(self, plan: Plan) -> RetrySettings:
        """The route's retry settings: its policy ``retry:`` over the gateway's defaults
        (validated when the policy loaded; cached per policy version and route)."""
        key = (plan.policy_version, plan.route)
        settings = self._retry_cache.get(key)
        if settings is None:
            section = plan.resilience.get("retry")
            if not section:
                settings = self.resilience.retry
            else:
                merged = {**self.config.resilience.retry, **section}
                settings = RetrySettings.from_mapping(merged)
            if len(self._retry_cache) > 256:  # old policy versions
                self._retry_cache.clear()
            self._retry_cache[key] = settings
        return settings

    def plan(
        self, policy: PolicySnapshot, features: RequestFeatures, *, explain: bool = False
    ) -> Plan:
        """The engine's plan; a request it cannot route is the caller's error (400/404)."""
        try:
            return rank(
                policy,
                features,
                self.monitor.view(),
                inflight=self._inflight,
                rng=self._rng,
                explain=explain,
            )
        except RoutingError as exc:
            if exc.status == 404:
                known = ", ".join(served_models(policy))
                raise ModelNotFound(
                    f"model `{features.model}` is not served here; available: {known}",
                    param="model",
                ) from None
            raise InvalidRequest(exc.message, param=exc.param or "model") from None

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

    def record(
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
_POST_PATHS = frozenset(
    {*(f"/v1/{e}" for e in ENDPOINTS), "/admin/policies/reload", "/admin/route/explain"}
)


def served_models(policy: PolicySnapshot) -> list[str]:
    """The client-facing names a policy routes by name (``GET /v1/models``), sorted."""
    names: set[str] = set()
    for route in (*policy.routes, *((policy.default,) if policy.default else ())):
        names.update(route.match.models)
    return sorted(names)


class _LiveInflight(Mapping[str, int]):
    """This replica's in-flight count per deployment, read live (no copy per request)."""

    __slots__ = ("_deployments",)

    def __init__(self, deployments: dict[str, Deployment]) -> None:
        self._deployments = deployments

    def __getitem__(self, name: str) -> int:
        return self._deployments[name].window.inflight

    def __iter__(self) -> Iterator[str]:
        return iter(self._deployments)

    def __len__(self) -> int:
        return len(self._deployments)


def _has_capacity(d: Deployment) -> bool:
    return d.max_concurrency is None or d.inflight < d.max_concurrency


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than the limit of {limit} bytes (server.max_body_size)"
    )
