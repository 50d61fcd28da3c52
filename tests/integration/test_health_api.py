"""Health seen from outside: ``GET /admin/deployments``, ``GET /metrics`` and ``/readyz`` after real
traffic through the gateway, probes that eject and bring back deployments, and who may read them.

Every gateway here runs on a real socket with the official SDK as the caller. Unless a test is
about probes, probes are off (``health.probes.kind: none``) so the figures come from requests
alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from typing import Any
from unittest import mock

import httpx
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from polling import wait_for
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from gateway.config import SimulatedDeployment, parse_config
from gateway.executor import Deployment
from gateway.providers.simulated.provider import SimulatedProvider
from gateway.server import ENDPOINTS, Gateway

USER = [{"role": "user", "content": "hello"}]
ADMIN_TOKEN = "adm-tok-DO-NOT-LEAK-7c1e55"
QUICK_PROBE = (
    "{kind: models, interval: 50ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 2}"
)
ALLOWED_LABELS = {"endpoint", "status", "deployment", "outcome", "class", "direction", "state"}


def _config(primary: str, fallback: str | None = None, *, head: str = "") -> str:
    """``primary`` (priced, 300 ms response limit) and optionally ``fallback``, both as `chat`."""
    text = f"""
server:
  request_timeout: 10s
# these tests count every failed attempt: no breaker stops sending to a failing deployment
resilience:
  breaker: {{consecutive_failures: 1000, min_volume: 1000}}
health:
  probes: {{kind: none}}
{head}
deployments:
  - name: primary
    provider: openai
    model: up-model
    aliases: [chat]
    base_url: {primary}/v1
    price: {{input: 1000, output: 2000}}
    timeouts: {{response: 300ms, first_token: 2s}}
"""
    if fallback:
        text += f"""
  - name: fallback
    provider: openai
    model: fb-model
    aliases: [chat]
    base_url: {fallback}/v1
"""
    return text


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=20)


def _report(url: str, **headers: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/admin/deployments", headers=headers, timeout=5)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    report: dict[str, Any] = resp.json()
    return report


def _deployments(url: str) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in _report(url)["deployments"]}


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _metrics(url: str, **headers: str) -> tuple[str, dict[str, Any]]:
    resp = httpx.get(f"{url}/metrics", headers=headers, timeout=5)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    return resp.text, families


def _samples(family: Any, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    """Sample values of ``family`` keyed by their sorted labels (``name`` picks one series)."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in family.samples
        if name is None or s.name == name
    }


def _openai_error(resp: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object of ``resp``, checked for its exact shape."""
    body = resp.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


# --- the window of every deployment ----------------------------------------------------------


def test_failed_attempts_are_counted_by_class_while_the_fallback_answers(
    gateway: Any, scripted_upstream: Any
) -> None:
    """A 429, a hang, two resets and two 500s land in the primary's window by class; the
    fallback's window holds the answers with latency, tokens and (priced) nothing."""
    up, up_server = scripted_upstream()
    _, fb_server = scripted_upstream()
    up.script = [
        ("status", 429, None),  # rate_limited, fail over
        "hang",  # timeout after 300 ms, fail over
        "reset",  # connection, retried once on the same deployment ...
        "reset",  # ... and again, then fail over
        ("status", 500, None),  # server_error, retried once ...
        ("status", 500, None),  # ... then fail over
    ]
    gw = gateway(_config(up_server.url, fb_server.url))
    client = _client(gw.url)
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="chat", messages=USER)
        assert raw.headers["x-gateway-deployment"] == "fallback"
    deps = _deployments(gw.url)
    primary, fallback = deps["primary"]["window"], deps["fallback"]["window"]
    assert primary["errors"] == {
        "rate_limited": 1,
        "server_error": 2,
        "timeout": 1,
        "connection": 2,
    }
    assert (primary["requests"], primary["successes"], primary["error_rate"]) == (6, 0, 1.0)
    assert primary["latency_ms"]["p50"] is None  # failures never make a deployment look fast
    assert primary["cost_usd"] == 0
    assert (fallback["requests"], fallback["successes"], fallback["errors"]) == (4, 4, {})
    assert fallback["error_rate"] == 0.0
    latency = fallback["latency_ms"]
    assert all(latency[k] is not None and latency[k] > 0 for k in ("p50", "p95", "mean", "ewma"))
    assert latency["p50"] <= latency["p95"] <= latency["p99"]
    assert (fallback["tokens_in"], fallback["tokens_out"]) == (16, 12)
    assert fallback["cost_usd"] == 0  # no price configured
    assert fallback["ttft_ms"]["p50"] is None  # no stream was served
    assert all(w["inflight"] == 0 for w in (primary, fallback))
    assert primary["seconds"] == 60


