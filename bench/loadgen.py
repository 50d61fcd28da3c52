"""Fallback load generator (used only when ``wrk`` is not installed).

``--connections`` workers share one aiohttp session limited to that many connections; each POSTs
the body from ``--body-file`` in a loop for ``--duration`` seconds and reads the whole answer.
Prints one JSON object on stdout with the same fields as the wrk script's summary:
``requests``, ``duration_s``, ``non2xx``, ``errors``, ``p50_ms``, ``p99_ms``.

It is Python, so it costs about as much CPU per request as the proxy it drives: throughput
figures are lower than with wrk, while CPU per request of the proxy stays comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run(url: str, body: bytes, connections: int, duration: float) -> dict[str, object]:
    latencies: list[float] = []
    counts = {"non2xx": 0, "errors": 0}
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if not 200 <= resp.status < 300:
                            counts["non2xx"] += 1
                except (aiohttp.ClientError, OSError):
                    counts["errors"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_s": round(elapsed, 3),
        "non2xx": counts["non2xx"],
        "errors": counts["errors"],
        "p50_ms": round(_percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 99) * 1000, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    with open(args.body_file, "rb") as f:
        body = f.read()
    result = asyncio.run(run(args.url, body, args.connections, args.duration))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
