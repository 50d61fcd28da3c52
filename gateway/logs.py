"""Structured logs: JSON lines when stdout is not a terminal, readable lines when it is.

One event per request (``request``), written by the server. Secrets never reach a log line: the
gateway never logs headers or config secrets, and :func:`redact` is a last line of defence that
blanks any field whose name says it holds a credential and any value that looks like a bearer
token.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from gateway.config import LoggingSettings

_SECRET_KEYS = re.compile(
    r"(authorization|api[-_]?key|(^|[-_])token$|secret|password|cookie)", re.IGNORECASE
)
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"',]+")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
REDACTED = "[redacted]"


_verdicts: dict[str, bool] = {"event": False}  # key name -> holds a credential (few, fixed keys)


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: blank credential-looking fields and bearer tokens in string values."""
    for key, value in event.items():
        secret = _verdicts.get(key)
        if secret is None:
            secret = _verdicts[key] = _SECRET_KEYS.search(key) is not None
        if secret:
            event[key] = REDACTED
        elif isinstance(value, str) and "earer" in value:
            event[key] = _BEARER.sub("Bearer " + REDACTED, value)
    return event


def _orjson_dumps(event: Any, **_: Any) -> bytes:
    return orjson.dumps(event, default=str)


def configure(settings: LoggingSettings, *, stream: Any = None) -> None:
    """Set up structlog for the process (call once, at start)."""
    out = stream if stream is not None else sys.stdout
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if fmt == "json":
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
        binary: Any = out.buffer if hasattr(out, "buffer") else out
        factory: Any = structlog.BytesLoggerFactory(binary)
    else:
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=out.isatty())]
        factory = structlog.PrintLoggerFactory(out)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "gateway") -> Any:
    return structlog.get_logger(name)