def test_answer_of_a_priced_deployment_records_tokens_and_cost(
    gateway: Any, scripted_upstream: Any
) -> None:
    """Usage the upstream reports becomes tokens, and cost at the deployment's price."""
    _, up_server = scripted_upstream()
    gw = gateway(_config(up_server.url))
    client = _client(gw.url)
    client.chat.completions.create(model="chat", messages=USER)
    client.chat.completions.create(model="chat", messages=USER)
    window = _deployments(gw.url)["primary"]["window"]
    # usage is 4 in + 3 out per answer; $1000/M in and $2000/M out
    assert (window["tokens_in"], window["tokens_out"]) == (8, 6)
    assert window["cost_usd"] == pytest.approx(2 * (4 * 1000 + 3 * 2000) / 1e6)
    assert (window["requests"], window["successes"]) == (2, 2)


def test_stream_records_time_to_first_token_and_a_cut_stream_as_stream_broken(
    gateway: Any, scripted_upstream: Any
) -> None:
    """A streamed answer gives the window a TTFT; a stream cut after its first chunk counts as
    stream_broken, never as a success."""
    up, up_server = scripted_upstream()
    up.script = ["stream_ok", ("stream_cut", 2)]
    gw = gateway(_config(up_server.url))
    client = _client(gw.url)
    chunks = list(client.chat.completions.create(model="chat", messages=USER, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    window = _deployments(gw.url)["primary"]["window"]
    assert (window["requests"], window["successes"]) == (1, 1)
    ttft = window["ttft_ms"]
    assert ttft["p50"] is not None and ttft["p50"] > 0
    # a stream's length is not latency: only non-streaming answers have latency figures
    assert window["latency_ms"]["mean"] is None
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="chat", messages=USER, stream=True))
    assert wait_for(lambda: _deployments(gw.url)["primary"]["window"]["requests"] == 2)
    window = _deployments(gw.url)["primary"]["window"]
    assert (window["successes"], window["errors"]) == (1, {"stream_broken": 1})
    assert window["inflight"] == 0


def test_caller_error_is_counted_but_left_out_of_the_error_rate(
    gateway: Any, scripted_upstream: Any
) -> None:
    """An upstream 400 reaches the caller, counts as caller_error and does not hurt the rate."""
    up, up_server = scripted_upstream()
    up.script = [("status", 400, None)]
    gw = gateway(_config(up_server.url, head="  status: {min_requests: 1}"))
    client = _client(gw.url)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="chat", messages=USER)
    client.chat.completions.create(model="chat", messages=USER)
    primary = _deployments(gw.url)["primary"]
    window = primary["window"]
    assert (window["requests"], window["successes"]) == (2, 1)
    assert window["errors"] == {"caller_error": 1}
    assert window["error_rate"] == 0.0
    assert primary["status"] == "healthy"
    assert primary["reason"] == "error rate 0% over 1 request in 60 s"


# --- status from the window ------------------------------------------------------------------


