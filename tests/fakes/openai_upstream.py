"""A scripted OpenAI-compatible upstream for provider-boundary tests.

Each request takes the next step of ``script`` (or ``"ok"`` when it is empty) and records what it
received, so a test can say exactly what the upstream does and assert exactly what it saw.

Steps: ``"ok"``, ``("status", code, retry_after_or_None)``, ``"garbage"``, ``"gzip"`` (a
compressed body although identity was asked for), ``"close_early"`` (headers and half a body, then
the connection drops), ``"reset"`` (connection dropped before any byte), ``"hang"``,
``"stream_ok"``, ``("stream_cut", n)``, ``"stream_slow"`` (200 chunks 50 ms apart; sets
``abandoned`` when the client leaves), ``("stream_delayed", before_headers, before_first_event)``,
``"not_json_object"``, ``"empty_object"`` (``{}`` with a 200), ``"echo_key"`` (a 400 quoting the
Authorization header it got).

``GET /v1/models`` takes steps from its own script, ``models_script`` (``"ok"`` when it is
empty, so a gateway's background probes never use up a step meant for a completion): ``"ok"`` (a
model list naming ``models_id``), ``("status", code, retry_after_or_None)``, ``"garbage"``,
``"not_json_object"``, ``"echo_key"``, ``"reset"`` and ``"hang"``; it records the headers in
``headers`` and the path with its query in ``models_requests``.
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Upstream:
    script: list[Any] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[CIMultiDict[str]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    # set when a slow stream's client went away before the stream finished
    abandoned: asyncio.Event = field(default_factory=asyncio.Event)
    models_script: list[Any] = field(default_factory=list)  # steps for GET /v1/models
    models_requests: list[str] = field(default_factory=list)  # GET /v1/models: path and query
    models_id: str = "m"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        return app

    async def models(self, request: web.Request) -> web.StreamResponse:
        self.models_requests.append(request.path_qs)
        self.headers.append(request.headers.copy())
        step = self.models_script.pop(0) if self.models_script else "ok"
        kind = step[0] if isinstance(step, tuple) else step
        if kind == "ok":
            model = {"id": self.models_id, "object": "model", "created": 0, "owned_by": "fake"}
            return web.json_response({"object": "list", "data": [model]})
        if kind == "status":
            _, code, retry_after = step
            headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
            error = {"message": f"upstream says {code}", "type": "server_error"}
            return web.json_response({"error": error}, status=code, headers=headers)
        if kind == "garbage":
            return web.Response(body=b"<html>oops</html>", content_type="application/json")
        if kind == "not_json_object":
            return web.Response(body=b"[1, 2]", content_type="application/json")
        if kind == "echo_key":
            return web.json_response(
                {"error": {"message": f"denied; got {request.headers.get('Authorization')}"}},
                status=401,
            )
        if kind == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if kind == "hang":
            await asyncio.sleep(60)
            return web.Response()
        raise AssertionError(f"unknown models step {step!r}")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(body)
        self.headers.append(request.headers.copy())
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": body["model"],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.raw.append(await request.read())
        body = await request.json()
        self.received.append(body)
        self.headers.append(request.headers.copy())
        step = self.script.pop(0) if self.script else ("stream_ok" if body.get("stream") else "ok")
        kind = step[0] if isinstance(step, tuple) else step
        if kind == "ok":
            return web.json_response(_completion(body["model"], "hello from upstream"))
        if kind == "status":
            _, code, retry_after = step
            headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
            return web.json_response(
                {
                    "error": {
                        "message": f"upstream says {code}",
                        "type": "server_error",
                        "code": "upstream_code",
                    }
                },
                status=code,
                headers=headers,
            )
        if kind == "gzip":  # compressed although the client asked for identity
            data = gzip.compress(orjson.dumps(_completion(body["model"], "zipped")))
            return web.Response(
                body=data, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
            )
        if kind == "garbage":
            return web.Response(body=b"<html>oops</html>", content_type="application/json")
        if kind == "echo_key":  # a 400 that quotes the credentials it received
            return web.json_response(
                {"error": {"message": f"bad request; got {request.headers.get('Authorization')}"}},
                status=400,
            )
        if kind == "empty_object":
            return web.json_response({})
        if kind == "not_json_object":
            return web.Response(body=b"[1, 2]", content_type="application/json")
        if kind == "close_early":
            resp = web.StreamResponse(
                headers={"Content-Type": "application/json", "Content-Length": "500"}
            )
            await resp.prepare(request)
            await resp.write(b'{"id": "x", "choi')
            assert request.transport is not None
            request.transport.close()
            return resp
        if kind == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if kind == "hang":
            await asyncio.sleep(60)
        if kind == "stream_slow":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                for i in range(200):
                    await resp.write(_chunk(body["model"], {"content": f"w{i} "}, None))
                    await asyncio.sleep(0.05)
            except (ConnectionError, asyncio.CancelledError):
                self.abandoned.set()
                raise
            return resp
        if kind == "stream_delayed":  # (kind, seconds before headers, seconds before 1st event)
            await asyncio.sleep(step[1])
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await asyncio.sleep(step[2])
            await resp.write(_chunk(body["model"], {"content": "late"}, "stop"))
            await resp.write(b"data: [DONE]\n\n")
            return resp
        if kind in ("stream_ok", "stream_cut"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            words = ["one ", "two ", "three ", "four"]
            cut = step[1] if kind == "stream_cut" else None
            for i, word in enumerate(words):
                if cut is not None and i == cut:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                await resp.write(_chunk(body["model"], {"content": word}, None))
            await resp.write(_chunk(body["model"], {}, "stop"))
            await resp.write(b"data: [DONE]\n\n")
            return resp
        raise AssertionError(f"unknown step {step!r}")


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
    }


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    event = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"
