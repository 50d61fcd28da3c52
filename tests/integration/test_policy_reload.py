"""Hot reload of the policy file under load, on a real ``gateway serve`` process: a valid edit
switches traffic within a second without failing a request; an invalid, half-written or deleted
file keeps the last good policy (and says why) until a good one appears; SIGHUP and
``POST /admin/policies/reload`` reload on demand.

Each gateway routes model ``chat`` over two simulated deployments, ``a`` and ``b`` (5 ms each).
The policy version is the first 12 hex digits of sha256(file name, NUL, bytes), so the test knows
the version of every file it writes. While a :class:`Load` runs, eight threads send requests
back to back and record, per request, when it was sent and answered, its status, and its
``x-gateway-policy-version`` and ``x-gateway-deployment`` headers.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
from gatewayproc import start_gateway
from polling import wait_for
from prometheus_client.parser import text_string_to_metric_families

from gateway.policy_loader import policy_version

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}
THREADS = 8
SWITCH_BOUND = 1.0  # every request sent this long after a write must see the new policy


def _policy(*order: str) -> str:
    candidates = ", ".join(f"{{deployment: {name}}}" for name in order)
    return f"""version: 1
routes:
  - name: chat
    match: {{models: [chat]}}
    candidates: [{candidates}]
    strategy: ordered
"""


AB, BA = _policy("a", "b"), _policy("b", "a")
# line 5 names a deployment the config does not have: a cross-check error on that line
UNKNOWN = _policy("a", "zzz")


def _config(watch: bool, poll: str = "100ms") -> str:
    return f"""
server: {{request_timeout: 5s}}
logging: {{level: warning}}
health: {{probes: {{kind: none}}}}
policy: {{path: policy.yaml, watch: {str(watch).lower()}, poll_interval: {poll}}}
deployments:
  - {{name: a, provider: simulated, model: m, simulated: {{latency: 5ms}}}}
  - {{name: b, provider: simulated, model: m, simulated: {{latency: 5ms}}}}
"""


def _version(text: str) -> str:
    return policy_version([("policy.yaml", text.encode())])


@dataclass(frozen=True)
class Gateway:
    url: str
    policy: Path
    proc: subprocess.Popen[bytes]

    def status(self) -> dict[str, Any]:
        resp = httpx.get(f"{self.url}/admin/policies", timeout=5)
        assert resp.status_code == 200, resp.text
        status: dict[str, Any] = resp.json()
        return status

    def metrics(self) -> dict[str, Any]:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return {f.name: f for f in text_string_to_metric_families(text)}

    def failing(self) -> float:
        value: float = self.metrics()["llm_gateway_policy_reload_failing"].samples[0].value
        return value


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Factory: ``gateway serve`` on a config and policy written to ``tmp_path``; every process
    started is stopped at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(policy: str, *, watch: bool = True, poll: str = "100ms") -> Gateway:
        (tmp_path / "policy.yaml").write_text(policy)
        config = tmp_path / "gateway.yaml"
        config.write_text(_config(watch, poll))
        proc, url = start_gateway(config, stdout=subprocess.DEVNULL)
        started.append(proc)
        return Gateway(url, tmp_path / "policy.yaml", proc)

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


@dataclass(frozen=True)
class Result:
    sent: float  # time.monotonic()
    done: float
    status: int  # 0: no HTTP answer at all
    version: str | None
    deployment: str | None
    error: str | None = None


class Load:
    """``THREADS`` threads sending chat requests back to back until the block ends."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(THREADS)]
        self.results: list[Result] = []

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        with httpx.Client(base_url=self._url, timeout=5) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    resp = http.post("/v1/chat/completions", json=BODY)
                except httpx.HTTPError as exc:
                    self.results.append(Result(sent, time.monotonic(), 0, None, None, repr(exc)))
                    continue
                error = None if resp.status_code == 200 else resp.text[:300]
                self.results.append(
                    Result(
                        sent,
                        time.monotonic(),
                        resp.status_code,
                        resp.headers.get("x-gateway-policy-version"),
                        resp.headers.get("x-gateway-deployment"),
                        error,
                    )
                )

    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status != 200]