def test_failing_deployment_turns_unhealthy_once_it_has_min_requests(
    gateway: Any, scripted_upstream: Any
) -> None:
    """Three 503s (min_requests 3) make the primary unhealthy, with the figures in the reason;
    every caller was answered by the fallback, which stays healthy."""
    up, up_server = scripted_upstream()
    _, fb_server = scripted_upstream()
    up.script = [("status", 503, None)] * 3
    gw = gateway(_config(up_server.url, fb_server.url, head="  status: {min_requests: 3}"))
    client = _client(gw.url)
    for _ in range(2):
        client.chat.completions.create(model="chat", messages=USER)
    primary = _deployments(gw.url)["primary"]
    assert primary["status"] == "healthy"
    assert primary["reason"] == (
        "error rate 100% over 2 requests in 60 s (2 server_error); "
        "too few requests to judge (fewer than 3)"
    )
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=USER)
    assert raw.headers["x-gateway-deployment"] == "fallback"
    deps = _deployments(gw.url)
    assert deps["primary"]["status"] == "unhealthy"
    assert deps["primary"]["reason"] == "error rate 100% over 3 requests in 60 s (3 server_error)"
    assert deps["fallback"]["status"] == "healthy"
    assert deps["fallback"]["reason"] == "error rate 0% over 3 requests in 60 s"
    _, families = _metrics(gw.url)
    status = _samples(families["llm_gateway_deployment_status"])
    assert status[(("deployment", "primary"), ("state", "unhealthy"))] == 1
    assert status[(("deployment", "primary"), ("state", "healthy"))] == 0
    assert status[(("deployment", "fallback"), ("state", "healthy"))] == 1
    # an unhealthy deployment is still routable: only probes eject
    assert httpx.get(f"{gw.url}/readyz", timeout=5).status_code == 200


# --- probes ----------------------------------------------------------------------------------


