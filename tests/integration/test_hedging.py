"""Hedging (a route's `hedge: {after: ...}`): a slow first attempt is raced by a second one on
the next deployment; the first answer wins and the loser is cancelled without blame."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import build_app
from gateway.config import load_config

CONFIG = """
server: {request_timeout: 10s}
health: {probes: {kind: none}}
policy: {path: policy.yaml, watch: false}
deployments:
  - name: slow
    provider: simulated
    model: m
    simulated: {latency: 1s, content: "from slow"}
  - name: fast
    provider: simulated
    model: m
    simulated: {latency: 10ms, content: "from fast"}
"""

POLICY = """
routes:
  - name: hedged
    match: {models: [hedged]}
    candidates: [{deployment: slow}, {deployment: fast}]
    strategy: ordered
    hedge: {after: 100ms}
  - name: plain
    match: {models: [plain]}
    candidates: [{deployment: slow}, {deployment: fast}]
    strategy: ordered
"""


@pytest.fixture
def url(serve_app: Any, tmp_path: Path) -> str:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "gateway.yaml").write_text(CONFIG)
    config = load_config(tmp_path / "gateway.yaml")
    return str(serve_app(lambda: build_app(config)).url)


def _ask(url: str, model: str, stream: bool = False) -> tuple[httpx.Response, float]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    started = time.monotonic()
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
    return resp, time.monotonic() - started


def _windows(url: str) -> dict[str, Any]:
    report = httpx.get(f"{url}/admin/deployments", timeout=5).json()
    return {d["name"]: d["window"] for d in report["deployments"]}


@pytest.mark.parametrize("stream", [False, True])
def test_a_slow_first_attempt_is_raced_and_the_fast_answer_wins(url: str, stream: bool) -> None:
    resp, elapsed = _ask(url, "hedged", stream)
    assert resp.status_code == 200
    assert resp.headers["x-gateway-deployment"] == "fast"
    assert "fast" in resp.text and "slow" not in resp.text
    assert elapsed < 0.9  # the slow deployment would have taken 1 s
    assert resp.headers["x-gateway-route"] == "hedged"
    windows = _windows(url)
    # the loser was cancelled: no error, no success, its slot back
    assert windows["slow"]["requests"] == 0 and windows["slow"]["inflight"] == 0
    assert windows["fast"]["successes"] == 1 and windows["fast"]["inflight"] == 0


def test_without_a_hedge_the_first_deployment_answers_however_slow(url: str) -> None:
    resp, elapsed = _ask(url, "plain")
    assert resp.status_code == 200 and "from slow" in resp.text
    assert elapsed >= 0.95


def test_a_bad_hedge_section_is_a_policy_error_with_its_line(tmp_path: Path) -> None:
    from gateway.config import parse_config
    from gateway.policy_loader import deployment_infos, load_policy
    from gateway.yamlfile import ConfigError

    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY.replace("after: 100ms", "after: soon"))
    config = parse_config(CONFIG.replace("policy: {path: policy.yaml, watch: false}\n", ""))
    with pytest.raises(ConfigError) as info:
        load_policy(policy, deployment_infos(config))
    (issue,) = info.value.issues
    assert issue.line == 7 and issue.path == "routes[0].hedge"
    assert "hedge.after" in issue.reason


def test_breaker_and_fallback_sections_in_a_policy_are_refused_not_ignored(tmp_path: Path) -> None:
    """A section the gateway does not read from a policy is an error naming what to do."""
    from gateway.config import parse_config
    from gateway.policy_loader import deployment_infos, load_policy
    from gateway.yamlfile import ConfigError

    policy = tmp_path / "p.yaml"
    policy.write_text(
        POLICY.replace("hedge: {after: 100ms}", "breaker: {failures: 3}\n    fallback: {x: 1}")
    )
    config = parse_config(CONFIG.replace("policy: {path: policy.yaml, watch: false}\n", ""))
    with pytest.raises(ConfigError) as info:
        load_policy(policy, deployment_infos(config))
    reasons = {i.path: i.reason for i in info.value.issues}
    assert "resilience.breaker" in reasons["routes[0].breaker"]
    assert "not read from policies" in reasons["routes[0].fallback"]
