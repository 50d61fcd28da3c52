"""The gateway's one error tree.

Foreign exceptions (aiohttp, asyncio, litellm) are translated into these classes once, at the
provider boundary (``gateway/providers/``), and nowhere else. Each class knows what should
happen next (its :class:`Action`), the HTTP status the caller sees when nothing else can serve,
the OpenAI error ``type``/``code`` and a low-cardinality ``label`` for metrics and logs. Only the
server renders the OpenAI-shaped body ``{"error": {"message", "type", "param", "code"}}``.

::

    GatewayError
    ├── CallerError                      caller-error: our own validation, never retried
    │   ├── InvalidRequest          400  malformed JSON, missing/wrong field (``param`` names it)
    │   ├── Unauthorized            401  missing or wrong gateway key
    │   ├── ModelNotFound           404  unknown model; the message lists the available names
    │   ├── NotFound                404  unknown path
    │   ├── MethodNotAllowed        405
    │   └── PayloadTooLarge         413  body over ``server.max_body_size``
    ├── ProviderError                    raised at the provider boundary; carries the deployment
    │   ├── ProviderRejected        4xx  don't-retry: the provider refused the request itself
    │   │   └── ContextLengthExceeded    fail-over-to-larger-context
    │   ├── ProviderMisconfigured   502  fail-over: 401/403/404, the deployment's key or model
    │   ├── RateLimited             429  fail-over (``retry_after`` when the provider sent one)
    │   ├── ProviderServerError     5xx  retry-same once, then fail-over
    │   ├── ProviderUnavailable     503  fail-over (also 529 "overloaded")
    │   ├── ProviderTimeout         504  fail-over (connect, first token, stream idle, total)
    │   ├── ProviderConnectionError 502  retry-same once: connection reset before any byte
    │   │   └── ProviderUnreachable     fail-over: connection refused, DNS, TLS, connect timeout
    │   ├── BadUpstreamResponse     502  fail-over: garbage, truncated or malformed body
    │   └── StreamBroken            502  fail-over: stream cut, stalled or malformed after it began
    └── NoDeploymentAvailable       503  every candidate failed or none was routable
"""

from __future__ import annotations

import enum
import math
import re
from typing import Any


class Action(enum.Enum):
    """What the executor does after an attempt failed with this error."""

    RETRY_SAME = "retry-same"
    FAIL_OVER = "fail-over"
    FAIL_OVER_LARGER_CONTEXT = "fail-over-larger-context"
    DONT_RETRY = "dont-retry"
    CALLER_ERROR = "caller-error"


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None
    label: str = "internal"
    action: Action = Action.DONT_RETRY
    attempts: int = 0  # provider attempts made before this error reached the caller
    history: tuple[ProviderError, ...] = ()  # every failed attempt, in order (for the log)

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI-shaped error object (the value of the top-level ``error`` key)."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def headers(self) -> dict[str, str]:
        """Extra response headers the caller should see with this error."""
        return {}


# --- caller errors ---------------------------------------------------------------------------


class CallerError(GatewayError):
    status = 400
    type = "invalid_request_error"
    label = "caller"
    action = Action.CALLER_ERROR


class InvalidRequest(CallerError):
    code = "invalid_request"


