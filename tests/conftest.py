"""Shared fixtures: servers on real sockets, each in its own event-loop thread.

Tests stay synchronous (the official ``openai`` SDK is the client); every server a test starts is
stopped when the test ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from aiohttp import web
from fakes.openai_upstream import Upstream

from gateway.app import build_app
from gateway.config import parse_config


async def _cancel_leftovers() -> None:
    """Cancel tasks a library left on the loop (litellm's logging worker), as asyncio.run does,
    so closing the loop destroys no pending task."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class ServerThread:
    """An aiohttp application served on 127.0.0.1 from a private event loop in a thread."""

    def __init__(self, make_app: Callable[[], Awaitable[web.Application]]) -> None:
        self._make_app = make_app
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.app = await self._make_app()
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=0.5,
            handler_cancellation=True,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def call(self, coro: Awaitable[Any], timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
        self.call(_cancel_leftovers())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def serve_app() -> Iterator[Callable[[Callable[[], Awaitable[web.Application]]], ServerThread]]:
    """Factory: start an application factory in a thread; everything started is stopped."""
    started: list[ServerThread] = []

    def start(make_app: Callable[[], Awaitable[web.Application]]) -> ServerThread:
        server = ServerThread(make_app).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def gateway(serve_app: Callable[..., ServerThread]) -> Callable[[str], ServerThread]:
    """Factory: a gateway on a free port from a YAML config text."""

    def start(config_text: str) -> ServerThread:
        config = parse_config(config_text, "test.yaml")
        return serve_app(lambda: build_app(config))

    return start


@pytest.fixture
def scripted_upstream(
    serve_app: Callable[..., ServerThread],
) -> Callable[[], tuple[Upstream, ServerThread]]:
    """Factory: a scripted OpenAI-compatible upstream (tests/fakes/openai_upstream.py)."""

    def start() -> tuple[Upstream, ServerThread]:
        up = Upstream()

        async def make() -> web.Application:
            return up.app()

        return up, serve_app(make)

    return start
