"""Describe a request for routing: what it needs, how big it is, and the caller's own limits.

:func:`describe` runs on every request, so it reads the parsed body in place (no copy, no
pydantic, no regex compiled per call) and never mutates it. Removing the ``gateway`` key before
the body goes upstream is the gateway's job; ``describe`` only reads it.

Algorithm:

1. ``model``: the body's ``model`` (a non-empty string, else :class:`RoutingError`).
2. Capabilities, from top-level fields: ``stream: true`` → ``stream``; a non-empty ``tools`` or
   ``functions`` array → ``tools``; ``response_format.type`` ``json_object``/``json_schema`` →
   ``json``. For ``chat/completions`` only, one pass over ``messages`` that stops at the first
   image: a content part typed ``image_url``/``input_image``/``image`` (or carrying an
   ``image_url``/``image`` key) → ``vision``; the last message's role ``assistant`` → ``prefill``.
3. ``prompt_tokens`` ≈ ⌈raw body bytes / 4⌉: no tokenizer, one division. English text runs
   about four bytes a token and JSON punctuation, field names and tool schemas add bytes, so
   for most requests the estimate leans high (the safe side for context-window and price
   limits); text in scripts that take several UTF-8 bytes per token-sized character (CJK) can
   run under it. A vision request takes one more pass: inline ``data:`` image URLs leave the
   byte count and each image counts :data:`IMAGE_TOKENS` instead (a 1 MB image must not read
   as 350,000 tokens).
4. ``max_output_tokens``: ``max_completion_tokens`` else ``max_tokens``, when a positive integer;
   anything else is ignored here (:mod:`gateway.validation` already rejects non-integers).
5. ``metadata``: the string→string entries of ``body.metadata`` when it is an object; other
   entries, or a non-object, are ignored.
6. Constraints, each from the body's ``gateway`` object and from its ``x-gateway-*`` header; the
   header wins when both are given, but both are validated. Blank headers count as absent
   (proxies add empty ones); unknown ``gateway`` keys are errors, other ``x-gateway-*`` headers
   are not read. Any bad value → :class:`RoutingError` whose ``param`` names the header or
   ``gateway.<key>`` and whose message says what is accepted:

   - ``x-gateway-policy`` / ``policy``: a route name, ``[A-Za-z0-9._:-]+``.
   - ``x-gateway-max-price`` / ``max_price``: US dollars per request, a finite number > 0 (the
     body takes a JSON number, the header its text).
   - ``x-gateway-latency-slo`` / ``latency_slo``: ``"800ms"``, ``"2s"``, ``"1m"`` or a number of
     seconds, > 0 (:func:`policies.units.parse_duration`).
   - ``x-gateway-tags`` / ``tags``: ``"eu, tools"`` (comma-separated) / ``["eu", "tools"]``.
   - ``x-gateway-weights`` / ``weights``: ``"latency=2,price=0.5"`` / ``{"latency": 2}``;
     components latency, error_rate, load, price, quality; each finite and ≥ 0, each at most once.

``headers`` in the result is a :class:`HeaderView` over the caller's mapping (no copy). A request
with neither a ``gateway`` key nor any of the five headers shares one empty
:class:`RequestConstraints`; one without capabilities or metadata shares empty sets and maps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeGuard

from policies.types import (
    COMPONENTS,
    RequestConstraints,
    RequestFeatures,
    RoutingError,
)
from policies.units import parse_duration

__all__ = ["HeaderView", "describe"]

_VISION, _TOOLS, _JSON, _STREAM, _PREFILL = 1, 2, 4, 8, 16
_BITS = (
    (_VISION, "vision"),
    (_TOOLS, "tools"),
    (_JSON, "json"),
    (_STREAM, "stream"),
    (_PREFILL, "prefill"),
)
# Every combination of capability bits, built once: a request costs an index, not a frozenset.
_CAPABILITY_SETS: tuple[frozenset[str], ...] = tuple(
    frozenset(name for bit, name in _BITS if mask & bit) for mask in range(32)
)
_IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
# What one image costs in prompt tokens, roughly (a high-detail 1024 px image is ~765-1,100 for
# the common providers); enough for context-window and price estimates.
IMAGE_TOKENS = 1100
_JSON_FORMATS = frozenset({"json_object", "json_schema"})

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_NO_CONSTRAINTS = RequestConstraints()
_BODY_KEYS = ("latency_slo", "max_price", "policy", "tags", "weights")
_ROUTE_NAME = re.compile(r"[A-Za-z0-9._:-]+")
_SENSITIVE = ("auth", "key", "token", "secret", "cookie", "password", "signature")

_PRICE_FORMS = "a price in US dollars per request, a number > 0 such as 0.05"
_SLO_FORMS = "a duration > 0 such as '800ms', '2s', '1m' or a number of seconds"
_WEIGHT_FORMS = f"weights >= 0 for components {', '.join(COMPONENTS)}"


def describe(
    endpoint: str, body: dict[str, Any], raw_size: int, headers: Mapping[str, str]
) -> RequestFeatures:
    """Return what routing needs from one request (see the module docstring for each field).

    ``endpoint`` is the path after ``/v1/`` (``"chat/completions"``, ``"completions"``,
    ``"embeddings"``); ``body`` the parsed JSON object (read, never mutated); ``raw_size`` its
    size in bytes; ``headers`` the request headers, looked up by lowercase name (aiohttp's
    case-insensitive ``CIMultiDictProxy``, or any mapping with lowercase keys). Raises
    :class:`RoutingError` (status 400) for a bad model or a bad constraint.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RoutingError("`model` must be a non-empty string naming the model", param="model")

    # 2. Capabilities.
    mask = 0
    stream = body.get("stream") is True
    if stream:
        mask = _STREAM
    tools = body.get("tools")
    functions = body.get("functions")
    if (isinstance(tools, list) and tools) or (isinstance(functions, list) and functions):
        mask |= _TOOLS
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if isinstance(kind, str) and kind in _JSON_FORMATS:
            mask |= _JSON
    if endpoint == "chat/completions":
        messages = body.get("messages")
        if isinstance(messages, list) and messages:
            last = messages[-1]
            if isinstance(last, dict) and last.get("role") == "assistant":
                mask |= _PREFILL
            for message in messages:
                if isinstance(message, dict):
                    content = message.get("content")
                    if isinstance(content, list) and _has_image(content):
                        mask |= _VISION
                        break

    # 3. Size: bytes / 4, with inline images counted as images, not as base64 text.
    size = raw_size
    images = 0
    if mask & _VISION:
        images, inline = _images(body.get("messages"))
        size = max(0, size - inline)
    prompt_tokens = (size + 3) // 4 + images * IMAGE_TOKENS if size > 0 or images else 0

    # 4. Output limit: the newer field first.
    max_output = body.get("max_completion_tokens")
    if type(max_output) is not int or max_output <= 0:
        max_output = body.get("max_tokens")
        if type(max_output) is not int or max_output <= 0:
            max_output = None

    # 5. Metadata: a small copy, so that the features never change under the engine's feet.
    metadata: Mapping[str, str] = _EMPTY
    raw_metadata = body.get("metadata")
    if isinstance(raw_metadata, dict) and raw_metadata:
        kept = {k: v for k, v in raw_metadata.items() if isinstance(k, str) and isinstance(v, str)}
        if kept:
            metadata = MappingProxyType(kept)

    # 6. Constraints: the common request has none and pays five header lookups.
    get = headers.get
    header_policy = get("x-gateway-policy")
    header_price = get("x-gateway-max-price")
    header_slo = get("x-gateway-latency-slo")
    header_tags = get("x-gateway-tags")
    header_weights = get("x-gateway-weights")
    options = body.get("gateway")
    if options is None and (
        header_policy is None
        and header_price is None
        and header_slo is None
        and header_tags is None
        and header_weights is None
    ):
        constraints = _NO_CONSTRAINTS
    else:
        constraints = _constraints(
            options, header_policy, header_price, header_slo, header_tags, header_weights
        )

    return RequestFeatures(
        model=model,
        endpoint=endpoint,
        stream=stream,
        capabilities=_CAPABILITY_SETS[mask],
        prompt_tokens=prompt_tokens,
        max_output_tokens=max_output,
        headers=HeaderView(headers),
        metadata=metadata,
        constraints=constraints,
    )