def test_probes_eject_failing_deployments_and_bring_back_one_that_recovers(
    gateway: Any, scripted_upstream: Any
) -> None:
    """Failed /models probes eject both deployments (readyz stays 200 and counts them: the
    gateway still answers each request with a clear error); once the upstream answers again,
    two passing probes bring it back while the closed port stays out."""
    up, up_server = scripted_upstream()
    up.models_script = [("status", 503, None)] * 10_000
    config = f"""
health:
  probes: {{kind: none}}
deployments:
  - name: flaky
    provider: openai
    model: m
    base_url: {up_server.url}/v1
    probe: {QUICK_PROBE}
  - name: gone
    provider: openai
    model: m
    base_url: http://127.0.0.1:{_closed_port()}/v1
    probe: {QUICK_PROBE}
"""
    gw = gateway(config)

    def states() -> dict[str, str]:
        return {name: d["status"] for name, d in _deployments(gw.url).items()}

    assert wait_for(lambda: states() == {"flaky": "ejected", "gone": "ejected"})
    deps = _deployments(gw.url)
    assert re.fullmatch(r"\d+ probes failed: upstream says 503", deps["flaky"]["reason"])
    assert re.fullmatch(r"\d+ probes failed: cannot reach upstream: .*", deps["gone"]["reason"])
    assert deps["flaky"]["probe"] == {
        "kind": "models",
        "interval_s": 0.05,
        "timeout_s": 0.2,
        "healthy_threshold": 2,
        "unhealthy_threshold": 2,
    }
    newest = deps["flaky"]["probes"][0]
    assert newest["ok"] is False and newest["latency"] is None
    ready = httpx.get(f"{gw.url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "routable_deployments": 2,
        "ejected_deployments": 2,
    }

    up.models_script.clear()  # the upstream answers again
    assert wait_for(lambda: states()["flaky"] == "healthy")
    deps = _deployments(gw.url)
    assert deps["flaky"]["reason"] == "no requests in the last 60 s; last probe ok"
    assert deps["flaky"]["probes"][0]["ok"] is True
    assert deps["gone"]["status"] == "ejected"
    ready = httpx.get(f"{gw.url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["ejected_deployments"] == 1
    assert up.models_requests and all(p == "/v1/models" for p in up.models_requests)
    _, families = _metrics(gw.url)
    probes = _samples(families["llm_gateway_probes"], "llm_gateway_probes_total")
    assert probes[(("deployment", "flaky"), ("outcome", "ok"))] >= 2
    assert probes[(("deployment", "flaky"), ("outcome", "failed"))] >= 2
    assert probes[(("deployment", "gone"), ("outcome", "ok"))] == 0


def test_simulated_outage_window_ejects_the_deployment_until_it_ends(gateway: Any) -> None:
    """A simulated deployment refusing connections for its first second is ejected by its probes,
    then healthy again once the window is over."""
    gw = gateway(
        f"""
deployments:
  - name: sim
    provider: simulated
    model: m
    simulated:
      faults: [{{kind: refuse, end: 1s}}]
    probe: {QUICK_PROBE}
"""
    )

    def state() -> str:
        status: str = _deployments(gw.url)["sim"]["status"]
        return status

    assert wait_for(lambda: state() == "ejected", timeout=3)
    assert httpx.get(f"{gw.url}/readyz", timeout=5).json()["ejected_deployments"] == 1
    assert wait_for(lambda: state() == "healthy", timeout=5)
    assert httpx.get(f"{gw.url}/readyz", timeout=5).json()["ejected_deployments"] == 0


# --- /metrics --------------------------------------------------------------------------------


def test_metrics_count_requests_attempts_errors_and_latency(
    gateway: Any, scripted_upstream: Any
) -> None:
    """The scrape holds the request counter by endpoint and status, attempts by outcome, errors
    by class, a latency histogram and a one-hot status for every deployment."""
    up, up_server = scripted_upstream()
    _, fb_server = scripted_upstream()
    up.script = [("status", 429, None), ("status", 400, None)]
    gw = gateway(_config(up_server.url, fb_server.url))
    client = _client(gw.url)
    client.chat.completions.create(model="chat", messages=USER)  # 429, then the fallback
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="chat", messages=USER)
    client.completions.create(model="chat", prompt="hi")  # the primary answers
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=USER)
    text, families = _metrics(gw.url)

    requests = _samples(families["llm_gateway_requests"], "llm_gateway_requests_total")
    assert requests == {
        (("endpoint", "chat/completions"), ("status", "200")): 1,
        (("endpoint", "chat/completions"), ("status", "400")): 1,
        (("endpoint", "chat/completions"), ("status", "404")): 1,
        (("endpoint", "completions"), ("status", "200")): 1,
    }
    attempts = _samples(
        families["llm_gateway_deployment_attempts"], "llm_gateway_deployment_attempts_total"
    )
    assert attempts == {
        (("deployment", "primary"), ("outcome", "success")): 1,
        (("deployment", "primary"), ("outcome", "error")): 2,
        (("deployment", "fallback"), ("outcome", "success")): 1,
        (("deployment", "fallback"), ("outcome", "error")): 0,
    }
    errors = _samples(
        families["llm_gateway_deployment_errors"], "llm_gateway_deployment_errors_total"
    )
    primary_errors = {
        dict(k)["class"]: v for k, v in errors.items() if dict(k)["deployment"] == "primary"
    }
    assert primary_errors["rate_limited"] == 1
    assert primary_errors["caller_error"] == 1
    assert sum(primary_errors.values()) == 2

    latency = families["llm_gateway_deployment_latency_seconds"]
    assert latency.type == "histogram"
    count = _samples(latency, "llm_gateway_deployment_latency_seconds_count")
    assert count == {(("deployment", "primary"),): 1, (("deployment", "fallback"),): 1}
    buckets = [
        s
        for s in latency.samples
        if s.name.endswith("_bucket") and s.labels["deployment"] == "primary"
    ]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 1
    assert [s.value for s in buckets] == sorted(s.value for s in buckets)  # cumulative
    total = _samples(latency, "llm_gateway_deployment_latency_seconds_sum")
    assert total[(("deployment", "primary"),)] > 0

    status = families["llm_gateway_deployment_status"]
    for dep in ("primary", "fallback"):
        values = [s.value for s in status.samples if s.labels["deployment"] == dep]
        assert sorted(values) == [0, 0, 0, 1]  # one-hot over the four states
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= ALLOWED_LABELS, sample
    assert "no-such-model" not in text


