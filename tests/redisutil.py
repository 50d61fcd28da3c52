"""Redis for tests: where the shared one is, whether a test may use it, and private servers.

- :func:`redis_url` / :func:`require_redis`: the shared Redis (``REDIS_URL``, default
  ``redis://127.0.0.1:6379/0``). Unreachable ⇒ the test is skipped with the reason, or fails
  when ``REQUIRE_REDIS=1`` (CI), so a missing Redis can never turn the suite green by skipping.
- :class:`RedisServer`: a throwaway ``redis-server`` on a free 127.0.0.1 port (no persistence)
  that a test may kill, freeze (SIGSTOP: a hung Redis), thaw and restart on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import pytest

DEFAULT_URL = "redis://127.0.0.1:6379/0"
REDIS_SERVER = "/usr/bin/redis-server"


def redis_url() -> str:
    """The shared test Redis: ``REDIS_URL`` or the local default."""
    return os.environ.get("REDIS_URL") or DEFAULT_URL


def _where(url: str) -> str:
    """``host:port`` of ``url``, never its password."""
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


def redis_problem(url: str | None = None, timeout: float = 1.0) -> str | None:
    """Why the Redis at ``url`` cannot be used, or None when it answers PING."""
    import redis

    url = url or redis_url()
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any reason at all is a reason to skip
        return f"Redis at {_where(url)} is not reachable ({type(exc).__name__})"
    return None


def require_redis(url: str | None = None) -> str:
    """The URL of a reachable Redis; else skip the test, or fail it when ``REQUIRE_REDIS=1``."""
    url = url or redis_url()
    problem = redis_problem(url)
    if problem is not None:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(f"{problem} and REQUIRE_REDIS=1", pytrace=False)
        pytest.skip(f"{problem}; set REDIS_URL, or REQUIRE_REDIS=1 to fail instead")
    return url


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis on 127.0.0.1:``port`` answers PING (raw RESP, no client needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 for tests that break Redis on purpose.

    Use as a context manager (the server is killed on exit, whatever state it is in)::

        with RedisServer() as server:
            store = RedisStore(server.url)
            server.stop()      # SIGSTOP: connections hang, nothing answers
            server.cont()      # SIGCONT: it answers again (and runs what it had buffered)
            server.kill()      # SIGKILL: connections are refused; data is gone
            server.restart()   # a fresh, empty server on the same port
    """

    def __init__(self, *, port: int | None = None, binary: str = REDIS_SERVER) -> None:
        if not Path(binary).exists() and shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed")
        self.binary = binary
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self._dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(self._log),
            "--daemonize", "no",
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = self._log.read_text(errors="replace")[-2000:] if self._log.exists() else ""
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL (works on a stopped server too) and reap it; its data is gone."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait(10)

    def stop(self) -> None:
        """SIGSTOP: the server hangs (connects still complete in the kernel, nothing answers)."""
        self._signal(signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT: a stopped server resumes."""
        self._signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Kill the server and start a fresh, empty one on the same port."""
        self.kill()
        return self.start(timeout)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("redis-server is not running")
        self._proc.send_signal(sig)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
