"""HTTP handlers of the standalone simulated upstream (wired by :func:`.server.build_app`).

Faults behave as a real network would show them:

- ``status``: an OpenAI error body with that status; with ``retry_after``, a ``Retry-After``
  header (seconds, fractional below one) and ``retry-after-ms`` (as OpenAI sends it);
- ``hang``: never answers (until the client leaves or the server stops);
- ``reset``: the connection is aborted with an RST before any byte; so is a request that
  arrives inside a ``refuse`` window (on a connection accepted before the window, or on an app
  served without :class:`.server.SimulatedServer`, which closes its listener for the window);
- ``slow_first_token``: the headers (the first byte) come ``delay`` late;
- ``garbage``: 200 with a JSON content type and a body that is not JSON;
- ``stream_cut``: the connection closes after N content chunks, the chunked body never ends;
- ``stream_stall``: nothing more is written for ``delay`` (or until the server stops);
- ``malformed_chunk``: a ``data: {not json`` event; ``missing_done``: the body ends properly but
  without ``data: [DONE]``.

A request that no error fault stopped is billed when it ends (tokens written, completed or
wasted; see :mod:`.engine`), in the simulator's :class:`~.engine.Billing`.

Requests the routes do not serve get OpenAI-shaped errors too, as a real upstream sends them:
404 for an unknown path (:func:`not_found`), 405 with ``Allow`` for a wrong method
(:func:`method_not_allowed`), 413 for a body over the app's ``client_max_size``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.providers.simulated import render
from gateway.providers.simulated.engine import Answer, Simulator
from gateway.providers.simulated.script import ScriptPlayer, StreamScript
from gateway.providers.simulated.settings import DEFAULT_FAULT_STATUS, Fault, SimulatedSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_JSON = "application/json"
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(slots=True)
class ListenerState:
    """What the standalone server reports about its listening socket."""

    listening: bool = True
    closures: int = 0


SIMULATOR = web.AppKey("simulator", Simulator)
STOPPING = web.AppKey("stopping", asyncio.Event)  # set when the app shuts down
SCHEDULE_CHANGED = web.AppKey("schedule_changed", asyncio.Event)
LISTENER = web.AppKey("listener", ListenerState)


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=render.error_body(message, type=render.error_type(status), code=code, param=param),
        content_type=_JSON,
        headers=headers,
    )


def _too_large(request: web.Request) -> web.Response:
    limit = request.client_max_size
    return error_response(413, f"the request body is larger than the limit of {limit} bytes")


async def _read(request: web.Request) -> bytes | web.Response:
    """The request body, or the 413 answer when it is over the app's size limit."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(request)


async def not_found(request: web.Request) -> web.Response:
    """404 for a path no route serves (what OpenAI answers: ``Invalid URL (METHOD /path)``)."""
    return error_response(404, f"Invalid URL ({request.method} {request.path})")


def method_not_allowed(allowed: str) -> Handler:
    """The 405 handler of a resource that serves only ``allowed`` (e.g. ``"GET, POST"``)."""

    async def handle(request: web.Request) -> web.Response:
        message = f"{request.method} is not allowed on {request.path}; use {allowed}"
        return error_response(405, message, headers={"Allow": allowed})

    return handle


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.3f}".rstrip("0").rstrip(".")


def _status_fault_response(fault: Fault) -> web.Response:
    status = fault.status or DEFAULT_FAULT_STATUS
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = _seconds(fault.retry_after)
        headers["retry-after-ms"] = str(round(fault.retry_after * 1000))
    message = fault.message or f"simulated {status} error"
    return error_response(status, message, code=fault.code, headers=headers)


def _drop_connection(request: web.Request) -> web.Response:
    """Abort the connection with an RST; the returned response is never sent."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()
    return web.Response()


def cut_connection(request: web.Request) -> None:
    """Flush what was written, then close: the chunked body is left unfinished."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def early_fault(
    request: web.Request, sim: Simulator, fault: Fault | None
) -> web.Response | None:
    """The answer of a fault that ends the request before any answer is generated: an RST for
    ``reset``/``refuse``, nothing until the server stops for ``hang``, an error body (after the
    first-byte delay) for ``status``/``garbage``. ``None`` for every other case."""
    kind = fault.kind if fault is not None else None
    if kind in ("reset", "refuse"):
        return _drop_connection(request)
    if kind == "hang":
        await request.app[STOPPING].wait()
        return _drop_connection(request)
    if fault is not None and kind in ("status", "garbage"):
        await _sleep(sim.first_byte_delay(fault))
        if kind == "garbage":
            return web.Response(body=render.GARBAGE_BODY, content_type=_JSON)
        return _status_fault_response(fault)
    return None