def _has_image(parts: Sequence[Any]) -> bool:
    for part in parts:
        if isinstance(part, dict):
            kind = part.get("type")
            if (
                (isinstance(kind, str) and kind in _IMAGE_PART_TYPES)
                or "image_url" in part
                or "image" in part
            ):
                return True
    return False


def _images(messages: Any) -> tuple[int, int]:
    """(image parts, bytes of inline ``data:`` image URLs) in ``messages`` (vision requests only:
    a second, complete pass, so base64 never counts as prompt text)."""
    count = inline = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict) or not _has_image((part,)):
                continue
            count += 1
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if url is None:
                url = part.get("image")
            if isinstance(url, str) and url.startswith("data:"):
                inline += len(url)
    return count, inline


class HeaderView(Mapping[str, str]):
    """The request headers as the engine reads them: not copied, looked up case-insensitively
    by lowercase name, iterated by lowercase name, and with credentials redacted from ``repr``
    (the features may be logged or shown in a failing assertion)."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = headers

    def __getitem__(self, name: str) -> str:
        return self._headers[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._headers.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._headers

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for name in self._headers:
            lower = name.lower()
            if lower not in seen:  # a multidict repeats a name once per value
                seen.add(lower)
                yield lower

    def __len__(self) -> int:
        return len({name.lower() for name in self._headers})

    def __repr__(self) -> str:
        shown = {
            name: "<redacted>" if any(word in name for word in _SENSITIVE) else value
            for name, value in self.items()
        }
        return f"HeaderView({shown!r})"


def _constraints(
    options: object,
    header_policy: str | None,
    header_price: str | None,
    header_slo: str | None,
    header_tags: str | None,
    header_weights: str | None,
) -> RequestConstraints:
    """Validate the body's ``gateway`` object, then let each non-blank header override it."""
    policy: str | None = None
    max_price: float | None = None
    latency_slo: float | None = None
    tags: frozenset[str] = frozenset()
    weights: Mapping[str, float] = _EMPTY
    if options is not None:
        if not isinstance(options, dict):
            raise RoutingError(
                "`gateway` must be an object with any of the keys " + ", ".join(_BODY_KEYS),
                param="gateway",
            )
        for key in options:
            if key not in _BODY_KEYS:
                raise RoutingError(
                    f"`gateway.{key}` is not a routing option; accepted: {', '.join(_BODY_KEYS)}",
                    param=f"gateway.{key}",
                )
        if (value := options.get("policy")) is not None:
            policy = _policy(value, "`gateway.policy`", "gateway.policy")
        if (value := options.get("max_price")) is not None:
            if not _is_number(value):
                raise RoutingError(
                    f"`gateway.max_price` must be {_PRICE_FORMS}, got {_show(value)}",
                    param="gateway.max_price",
                )
            max_price = _price(_float(value), value, "`gateway.max_price`", "gateway.max_price")
        if (value := options.get("latency_slo")) is not None:
            latency_slo = _slo(value, "`gateway.latency_slo`", "gateway.latency_slo")
        if (value := options.get("tags")) is not None:
            tags = _body_tags(value)
        if (value := options.get("weights")) is not None:
            weights = _body_weights(value)

    if header_policy is not None and header_policy.strip():
        policy = _policy(header_policy.strip(), "header x-gateway-policy", "x-gateway-policy")
    if header_price is not None and header_price.strip():
        label = "header x-gateway-max-price"
        try:
            number = float(header_price)
        except ValueError:
            raise RoutingError(
                f"{label} must be {_PRICE_FORMS}, got {_show(header_price)}",
                param="x-gateway-max-price",
            ) from None
        max_price = _price(number, header_price, label, "x-gateway-max-price")
    if header_slo is not None and header_slo.strip():
        latency_slo = _slo(header_slo, "header x-gateway-latency-slo", "x-gateway-latency-slo")
    if header_tags is not None and header_tags.strip():
        tags = frozenset(t for tag in header_tags.split(",") if (t := tag.strip()))
    if header_weights is not None and header_weights.strip():
        weights = _header_weights(header_weights)
    return RequestConstraints(
        policy=policy, max_price=max_price, latency_slo=latency_slo, tags=tags, weights=weights
    )


