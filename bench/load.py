"""Drive a proxy with a fixed number of keep-alive connections: ``wrk`` when installed, else
``bench/loadgen.py`` in its own process. Both report the same summary fields:
``requests``, ``duration_s``, ``non2xx``, ``errors``, ``p50_ms``, ``p99_ms``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from procs import Processes

BENCH = Path(__file__).resolve().parent
_MARK = "BENCH_JSON "

# wrk's done() hook prints one JSON line; status errors are non-2xx/3xx answers.
_LUA = """wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{mark}{{"requests":%d,"duration_s":%.6f,"non2xx":%d,"errors":%d,' ..
    '"p50_ms":%.3f,"p99_ms":%.3f}}\\n',
    summary.requests, summary.duration / 1e6, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


class LoadGenerator:
    """One way of sending load; :attr:`name` says which (``wrk ...`` or ``python-aiohttp``)."""

    def __init__(
        self,
        procs: Processes,
        python: str,
        workdir: Path,
        connections: int,
        *,
        use_wrk: bool = True,
    ) -> None:
        self._procs = procs
        self._python = python
        self._workdir = workdir
        self._connections = connections
        self._wrk = shutil.which("wrk") if use_wrk else None
        self.name = "python-aiohttp (bench/loadgen.py)"
        if self._wrk is not None:
            out = subprocess.run(
                [self._wrk, "--version"], capture_output=True, text=True, check=False, timeout=10
            )
            self.name = (out.stdout or out.stderr).split(" [")[0].strip() or "wrk"

    @property
    def is_wrk(self) -> bool:
        return self._wrk is not None

    def run(self, url: str, body: bytes, duration: float, label: str) -> dict[str, float]:
        """Send load to ``url`` for ``duration`` seconds; return the summary."""
        body_file = self._workdir / f"{label}.json"
        body_file.write_bytes(body)
        if self._wrk is not None:
            script = self._workdir / f"{label}.lua"
            script.write_text(_LUA.format(body=body.decode(), mark=_MARK))
            seconds = max(1, round(duration))  # wrk takes whole seconds
            argv = [
                self._wrk, "-t1", f"-c{self._connections}", f"-d{seconds}s",
                "--timeout", "10s", "-s", str(script), url,
            ]  # fmt: skip
        else:
            argv = [
                self._python, str(BENCH / "loadgen.py"), "--url", url,
                "--body-file", str(body_file), "--connections", str(self._connections),
                "--duration", f"{duration:g}",
            ]  # fmt: skip
        proc = self._procs.start(label, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=duration + 30)
        finally:
            self._procs.stop(proc)
        for line in out.decode(errors="replace").splitlines():
            line = line.removeprefix(_MARK)
            if line.startswith("{"):
                return dict(json.loads(line))
        raise RuntimeError(
            f"load generator gave no summary (exit {proc.returncode}): "
            f"{(out + err).decode(errors='replace')[-500:]}"
        )
