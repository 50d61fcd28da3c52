"""OpenAI-shaped pieces for the simulated provider: text, token counts, bodies, stream events.

Tokens are whitespace-separated words. Stream events are built as bytes from a per-request head
(``data: {"id":…,"object":…,"created":…,"model":…,"choices":[``) and per-chunk tails, so canned
content renders its tails once and a request only pays for the head and the concatenations.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

import orjson

DONE_LINE = b"data: [DONE]\n"
MALFORMED_LINE = b"data: {not json\n"
GARBAGE_BODY = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"

ROLE_TAIL = (
    b'{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}]}\n'
)

_PIECE = re.compile(r"\s*\S+\s*")


@dataclass(frozen=True, slots=True)
class Completion:
    """The text a request gets, cut into stream chunks of ``chunk_tokens`` words."""

    text: str
    chunks: tuple[str, ...]
    tokens: int
    finish_reason: str


def make_completion(text: str, chunk_tokens: int, max_tokens: int | None = None) -> Completion:
    """Split ``text`` into words (keeping its spacing) and group them into stream chunks.

    With ``max_tokens`` below the word count the text is cut there and ``finish_reason`` is
    ``"length"``. Concatenating the chunks gives back the text.
    """
    pieces = _PIECE.findall(text)
    finish = "stop"
    if max_tokens is not None and max_tokens < len(pieces):
        pieces = pieces[:max_tokens]
        if pieces:
            pieces[-1] = pieces[-1].rstrip()
        text = "".join(pieces)
        finish = "length"
    chunks = tuple(
        "".join(pieces[i : i + chunk_tokens]) for i in range(0, len(pieces), chunk_tokens)
    )
    return Completion(text, chunks, len(pieces), finish)


def count_words(text: str) -> int:
    return len(text.split())


def content_text(content: Any) -> str:
    """The text of a chat message ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def prompt_text(prompt: Any) -> str:
    """The text of a completions ``prompt`` (a string or a list of strings)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return " ".join(p for p in prompt if isinstance(p, str))
    return ""


def chat_input_words(messages: list[Any]) -> int:
    return sum(count_words(content_text(m.get("content"))) for m in messages if isinstance(m, dict))


def assistant_prefill(messages: list[Any]) -> str | None:
    """The text of the last message when it is the assistant's (a prefill), else ``None``."""
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        return content_text(last.get("content"))
    return None


def last_user_text(messages: list[Any]) -> str | None:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return None


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# --- complete bodies --------------------------------------------------------------------------


def chat_body(
    rid: str, created: int, model: str, completion: Completion, prompt_tokens: int
) -> bytes:
    return orjson.dumps(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": usage(prompt_tokens, completion.tokens),
            "system_fingerprint": "fp_simulated",
        }
    )


def text_body(
    rid: str, created: int, model: str, completion: Completion, prompt_tokens: int
) -> bytes:
    return orjson.dumps(
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "text": completion.text,
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": usage(prompt_tokens, completion.tokens),
        }
    )


def embedding_vector(data: bytes, dimensions: int) -> list[float]:
    """A unit vector of ``dimensions`` floats derived from a hash of ``data`` (deterministic)."""
    raw = hashlib.shake_256(data).digest(2 * dimensions)
    vector = [u / 32767.5 - 1.0 for u in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def embedding_inputs(value: Any) -> list[bytes]:
    """Each input of an embeddings request as bytes to hash (strings, token arrays or lists)."""
    if isinstance(value, str):
        return [value.encode()]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [orjson.dumps(value)]
    if isinstance(value, list):
        return [v.encode() if isinstance(v, str) else orjson.dumps(v) for v in value]
    return []


def embedding_input_words(value: Any) -> int:
    if isinstance(value, str):
        return count_words(value)
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(
            count_words(v) if isinstance(v, str) else len(v) if isinstance(v, list) else 0
            for v in value
        )
    return 0


def embeddings_body(
    model: str, inputs: list[bytes], dimensions: int, prompt_tokens: int, *, as_base64: bool
) -> bytes:
    data: list[dict[str, Any]] = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item, dimensions)
        embedding: list[float] | str = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            if as_base64
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


def error_body(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> bytes:
    """The OpenAI error body ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def error_type(status: int) -> str:
    """The OpenAI error ``type`` that goes with an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


# --- stream events ----------------------------------------------------------------------------


def stream_head(obj: bytes, rid: str, created: int, model: str) -> bytes:
    """Everything before the ``choices`` items of one stream event line."""
    return (
        b'data: {"id":"'
        + rid.encode()
        + b'","object":"'
        + obj
        + b'","created":'
        + str(created).encode()
        + b',"model":'
        + orjson.dumps(model)
        + b',"choices":['
    )


def chat_tails(chunks: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(
        b'{"index":0,"delta":{"content":'
        + orjson.dumps(chunk)
        + b'},"logprobs":null,"finish_reason":null}]}\n'
        for chunk in chunks
    )


def text_tails(chunks: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(
        b'{"text":' + orjson.dumps(chunk) + b',"index":0,"logprobs":null,"finish_reason":null}]}\n'
        for chunk in chunks
    )


def chat_finish_tail(finish_reason: str) -> bytes:
    return (
        b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"'
        + finish_reason.encode()
        + b'"}]}\n'
    )


def text_finish_tail(finish_reason: str) -> bytes:
    return (
        b'{"text":"","index":0,"logprobs":null,"finish_reason":"'
        + finish_reason.encode()
        + b'"}]}\n'
    )


def usage_tail(prompt_tokens: int, completion_tokens: int) -> bytes:
    return b'],"usage":' + orjson.dumps(usage(prompt_tokens, completion_tokens)) + b"}\n"
