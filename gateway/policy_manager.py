"""The active policy snapshot, and reloading it without dropping a request.

A request reads :attr:`PolicyManager.current` once and keeps that immutable snapshot for its
whole life; a reload builds a new snapshot aside and swaps one reference. Reload, step by step:

1. **Trigger**: the file watcher (a poll of every source file's name, size, times and inode every
   ``poll_interval``: no dependency, and it sees edits, atomic renames, deletions and a
   directory gaining or losing files), ``SIGHUP``, or ``POST /admin/policies/reload``.
2. **Load** in a worker thread (file reads and validation never stall the event loop): the whole
   document is validated and compiled against the deployments.
3. **Swap** on the event loop: index it for the engine, then one attribute assignment.
   Requests in flight finish on the snapshot they started with; the next request uses the new
   one.
4. **Or keep**: an invalid, half-written or missing file (or any unexpected failure while
   loading) keeps the last good snapshot; the error goes to the log, to ``GET /admin/policies``
   (``last_error``) and to the metrics. A later change of the files triggers a new attempt, so
   finishing a partial write heals by itself.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.logs import get_logger
from gateway.yamlfile import ConfigError
from policies.engine import prepare
from policies.types import PolicySnapshot

Fingerprint = tuple[tuple[str, int, int, int, int], ...]


def fingerprint(paths: Iterable[Path]) -> Fingerprint:
    """(name, size, mtime, ctime, inode) of every policy file under ``paths`` (missing ones
    omitted): an edit that keeps the size within one mtime tick still moves ctime, and an
    atomic rename changes the inode."""
    found: list[tuple[str, int, int, int, int]] = []
    for path in paths:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for file in files:
            if file.is_dir() or (path.is_dir() and file.suffix not in (".yaml", ".yml")):
                continue
            try:
                st = file.stat()
            except OSError:
                continue
            found.append((str(file), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(found)


class PolicyManager:
    """Holds :attr:`current` and replaces it only with a snapshot that validated completely."""

    def __init__(
        self,
        initial: PolicySnapshot,
        load: Callable[[], PolicySnapshot] | None = None,
        *,
        watch: Iterable[Path] = (),
        poll_interval: float = 0.5,
    ) -> None:
        prepare(initial)
        self.current = initial
        self._load = load
        self._watch = tuple(watch)
        self._poll = poll_interval
        self._seen = fingerprint(self._watch)
        self._task: asyncio.Task[None] | None = None
        self._triggered: set[asyncio.Task[tuple[bool, str | None]]] = set()  # strong refs
        self._lock = asyncio.Lock()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.reloads = {"ok": 0, "error": 0, "unchanged": 0}
        self._log = get_logger("gateway.policy")

    @property
    def reloadable(self) -> bool:
        return self._load is not None

    async def reload(self, trigger: str) -> tuple[bool, str | None]:
        """Load, validate and swap; on failure keep the current snapshot. Returns (swapped,
        error). One reload at a time; a trigger during a reload waits for it."""
        if self._load is None:
            return False, "no policy file is configured (the policy comes from the config routes)"
        async with self._lock:
            seen = await asyncio.to_thread(fingerprint, self._watch)
            try:
                snapshot = await asyncio.to_thread(self._load)
            except ConfigError as exc:
                return self._failed(trigger, str(exc), seen)
            except OSError as exc:
                why = exc.strerror or type(exc).__name__
                where = f" ({exc.filename})" if exc.filename else ""
                return self._failed(trigger, f"cannot read the policy{where}: {why}", seen)
            except Exception as exc:  # e.g. RecursionError from a deeply nested YAML document
                self._log.exception("unexpected error loading the policy", trigger=trigger)
                reason = f"cannot load the policy: {type(exc).__name__}: {exc}"
                return self._failed(trigger, reason, seen)
            old = self.current
            self._seen = seen
            self.last_error = self.last_error_at = None
            if snapshot.version == old.version:
                self.reloads["unchanged"] += 1
                return False, None
            prepare(snapshot)  # on the loop: the engine's index is not shared with a thread
            self.current = snapshot
            self.reloads["ok"] += 1
            self._log.info(
                "policy reloaded",
                trigger=trigger,
                version=snapshot.version,
                previous=old.version,
                routes=[r.name for r in snapshot.routes],
            )
            return True, None

    def _failed(self, trigger: str, error: str, seen: Fingerprint) -> tuple[bool, str]:
        self._seen = seen  # retry when the files change again, not on every poll
        self.last_error, self.last_error_at = error, time.time()
        self.reloads["error"] += 1
        self._log.error(
            "policy reload failed; keeping the last good policy",
            trigger=trigger,
            version=self.current.version,
            error=error,
        )
        return False, error

    async def _watch_files(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                now = await asyncio.to_thread(fingerprint, self._watch)
                if now != self._seen:
                    await self.reload("file change")
            except Exception:  # the watcher must outlive any surprise
                self._log.exception("policy watcher error")

    def trigger(self, why: str) -> None:
        """Reload soon, from a signal handler or any other synchronous place."""
        task = asyncio.get_running_loop().create_task(self.reload(why))
        self._triggered.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._triggered.discard)

    async def start(self, *, watch: bool = True) -> None:
        if watch and self._load is not None and self._watch and self._task is None:
            self._task = asyncio.create_task(self._watch_files(), name="policy-watch")

    async def close(self) -> None:
        tasks = [*self._triggered, *((self._task,) if self._task is not None else ())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    def status(self) -> dict[str, Any]:
        """The body of ``GET /admin/policies``."""
        snap = self.current
        return {
            "version": snap.version,
            "loaded_at": snap.loaded_at,
            "sources": list(snap.sources),
            "routes": [r.name for r in snap.routes],
            "default_route": snap.default.name if snap.default is not None else None,
            "reloadable": self.reloadable,
            "watching": [os.fspath(p) for p in self._watch] if self._task is not None else [],
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "reloads": dict(self.reloads),
        }

    def metrics(self) -> list[Metric]:
        reloads = CounterMetricFamily(
            "llm_gateway_policy_reloads",
            "Policy reloads by outcome (error: the last good policy was kept).",
            labels=["outcome"],
        )
        for outcome, n in self.reloads.items():
            reloads.add_metric([outcome], n)
        failing = GaugeMetricFamily(
            "llm_gateway_policy_reload_failing",
            "1 while the last reload attempt failed and an older policy is in use.",
        )
        failing.add_metric([], 1.0 if self.last_error is not None else 0.0)
        loaded = GaugeMetricFamily(
            "llm_gateway_policy_loaded_timestamp_seconds",
            "When the active policy was loaded (Unix time).",
        )
        loaded.add_metric([], self.current.loaded_at)
        return [reloads, failing, loaded]
