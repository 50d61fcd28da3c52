"""The simulated provider, in process: no socket, the same errors the HTTP path raises.

``send(call)`` for ``chat/completions``, ``completions`` and ``embeddings``:

1. Check the body; a bad one raises what an upstream's 400 becomes (:class:`ProviderRejected`).
2. Pick the fault (first match of the schedule) and act on it as the real HTTP path would see it:
   ``reset`` → :class:`ProviderConnectionError`; ``refuse`` (only inside its window, as the
   standalone server closes its port for it) → :class:`ProviderUnreachable`;
   ``hang`` → wait out the attempt's limit, then :class:`ProviderTimeout`; ``status`` →
   ``error_for_status`` (with ``retry_after`` and ``code``); ``garbage`` →
   :class:`BadUpstreamResponse`.
3. Wait for the first byte (``latency`` + a ``slow_first_token`` delay). The limit is
   ``min(call.timeout, timeouts.response)`` for a non-streaming answer and
   ``min(call.timeout, timeouts.first_token)`` for a stream; past it: ProviderTimeout.
4. Non-streaming: also wait the generation time (tokens / ``tokens_per_second``), within the same
   limit, and return a :class:`ProviderResponse`. Streaming: return an :class:`SSEStream` over a
   generated ``readline`` so stream faults (cut, stall, malformed event, missing ``[DONE]``) are
   judged by the same code that judges real upstream streams; its first event gets what the
   first-byte wait left of the limit, later ones ``timeouts.idle`` each.

``probe(kind, timeout)`` (both kinds alike) is :meth:`SimulatedProvider.send` with a tiny
non-streaming request: ``chat/completions`` with one ``ping`` message and ``max_tokens: 1``, or
``embeddings`` with ``input: "ping"`` for a deployment tagged for embeddings but not chat, and
``timeout`` as the attempt's limit (capped by ``timeouts.response``, as for any request). So a
probe meets the fault schedule exactly as a request would (outage windows, refusals, hangs,
error statuses, latency) and counts in the simulator's stats, and in the schedule's ``after`` /
``count`` / ``rate`` as well, as a real upstream would count a probe among its requests.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, NoReturn

from gateway.errors import (
    BadUpstreamResponse,
    ProviderConnectionError,
    ProviderTimeout,
    ProviderUnreachable,
    error_for_status,
)
from gateway.providers.base import ProviderCall, ProviderResponse, Usage
from gateway.providers.simulated.engine import ENDPOINTS, Simulator
from gateway.providers.simulated.schedule import Clock
from gateway.providers.simulated.script import ScriptPlayer
from gateway.providers.simulated.settings import DEFAULT_FAULT_STATUS
from gateway.providers.sse import SSEStream

if TYPE_CHECKING:
    from gateway.config import SimulatedDeployment


class _ScriptReader:
    """``readline`` over a :class:`ScriptPlayer`: each line, then a blank line; ``b""`` at end."""

    __slots__ = ("_blank", "_player")

    def __init__(self, player: ScriptPlayer) -> None:
        self._player = player
        self._blank = False

    async def __call__(self) -> bytes:
        if self._blank:
            self._blank = False
            return b"\n"
        line = await self._player.next_line()
        if line is None:
            return b""
        self._blank = True
        return line


class SimulatedProvider:
    """A :class:`~gateway.providers.base.Provider` backed by a :class:`Simulator`."""

    def __init__(self, deployment: SimulatedDeployment, *, clock: Clock = time.monotonic) -> None:
        self.deployment = deployment
        self._name = deployment.name
        self._first_token = deployment.timeouts.first_token
        self._response = deployment.timeouts.response
        self._idle = deployment.timeouts.idle
        if deployment.supports("embeddings") and not deployment.supports("chat/completions"):
            self._probe_endpoint = "embeddings"
            self._probe_body: dict[str, Any] = {"model": deployment.model, "input": "ping"}
        else:
            self._probe_endpoint = "chat/completions"
            self._probe_body = {
                "model": deployment.model,
                "messages": [{"role": "user", "content": "ping"}],
                "max_tokens": 1,
            }
        self.simulator = Simulator(
            deployment.simulated, name=deployment.name, model=deployment.model, clock=clock
        )

    async def send(self, call: ProviderCall) -> ProviderResponse | SSEStream:
        sim = self.simulator
        endpoint = call.endpoint
        if endpoint not in ENDPOINTS:
            raise error_for_status(404, f"unknown endpoint /{endpoint}", deployment=self._name)
        problem = sim.check(endpoint, call.body)
        if problem is not None:
            raise error_for_status(400, problem.message, deployment=self._name, param=problem.param)
        stream = call.stream and endpoint != "embeddings"
        fault = sim.choose_fault(stream=stream)
        limit = min(call.timeout, self._first_token if stream else self._response)
        kind = fault.kind if fault is not None else None
        if kind == "reset":
            raise ProviderConnectionError(
                "connection reset before any byte (simulated)", deployment=self._name
            )
        if kind == "refuse":
            raise ProviderUnreachable("connection refused (simulated)", deployment=self._name)
        if kind == "hang":
            await self._time_out(limit)
        delay = sim.first_byte_delay(fault)
        if fault is not None and kind == "status":
            await self._wait(delay, limit)
            status = fault.status or DEFAULT_FAULT_STATUS
            raise error_for_status(
                status,
                fault.message or f"simulated {status} error",
                deployment=self._name,
                retry_after=fault.retry_after,
                code=fault.code,
            )
        if kind == "garbage":
            await self._wait(delay, limit)
            raise BadUpstreamResponse(
                "upstream answered 200 with a body that is not JSON (simulated)",
                deployment=self._name,
            )
        model = self.deployment.model
        if stream:
            await self._wait(delay, limit)
            script = sim.stream_script(endpoint, call.body, model, fault)
            return SSEStream(
                _ScriptReader(ScriptPlayer(script)),
                deployment=self._name,
                first_timeout=max(limit - delay, 0.0),
                idle_timeout=self._idle,
            )
        answer = sim.respond(endpoint, call.body, model)
        await self._wait(delay + sim.generation_time(answer.completion_tokens), limit)
        return ProviderResponse(
            body=answer.body, usage=Usage(answer.prompt_tokens, answer.completion_tokens)
        )

    async def probe(self, kind: str, timeout: float) -> float:  # noqa: ASYNC109
        """A tiny request through :meth:`send` (see the module docstring): its latency in
        seconds, or the :class:`ProviderError` the schedule gives it."""
        if kind not in ("models", "completion"):
            raise ValueError(f"unknown probe kind {kind!r} (expected models or completion)")
        call = ProviderCall(
            self._probe_endpoint, self._probe_body, b"", False, "probe", max(timeout, 0.0)
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self.send(call)
        return loop.time() - started

    async def _wait(self, delay: float, limit: float) -> None:
        if delay > limit:
            await self._time_out(limit)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _time_out(self, limit: float) -> NoReturn:
        if limit > 0:
            await asyncio.sleep(limit)
        raise ProviderTimeout(f"no answer within {limit:g}s (simulated)", deployment=self._name)

    async def close(self) -> None:
        """Nothing to release (no socket)."""
