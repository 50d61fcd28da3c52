"""The floor: the least an aiohttp proxy can do to forward an OpenAI request.

Read the body, POST it upstream with one pooled :class:`aiohttp.ClientSession`, and return the
upstream's bytes and status. A ``text/event-stream`` answer is relayed as bytes arrive (no event
parsing); everything else is read whole and returned. No validation, routing, retries, headers
or logging: whatever the gateway spends above this is the price of its features.

Run: ``python bench/passthrough.py --upstream http://127.0.0.1:PORT [--port 0]``. Once listening
it prints ``listening <port>`` on stdout; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import aiohttp
from aiohttp import web

_SESSION = web.AppKey("session", aiohttp.ClientSession)
_UPSTREAM = web.AppKey("upstream", str)


async def proxy(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[_SESSION]
    url = request.app[_UPSTREAM] + request.path
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with session.post(url, data=body, headers=headers) as upstream:
        content_type = upstream.headers.get("Content-Type", "application/json")
        out_headers = {"Content-Type": content_type}
        if content_type.startswith("text/event-stream"):
            resp = web.StreamResponse(status=upstream.status, headers=out_headers)
            await resp.prepare(request)
            async for data in upstream.content.iter_any():
                await resp.write(data)
            await resp.write_eof()
            return resp
        data = await upstream.read()
        return web.Response(body=data, status=upstream.status, headers=out_headers)


async def serve(host: str, port: int, upstream: str) -> None:
    """Serve until SIGTERM/SIGINT; print ``listening <port>`` once bound."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    app = web.Application()
    app[_SESSION] = session
    app[_UPSTREAM] = upstream.rstrip("/")
    app.router.add_route("POST", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
