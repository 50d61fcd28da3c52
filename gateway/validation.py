"""Check a parsed request body just enough to route it and to blame the right field.

The gateway does not re-validate everything an upstream will; it checks the fields it relies on
(``model``, ``messages``/``prompt``/``input``, ``stream``) and the types of common fields, so that a
bad request gets a 400 naming the field instead of a confusing upstream error. No copy of the body
is made.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs", "dimensions")
_NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_OBJECT_FIELDS = ("response_format", "stream_options", "logit_bias", "metadata")
_LIST_FIELDS = ("tools", "functions")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def validate(endpoint: str, body: Any) -> None:
    """Raise :class:`InvalidRequest` naming the first bad field of ``body`` for ``endpoint``."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"the request body must be a JSON object, got {_type_name(body)}", param=None
        )
    model = body.get("model")
    if model is None:
        raise InvalidRequest("`model` is required: name the model to use", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            f"`model` must be a non-empty string, got {_type_name(model)}", param="model"
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest(
            f"`stream` must be a boolean, got {_type_name(stream)}", param="stream"
        )
    if endpoint == "chat/completions":
        _check_messages(body.get("messages"))
    elif endpoint == "completions":
        prompt = body.get("prompt")
        if prompt is None:
            raise InvalidRequest("`prompt` is required for /v1/completions", param="prompt")
        if not isinstance(prompt, str | list):
            raise InvalidRequest(
                f"`prompt` must be a string or an array, got {_type_name(prompt)}", param="prompt"
            )
    elif endpoint == "embeddings":
        value = body.get("input")
        if value is None:
            raise InvalidRequest("`input` is required for /v1/embeddings", param="input")
        if not isinstance(value, str | list):
            raise InvalidRequest(
                f"`input` must be a string or an array, got {_type_name(value)}", param="input"
            )
        if stream:
            raise InvalidRequest("/v1/embeddings does not stream; drop `stream`", param="stream")
    for name in _INT_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidRequest(
                f"`{name}` must be an integer, got {_type_name(value)}", param=name
            )
    for name in _NUMBER_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise InvalidRequest(f"`{name}` must be a number, got {_type_name(value)}", param=name)
    for name in _OBJECT_FIELDS:
        value = body.get(name)
        if value is not None and not isinstance(value, dict):
            raise InvalidRequest(f"`{name}` must be an object, got {_type_name(value)}", param=name)
    for name in _LIST_FIELDS:
        value = body.get(name)
        if value is not None and not isinstance(value, list):
            raise InvalidRequest(f"`{name}` must be an array, got {_type_name(value)}", param=name)


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise InvalidRequest(
            "`messages` is required for /v1/chat/completions: an array of {role, content}",
            param="messages",
        )
    if not isinstance(messages, list):
        raise InvalidRequest(
            f"`messages` must be an array, got {_type_name(messages)}", param="messages"
        )
    if not messages:
        raise InvalidRequest("`messages` must contain at least one message", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(
                f"`messages[{i}]` must be an object, got {_type_name(message)}",
                param=f"messages[{i}]",
            )
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise InvalidRequest(
                f"`messages[{i}].role` must be one of {', '.join(sorted(_ROLES))}, got {role!r}",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"`messages[{i}].content` must be a string or an array of parts, "
                f"got {_type_name(content)}",
                param=f"messages[{i}].content",
            )
