"""A fake Anthropic Messages API server for tests (127.0.0.1, a free port).

It speaks the real wire format of ``POST /v1/messages``:

- non-streaming: one ``message`` object (``content: [{type: text, text}]``, ``stop_reason``,
  ``usage: {input_tokens, output_tokens}``);
- streaming (``"stream": true``): the real event sequence ``message_start``,
  ``content_block_start``, ``ping``, ``content_block_delta`` x N, ``content_block_stop``,
  ``message_delta`` (stop reason and output usage) and ``message_stop``, each as
  ``event: NAME`` + ``data: JSON``;
- errors as Anthropic sends them: ``{"type": "error", "error": {"type", "message"}}`` with the
  matching status (and ``retry-after`` when asked), including an in-band ``error`` event in the
  middle of a stream.

It checks ``x-api-key`` (401 ``authentication_error`` when wrong) and ``anthropic-version``
(400 when missing), and records every request it received in :attr:`AnthropicFake.requests`.
With ``echo_header`` set, every error message quotes that request header, as some proxies and
providers quote the credentials they refused.

Usage::

    async with AnthropicFake(api_key="sk-ant-test") as fake:
        fake.fail_next(rate_limit(retry_after="7"))
        ... point a client at fake.url ...

or ``serve_app(lambda: ...fake.app())`` from ``tests/conftest.py`` to run it in a thread.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_TEXT_CHUNKS = ("Hello", " from", " the fake", " Anthropic.")
DEFAULT_INPUT_TOKENS = 12
PROMPT_TOO_LONG = "prompt is too long: 208310 tokens > 200000 maximum"


@dataclass(frozen=True, slots=True)
class FakeError:
    """An error answer: HTTP status, Anthropic error ``type`` and ``message``."""

    status: int
    type: str
    message: str
    retry_after: str | None = None

    def body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.type, "message": self.message}}


def rate_limit(retry_after: str | None = "7") -> FakeError:
    """429 ``rate_limit_error`` (with a ``retry-after`` header unless ``None``)."""
    return FakeError(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your rate limit.",
        retry_after,
    )


def invalid_request(message: str = "max_tokens: Field required") -> FakeError:
    """400 ``invalid_request_error`` with the given message."""
    return FakeError(400, "invalid_request_error", message)


def prompt_too_long() -> FakeError:
    """400 ``invalid_request_error`` whose message says the prompt is too long."""
    return FakeError(400, "invalid_request_error", PROMPT_TOO_LONG)


def overloaded() -> FakeError:
    """529 ``overloaded_error``."""
    return FakeError(529, "overloaded_error", "Overloaded")


def unauthorized() -> FakeError:
    """401 ``authentication_error``."""
    return FakeError(401, "authentication_error", "invalid x-api-key")


@dataclass(slots=True)
class RecordedRequest:
    """What the fake received: path, headers (lower-case names) and the JSON body."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(slots=True)
class AnthropicFake:
    """The fake server. ``text_chunks`` is the assistant's answer, one delta per item."""

    api_key: str = "sk-ant-test"
    text_chunks: tuple[str, ...] = DEFAULT_TEXT_CHUNKS
    input_tokens: int = DEFAULT_INPUT_TOKENS
    stream_error_after: int | None = None  # send an in-band error event after N deltas
    stream_error: FakeError = field(default_factory=overloaded)
    stream_cut_after: int | None = None  # drop the connection after N deltas, unfinished
    stream_stall_after: int | None = None  # go silent (for a minute) after N deltas
    chunk_delay: float = 0.0  # seconds before each delta
    delay: float = 0.0  # seconds before answering at all
    echo_header: str | None = None  # quote this request header in every error message
    requests: list[RecordedRequest] = field(default_factory=list)
    disconnects: int = 0  # streams the client hung up on before they were complete
    _errors: list[FakeError] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _port: int = 0

    @property
    def url(self) -> str:
        """Base URL (``http://127.0.0.1:PORT``); clients append ``/v1/messages``."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def text(self) -> str:
        return "".join(self.text_chunks)

    @property
    def output_tokens(self) -> int:
        return len(self.text_chunks)

    def fail_next(self, error: FakeError, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``error``."""
        self._errors.extend([error] * times)

    def app(self) -> web.Application:
        """The application, for callers that serve it themselves (e.g. in a server thread)."""
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        return app

    async def start(self) -> str:
        """Serve on 127.0.0.1 (a free port) from the running loop; return :attr:`url`."""
        self._runner = web.AppRunner(
            self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._port = self._runner.addresses[0][1]
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> AnthropicFake:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- handlers --------------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(invalid_request("request body is not valid JSON"))
        self.requests.append(
            RecordedRequest(request.path, {k.lower(): v for k, v in request.headers.items()}, body)
        )
        key = request.headers.get("x-api-key")
        if key != self.api_key:
            # Like some real providers, echo the key that was refused.
            return _error(FakeError(401, "authentication_error", f"invalid x-api-key: {key}"))
        if not request.headers.get("anthropic-version"):
            return _error(invalid_request("anthropic-version: header is required"))
        if self._errors:
            error = self._errors.pop(0)
            if self.echo_header is not None:
                value = request.headers.get(self.echo_header)
                message = f"{error.message} ({self.echo_header}: {value})"
                error = FakeError(error.status, error.type, message, error.retry_after)
            return _error(error)
        if self.delay:
            await asyncio.sleep(self.delay)
        model = body.get("model", "claude-unknown")
        if body.get("stream"):
            return await self._stream(request, model)
        return web.json_response(
            {
                "id": "msg_fake_0001",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": self.text}],
                "model": model,
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
            }
        )

    async def _stream(self, request: web.Request, model: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            await self._events(request, response, model)
        except ConnectionError:
            self.disconnects += 1
        except asyncio.CancelledError:  # the client hung up (handler cancellation is on)
            self.disconnects += 1
            raise
        return response

    async def _events(self, request: web.Request, response: web.StreamResponse, model: str) -> None:

        async def send(name: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        await send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake_0002",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": model,
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": self.input_tokens, "output_tokens": 1},
                },
            },
        )
        await send(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        await send("ping", {"type": "ping"})
        for i, chunk in enumerate(self.text_chunks):
            if self.stream_error_after is not None and i == self.stream_error_after:
                await send("error", self.stream_error.body())
                await response.write_eof()
                return
            if self.stream_cut_after is not None and i == self.stream_cut_after:
                assert request.transport is not None
                request.transport.close()
                return
            if self.stream_stall_after is not None and i == self.stream_stall_after:
                await asyncio.sleep(60)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await send(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": chunk},
                },
            )
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": self.output_tokens},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()


def _error(error: FakeError) -> web.Response:
    headers = {"retry-after": error.retry_after} if error.retry_after is not None else None
    return web.json_response(error.body(), status=error.status, headers=headers)
