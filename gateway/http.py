"""HTTP pieces shared by the request path and the admin routes: request ids, OpenAI-shaped
error responses (JSON, or an in-band SSE event once a stream has begun)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError, InvalidRequest
from policies.request import describe
from policies.types import RequestFeatures, RoutingError

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def internal_error(request_id: str) -> GatewayError:
    return GatewayError(
        f"internal error in the gateway (request id {request_id}); the gateway log has the details"
    )


def describe_request(
    endpoint: str, body: dict[str, Any], size: int, headers: Mapping[str, str]
) -> RequestFeatures:
    try:
        return describe(endpoint, body, size, headers)
    except RoutingError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None


def request_id_of(request: web.Request) -> str:
    incoming = request.headers.get("x-request-id")
    if incoming is not None and REQUEST_ID_PATTERN.match(incoming):
        return incoming
    return os.urandom(12).hex()


def error_response(
    exc: GatewayError,
    request_id: str,
    *,
    attempt: int = 0,
    extra: dict[str, str] | None = None,
) -> web.Response:
    headers = {"x-request-id": request_id, "x-gateway-attempts": str(attempt), **exc.headers()}
    if extra:
        headers.update(extra)
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


def sse_error(exc: GatewayError) -> bytes:
    return b"data: " + orjson.dumps({"error": exc.to_openai()}) + b"\n\n"