def test_unknown_paths_and_models_leave_only_low_cardinality_labels(
    gateway: Any, scripted_upstream: Any
) -> None:
    """Random paths all count under endpoint="other"; no path, model or request id becomes a
    label value."""
    _, up_server = scripted_upstream()
    gw = gateway(_config(up_server.url))
    marks = [os.urandom(6).hex() for _ in range(20)]
    with httpx.Client(base_url=gw.url, timeout=5) as http:
        for mark in marks:
            resp = http.get(f"/nope/{mark}", headers={"x-request-id": f"rid-{mark}"})
            assert resp.status_code == 404
        assert http.post(f"/v1/{marks[0]}", json={}).status_code == 404
        resp = http.post(
            "/v1/chat/completions", json={"model": f"model-{marks[1]}", "messages": USER}
        )
        assert resp.status_code == 404
    text, families = _metrics(gw.url)
    for mark in marks:
        assert mark not in text
    requests = _samples(families["llm_gateway_requests"], "llm_gateway_requests_total")
    assert requests == {
        (("endpoint", "other"), ("status", "404")): 21,
        (("endpoint", "chat/completions"), ("status", "404")): 1,
    }
    endpoints = {dict(k)["endpoint"] for k in requests}
    assert endpoints <= {*ENDPOINTS, "other"}


# --- who may read them -----------------------------------------------------------------------


def test_without_a_token_loopback_callers_read_admin_and_metrics(
    gateway: Any, scripted_upstream: Any
) -> None:
    """No admin.token: a caller on 127.0.0.1 gets both operator endpoints."""
    _, up_server = scripted_upstream()
    gw = gateway(_config(up_server.url))
    report = _report(gw.url)
    assert report["store"] == "memory"
    assert report["shared_metrics"] == "local"
    assert [d["name"] for d in report["deployments"]] == ["primary"]
    assert report["deployments"][0]["probe"] == {"kind": "none"}
    _metrics(gw.url)


def _gateway_object(admin: str = "") -> Gateway:
    """A gateway object over one simulated deployment (handlers called without a socket)."""
    config = parse_config(
        f"{admin}deployments:\n  - {{name: sim, provider: simulated, model: m}}\n", "t.yaml"
    )
    sim = config.deployments[0]
    assert isinstance(sim, SimulatedDeployment)
    return Gateway(config, {"sim": Deployment(SimulatedProvider(sim))})


def _from(peer: Any, path: str, headers: dict[str, str] | None = None) -> web.Request:
    """A GET request to ``path`` as if it arrived over a socket from ``peer``."""
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda key, default=None: (
        peer if key == "peername" else default
    )
    return make_mocked_request("GET", path, headers=headers, transport=transport)


async def _call(gw: Gateway, request: web.Request) -> web.Response:
    handler = gw.admin.deployments if request.path == "/admin/deployments" else gw.admin.metrics
    return await handler(request)


