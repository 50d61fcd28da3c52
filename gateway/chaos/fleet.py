"""The processes a chaos run starts and breaks: gateway replicas and a private Redis.

- :class:`GatewayReplica`: one ``gateway serve`` child on 127.0.0.1, its port learnt from the
  banner on the first start and kept for restarts (callers keep one URL per replica). Its log
  goes to a file in the run's directory. ``kill()`` is SIGKILL: requests in flight are lost, as
  when a node dies; ``stop()`` is SIGTERM (the gateway drains) then SIGKILL after a grace.
- :class:`RedisProcess`: a throwaway ``redis-server`` with no persistence on a free port, which
  the run may kill and start again (a Redis outage: the fleet's shared view is lost) or freeze
  with SIGSTOP (a hung Redis: connections open, nothing answers).
- :class:`Sampler`: every ``interval`` reads ``/metrics`` of each live replica and keeps each
  deployment's lifetime attempt counters, breaker state and status, stamped with the run's clock.

Every child is started in its own session and asked to die with the runner
(``PR_SET_PDEATHSIG``), so an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

READY_TIMEOUT = 20.0
STOP_GRACE = 5.0
_PR_SET_PDEATHSIG = 1
_BANNER = re.compile(rb"listening on (http://\S+)")


class RunError(Exception):
    """A run could not be carried out (a child did not start, a tool is missing)."""


def _die_with_parent(sig: int = signal.SIGTERM) -> None:  # pragma: no cover - in the child
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def _killed_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """SIGKILL on the parent's death: a Redis frozen by SIGSTOP ignores SIGTERM until thawed."""
    _die_with_parent(signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _append(log: Path) -> BinaryIO:
    """The child's log, opened for appending (a few microseconds: fine on the loop)."""
    return open(log, "ab")


async def _spawn(
    argv: list[str],
    log: Path,
    *,
    stderr_pipe: bool,
    on_parent_death: Callable[[], None] = _die_with_parent,
) -> asyncio.subprocess.Process:
    with _append(log) as out:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.PIPE if stderr_pipe else out,
            start_new_session=True,
            preexec_fn=on_parent_death,
        )


async def _signal_and_wait(proc: asyncio.subprocess.Process, sig: int, grace: float) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class GatewayReplica:
    """One ``gateway serve --config CONFIG`` child (see the module docstring)."""

    def __init__(self, index: int, config: Path, log: Path) -> None:
        self.index = index
        self.config = config
        self.log = log
        self.port = 0
        self.killed = False
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and not self.killed

    async def start(self) -> None:
        """Start the child and wait until ``/readyz`` answers 200."""
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
        argv += ["--port", str(self.port)]
        proc = await _spawn(argv, self.log, stderr_pipe=True)
        self._proc = proc
        assert proc.stderr is not None
        seen = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        url = None
        while url is None and loop.time() < deadline:
            try:
                line = await asyncio.wait_for(proc.stderr.readline(), deadline - loop.time())
            except TimeoutError:
                break
            seen += line
            if match := _BANNER.search(line):
                url = match.group(1).decode()
            elif not line:
                break
        if url is None:
            await _signal_and_wait(proc, signal.SIGKILL, STOP_GRACE)
            with _append(self.log) as out:
                out.write(seen)
            tail = seen.decode(errors="replace").strip()[-2000:]
            raise RunError(f"gateway replica {self.index} did not start:\n{tail}")
        self.port = int(url.rsplit(":", 1)[1])
        self.killed = False
        self._pump = asyncio.create_task(self._copy_stderr(proc, seen))
        await self._wait_ready(deadline)

    async def _copy_stderr(self, proc: asyncio.subprocess.Process, seen: bytes) -> None:
        assert proc.stderr is not None
        with _append(self.log) as out:
            out.write(seen)
            while line := await proc.stderr.readline():
                out.write(line)

    async def _wait_ready(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while loop.time() < deadline:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                if self._proc is None or self._proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
        raise RunError(f"gateway replica {self.index} was not ready in time (log: {self.log})")

    async def kill(self) -> None:
        """SIGKILL: in-flight requests are lost, as when a node dies."""
        self.killed = True
        if self._proc is not None:
            await _signal_and_wait(self._proc, signal.SIGKILL, STOP_GRACE)
        await self._end_pump()

    async def stop(self) -> None:
        """SIGTERM (the gateway drains), SIGKILL after a grace period."""
        if self._proc is not None:
            await _signal_and_wait(self._proc, signal.SIGTERM, STOP_GRACE)
        await self._end_pump()

    async def _end_pump(self) -> None:
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 2.0)
            self._pump = None