class Unauthorized(CallerError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(CallerError):
    status = 403
    type = "permission_error"
    code = "forbidden"
    label = "forbidden"


class ModelNotFound(CallerError):
    status = 404
    code = "model_not_found"
    label = "model_not_found"


class NotFound(CallerError):
    status = 404
    code = "not_found"
    label = "not_found"


class MethodNotAllowed(CallerError):
    status = 405
    code = "method_not_allowed"
    label = "method_not_allowed"


class PayloadTooLarge(CallerError):
    status = 413
    code = "payload_too_large"
    label = "payload_too_large"


# --- provider errors -------------------------------------------------------------------------


class ProviderError(GatewayError):
    """An attempt against one deployment failed.

    ``upstream_status`` is what the provider answered (``None`` when it never answered);
    ``retry_after`` is in seconds when the provider asked for a pause.
    """

    status = 502
    type = "api_error"
    code = "upstream_error"
    label = "upstream"
    action = Action.FAIL_OVER
    # The class health windows count it under (health.window.ERROR_CLASSES).
    health_class = "server_error"

    def __init__(
        self,
        message: str,
        *,
        deployment: str = "",
        upstream_status: int | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.deployment = deployment
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        if self.retry_after is not None:
            return {"retry-after": str(max(1, round(self.retry_after)))}
        return {}


class ProviderRejected(ProviderError):
    """The provider refused the request for a reason of the request's own: retrying cannot help.

    The caller sees the provider's status and message.
    """

    type = "invalid_request_error"
    code = "upstream_rejected"
    label = "rejected"
    action = Action.DONT_RETRY
    health_class = "caller_error"  # the request's fault, not the deployment's

    def __init__(self, message: str, *, upstream_status: int = 400, **kwargs: Any) -> None:
        super().__init__(message, upstream_status=upstream_status, **kwargs)
        self.status = upstream_status


class ContextLengthExceeded(ProviderRejected):
    code = "context_length_exceeded"
    label = "context_length"
    action = Action.FAIL_OVER_LARGER_CONTEXT


class ProviderMisconfigured(ProviderError):
    """The upstream refused the deployment, not the request: 401/403 (the deployment's own key or
    permissions) or 404 (its model or URL). Another deployment can serve the same request, so this
    fails over; when nothing else answers the caller sees a 502, not an auth error of its own."""

    status = 502
    code = "upstream_misconfigured"
    label = "misconfigured"
    health_class = "misconfigured"


class RateLimited(ProviderError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    label = "rate_limited"
    health_class = "rate_limited"


class ProviderServerError(ProviderError):
    status = 502
    code = "upstream_server_error"
    label = "server_error"
    action = Action.RETRY_SAME


class ProviderUnavailable(ProviderError):
    status = 503
    code = "upstream_unavailable"
    label = "unavailable"


class ProviderTimeout(ProviderError):
    status = 504
    code = "upstream_timeout"
    label = "timeout"
    health_class = "timeout"


class ProviderConnectionError(ProviderError):
    status = 502
    code = "upstream_connection_error"
    label = "connection"
    health_class = "connection"
    action = Action.RETRY_SAME


class ProviderUnreachable(ProviderConnectionError):
    """No connection could be made at all: retrying the same address at once cannot help."""

    code = "upstream_unreachable"
    label = "unreachable"
    action = Action.FAIL_OVER


class BadUpstreamResponse(ProviderError):
    status = 502
    code = "bad_upstream_response"
    label = "bad_response"
    health_class = "bad_response"


class StreamBroken(ProviderError):
    status = 502
    code = "stream_broken"
    label = "stream_broken"
    health_class = "stream_broken"


# --- gateway-level outcome -------------------------------------------------------------------


class NoDeploymentAvailable(GatewayError):
    """Every candidate failed (``last`` is the final attempt's error) or none was routable.

    The caller sees the status, type and code of the last failure (a 429 stays a 429 with its
    ``Retry-After``, a timeout a 504), and a message naming every deployment tried.
    """

    status = 503
    type = "api_error"
    code = "no_deployment_available"
    label = "exhausted"

    def __init__(
        self, message: str, *, last: ProviderError | None = None, attempts: int = 0
    ) -> None:
        super().__init__(message)
        self.last = last
        self.attempts = attempts
        if last is not None:
            self.status = last.status
            self.type = last.type
            self.code = last.code

    def headers(self) -> dict[str, str]:
        return self.last.headers() if self.last is not None else {}


def error_for_status(
    status: int,
    message: str,
    *,
    deployment: str = "",
    retry_after: float | None = None,
    code: str | None = None,
    param: str | None = None,
) -> ProviderError:
    """Map a provider's HTTP error status (and its error ``code``) to the right class."""
    kwargs: dict[str, Any] = {"deployment": deployment, "param": param}
    if code == "context_length_exceeded" or (
        status in (400, 413) and "context length" in message.lower()
    ):
        return ContextLengthExceeded(message, upstream_status=status, **kwargs)
    if status == 429:
        return RateLimited(
            message, upstream_status=status, retry_after=retry_after, code=code, **kwargs
        )
    if status in (408, 409):
        # Request timeout / conflict: transient by HTTP semantics, worth another deployment.
        return ProviderServerError(
            message, upstream_status=status, retry_after=retry_after, **kwargs
        )
    if status in (401, 403, 404):
        return ProviderMisconfigured(
            f"upstream {status} (check this deployment's key, permissions, model and base_url): "
            f"{message}",
            upstream_status=status,
            code=None,
            **kwargs,
        )
    if 400 <= status < 500:
        return ProviderRejected(message, upstream_status=status, code=code, **kwargs)
    if status in (503, 529):
        return ProviderUnavailable(
            message, upstream_status=status, retry_after=retry_after, **kwargs
        )
    if status == 504:
        return ProviderTimeout(message, upstream_status=status, **kwargs)
    return ProviderServerError(message, upstream_status=status, retry_after=retry_after, **kwargs)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait, from the first of these a response carries in a form we read:

    1. ``retry-after-ms`` (milliseconds);
    2. ``retry-after`` (seconds; HTTP dates are ignored);
    3. the larger of ``x-ratelimit-reset-requests`` and ``x-ratelimit-reset-tokens`` (OpenAI's
       Go-style durations such as ``"20ms"``, ``"1s"``, ``"6m0s"``, ``"1m30.5s"``, or plain
       seconds): the time until the exhausted limit refills.
    """
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if math.isfinite(seconds):  # "inf" would reach the caller's Retry-After header
            return max(0.0, seconds)
    resets = [
        reset
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if (reset := _reset_seconds(headers.get(name))) is not None
    ]
    return max(resets) if resets else None


_RESET_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_RESET_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _reset_seconds(value: object) -> float | None:
    """Seconds of an ``x-ratelimit-reset-*`` value (``"6m0s"``, ``"20ms"``, ``"2.5"``), or
    ``None`` when it is missing or not in a form we read."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for part in _RESET_PART.finditer(text):
            if part.start() != pos:
                return None
            seconds += float(part.group(1)) * _RESET_UNITS[part.group(2)]
            pos = part.end()
        if pos == 0 or pos != len(text):
            return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
