"""Two real `gateway serve` processes sharing one Redis see each other's failures.

Replica A's copy of deployment `flaky` answers every request with a 500 (a simulated fault);
replica B's copy of the same deployment is healthy and B sends it no traffic at all. Only A sees
the errors, yet B's /admin/deployments must show `flaky` failing — error counts, error rate and
status — within about a second, because both replicas flush to and pull from the same Redis.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from gatewayproc import start_gateway
from redisutil import require_redis

_CONFIG = """
server: {{request_timeout: 10s}}
logging: {{level: warning}}
health:
  store: redis
  redis: {{url: "{url}", namespace: "{namespace}", flush_interval: 100ms}}
  status: {{min_requests: 5}}
  probes: {{kind: none}}
deployments:
  - name: flaky
    provider: simulated
    model: m
    aliases: [chat]
    simulated:
      latency: 1ms
      faults: [{faults}]
  - name: backup
    provider: simulated
    model: m
    aliases: [chat]
    simulated: {{latency: 1ms}}
routes:
  chat: [flaky, backup]
"""


def _start(config: Path) -> tuple[subprocess.Popen[bytes], str]:
    return start_gateway(config, stdout=subprocess.DEVNULL)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _chat(url: str) -> tuple[int, str]:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    req = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
        return resp.status, resp.headers["x-gateway-deployment"]


def _wait_fresh(url: str) -> dict[str, Any]:
    """The replica's report once its first sync with Redis is done (it starts `stale`)."""
    deadline = time.monotonic() + 5
    report = _get(f"{url}/admin/deployments")
    while report["shared_metrics"] != "fresh" and time.monotonic() < deadline:
        time.sleep(0.05)
        report = _get(f"{url}/admin/deployments")
    assert report["shared_metrics"] == "fresh", report
    return report


def _flaky(report: dict[str, Any]) -> dict[str, Any]:
    (entry,) = [d for d in report["deployments"] if d["name"] == "flaky"]
    return entry


def test_errors_seen_by_one_replica_change_what_the_other_sees(tmp_path: Path) -> None:
    url = require_redis()
    namespace = f"test-fleet-{uuid.uuid4().hex[:8]}"
    a_cfg, b_cfg = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a_cfg.write_text(
        _CONFIG.format(
            url=url, namespace=namespace, faults="{kind: status, status: 500, rate: 1.0}"
        )
    )
    b_cfg.write_text(_CONFIG.format(url=url, namespace=namespace, faults=""))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        a, a_url = _start(a_cfg)
        procs.append(a)
        b, b_url = _start(b_cfg)
        procs.append(b)
        before = _wait_fresh(b_url)
        _wait_fresh(a_url)
        assert _flaky(before)["window"]["requests"] == 0
        assert _flaky(before)["status"] == "healthy"

        # Only replica A sends traffic: each request fails on flaky (500, retried once) and
        # is answered by backup, so the caller never sees the error. After 5 failures in a row
        # A's breaker for flaky opens and A stops sending it anything.
        for _ in range(6):
            assert _chat(a_url) == (200, "backup")
        sent = time.monotonic()
        failed = _flaky(_get(f"{a_url}/admin/deployments"))["window"]["requests"]
        assert failed >= 5
        seen: dict[str, Any] = {}
        while time.monotonic() - sent < 5:
            seen = _flaky(_get(f"{b_url}/admin/deployments"))
            if seen["window"]["requests"] >= failed and seen["breaker"]["state"] == "open":
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - sent
        assert seen["status"] == "unhealthy", seen
        assert seen["window"]["errors"] == {"server_error": failed}, seen
        assert seen["window"]["error_rate"] == 1.0
        assert f"error rate 100% over {failed} requests" in seen["reason"]
        # A's trip reached B too: B stops sending flaky anything, without a failure of its own.
        assert seen["breaker"]["state"] == "open", seen["breaker"]
        assert "remote" in seen["breaker"]["last_trip_reason"]
        assert _chat(b_url) == (200, "backup")
        # The design target is ~1 s; 5 s above is only the give-up bound on a loaded machine.
        print(f"replica B saw replica A's errors and trip after {elapsed * 1000:.0f} ms")
        assert elapsed < 3.0, f"B saw A's errors only after {elapsed:.2f} s"
        # B itself never sent flaky a request: its own Prometheus counters stay at zero.
        with urllib.request.urlopen(f"{b_url}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert (
            'llm_gateway_deployment_errors_total{class="server_error",deployment="flaky"} 0.0'
            in metrics
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        if procs:
            _cleanup(url, namespace)


def _cleanup(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"llmgw:{{{namespace}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


pytestmark = pytest.mark.integration
