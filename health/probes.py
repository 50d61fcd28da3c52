"""Active probes: ask each deployment, on an interval, whether it answers at all.

A probe is an injected coroutine function (``health`` knows nothing of providers): it returns the
probe's latency in seconds or raises with a message that says what went wrong (already free of
secrets). The gateway gives each deployment ``GET /models`` or a one-token completion.

Per deployment, one task:

1. Wait a random fraction of the interval first, so deployments (and replicas) do not start in
   step.
2. Ask the store for the probe lease (:func:`lease_ttl`: 90% of the shortest jittered
   interval). Memory store: always granted. Redis store: one replica of the fleet wins per
   interval, the others skip and read its result from the shared history — N replicas do not
   multiply probe traffic.
3. Holding the lease: run the probe under ``timeout``; record a :class:`ProbeResult` (ok or the
   error's message) in the store, count it, and call ``on_result`` (breakers listen there).
4. Sleep ``interval`` * (1 ± ``jitter``), uniformly, and go to 2.

A probe that raises something unexpected is a failed probe, never a dead task.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from health.store import MetricsStore, ProbeResult
from health.window import Clock

ProbeFn = Callable[[], Awaitable[float]]
ProbeKind = Literal["models", "completion", "none"]
_DETAIL_LIMIT = 240


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    kind: ProbeKind = "models"
    interval: float = 15.0
    timeout: float = 5.0
    jitter: float = 0.2  # fraction of the interval, each way
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3


def describe(exc: BaseException) -> str:
    """A probe failure in one line (the message of a provider error is already redacted)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


def lease_ttl(settings: ProbeSettings) -> float:
    """How long a replica holds a deployment's probe lease: 90% of the shortest jittered
    interval, so the holder's own next turn always finds it expired (a longer lease would make a
    lone replica skip its own turns)."""
    return settings.interval * (1 - settings.jitter) * 0.9


class Prober:
    """Runs every deployment's probe loop; :meth:`probe` runs one probe now."""

    def __init__(
        self,
        store: MetricsStore,
        *,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        on_result: Callable[[str, ProbeResult], None] | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        self._rng = rng or random.Random()
        self.on_result = on_result
        self._targets: dict[str, tuple[ProbeSettings, ProbeFn]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.outcomes: dict[str, dict[str, int]] = {}  # name -> {"ok": n, "failed": n}, run here
        self._log = structlog.get_logger("health.probes")

    def add(self, name: str, settings: ProbeSettings, fn: ProbeFn) -> None:
        if settings.kind == "none":
            return
        self._targets[name] = (settings, fn)
        self.outcomes[name] = {"ok": 0, "failed": 0}

    def settings(self, name: str) -> ProbeSettings | None:
        target = self._targets.get(name)
        return target[0] if target else None

    async def probe(self, name: str) -> ProbeResult:
        """Probe ``name`` once, record the result, and return it."""
        settings, fn = self._targets[name]
        at = self._clock()
        deadline = asyncio.timeout(settings.timeout)
        try:
            async with deadline:
                latency = await fn()
            result = ProbeResult(at, True, latency, "ok", self.store.replica)
        except TimeoutError as exc:  # our deadline, or a timeout the probe raised itself
            if deadline.expired():
                detail = f"no answer within {settings.timeout:g} s"
            else:
                detail = describe(exc)
            result = ProbeResult(at, False, None, detail, self.store.replica)
        except Exception as exc:
            result = ProbeResult(at, False, None, describe(exc), self.store.replica)
        self.store.add_probe(name, result)
        self.outcomes[name]["ok" if result.ok else "failed"] += 1
        if not result.ok:
            self._log.info("probe failed", deployment=name, detail=result.detail)
        if self.on_result is not None:
            self.on_result(name, result)
        return result

    async def _loop(self, name: str) -> None:
        settings, _ = self._targets[name]
        await asyncio.sleep(self._rng.uniform(0, settings.interval))
        while True:
            try:
                if await self.store.probe_lease(name, lease_ttl(settings)):
                    await self.probe(name)
            except Exception:  # never let one bad probe end the loop
                self._log.exception("probe loop error", deployment=name)
            spread = settings.jitter * settings.interval
            await asyncio.sleep(settings.interval + self._rng.uniform(-spread, spread))

    async def start(self) -> None:
        if self._tasks:
            return  # already running
        for name in self._targets:
            self._tasks.append(asyncio.create_task(self._loop(name), name=f"probe:{name}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
