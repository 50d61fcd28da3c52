"""PolicyManager: swap only a snapshot that validated; keep the last good one otherwise.

The loader here is a stand-in (a file holding one route name per line, ``!`` meaning invalid),
so these tests are about the manager's own behaviour: triggers, the watcher, failure handling.
The real loader has its own tests (test_policy_schema.py) and the whole path its integration
test (test_policy_reload.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.policy_manager import PolicyManager, fingerprint
from gateway.yamlfile import ConfigError, ConfigIssue
from policies.types import Match, PolicySnapshot, Route


def _load(path: Path) -> PolicySnapshot:
    text = path.read_text()  # FileNotFoundError is an OSError: the manager reports it
    if "!" in text or not text.strip():
        raise ConfigError([ConfigIssue(str(path), 1, "routes", "not a valid policy")])
    names = text.split()
    return PolicySnapshot(
        routes=tuple(Route(n, Match(models=frozenset({n})), ()) for n in names),
        default=None,
        version=hashlib.sha256(text.encode()).hexdigest()[:12],
        loaded_at=time.time(),
        sources=(str(path),),
    )


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    # make sure the watcher sees a change even on a coarse-mtime file system
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _manager(path: Path, poll: float = 0.02) -> PolicyManager:
    return PolicyManager(_load(path), lambda: _load(path), watch=[path], poll_interval=poll)


def _routes(m: PolicyManager) -> list[str]:
    return [r.name for r in m.current.routes]


def test_valid_reload_swaps_the_snapshot(tmp_path: Path) -> None:
    """A valid new file replaces the snapshot and is counted; the old object is untouched."""
    path = tmp_path / "p.txt"
    path.write_text("a")
    m = _manager(path)
    old = m.current
    _write(path, "a b")
    swapped, error = asyncio.run(m.reload("test"))
    assert (swapped, error) == (True, None)
    assert _routes(m) == ["a", "b"] and [r.name for r in old.routes] == ["a"]
    assert m.reloads == {"ok": 1, "error": 0, "unchanged": 0}
    assert m.status()["version"] == m.current.version


def test_invalid_file_keeps_the_last_good_snapshot_and_says_why(tmp_path: Path) -> None:
    """An invalid file: the snapshot stays, last_error names the file and line, metrics say so."""
    path = tmp_path / "p.txt"
    path.write_text("a")
    m = _manager(path)
    _write(path, "a !")
    swapped, error = asyncio.run(m.reload("test"))
    assert swapped is False and error is not None and f"{path}:1: routes" in error
    assert _routes(m) == ["a"]
    status = m.status()
    assert status["last_error"] == error and status["last_error_at"] is not None
    failing = {f.name: f for f in m.metrics()}["llm_gateway_policy_reload_failing"]
    assert failing.samples[0].value == 1.0
    _write(path, "c")  # fixed: the error clears
    assert asyncio.run(m.reload("test")) == (True, None)
    assert m.status()["last_error"] is None


def test_same_content_is_unchanged_not_a_swap(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a")
    m = _manager(path)
    before = m.current
    assert asyncio.run(m.reload("sighup")) == (False, None)
    assert m.current is before and m.reloads["unchanged"] == 1


def test_missing_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a")
    m = _manager(path)
    path.unlink()
    swapped, error = asyncio.run(m.reload("test"))
    assert swapped is False and error is not None and "cannot read the policy" in error
    assert _routes(m) == ["a"]


def test_without_a_loader_reload_explains_itself(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a")
    m = PolicyManager(_load(path))
    swapped, error = asyncio.run(m.reload("admin api"))
    assert swapped is False and error is not None and "config routes" in error
    assert m.status()["reloadable"] is False


def test_watcher_reloads_on_change_survives_partial_writes_and_deletion(tmp_path: Path) -> None:
    """Edited → new snapshot; half-written → kept (error), then completed → new; deleted →
    kept (error); recreated → new. No trigger but the files changing."""
    path = tmp_path / "p.txt"
    path.write_text("a")
    m = _manager(path)

    async def until(predicate: Callable[[], bool]) -> None:
        """Poll until ``predicate`` holds; 3 s without it fails the test."""
        async with asyncio.timeout(3.0):
            while not predicate():  # noqa: ASYNC110 - polling state a thread changes
                await asyncio.sleep(0.01)

    async def run() -> None:
        await m.start()
        try:
            _write(path, "a b")
            await until(lambda: _routes(m) == ["a", "b"])
            _write(path, "a b !")  # a partial write (invalid)
            await until(lambda: m.last_error is not None)
            assert _routes(m) == ["a", "b"]
            _write(path, "a b c")  # the write completes
            await until(lambda: _routes(m) == ["a", "b", "c"] and m.last_error is None)
            path.unlink()
            await until(lambda: m.last_error is not None)
            assert _routes(m) == ["a", "b", "c"]
            _write(path, "d")
            await until(lambda: _routes(m) == ["d"] and m.last_error is None)
        finally:
            await m.close()

    asyncio.run(run())
    assert m.reloads["ok"] == 3 and m.reloads["error"] == 2


def test_concurrent_triggers_reload_one_at_a_time(tmp_path: Path) -> None:
    """Two reloads at once do not interleave: both finish, the snapshot is the file's."""
    path = tmp_path / "p.txt"
    path.write_text("a")
    m = _manager(path)
    _write(path, "x y")

    async def run() -> list[tuple[bool, str | None]]:
        return list(await asyncio.gather(m.reload("one"), m.reload("two")))

    results = asyncio.run(run())
    assert sorted(results) == [(False, None), (True, None)]
    assert _routes(m) == ["x", "y"]


def test_fingerprint_of_a_directory_lists_policy_files_only(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("x")
    (tmp_path / "a.yml").write_text("y")
    (tmp_path / "notes.txt").write_text("z")
    (tmp_path / "sub").mkdir()
    names = [Path(entry[0]).name for entry in fingerprint([tmp_path])]
    assert names == ["a.yml", "b.yaml"]
    assert fingerprint([tmp_path / "missing.yaml"]) == ()


@pytest.mark.parametrize("poll", [0.02])
def test_close_stops_the_watcher(tmp_path: Path, poll: float) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a")
    m = _manager(path, poll)

    async def run() -> None:
        await m.start()
        assert m.status()["watching"] == [str(path)]
        await m.close()
        assert m.status()["watching"] == []
        _write(path, "b")
        await asyncio.sleep(poll * 5)

    asyncio.run(run())
    assert _routes(m) == ["a"]
