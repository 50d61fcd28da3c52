"""Error mapping: every provider outcome lands in the class that decides what happens next."""

from __future__ import annotations

import pytest

from gateway.errors import (
    Action,
    ContextLengthExceeded,
    GatewayError,
    NoDeploymentAvailable,
    ProviderError,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    error_for_status,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "code", "cls", "action"),
    [
        (400, None, ProviderRejected, Action.DONT_RETRY),
        (401, None, ProviderMisconfigured, Action.FAIL_OVER),
        (403, None, ProviderMisconfigured, Action.FAIL_OVER),
        (404, None, ProviderMisconfigured, Action.FAIL_OVER),
        (413, None, ProviderRejected, Action.DONT_RETRY),
        (422, None, ProviderRejected, Action.DONT_RETRY),
        (400, "context_length_exceeded", ContextLengthExceeded, Action.FAIL_OVER_LARGER_CONTEXT),
        (408, None, ProviderServerError, Action.RETRY_SAME),
        (409, None, ProviderServerError, Action.RETRY_SAME),
        (429, None, RateLimited, Action.FAIL_OVER),
        (500, None, ProviderServerError, Action.RETRY_SAME),
        (502, None, ProviderServerError, Action.RETRY_SAME),
        (503, None, ProviderUnavailable, Action.FAIL_OVER),
        (529, None, ProviderUnavailable, Action.FAIL_OVER),
        (504, None, ProviderTimeout, Action.FAIL_OVER),
    ],
)
def test_status_maps_to_class_and_action(
    status: int, code: str | None, cls: type[ProviderError], action: Action
) -> None:
    """Each upstream status (and error code) maps to one class with the right next step."""
    err = error_for_status(status, "m", deployment="d", code=code)
    assert type(err) is cls
    assert err.action is action
    assert err.deployment == "d"
    assert err.upstream_status == status


def test_context_length_is_recognised_from_the_message_too() -> None:
    """Providers that only say it in words still get the larger-context class."""
    err = error_for_status(400, "This model's maximum context length is 8192 tokens")
    assert isinstance(err, ContextLengthExceeded)


def test_rejected_error_keeps_the_provider_status_for_the_caller() -> None:
    """A provider's 422 reaches the caller as a 422 with the provider's message."""
    err = error_for_status(422, "`tools[0]` is not a valid function")
    assert err.status == 422
    assert err.to_openai()["message"] == "`tools[0]` is not a valid function"


def test_deployment_auth_failure_is_not_blamed_on_the_caller() -> None:
    """The deployment's own key refused (401) is a 502 to the caller, never their auth error."""
    err = error_for_status(401, "Incorrect API key provided")
    assert (err.status, err.upstream_status, err.action) == (502, 401, Action.FAIL_OVER)
    assert "Incorrect API key provided" in err.message
    assert "check this deployment's key" in err.message


def test_rate_limited_sends_retry_after_header() -> None:
    """Retry-After seconds round up to at least one second."""
    assert RateLimited("x", retry_after=0.2).headers() == {"retry-after": "1"}
    assert RateLimited("x", retry_after=12.4).headers() == {"retry-after": "12"}
    assert RateLimited("x").headers() == {}


def test_no_deployment_available_takes_status_and_code_of_the_last_failure() -> None:
    """When everything failed the caller sees the last failure's status, type, code and pause."""
    last = RateLimited("slow down", deployment="a", retry_after=3, upstream_status=429)
    err = NoDeploymentAvailable("all failed", last=last, attempts=2)
    assert (err.status, err.type, err.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert err.headers() == {"retry-after": "3"}
    assert NoDeploymentAvailable("none").status == 503


def test_openai_shape_has_exactly_the_four_fields() -> None:
    """The rendered error has message, type, param and code."""
    body = GatewayError("boom", param="x").to_openai()
    assert set(body) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"retry-after": "-3"}, 0.0),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """retry-after-ms wins; seconds are read; HTTP dates are ignored."""
    assert parse_retry_after(headers) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-ratelimit-reset-requests": "1s"}, 1.0),
        ({"x-ratelimit-reset-tokens": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "20ms"}, 0.02),
        ({"x-ratelimit-reset-tokens": "1m30.5s"}, 90.5),
        ({"x-ratelimit-reset-requests": "1h2m3s"}, 3723.0),
        ({"x-ratelimit-reset-requests": "2.5"}, 2.5),
        ({"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "1m30.5s"}, 90.5),
        ({"x-ratelimit-reset-requests": "7s", "x-ratelimit-reset-tokens": "250ms"}, 7.0),
        ({"x-ratelimit-reset-requests": "soon", "x-ratelimit-reset-tokens": "4s"}, 4.0),
        ({"retry-after": "2", "x-ratelimit-reset-tokens": "6m0s"}, 2.0),
        ({"retry-after-ms": "300", "x-ratelimit-reset-tokens": "6m0s"}, 0.3),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT", "x-ratelimit-reset-requests": "3s"}, 3.0),
    ],
)
def test_parse_retry_after_reads_x_ratelimit_reset(
    headers: dict[str, str], expected: float
) -> None:
    """Without a readable Retry-After, the larger x-ratelimit-reset-* (Go durations) is used."""
    assert parse_retry_after(headers) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value", ["soon", "1x", "s", "1s2", "-1s", "1s 2m", "", "nan", "inf", "1e999s"]
)
def test_parse_retry_after_ignores_unreadable_resets(value: str) -> None:
    """A reset value that is not a finite, non-negative duration is ignored."""
    assert parse_retry_after({"x-ratelimit-reset-requests": value}) is None


@pytest.mark.parametrize("value", ["inf", "nan", "1e999"])
def test_parse_retry_after_ignores_non_finite_retry_after(value: str) -> None:
    """An infinite Retry-After would reach the caller's header; it is ignored instead."""
    assert parse_retry_after({"retry-after": value, "retry-after-ms": value}) is None
    assert RateLimited("x", retry_after=parse_retry_after({"retry-after": value})).headers() == {}


def test_parse_retry_after_is_case_insensitive_with_aiohttp_headers() -> None:
    """aiohttp's response headers match names in any case."""
    from multidict import CIMultiDict

    headers = CIMultiDict({"X-RateLimit-Reset-Tokens": "1m0s", "X-RateLimit-Reset-Requests": "2s"})
    assert parse_retry_after(headers) == 60.0