def _check_switch(
    results: list[Result], written: float, old: tuple[str, str], new: tuple[str, str]
) -> float:
    """Every answer is (old version, old deployment) or (new version, new deployment); those
    finished before the write are old; those sent ``SWITCH_BOUND`` after it are new. Returns
    the switch time: the first answer carrying the new version, counted from the write."""
    pairs = {(r.version, r.deployment) for r in results}
    assert pairs <= {old, new}, pairs
    before = [r for r in results if r.done < written]
    after = [r for r in results if r.sent > written + SWITCH_BOUND]
    assert before and after, (len(before), len(after))
    assert {(r.version, r.deployment) for r in before} == {old}
    assert {(r.version, r.deployment) for r in after} == {new}
    return min(r.done for r in results if r.version == new[0]) - written


# --- the required test -------------------------------------------------------------------------


def test_policy_edit_under_load_switches_within_a_second_without_a_failed_request(
    serve: Callable[..., Gateway],
) -> None:
    """Eight threads hammer `chat` (routed a, then b) while the file is rewritten from [a, b] to
    [b, a]: zero failed requests, and every request sent a second after the write is served
    by b under the new version."""
    gw = serve(AB, poll="250ms")
    old, new = _version(AB), _version(BA)
    assert gw.status()["version"] == old
    with Load(gw.url) as load:
        time.sleep(0.5)
        gw.policy.write_text(BA)
        written = time.monotonic()
        time.sleep(SWITCH_BOUND + 1.0)
    assert load.failures() == []
    switch = _check_switch(load.results, written, (old, "a"), (new, "b"))
    print(
        f"\npolicy switch: first answer under the new version {switch * 1000:.0f} ms after the "
        f"write (poll_interval 250ms; {len(load.results)} requests, 0 failed)"
    )
    status = gw.status()
    assert status["version"] == new and status["last_error"] is None
    assert status["reloads"]["ok"] >= 1
    assert status["watching"] == [str(gw.policy)]


# --- bad files never break traffic ---------------------------------------------------------------


def test_invalid_edit_under_load_keeps_the_old_policy_until_the_file_is_fixed(
    serve: Callable[..., Gateway],
) -> None:
    """An unknown deployment in the file: traffic stays on the old policy, the status names
    file:line and the reason, the failing gauge is 1; the fixed file is loaded and clears it."""
    gw = serve(AB)
    old, new = _version(AB), _version(BA)
    with Load(gw.url) as load:
        time.sleep(0.3)
        gw.policy.write_text(UNKNOWN)
        assert wait_for(lambda: gw.status()["last_error"] is not None)
        status = gw.status()
        assert status["version"] == old
        assert status["last_error"] == (
            f"{gw.policy}:5: routes[0].candidates[1].deployment: route `chat` candidate 1: "
            "unknown deployment `zzz` (known: a, b)"
        )
        assert status["reloads"]["error"] >= 1
        assert gw.failing() == 1
        time.sleep(0.3)  # traffic on the old policy while the bad file sits there
        gw.policy.write_text(BA)
        fixed = time.monotonic()
        assert wait_for(lambda: gw.status()["version"] == new)
        time.sleep(SWITCH_BOUND + 0.2)
    assert load.failures() == []
    _check_switch(load.results, fixed, (old, "a"), (new, "b"))
    status = gw.status()
    assert status["last_error"] is None and status["last_error_at"] is None
    assert gw.failing() == 0


def test_a_partial_write_never_fails_a_request_and_ends_on_the_new_version(
    serve: Callable[..., Gateway],
) -> None:
    """Half the new file (cut inside a flow mapping: not YAML) is seen and rejected while the
    old policy serves; the rest of the write completes it and it loads."""
    gw = serve(AB)
    old, new = _version(AB), _version(BA)
    cut = BA.index("{deployment: a}") + len("{deploy")
    with Load(gw.url) as load:
        time.sleep(0.3)
        with gw.policy.open("w") as f:
            f.write(BA[:cut])
            f.flush()
            assert wait_for(lambda: gw.status()["last_error"] is not None)
            assert "invalid YAML" in gw.status()["last_error"]
            assert gw.status()["version"] == old
            time.sleep(0.2)
            f.write(BA[cut:])
        assert wait_for(lambda: gw.status()["version"] == new)
        time.sleep(0.3)
    assert load.failures() == []
    assert {(r.version, r.deployment) for r in load.results} == {(old, "a"), (new, "b")}
    assert max(load.results, key=lambda r: r.sent).version == new
    assert gw.status()["last_error"] is None


