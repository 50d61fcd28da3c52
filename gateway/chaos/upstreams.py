"""The upstreams of a chaos run: simulated ones and fault proxies, with their fault timelines.

:class:`Upstreams` runs one server per deployment in the runner's event loop, each on
``127.0.0.1`` with a free port:

- a simulated deployment gets a :class:`~gateway.providers.simulated.server.SimulatedServer` with
  the deployment's settings, ``echo`` forced on (the load driver checks every answer against its
  request), no ``content`` and no faults;
- a real deployment (``upstream_url``) gets a fault-injecting reverse proxy: the same server class
  serving :func:`build_proxy_app`, so ``refuse`` windows close its listener exactly as the
  simulator's do; other requests are forwarded to the real upstream (see below).

Life of a run:

1. :meth:`Upstreams.start` binds every server with no fault active (the gateway starts and warms
   up against healthy upstreams).
2. :meth:`Upstreams.arm` at traffic start installs each deployment's faults with the schedule's
   origin at that instant, so a fault's ``start``/``end`` are seconds since traffic start, and
   wakes each server's refusal watcher so a listener closes on time.
3. :meth:`Upstreams.stats` reads what every upstream saw and billed (since it started: probes
   and warm-up included). A request is billed when it ends, so read it after :meth:`stop` for
   final numbers.

Billing follows :mod:`gateway.providers.simulated.engine`: a request is *answered* (billed) once
the upstream takes it up, *completed* when the whole answer reached a connection still open, and
the tokens of answered requests that did not complete are *wasted*.

The proxy, per request:

1. Count it and pick its fault from the schedule (a simulator's :class:`FaultSchedule`; the
   body's ``stream`` flag decides whether stream faults apply).
2. ``reset``/``refuse`` (a pooled connection inside a window) drop the connection; ``hang`` waits
   for shutdown; ``slow_first_token`` waits its ``delay`` before forwarding; ``status`` and
   ``garbage`` answer without forwarding.
3. Forward the request to ``upstream_url`` with ``Authorization: Bearer`` the value of
   ``api_key_env`` (the caller's own header is not passed on; the key is never logged).
4. Relay the answer: a non-streaming one whole (status, body, content type, ``Retry-After``);
   a 200 stream line by line, counting content chunks; ``stream_cut`` closes the connection
   before content chunk ``after_chunks + 1`` (or before the finish when there are fewer),
   ``stream_stall`` pauses there for ``delay`` (or until the client leaves). ``malformed_chunk``
   and ``missing_done`` are not applied by the proxy.
5. Bill a 200 to a generation (chat, completions, embeddings) from the upstream's ``usage``
   when it reported one; otherwise estimate in words, as the simulator counts: the prompt's words
   and the words of the content written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web

from gateway.providers.simulated import render
from gateway.providers.simulated.engine import ENDPOINTS, Simulator
from gateway.providers.simulated.handlers import (
    LISTENER,
    SCHEDULE_CHANGED,
    SIMULATOR,
    STOPPING,
    ListenerState,
    cut_connection,
    early_fault,
    error_response,
    not_found,
)
from gateway.providers.simulated.server import MAX_BODY_SIZE, SimulatedServer
from gateway.providers.simulated.settings import Fault, SimulatedSettings

HOST = "127.0.0.1"
CONNECT_TIMEOUT = 10.0
RELAYED_HEADERS = ("Content-Type", "Retry-After", "retry-after-ms")


class UpstreamDeployment(Protocol):
    """What :class:`Upstreams` reads of a deployment (a ``scenario.ChaosDeployment``)."""

    @property
    def name(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def simulated(self) -> SimulatedSettings | None: ...
    @property
    def upstream_url(self) -> str | None: ...
    @property
    def api_key_env(self) -> str | None: ...


class UpstreamError(RuntimeError):
    """An upstream cannot be set up (e.g. its API key variable is not set)."""


def simulator_seed(seed: int, name: str) -> int:
    """The dice seed of deployment ``name`` in a run seeded ``seed`` (stable across runs)."""
    return zlib.crc32(f"{seed}:{name}".encode())


def simulated_settings(settings: SimulatedSettings, name: str, seed: int) -> SimulatedSettings:
    """A deployment's settings as the run serves them: echo on, no content, no faults, and the
    run's dice unless the deployment chose its own ``seed``."""
    update: dict[str, Any] = {"echo": True, "content": None, "faults": ()}
    if "seed" not in settings.model_fields_set:
        update["seed"] = simulator_seed(seed, name)
    return settings.model_copy(update=update)


