"""Waiting in tests for something another thread or process changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` every 20 ms until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def tcp_probe(port: int) -> str:
    """Open and close a TCP connection to 127.0.0.1:``port``: "accepted", "refused" or "reset"
    (the listener closed while the connection sat in its backlog: a transition, neither state)."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    writer.close()
    await writer.wait_closed()
    return "accepted"
