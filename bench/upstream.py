"""A fast, fixed-answer OpenAI-compatible upstream for the benchmark (stdlib only).

A raw :class:`asyncio.Protocol` HTTP/1.1 server with keep-alive, so that it costs far less per
request than the proxies it sits behind:

- ``POST .../chat/completions`` answers a fixed ``chat.completion`` JSON body, or, when the body
  asks for ``"stream": true``, a chunked ``text/event-stream`` of :data:`STREAM_EVENTS` events
  (a role chunk, content chunks, a finish chunk with usage, then ``data: [DONE]``), written one
  event per HTTP chunk, ``--stream-gap-ms`` apart (0 writes the whole stream at once);
- anything else answers 404.

Run: ``python bench/upstream.py [--host 127.0.0.1] [--port 0] [--stream-gap-ms 1]``. Once
listening it prints ``listening <port>`` on stdout; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys

STREAM_EVENTS = 20
_STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    },
    separators=(",", ":"),
).encode()


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: ".encode()
        + content_type
        + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    return head + body


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _stream_events() -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000}
    base["model"] = "bench-model"
    events = []
    deltas: list[dict[str, object]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": f" tok{i}"} for i in range(STREAM_EVENTS - 3)]
    for delta in deltas:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        events.append(chunk)
    events.append(
        {
            **base,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 17, "total_tokens": 29},
        }
    )
    out = [b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events]
    out.append(b"data: [DONE]\n\n")
    return [_chunk(e) for e in out]


COMPLETION_RESPONSE = _response("200 OK", b"application/json", _COMPLETION)
NOT_FOUND_RESPONSE = _response(
    "404 Not Found", b"application/json", b'{"error":{"message":"not found","type":"not_found"}}'
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
STREAM_CHUNKS = _stream_events()
STREAM_END = b"0\r\n\r\n"
STREAM_WHOLE = STREAM_HEAD + b"".join(STREAM_CHUNKS) + STREAM_END


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order, one at a time."""

    def __init__(self, gap: float) -> None:
        self._gap = gap
        self._buf = bytearray()
        self._busy = False  # a spaced-out stream is still being written
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._drain()

    def _drain(self) -> None:
        while not self._busy and self._transport is not None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end])
            m = _CONTENT_LENGTH.search(head)
            length = int(m.group(1)) if m else 0
            total = end + 4 + length
            if len(self._buf) < total:
                return
            body = bytes(self._buf[end + 4 : total])
            del self._buf[:total]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        assert self._transport is not None
        line = head.split(b"\r\n", 1)[0]
        if not (line.startswith(b"POST ") and b"/chat/completions" in line):
            self._transport.write(NOT_FOUND_RESPONSE)
        elif not _STREAM_FLAG.search(body):
            self._transport.write(COMPLETION_RESPONSE)
        elif self._gap <= 0:
            self._transport.write(STREAM_WHOLE)
        else:
            self._busy = True
            self._transport.write(STREAM_HEAD)
            self._loop.call_later(self._gap, self._next_event, 0)

    def _next_event(self, index: int) -> None:
        if self._transport is None:
            return
        if index + 1 < len(STREAM_CHUNKS):
            self._transport.write(STREAM_CHUNKS[index])
            self._loop.call_later(self._gap, self._next_event, index + 1)
            return
        self._transport.write(STREAM_CHUNKS[index] + STREAM_END)
        self._busy = False
        self._drain()


async def serve(host: str, port: int, gap: float) -> None:
    """Serve until SIGTERM/SIGINT; print ``listening <port>`` once bound."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(gap), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--stream-gap-ms", type=float, default=1.0, help="pause between SSE events (0: none)"
    )
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.stream_gap_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