def _show(value: object) -> str:
    """``repr`` of a caller's value, cut short: an error message must not echo 8 KiB back."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(value: int | float) -> float:
    """``float(value)``, with an int too large for a float as infinity (refused by the caller)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _policy(value: object, label: str, param: str) -> str:
    if not isinstance(value, str) or not _ROUTE_NAME.fullmatch(value):
        raise RoutingError(
            f"{label} must name a route (letters, digits and . _ : -), got {_show(value)}",
            param=param,
        )
    return value


def _price(number: float, value: object, label: str, param: str) -> float:
    if not math.isfinite(number) or number <= 0:
        raise RoutingError(f"{label} must be {_PRICE_FORMS}, got {_show(value)}", param=param)
    return number


def _slo(value: object, label: str, param: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise RoutingError(f"{label} must be {_SLO_FORMS}, got {_show(value)}", param=param)
    return seconds


def _body_tags(value: object) -> frozenset[str]:
    if not isinstance(value, list):
        raise RoutingError(
            f'`gateway.tags` must be an array of tag names such as ["eu", "tools"], '
            f"got {_show(value)}",
            param="gateway.tags",
        )
    tags: set[str] = set()
    for i, tag in enumerate(value):
        if not isinstance(tag, str) or not tag.strip():
            raise RoutingError(
                f"`gateway.tags[{i}]` must be a non-empty tag name, got {_show(tag)}",
                param=f"gateway.tags[{i}]",
            )
        tags.add(tag.strip())
    return frozenset(tags)


def _weight(value: object, number: float, label: str, param: str) -> float:
    if not math.isfinite(number) or number < 0:
        raise RoutingError(f"{label} must be a finite number >= 0, got {_show(value)}", param=param)
    return number


def _body_weights(value: object) -> Mapping[str, float]:
    if not isinstance(value, dict):
        raise RoutingError(
            f"`gateway.weights` must be an object of {_WEIGHT_FORMS}, such as "
            f'{{"latency": 2, "price": 0.5}}; got {_show(value)}',
            param="gateway.weights",
        )
    weights: dict[str, float] = {}
    for name, weight in value.items():
        param = f"gateway.weights.{name}"
        if name not in COMPONENTS:
            raise RoutingError(
                f"`{param}` is not a score component; accepted: {', '.join(COMPONENTS)}",
                param=param,
            )
        if not _is_number(weight):
            raise RoutingError(
                f"`{param}` must be a finite number >= 0, got {_show(weight)}", param=param
            )
        weights[name] = _weight(weight, _float(weight), f"`{param}`", param)
    return MappingProxyType(weights) if weights else _EMPTY


def _header_weights(text: str) -> Mapping[str, float]:
    label = "header x-gateway-weights"
    param = "x-gateway-weights"
    weights: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, equals, number = item.partition("=")
        name = name.strip()
        if not equals:
            raise RoutingError(
                f"{label} takes component=weight pairs such as 'latency=2,price=0.5' "
                f"({_WEIGHT_FORMS}), got {_show(item.strip())}",
                param=param,
            )
        if name not in COMPONENTS:
            raise RoutingError(
                f"{label}: {_show(name)} is not a score component; "
                f"accepted: {', '.join(COMPONENTS)}",
                param=param,
            )
        if name in weights:
            raise RoutingError(f"{label} gives `{name}` twice", param=param)
        try:
            weight = float(number)
        except ValueError:
            raise RoutingError(
                f"{label}: `{name}` must be a finite number >= 0, got {_show(number.strip())}",
                param=param,
            ) from None
        weights[name] = _weight(number.strip(), weight, f"{label}: `{name}`", param)
    return MappingProxyType(weights) if weights else _EMPTY
