"""Process plumbing for the benchmark: start, watch and always stop child processes (stdlib only).

:class:`Processes` starts every child in its own session with ``PR_SET_PDEATHSIG`` (so a child
dies with the benchmark even if the benchmark is killed outright) and stops them all, newest
first, on exit: SIGTERM, then SIGKILL after a grace period. The readers below take figures from
``/proc``: CPU time (utime + stime of the whole thread group), resident memory, mapped files.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Processes:
    """Every child the benchmark started; :meth:`stop_all` ends them (also on error or Ctrl-C)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.env = env  # the environment of every child unless start() is given one

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.DEVNULL,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env if env is not None else self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; forget the process."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._procs)):
            self.stop(proc)


def read_port(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for the child's ``listening <port>`` line on its stdout (a pipe)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            data = os.read(fd, 4096)
            if not data:
                break
            buf += data
            for line in buf.splitlines():
                if line.startswith(b"listening "):
                    return int(line.split()[1])
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"child {proc.args!r} did not report a port (exit code {proc.poll()})")


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status of ``GET path`` on 127.0.0.1:port, or ``None`` if nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def wait_http_ok(
    proc: subprocess.Popen[bytes], port: int, path: str, timeout: float, interval: float = 0.005
) -> float:
    """Poll ``GET path`` every ``interval`` until it answers 200; return when it did."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if http_status(port, path) == 200:
            return time.perf_counter()
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before it was ready")
        time.sleep(interval)
    raise RuntimeError(f"{proc.args!r} not ready on port {port} within {timeout:g}s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole process (all threads) so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of the process, in MiB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def mapped_files_matching(pid: int, needle: str) -> list[str]:
    """Files mapped into the process whose path contains ``needle``."""
    found: set[str] = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and needle in parts[5]:
                found.add(parts[5].strip())
    return sorted(found)


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # stop the same way as on Ctrl-C: every child is stopped


def run_and_report(
    tag: str,
    run: Callable[[Any], dict[str, Any]],
    report: Callable[[dict[str, Any], Path], str],
    args: Any,
) -> int:
    """A benchmark's main: SIGTERM and Ctrl-C stop every child; the figures go to ``args.out``
    as JSON and the report to stdout."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        results = run(args)
    except KeyboardInterrupt:
        print(f"\n[{tag}] interrupted; every child process was stopped", file=sys.stderr)
        return 130
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results, args.out))
    return 0