def test_a_deleted_file_keeps_the_last_good_policy_until_it_is_recreated(
    serve: Callable[..., Gateway],
) -> None:
    """Deleting the file is a failed reload (the last good policy stays); recreating it loads."""
    gw = serve(AB)
    old, new = _version(AB), _version(BA)
    with Load(gw.url) as load:
        time.sleep(0.3)
        gw.policy.unlink()
        assert wait_for(lambda: gw.status()["last_error"] is not None)
        status = gw.status()
        assert status["version"] == old
        assert str(gw.policy) in status["last_error"]
        assert "no such file" in status["last_error"]
        time.sleep(0.3)
        gw.policy.write_text(BA)
        assert wait_for(lambda: gw.status()["version"] == new)
        time.sleep(0.3)
    assert load.failures() == []
    assert {(r.version, r.deployment) for r in load.results} == {(old, "a"), (new, "b")}
    assert gw.status()["last_error"] is None


# --- reloading on demand --------------------------------------------------------------------------


def test_sighup_reloads_a_policy_that_is_not_watched(serve: Callable[..., Gateway]) -> None:
    """watch: false: an edit changes nothing by itself; SIGHUP loads it. (The start banner's
    example names a model the policy routes.)"""
    gw = serve(AB, watch=False)
    assert gw.proc.stderr is not None
    banner = b"".join(gw.proc.stderr.readline() for _ in range(4))
    assert b'"model": "chat"' in banner, banner
    assert gw.status()["watching"] == []
    gw.policy.write_text(BA)
    time.sleep(0.3)  # three poll intervals, were there a watcher
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=BODY, timeout=5)
    assert resp.headers["x-gateway-deployment"] == "a"
    assert gw.status()["version"] == _version(AB)

    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: gw.status()["version"] == _version(BA))
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=BODY, timeout=5)
    assert resp.status_code == 200
    assert resp.headers["x-gateway-deployment"] == "b"
    assert resp.headers["x-gateway-policy-version"] == _version(BA)
    assert gw.status()["reloads"]["ok"] == 1
    assert gw.proc.poll() is None  # SIGHUP did not stop it


def test_admin_reload_answers_200_when_loaded_and_422_with_the_error(
    serve: Callable[..., Gateway],
) -> None:
    """POST /admin/policies/reload: a new valid file → 200 reloaded; the same file again → 200
    not reloaded; an invalid file (or one that cannot be parsed at all) → 422 naming the
    problem, the old policy still serving."""
    gw = serve(AB, watch=False)
    reload = f"{gw.url}/admin/policies/reload"

    gw.policy.write_text(BA)
    resp = httpx.post(reload, timeout=5)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["reloaded"] is True and body["error"] is None
    assert body["policy"]["version"] == _version(BA)
    resp = httpx.post(reload, timeout=5)
    assert resp.status_code == 200
    assert resp.json()["reloaded"] is False and resp.json()["error"] is None

    gw.policy.write_text(UNKNOWN)
    resp = httpx.post(reload, timeout=5)
    assert resp.status_code == 422
    body = resp.json()
    assert body["reloaded"] is False
    assert body["error"].startswith(f"{gw.policy}:5: ")
    assert "unknown deployment `zzz`" in body["error"]
    assert body["policy"]["version"] == _version(BA)
    assert body["policy"]["last_error"] == body["error"]
    assert gw.failing() == 1
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=BODY, timeout=5)
    assert resp.status_code == 200 and resp.headers["x-gateway-deployment"] == "b"
    reloads = gw.metrics()["llm_gateway_policy_reloads"].samples
    counts = {s.labels["outcome"]: s.value for s in reloads if s.name.endswith("_total")}
    assert counts == {"ok": 1, "unchanged": 1, "error": 1}

    # a file the YAML reader cannot even parse (too deeply nested) is a 422 too, not a 500
    gw.policy.write_text("routes: " + "[" * 5000 + "]" * 5000)
    resp = httpx.post(reload, timeout=5)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] and resp.json()["policy"]["version"] == _version(BA)
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=BODY, timeout=5)
    assert resp.status_code == 200 and resp.headers["x-gateway-deployment"] == "b"