def endpoint_handler(endpoint: str) -> Handler:
    """The POST handler for ``/v1/<endpoint>``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        sim = app[SIMULATOR]
        raw = await _read(request)
        if isinstance(raw, web.Response):
            return raw
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return error_response(400, "We could not parse the JSON body of your request.")
        problem = sim.check(endpoint, body)
        if problem is not None:
            return error_response(400, problem.message, param=problem.param)
        stream = endpoint != "embeddings" and body.get("stream") is True
        fault = sim.choose_fault(stream=stream)
        early = await early_fault(request, sim, fault)
        if early is not None:
            return early
        if stream:
            return await _stream(request, sim, endpoint, body, fault)
        return await _answer(request, sim, endpoint, body, fault)

    return handle


async def _answer(
    request: web.Request,
    sim: Simulator,
    endpoint: str,
    body: dict[str, Any],
    fault: Fault | None,
) -> web.StreamResponse:
    """A complete answer after the first-byte delay and the generation time; billed whole,
    completed once the body was written (engine docstring)."""
    answer: Answer | None = None
    completed = False
    try:
        await _sleep(sim.first_byte_delay(fault))
        answer = sim.respond(endpoint, body, body["model"])
        await _sleep(sim.generation_time(answer.completion_tokens))
        response = web.Response(body=answer.body, content_type=_JSON)
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        else:
            completed = True
        return response
    finally:
        if answer is not None:
            prompt, completion = answer.prompt_tokens, answer.completion_tokens
        else:
            prompt, completion = sim.token_counts(endpoint, body)
        sim.billing.charge(prompt, completion, completed=completed)


async def _stream(
    request: web.Request,
    sim: Simulator,
    endpoint: str,
    body: dict[str, Any],
    fault: Fault | None,
) -> web.StreamResponse:
    """A streamed answer after the first-byte delay; bills the prompt and the completion tokens
    of the lines actually written, completed when the script played to its end."""
    script: StreamScript | None = None
    written = 0
    completed = False
    try:
        await _sleep(sim.first_byte_delay(fault))
        script = sim.stream_script(endpoint, body, body["model"], fault)
        stopping = request.app[STOPPING]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        player = ScriptPlayer(script, forever=stopping.wait)
        try:
            await response.prepare(request)
            while (line := await player.next_line()) is not None:
                await response.write(line + b"\n")
                written += 1
            if script.cut or stopping.is_set():
                cut_connection(request)
            else:
                await response.write_eof()
                completed = True
        except ConnectionResetError:
            pass  # the client went away
        return response
    finally:
        if script is not None:
            sim.billing.charge(
                script.prompt_tokens, script.tokens_before(written), completed=completed
            )
        else:
            sim.billing.charge(sim.token_counts(endpoint, body)[0], 0, completed=False)


async def models(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    if sim.schedule.refusal()[0]:  # the host is down: a kept-alive connection is reset too
        return _drop_connection(request)
    data = [{"id": sim.model, "object": "model", "created": 0, "owned_by": "simulated"}]
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)


async def healthz(request: web.Request) -> web.Response:
    if request.app[SIMULATOR].schedule.refusal()[0]:
        return _drop_connection(request)
    return web.Response(body=b'{"status":"ok"}', content_type=_JSON)


async def get_faults(request: web.Request) -> web.Response:
    settings = request.app[SIMULATOR].settings
    return web.Response(body=orjson.dumps(settings.model_dump(mode="json")), content_type=_JSON)


async def replace_faults(request: web.Request) -> web.Response:
    """Install new settings (fault schedule restarts); 400 with the reasons when invalid."""
    raw = await _read(request)
    if isinstance(raw, web.Response):
        return raw
    try:
        data = orjson.loads(raw)
        settings = SimulatedSettings.model_validate(data)
    except orjson.JSONDecodeError:
        return error_response(400, "the body must be JSON with SimulatedSettings fields")
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<body>'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        return error_response(400, f"invalid settings: {reasons}")
    request.app[SIMULATOR].configure(settings)
    request.app[SCHEDULE_CHANGED].set()
    payload = {"ok": True, "faults": len(settings.faults)}
    return web.Response(body=orjson.dumps(payload), content_type=_JSON)


async def stats(request: web.Request) -> web.Response:
    payload = request.app[SIMULATOR].stats()
    listener = request.app[LISTENER]
    payload["listening"] = listener.listening
    payload["listener_closures"] = listener.closures
    return web.Response(body=orjson.dumps(payload), content_type=_JSON)
