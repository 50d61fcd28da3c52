"""The simulated upstream as a standalone OpenAI-compatible server (``gateway simulate``).

Routes: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``; ``GET /v1/models``,
``/healthz``; ``GET|POST /_sim/faults`` (read / replace the settings at run time, the schedule
restarts) and ``GET /_sim/stats`` (requests, faults applied by kind, billing, listener state).
Any other path is a 404, another method a 405, a body over ``max_body_size`` a 413, all
OpenAI-shaped.
Fault behaviour on the wire is described in :mod:`.handlers`.

``refuse`` windows (every ``refuse`` fault has one, see :mod:`.settings`): :class:`SimulatedServer`
runs a background task that watches the schedule. When a ``refuse`` window covers the current time
it closes the listening socket (new connections get ECONNREFUSED); when the window ends it binds
the same port again (SO_REUSEADDR) and serves. The task sleeps until the next window edge or until
``/_sim/faults`` changes the schedule. Connections accepted before the window stay open, but a
request that arrives on one inside the window matches the ``refuse`` fault and is dropped with an
RST (a client reusing a pooled connection sees a reset, then ECONNREFUSED when it reconnects).
An app served by ``build_app`` alone, without :class:`SimulatedServer`, refuses that way only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from types import TracebackType

from aiohttp import web

from gateway.providers.simulated import handlers
from gateway.providers.simulated.engine import Simulator
from gateway.providers.simulated.handlers import (
    LISTENER,
    SCHEDULE_CHANGED,
    SIMULATOR,
    STOPPING,
    ListenerState,
)
from gateway.providers.simulated.schedule import Clock
from gateway.providers.simulated.settings import SimulatedSettings

EXIT_BAD_FAULTS = 2
EXIT_CANNOT_LISTEN = 1
MAX_BODY_SIZE = 64 * 1024 * 1024
SHUTDOWN_TIMEOUT = 2.0
REBIND_RETRY = 0.05


def build_app(
    settings: SimulatedSettings,
    model: str,
    *,
    clock: Clock = time.monotonic,
    max_body_size: int = MAX_BODY_SIZE,
) -> web.Application:
    """The aiohttp application of a simulated upstream that reports ``model``."""
    app = web.Application(client_max_size=max_body_size)
    app[SIMULATOR] = Simulator(settings, name=model, model=model, clock=clock)
    app[STOPPING] = asyncio.Event()
    app[SCHEDULE_CHANGED] = asyncio.Event()
    app[LISTENER] = ListenerState()

    async def on_shutdown(app: web.Application) -> None:
        app[STOPPING].set()  # wakes hung requests and stalled streams so they end now

    app.on_shutdown.append(on_shutdown)
    routes: list[tuple[str, dict[str, handlers.Handler]]] = [
        (f"/v1/{endpoint}", {"POST": handlers.endpoint_handler(endpoint)})
        for endpoint in ("chat/completions", "completions", "embeddings")
    ]
    routes += [
        ("/v1/models", {"GET": handlers.models}),
        ("/healthz", {"GET": handlers.healthz}),
        ("/_sim/faults", {"GET": handlers.get_faults, "POST": handlers.replace_faults}),
        ("/_sim/stats", {"GET": handlers.stats}),
    ]
    for path, methods in routes:
        resource = app.router.add_resource(path)
        for method, handler in methods.items():
            resource.add_route(method, handler)
        resource.add_route("*", handlers.method_not_allowed(", ".join(methods)))
    app.router.add_route("*", "/{tail:.*}", handlers.not_found)
    return app


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class SimulatedServer:
    """A simulated upstream on a real socket, with listener-level ``refuse`` windows.

    Use as ``async with SimulatedServer(settings) as server: ... server.url ...``.
    ``port=0`` picks a free port; :attr:`port` holds the bound one after :meth:`start`.
    ``app`` serves another application instead of :func:`build_app`'s (``settings``, ``model``
    and ``max_body_size`` are then unused); it must carry the same app keys (``SIMULATOR``,
    ``STOPPING``, ``SCHEDULE_CHANGED``, ``LISTENER``), whose simulator's schedule drives the
    listener's ``refuse`` windows: a fault-injecting proxy uses this.
    """

    def __init__(
        self,
        settings: SimulatedSettings | None = None,
        *,
        model: str = "sim-model",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = time.monotonic,
        max_body_size: int = MAX_BODY_SIZE,
        app: web.Application | None = None,
    ) -> None:
        if app is None:
            app = build_app(
                settings or SimulatedSettings(), model, clock=clock, max_body_size=max_body_size
            )
        self.app = app
        self.host = host
        self.port = port
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def simulator(self) -> Simulator:
        return self.app[SIMULATOR]

    @property
    def url(self) -> str:
        """The OpenAI base URL, ``http://HOST:PORT/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def listening(self) -> bool:
        return self._site is not None

    async def start(self) -> None:
        runner = web.AppRunner(
            self.app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None
        )
        await runner.setup()
        self._runner = runner
        try:
            await self._open()
        except BaseException:
            await runner.cleanup()
            self._runner = None
            raise
        self._watcher = asyncio.create_task(self._watch_refusals())

    async def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        runner, self._runner = self._runner, None
        self._site = None
        if runner is not None:
            await runner.cleanup()  # stops the listener, wakes hung handlers, closes connections

    async def __aenter__(self) -> SimulatedServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _open(self) -> None:
        assert self._runner is not None
        sock = _bind(self.host, self.port)
        site = web.SockSite(self._runner, sock)
        try:
            await site.start()
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._site = site
        self.app[LISTENER].listening = True

    async def _close(self) -> None:
        site, self._site = self._site, None
        if site is not None:
            await site.stop()
        listener = self.app[LISTENER]
        listener.listening = False
        listener.closures += 1

    async def _watch_refusals(self) -> None:
        """Close the listener inside ``refuse`` windows and reopen it after (module docstring)."""
        changed = self.app[SCHEDULE_CHANGED]
        while True:
            changed.clear()
            refusing, boundary = self.simulator.schedule.refusal()
            if refusing and self._site is not None:
                await self._close()
            elif not refusing and self._site is None:
                try:
                    await self._open()
                except OSError as exc:
                    print(
                        f"simulate: cannot listen again on port {self.port}: {exc}", file=sys.stderr
                    )
                    boundary = self._clock() + REBIND_RETRY
            timeout = None if boundary is None else max(0.0, boundary - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await changed.wait()


def load_settings_file(path: str) -> SimulatedSettings:
    """Read a YAML fault file as :class:`SimulatedSettings`; :class:`ConfigError` names the
    file, line, path and reason of every problem."""
    from gateway.yamlfile import load_model, read_text

    return load_model(
        SimulatedSettings, read_text(path), path, expected="a mapping of settings", empty_ok=True
    )


async def _serve(host: str, port: int, settings: SimulatedSettings, model: str) -> int:
    server = SimulatedServer(settings, model=model, host=host, port=port)
    try:
        await server.start()
    except OSError as exc:
        print(f"simulate: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    print(f"simulated upstream listening on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()
    return 0


def run_standalone(host: str, port: int, faults: str | None, model: str) -> int:
    """Serve a simulated upstream until SIGINT/SIGTERM. Exit status: 0, or 2 for a bad faults
    file (its problems go to stderr), or 1 when the address cannot be bound."""
    from gateway.config import ConfigError

    settings = SimulatedSettings()
    if faults is not None:
        try:
            settings = load_settings_file(faults)
        except ConfigError as exc:
            print(f"simulate: rejected faults file ({len(exc.issues)} problem(s))", file=sys.stderr)
            print(exc, file=sys.stderr)
            return EXIT_BAD_FAULTS
    try:
        return asyncio.run(_serve(host, port, settings, model))
    except KeyboardInterrupt:
        return 0