class RedisProcess:
    """A private ``redis-server`` (no persistence) on a free 127.0.0.1 port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )
        if binary is None:
            raise RunError(
                "this scenario needs redis-server (shared metrics, a Redis outage or two "
                "replicas) and none is installed; install Redis (e.g. apt-get install "
                "redis-server) and run again"
            )
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.log = workdir / "redis.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="chaos-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self._tmp), "--protected-mode", "no"]
        self._proc = await _spawn(
            argv, self.log, stderr_pipe=False, on_parent_death=_killed_with_parent
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while loop.time() < deadline:
            if await self.ping():
                return
            if self._proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise RunError(f"redis-server did not answer on port {self.port} (log: {self.log})")

    async def ping(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 0.5
            )
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            return (await asyncio.wait_for(reader.read(64), 0.5)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def kill(self) -> None:
        if self._proc is not None:
            await _signal_and_wait(self._proc, signal.SIGKILL, STOP_GRACE)

    def freeze(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        self.thaw()
        if self._proc is not None:
            await _signal_and_wait(self._proc, signal.SIGTERM, STOP_GRACE)
        shutil.rmtree(self._tmp, ignore_errors=True)


def parse_metrics(text: str) -> dict[str, Any]:
    """The figures a sample keeps from one ``/metrics`` page."""
    attempts: dict[str, dict[str, float]] = {}
    breaker: dict[str, str] = {}
    status: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "llm_gateway_deployment_attempts":
            for s in family.samples:
                if s.name.endswith("_total"):
                    dep = s.labels["deployment"]
                    attempts.setdefault(dep, {})[s.labels["outcome"]] = s.value
        elif family.name == "llm_gateway_breaker_state":
            for s in family.samples:
                if s.value == 1.0:
                    breaker[s.labels["deployment"]] = s.labels["state"]
        elif family.name == "llm_gateway_deployment_status":
            for s in family.samples:
                if s.value == 1.0:
                    status[s.labels["deployment"]] = s.labels["state"]
    return {"attempts": attempts, "breaker": breaker, "status": status}


class Sampler:
    """Reads every live replica's ``/metrics`` each ``interval`` seconds (see the module
    docstring); ``samples`` holds what it read, oldest first."""

    def __init__(
        self,
        replicas: list[GatewayReplica],
        clock: Callable[[], float],
        interval: float = 0.25,
        *,
        token: str | None = None,
    ) -> None:
        self.replicas = replicas
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.clock = clock
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        await self.sample()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += self.interval
            await self.sample()

    async def sample(self) -> None:
        """Read every live replica once, concurrently."""
        live = [r for r in self.replicas if r.alive]
        pages = await asyncio.gather(*(self._read(r) for r in live))
        for replica, page in zip(live, pages, strict=True):
            if page is not None:
                self.samples.append({"t": round(page[0], 4), "replica": replica.index, **page[1]})

    async def _read(self, replica: GatewayReplica) -> tuple[float, dict[str, Any]] | None:
        assert self._session is not None
        try:
            async with self._session.get(f"{replica.url}/metrics", headers=self._headers) as resp:
                text = await resp.text()
                at = self.clock()
                if resp.status != 200:
                    raise ValueError(f"/metrics answered {resp.status}")
            return at, parse_metrics(text)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.failures += 1  # a replica being killed or restarted; counted in result.json
            return None

    async def stop(self) -> None:
        """Stop sampling after one last reading (the final counters); safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        session, self._session = self._session, None
        if session is not None:
            self._session = session
            try:
                await self.sample()
            finally:
                self._session = None
                await session.close()


def wall_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
