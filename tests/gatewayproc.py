"""`gateway serve` as a child process for tests: start it on a free port and learn its URL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path


def start_gateway(
    config: Path, env: dict[str, str] | None = None, *, stdout: int | None = subprocess.PIPE
) -> tuple[subprocess.Popen[bytes], str]:
    """Spawn ``python -m gateway serve --config CONFIG --port 0``; return it and its base URL
    (read from the banner on stderr). A child that does not start within 20 s is killed and
    the test fails with what it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "0"],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    seen = b""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if m := re.search(rb"listening on (http://\S+)", line):
            return proc, m.group(1).decode()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise AssertionError(f"gateway did not start: {seen.decode(errors='replace')}")
