"""litellm's exceptions translated, once, into the gateway's error tree.

litellm wraps provider errors in its own classes and sometimes hides the upstream's real status
(Anthropic's 529 "overloaded" arrives as a 500) or its ``Retry-After``; both are recovered from the
exception chain. The deployment's secrets (its API key and the long strings of its ``params``, see
:func:`secrets_of`) never appear in a message: an upstream may echo a key or a header it refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator
from typing import Any

from gateway.errors import (
    BadUpstreamResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    ProviderUnreachable,
    StreamBroken,
    error_for_status,
    parse_retry_after,
)

_MESSAGE_LIMIT = 1000
# Strings in a deployment's ``params`` at least this long are redacted like its key; shorter ones
# ("auto", "high", "2023-06") are flags and versions, and redacting them would garble messages.
SECRET_MIN_LENGTH = 8
REDACTED = "[redacted]"
_CHAIN_LIMIT = 12
_PREFIX = re.compile(r"^(?:\s*litellm\.\w+:\s*)+")
_PROVIDER_PREFIX = re.compile(r"^\w*(?:Exception|Error) - ")
_LITELLM_SUFFIX = re.compile(r"\. Handle with `litellm\.| LiteLLM Retried:|Received Model Group=")
# Exception class names (litellm, openai, httpx, aiohttp, builtins) found on an exception chain.
_TIMEOUT_TYPES = frozenset({"Timeout", "APITimeoutError", "TimeoutException", "TimeoutError"})
_CONNECT_TIMEOUT_TYPES = frozenset({"ConnectTimeout", "ConnectionTimeoutError"})
_UNREACHABLE_TYPES = frozenset({"ConnectError", "ClientConnectorError", "ConnectionRefusedError"})
_CONNECTION_LOST_TYPES = frozenset(
    {"APIConnectionError", "ReadError", "RemoteProtocolError", "ServerDisconnectedError"}
)


def secrets_of(api_key: str, params: Any) -> tuple[str, ...]:
    """What to redact for a deployment: its API key and every string leaf of ``params`` (found
    through nested mappings and lists) of at least :data:`SECRET_MIN_LENGTH` characters."""
    found: set[str] = {api_key} if api_key else set()
    todo: list[Any] = [params]
    while todo:
        value = todo.pop()
        if isinstance(value, str):
            if len(value) >= SECRET_MIN_LENGTH:
                found.add(value)
        elif isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            todo.extend(value)
    return tuple(sorted(found))


def translate_error(
    exc: BaseException,
    *,
    deployment: str,
    secrets: Collection[str] = (),
    after_chunks: int = 0,
) -> ProviderError:
    """Map a litellm (or httpx / aiohttp / asyncio) exception to the gateway's error tree.

    1. Errors raised after stream chunks were relayed are :class:`StreamBroken`.
    2. Timeouts -> :class:`ProviderTimeout`; no connection made -> :class:`ProviderUnreachable`;
       a connection lost -> :class:`ProviderConnectionError`.
    3. Otherwise the upstream's own HTTP status (found on the exception chain; litellm reports
       some, such as Anthropic's 529, as 500) and its error message go through
       :func:`error_for_status`, with ``Retry-After`` when the upstream sent one; litellm's
       ``ContextWindowExceededError`` becomes :class:`ContextLengthExceeded`.
    4. Anything else -> :class:`BadUpstreamResponse` naming the exception type.

    Every string in ``secrets`` (see :func:`secrets_of`) is redacted from the message.
    """
    if isinstance(exc, ProviderError):
        return exc
    chain = list(_chain(exc))
    message = _provider_message(exc, secrets)
    if after_chunks:
        return StreamBroken(
            f"stream failed after {after_chunks} chunks: {message}", deployment=deployment
        )
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    if names & _TIMEOUT_TYPES:
        if names & _CONNECT_TIMEOUT_TYPES:
            return ProviderUnreachable(f"connect timeout: {message}", deployment=deployment)
        return ProviderTimeout(f"upstream timed out: {message}", deployment=deployment)
    if names & _UNREACHABLE_TYPES:
        return ProviderUnreachable(f"cannot reach upstream: {message}", deployment=deployment)
    if names & _CONNECTION_LOST_TYPES:
        return ProviderConnectionError(f"connection lost: {message}", deployment=deployment)
    status = _upstream_status(chain)
    if status is None:
        return unexpected_error(exc, deployment=deployment, secrets=secrets)
    code = None
    if "ContextWindowExceededError" in names:
        code = "context_length_exceeded"
    elif "ContentPolicyViolationError" in names:
        code = "content_policy_violation"
    return error_for_status(
        status,
        message,
        deployment=deployment,
        retry_after=_retry_after(chain),
        code=code,
    )


def unexpected_error(
    exc: BaseException,
    *,
    deployment: str,
    secrets: Collection[str] = (),
    after_chunks: int = 0,
    prefix: str = "litellm raised",
) -> ProviderError:
    """An exception nobody expected (a litellm bug, an answer that cannot be rendered):
    :class:`BadUpstreamResponse` naming its type, or :class:`StreamBroken` after relayed chunks.
    The message is redacted like every other; no traceback."""
    what = f"{prefix} {type(exc).__name__}: {_provider_message(exc, secrets)}"
    if after_chunks:
        return StreamBroken(
            f"stream failed after {after_chunks} chunks: {what}", deployment=deployment
        )
    return BadUpstreamResponse(what, deployment=deployment)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, what it wraps (``original_exception``), its causes and contexts."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < _CHAIN_LIMIT:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nxt in (getattr(e, "original_exception", None), e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def _upstream_status(chain: list[BaseException]) -> int | None:
    """The status the upstream really answered, else the one litellm reports."""
    for e in chain:
        if "HTTPStatusError" in {c.__name__ for c in type(e).__mro__}:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if isinstance(status, int):
                return status
    for e in chain:
        status = getattr(e, "status_code", None)
        if isinstance(status, int) and status >= 400:
            return status
    return None


def _retry_after(chain: list[BaseException]) -> float | None:
    for e in chain:
        for headers in (
            getattr(e, "headers", None),
            getattr(getattr(e, "response", None), "headers", None),
            getattr(e, "litellm_response_headers", None),
        ):
            if not headers or not hasattr(headers, "items"):
                continue
            value = parse_retry_after({str(k).lower(): v for k, v in headers.items()})
            if value is not None:
                return value
    return None


def _provider_message(exc: BaseException, secrets: Collection[str]) -> str:
    """The upstream's own error message when litellm quoted its JSON body, else litellm's text;
    redacted before it is cut to length (so no part of a secret survives at the cut)."""
    text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    text = _PROVIDER_PREFIX.sub("", _PREFIX.sub("", text), count=1)
    suffix = _LITELLM_SUFFIX.search(text)
    if suffix is not None:
        text = text[: suffix.start()]
    start = text.find("{")
    if start != -1:
        try:
            body, _ = json.JSONDecoder().raw_decode(text, start)
        except ValueError:
            body = None
        if isinstance(body, dict):
            error = body.get("error", body)
            found = error.get("message") if isinstance(error, dict) else error
            if isinstance(found, str) and found:
                text = found
    return _redact(text, secrets).strip()[:_MESSAGE_LIMIT] or type(exc).__name__


def _redact(text: str, secrets: Collection[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):  # a secret inside another goes too
        if secret:
            text = text.replace(secret, REDACTED)
    return text