class Upstreams:
    """Every deployment's upstream, started, armed and counted together (module docstring)."""

    def __init__(
        self,
        deployments: Sequence[UpstreamDeployment],
        faults: Mapping[str, tuple[Fault, ...]],
        seed: int,
    ) -> None:
        names = [d.name for d in deployments]
        if len(set(names)) != len(names):
            raise ValueError(f"deployment names must be unique: {names}")
        unknown = sorted(set(faults) - set(names))
        if unknown:
            raise ValueError(f"faults for unknown deployment(s): {', '.join(unknown)}")
        for d in deployments:
            if (d.simulated is None) == (d.upstream_url is None):
                raise ValueError(f"deployment {d.name}: needs exactly one of simulated, upstream")
        self._deployments = tuple(deployments)
        self._faults = {name: tuple(faults.get(name, ())) for name in names}
        self._seed = seed
        self._servers: dict[str, SimulatedServer] = {}

    async def __aenter__(self) -> Upstreams:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind every upstream on 127.0.0.1 (a free port each) with no fault active."""
        try:
            for deployment in self._deployments:
                server = self._server(deployment)
                await server.start()
                self._servers[deployment.name] = server
        except BaseException:
            await self.stop()
            raise

    def _server(self, deployment: UpstreamDeployment) -> SimulatedServer:
        name = deployment.name
        seed = simulator_seed(self._seed, name)
        if deployment.simulated is not None:
            settings = simulated_settings(deployment.simulated, name, self._seed)
            return SimulatedServer(settings, model=deployment.model, host=HOST)
        assert deployment.upstream_url is not None
        api_key = None
        if deployment.api_key_env:
            api_key = os.environ.get(deployment.api_key_env)
            if not api_key:
                raise UpstreamError(
                    f"deployment {name}: environment variable {deployment.api_key_env} "
                    "(its API key) is not set"
                )
        app = build_proxy_app(name, deployment.model, deployment.upstream_url, api_key, seed=seed)
        return SimulatedServer(app=app, host=HOST)

    def urls(self) -> dict[str, str]:
        """Deployment name -> the base URL the gateway calls (``http://127.0.0.1:PORT/v1``)."""
        return {name: server.url for name, server in self._servers.items()}

    def arm(self, origin: float | None = None) -> None:
        """Install every deployment's faults; their times count from ``origin`` (a
        ``time.monotonic()`` reading, default now), the traffic start."""
        if len(self._servers) != len(self._deployments):
            raise RuntimeError("Upstreams.arm() before start()")
        origin = time.monotonic() if origin is None else origin
        for name, server in self._servers.items():
            sim = server.simulator
            sim.configure(sim.settings.model_copy(update={"faults": self._faults[name]}))
            sim.schedule.origin = origin
            server.app[SCHEDULE_CHANGED].set()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per deployment: requests received, answered (billed), completed, billed and wasted
        tokens, faults applied by kind. Zeros for an upstream that never started."""
        out: dict[str, dict[str, Any]] = {}
        for deployment in self._deployments:
            server = self._servers.get(deployment.name)
            sim = server.simulator if server is not None else None
            billing = sim.billing.as_dict() if sim is not None else {}
            out[deployment.name] = {
                "received": sim.requests if sim is not None else 0,
                "answered": billing.get("answered", 0),
                "completed": billing.get("completed", 0),
                "billed_prompt_tokens": billing.get("prompt_tokens", 0),
                "billed_completion_tokens": billing.get("completion_tokens", 0),
                "wasted_prompt_tokens": billing.get("wasted_prompt_tokens", 0),
                "wasted_completion_tokens": billing.get("wasted_completion_tokens", 0),
                "faults": dict(sorted(sim.faults_applied.items())) if sim is not None else {},
            }
        return out

    async def stop(self) -> None:
        """Stop every upstream (hung requests and stalled streams end at once); counts stay."""
        for server in self._servers.values():
            await server.stop()


# --- the fault-injecting proxy ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the proxy forwards to. ``authorization`` holds the key: kept out of ``repr``."""

    base_url: str
    authorization: str | None

    def __repr__(self) -> str:
        return f"_Target(base_url={self.base_url!r})"


TARGET = web.AppKey("chaos_proxy_target", _Target)
SESSION = web.AppKey("chaos_proxy_session", aiohttp.ClientSession)


def build_proxy_app(
    name: str, model: str, upstream_url: str, api_key: str | None, *, seed: int = 0
) -> web.Application:
    """The proxy's application (serve it with ``SimulatedServer(app=...)``): ``/v1/*`` is
    forwarded to ``upstream_url`` under the fault schedule of its simulator (module docstring)."""
    app = web.Application(client_max_size=MAX_BODY_SIZE)
    app[SIMULATOR] = Simulator(SimulatedSettings(seed=seed), name=name, model=model)
    app[STOPPING] = asyncio.Event()
    app[SCHEDULE_CHANGED] = asyncio.Event()
    app[LISTENER] = ListenerState()
    app[TARGET] = _Target(upstream_url.rstrip("/"), f"Bearer {api_key}" if api_key else None)

    async def session(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            app[SESSION] = client
            yield

    async def on_shutdown(app: web.Application) -> None:
        app[STOPPING].set()

    app.cleanup_ctx.append(session)
    app.on_shutdown.append(on_shutdown)
    app.router.add_route("*", "/v1/{tail:.*}", _proxy)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


async def _proxy(request: web.Request) -> web.StreamResponse:
    app = request.app
    sim = app[SIMULATOR]
    raw = await request.read()
    try:
        body: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    stream = isinstance(body, dict) and body.get("stream") is True
    fault = sim.choose_fault(stream=stream)
    early = await early_fault(request, sim, fault)
    if early is not None:
        return early
    delay = sim.first_byte_delay(fault)  # slow_first_token: the upstream's answer comes late
    if delay > 0:
        await asyncio.sleep(delay)
    return await _forward(request, raw, body, fault)


def _prompt_words(body: Any) -> int:
    """The prompt's size as the simulator counts it (words), for a request without usage."""
    if not isinstance(body, dict):
        return 0
    if isinstance(body.get("messages"), list):
        return render.chat_input_words(body["messages"])
    if "prompt" in body:
        return render.count_words(render.prompt_text(body["prompt"]))
    return render.embedding_input_words(body.get("input"))


@dataclass(slots=True)
class _Charge:
    """One forwarded request's bill: the upstream's ``usage`` when seen, else estimates."""

    prompt_estimate: int
    completion_estimate: int = 0
    usage: tuple[int, int] | None = None
    billed: bool = False
    completed: bool = False

    def read_usage(self, data: Any) -> None:
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
            if isinstance(prompt, int) and isinstance(completion, int):
                self.usage = (prompt, completion)

    def settle(self, sim: Simulator) -> None:
        if self.billed:
            prompt, completion = self.usage or (self.prompt_estimate, self.completion_estimate)
            sim.billing.charge(prompt, completion, completed=self.completed)


def _choice(data: Any) -> tuple[str, bool]:
    """The content text and whether a finish_reason is set, of an answer or a stream event."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "", False
    choice = choices[0]
    part = choice.get("delta") or choice.get("message") or {}
    text = part.get("content") if isinstance(part, dict) else None
    if text is None:
        text = choice.get("text")
    return (text if isinstance(text, str) else ""), choice.get("finish_reason") is not None


async def _forward(
    request: web.Request, raw: bytes, body: Any, fault: Fault | None
) -> web.StreamResponse:
    app = request.app
    target = app[TARGET]
    url = f"{target.base_url}/{request.match_info['tail']}"
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    if target.authorization is not None:
        headers["Authorization"] = target.authorization
    charge = _Charge(_prompt_words(body))
    try:
        async with app[SESSION].request(
            request.method, url, params=request.query, data=raw or None, headers=headers
        ) as upstream:
            charge.billed = upstream.status == 200 and request.match_info["tail"] in ENDPOINTS
            if charge.billed and upstream.content_type == "text/event-stream":
                return await _relay_stream(request, upstream, fault, charge)
            data = await upstream.read()
            if charge.billed:
                with contextlib.suppress(orjson.JSONDecodeError):
                    answer = orjson.loads(data)
                    charge.read_usage(answer)
                    charge.completion_estimate = render.count_words(_choice(answer)[0])
            response = web.Response(
                status=upstream.status,
                body=data,
                headers={h: upstream.headers[h] for h in RELAYED_HEADERS if h in upstream.headers},
            )
            with contextlib.suppress(ConnectionResetError):
                await response.prepare(request)
                await response.write_eof()
                charge.completed = True
            return response
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = type(exc).__name__
        return error_response(502, f"the upstream failed ({reason})")
    finally:
        charge.settle(app[SIMULATOR])


async def _relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    fault: Fault | None,
    charge: _Charge,
) -> web.StreamResponse:
    """Relay a 200 stream event line by line, with a stream fault (module docstring, step 4)."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    pending = fault if fault is not None and fault.kind in ("stream_cut", "stream_stall") else None
    stopping = request.app[STOPPING]
    chunks = 0
    try:
        await response.prepare(request)
        async for line in upstream.content:
            text, marks_end = "", False
            payload = line[5:].strip() if line.startswith(b"data:") else None
            if payload == b"[DONE]":
                marks_end = True
            elif payload:
                with contextlib.suppress(orjson.JSONDecodeError):
                    event = orjson.loads(payload)
                    charge.read_usage(event)
                    text, finished = _choice(event)
                    marks_end = finished or charge.usage is not None
            if pending is not None and (text or marks_end) and chunks >= pending.after_chunks:
                if pending.kind == "stream_cut":
                    cut_connection(request)
                    return response
                if pending.delay is not None:
                    await asyncio.sleep(pending.delay)
                else:
                    await stopping.wait()
                if stopping.is_set():
                    cut_connection(request)
                    return response
                pending = None
            await response.write(line)
            if text:
                chunks += 1
                charge.completion_estimate += render.count_words(text)
        await response.write_eof()
        charge.completed = True
    except ConnectionResetError:
        pass  # the client went away
    except (aiohttp.ClientError, TimeoutError):
        cut_connection(request)  # the upstream's stream broke off: so does ours
    return response
