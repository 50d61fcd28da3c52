"""The redaction processor: the last line of defence for secrets in log events."""

from __future__ import annotations

from gateway.logs import REDACTED, redact


def test_credential_fields_are_blanked() -> None:
    """Fields named like credentials are replaced, whatever their value."""
    event = redact(
        None,
        "info",
        {
            "event": "x",
            "api_key": "sk-1",
            "Authorization": "Bearer a",
            "x-api-key": "k",
            "token": "t",
            "client_secret": "s",
        },
    )
    assert event == {
        "event": "x",
        "api_key": REDACTED,
        "Authorization": REDACTED,
        "x-api-key": REDACTED,
        "token": REDACTED,
        "client_secret": REDACTED,
    }


def test_token_counts_are_not_mistaken_for_secrets() -> None:
    """prompt_tokens and completion_tokens are figures, not credentials."""
    event = redact(None, "info", {"event": "request", "prompt_tokens": 4, "completion_tokens": 3})
    assert event["prompt_tokens"] == 4 and event["completion_tokens"] == 3


def test_bearer_tokens_inside_messages_are_blanked() -> None:
    """A bearer token quoted inside any string value is removed."""
    event = redact(None, "info", {"event": "x", "detail": "sent 'Authorization: Bearer sk-abc'"})
    assert "sk-abc" not in event["detail"]
    assert REDACTED in event["detail"]