@pytest.mark.parametrize("path", ["/admin/deployments", "/metrics"])
def test_without_a_token_a_caller_off_loopback_is_refused_with_403(path: str) -> None:
    """No admin.token: a peer at 10.0.0.5 gets a 403 in OpenAI shape, whatever it claims in
    X-Forwarded-For; loopback peers (IPv4, IPv6, IPv4-mapped) get the data."""

    async def main() -> None:
        gw = _gateway_object()
        request = _from(
            ("10.0.0.5", 1234), path, {"x-request-id": "rid-403", "X-Forwarded-For": "127.0.0.1"}
        )
        resp = await _call(gw, request)
        assert resp.status == 403
        assert resp.headers["x-request-id"] == "rid-403"
        assert resp.body is not None and isinstance(resp.body, bytes)
        error = json.loads(resp.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"]) == ("permission_error", "forbidden")
        assert "loopback" in error["message"] and "admin.token" in error["message"]
        assert gw.responses == {("other", 403): 1}
        for peer in (("127.0.0.1", 5), ("::1", 5, 0, 0), ("::ffff:127.0.0.1", 5, 0, 0)):
            resp = await _call(gw, _from(peer, path))
            assert resp.status == 200, peer
        for peer in (("192.168.1.9", 5), ("::ffff:10.0.0.5", 5, 0, 0), None):
            resp = await _call(gw, _from(peer, path))
            assert resp.status == 403, peer

    asyncio.run(main())


def test_with_a_token_only_its_bearer_reads_admin_from_anywhere() -> None:
    """admin.token set: the right bearer works from off loopback; none, a wrong one or another
    scheme is a 401, even on loopback."""

    async def main() -> None:
        gw = _gateway_object(f"admin: {{token: {ADMIN_TOKEN}}}\n")
        good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for path in ("/admin/deployments", "/metrics"):
            assert (await _call(gw, _from(("10.0.0.5", 1), path, good))).status == 200
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {ADMIN_TOKEN}"},
                {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
                {"Authorization": "Bearer "},
            ):
                resp = await _call(gw, _from(("127.0.0.1", 1), path, headers))
                assert resp.status == 401, headers

    asyncio.run(main())


def test_admin_token_guards_both_endpoints_and_never_shows_up(
    gateway: Any, scripted_upstream: Any
) -> None:
    """Over a socket with admin.token set: no or a wrong bearer is a 401 in OpenAI shape with the
    request id; the right one is a 200; the token is in no response and no log line."""
    _, up_server = scripted_upstream()
    head = f"admin:\n  token: {ADMIN_TOKEN}"
    gw = gateway(_config(up_server.url).replace("health:", f"{head}\nhealth:", 1))
    seen: list[str] = []
    with capture_logs() as logs, httpx.Client(base_url=gw.url, timeout=5) as http:
        for path in ("/admin/deployments", "/metrics"):
            for headers in ({}, {"Authorization": "Bearer not-the-token"}):
                resp = http.get(path, headers={**headers, "x-request-id": "rid-401"})
                assert resp.status_code == 401
                assert resp.headers["x-request-id"] == "rid-401"
                error = _openai_error(resp)
                assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
                assert "admin.token" in error["message"]
                seen.append(resp.text + str(resp.headers))
            resp = http.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert resp.status_code == 200
            seen.append(resp.text + str(resp.headers))
        _client(gw.url).chat.completions.create(model="chat", messages=USER)
    report = _report(gw.url, Authorization=f"Bearer {ADMIN_TOKEN}")
    assert report["deployments"][0]["window"]["successes"] == 1
    assert any(e["event"] == "request" and e["status"] == 401 for e in logs)
    for text in [*seen, repr(logs)]:
        assert ADMIN_TOKEN not in text


@pytest.mark.parametrize("path", ["/admin/deployments", "/metrics"])
def test_post_to_an_operator_endpoint_is_405_naming_get(
    gateway: Any, scripted_upstream: Any, path: str
) -> None:
    """Only GET is served: a POST gets a 405 with Allow: GET, the request id and the error shape."""
    _, up_server = scripted_upstream()
    gw = gateway(_config(up_server.url))
    resp = httpx.post(f"{gw.url}{path}", headers={"x-request-id": "rid-405"}, timeout=5)
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET"
    assert resp.headers["x-request-id"] == "rid-405"
    error = _openai_error(resp)
    assert error["code"] == "method_not_allowed"
    assert f"POST is not allowed on {path}; use GET" == error["message"]
