"""The policy engine seen from outside: routing headers, route matching, per-request constraints,
capability filtering, health-aware ranking with panic, the explain API and the policy admin and
metrics surface.

Every gateway here runs on a real socket in a thread, with its policy in a file next to its
config file (``policy.path`` is relative to the config). The official SDK is the caller where it
fits; ``httpx`` where a test needs raw bytes or admin endpoints. Probes are off unless a test is
about them.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from polling import wait_for
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import build_app
from gateway.config import load_config
from gateway.policy_loader import policy_version
from policies.types import COMPONENTS

USER: Any = [{"role": "user", "content": "hello"}]
ADMIN_TOKEN = "adm-policy-tok-3f9a0c"
QUICK_PROBE = (
    "{kind: models, interval: 50ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 2}"
)

# Two simulated deployments: `cheap` (no tools, cheap) and `pricey` (tools and `premium` tags,
# expensive). Client-facing aliases differ from the policy's model names on purpose: with a
# policy, /v1/models lists the policy's names.
SIM_CONFIG = """
server: {request_timeout: 10s}
health: {probes: {kind: none}}
policy: {path: policy.yaml, watch: false}
deployments:
  - name: cheap
    provider: simulated
    model: cheap-m
    aliases: [legacy-cheap]
    tags: [chat, completions, stream]
    price: {input: 0.1, output: 0.1}
  - name: pricey
    provider: simulated
    model: pricey-m
    aliases: [legacy-pricey]
    tags: [chat, stream, tools, premium]
    price: {input: 100, output: 200}
"""

# Routes are tried top to bottom: the specific ones (header, metadata, capability, prompt size)
# come before the plain `chat` route.
SIM_POLICY = """
version: 1
defaults: {strategy: ordered}
quality: {cheap: 0.1, pricey: 0.9}
routes:
  - name: research
    match: {models: [chat], headers: {x-team: [research, ml]}}
    candidates: [{deployment: pricey}]
  - name: gold
    match: {models: [chat], metadata: {tier: gold}}
    candidates: [{deployment: pricey}]
  - name: tooling
    match: {models: [chat], capabilities: [tools]}
    candidates: [{tags: [tools]}]
  - name: long-prompt
    match: {models: [chat], prompt_tokens: {min: 2000}}
    candidates: [{deployment: pricey}]
  - name: chat
    match: {models: [chat]}
    candidates: [{deployment: cheap}, {deployment: pricey}]
  - name: premium
    match: {models: [premium]}
    candidates: [{deployment: pricey}, {deployment: cheap}]
  - name: scored
    match: {models: [scored]}
    candidates: [{deployment: cheap}, {deployment: pricey}]
    strategy: score
    weights: {latency: 0, error_rate: 0, load: 0, price: 0, quality: 1}
"""

# The same two price levels over scripted upstreams, to see what reaches a provider.
UP_POLICY = """
version: 1
routes:
  - name: chat
    match: {models: [chat]}
    candidates: [{deployment: up-pricey}, {deployment: up-cheap}]
    strategy: ordered
  - name: scored
    match: {models: [scored]}
    candidates: [{deployment: up-cheap}, {deployment: up-pricey}]
    strategy: score
"""


def _up_config(pricey: str, cheap: str, head: str = "") -> str:
    # `model: chat` upstream = the name callers use, so an untouched body is forwarded as is.
    return f"""
server: {{request_timeout: 10s}}
health: {{probes: {{kind: none}}}}
policy: {{path: policy.yaml, watch: false}}
{head}
deployments:
  - name: up-pricey
    provider: openai
    model: chat
    base_url: {pricey}/v1
    tags: [chat, stream, premium]
    price: {{input: 100, output: 200}}
  - name: up-cheap
    provider: openai
    model: chat
    base_url: {cheap}/v1
    price: {{input: 0.1, output: 0.1}}
"""


# --- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyGateway:
    url: str
    policy_file: Path


@pytest.fixture
def policy_gateway(serve_app: Any, tmp_path: Path) -> Callable[[str, str], PolicyGateway]:
    """Factory: a gateway from (config text, policy text), both written to ``tmp_path``."""

    def start(config_text: str, policy_text: str) -> PolicyGateway:
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(policy_text)
        config_file = tmp_path / "gateway.yaml"
        config_file.write_text(config_text)
        config = load_config(config_file)
        return PolicyGateway(serve_app(lambda: build_app(config)).url, policy_file)

    return start


def _client(url: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=20, **kwargs)


def _version(path: Path) -> str:
    """The version the gateway gives the single policy file at ``path``."""
    return policy_version([(path.name, path.read_bytes())])


def _openai_error(resp: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object of ``resp``, checked for its exact shape."""
    body = resp.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def _chat(client: openai.OpenAI, model: str = "chat", **kwargs: Any) -> Any:
    """A chat completion with its raw response (headers), asserted to be a 200."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=USER, **kwargs)
    assert raw.status_code == 200
    return raw


def _route(raw: Any) -> tuple[str, str]:
    return raw.headers["x-gateway-route"], raw.headers["x-gateway-deployment"]


def _explain(url: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/admin/route/explain", json=body, headers=headers, timeout=5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- x-gateway-route and x-gateway-policy-version ----------------------------------------------


def test_route_and_policy_version_headers_on_success_and_errors(
    policy_gateway: Any, scripted_upstream: Any
) -> None:
    """A 200 carries route and version; a 404 for an unknown model carries the version (no route
    matched); a 502 after every deployment failed carries both."""
    pricey, pricey_server = scripted_upstream()
    cheap, cheap_server = scripted_upstream()
    gw = policy_gateway(_up_config(pricey_server.url, cheap_server.url), UP_POLICY)
    version = _version(gw.policy_file)
    client = _client(gw.url)

    raw = _chat(client)
    assert raw.headers["x-gateway-policy-version"] == version
    assert _route(raw) == ("chat", "up-pricey")

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=USER)
    headers = missing.value.response.headers
    assert headers["x-gateway-policy-version"] == version
    assert "x-gateway-route" not in headers
    error = _openai_error(missing.value.response)
    assert error["param"] == "model" and "chat, scored" in error["message"]

    pricey.script = [("status", 500, None)] * 5
    cheap.script = [("status", 500, None)] * 5
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="chat", messages=USER)
    assert failed.value.status_code == 502
    headers = failed.value.response.headers
    assert headers["x-gateway-policy-version"] == version
    assert headers["x-gateway-route"] == "chat"
    assert headers["x-gateway-deployment"] == "up-cheap"  # the last one tried
    assert int(headers["x-gateway-attempts"]) >= 2


# --- matching ----------------------------------------------------------------------------------


def test_requests_match_routes_by_model_header_metadata_capability_and_size(
    policy_gateway: Any,
) -> None:
    """Each match field picks its route (and so its deployment); the first matching route in
    document order wins."""
    gw = policy_gateway(SIM_CONFIG, SIM_POLICY)
    client = _client(gw.url)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

    assert _route(_chat(client)) == ("chat", "cheap")
    assert _route(_chat(client, model="premium")) == ("premium", "pricey")
    assert _route(_chat(client, extra_headers={"x-team": "ml"})) == ("research", "pricey")
    assert _route(_chat(client, extra_headers={"x-team": "sales"})) == ("chat", "cheap")
    assert _route(_chat(client, metadata={"tier": "gold"})) == ("gold", "pricey")
    assert _route(_chat(client, metadata={"tier": "silver"})) == ("chat", "cheap")
    assert _route(_chat(client, tools=[tool])) == ("tooling", "pricey")
    big: Any = [{"role": "user", "content": "x" * 9000}]  # ~2250 tokens by the bytes/4 estimate
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=big)
    assert _route(raw) == ("long-prompt", "pricey")
    # header and metadata both hold: `research` comes first in the document
    raw = _chat(client, metadata={"tier": "gold"}, extra_headers={"x-team": "research"})
    assert _route(raw) == ("research", "pricey")


def test_x_gateway_policy_selects_a_route_and_an_unknown_one_is_a_400(
    policy_gateway: Any,
) -> None:
    """``x-gateway-policy`` (or ``gateway.policy``) picks a route by name whatever the model
    matches; an unknown name is a 400 naming the header, in OpenAI shape, with the version."""
    gw = policy_gateway(SIM_CONFIG, SIM_POLICY)
    client = _client(gw.url)
    raw = _chat(client, extra_headers={"x-gateway-policy": "premium"})
    assert _route(raw) == ("premium", "pricey")
    raw = _chat(client, extra_body={"gateway": {"policy": "premium"}})
    assert _route(raw) == ("premium", "pricey")

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="chat", messages=USER, extra_headers={"x-gateway-policy": "nope"}
        )
    error = _openai_error(bad.value.response)
    assert error["param"] == "x-gateway-policy"
    assert error["type"] == "invalid_request_error"
    assert "nope" in error["message"] and "premium" in error["message"]
    assert bad.value.response.headers["x-gateway-policy-version"] == _version(gw.policy_file)


def test_models_lists_the_policy_client_facing_names(policy_gateway: Any) -> None:
    """GET /v1/models names the models the policy routes, not the config's aliases."""
    gw = policy_gateway(SIM_CONFIG, SIM_POLICY)
    ids = [m.id for m in _client(gw.url).models.list()]
    assert ids == ["chat", "premium", "scored"]


def test_every_v1_response_carries_the_policy_version(policy_gateway: Any) -> None:
    """/v1/models, an unknown /v1 path (404) and a wrong method (405) carry the version too."""
    gw = policy_gateway(SIM_CONFIG, SIM_POLICY)
    version = _version(gw.policy_file)
    for resp in (
        httpx.get(f"{gw.url}/v1/models", timeout=5),
        httpx.get(f"{gw.url}/v1/nope", timeout=5),
        httpx.get(f"{gw.url}/v1/chat/completions", timeout=5),
    ):
        assert resp.headers["x-gateway-policy-version"] == version, resp.status_code
    assert "x-gateway-policy-version" not in httpx.get(f"{gw.url}/healthz", timeout=5).headers


# --- per-request constraints ------------------------------------------------------------------


def test_constraints_from_headers_and_body_change_the_deployment(policy_gateway: Any) -> None:
    """A max price excludes the expensive deployment, required tags exclude the one without
    them, and weights reorder a score route: from headers and from ``gateway`` in the body."""
    gw = policy_gateway(SIM_CONFIG, SIM_POLICY)
    client = _client(gw.url)
    assert _route(_chat(client, model="premium")) == ("premium", "pricey")
    # pricey: ~5 prompt tokens * $100/M + 256 output * $200/M ≈ $0.05 > $0.01
    kwargs: dict[str, Any]
    for kwargs in (
        {"extra_headers": {"x-gateway-max-price": "0.01"}},
        {"extra_body": {"gateway": {"max_price": 0.01}}},
    ):
        assert _route(_chat(client, model="premium", **kwargs)) == ("premium", "cheap")
    for kwargs in (
        {"extra_headers": {"x-gateway-tags": "premium"}},
        {"extra_body": {"gateway": {"tags": ["premium"]}}},
    ):
        assert _route(_chat(client, **kwargs)) == ("chat", "pricey")
    # `scored` counts only quality (pricey 0.9 > cheap 0.1) until the request weighs price
    assert _route(_chat(client, model="scored")) == ("scored", "pricey")
    for kwargs in (
        {"extra_headers": {"x-gateway-weights": "quality=0,price=1"}},
        {"extra_body": {"gateway": {"weights": {"quality": 0, "price": 1}}}},
    ):
        assert _route(_chat(client, model="scored", **kwargs)) == ("scored", "cheap")
    # the header wins over the body
    raw = _chat(
        client,
        model="premium",
        extra_headers={"x-gateway-max-price": "1"},
        extra_body={"gateway": {"max_price": 0.01}},
    )
    assert _route(raw) == ("premium", "pricey")


def test_a_bad_constraint_is_a_400_naming_the_header_or_field(policy_gateway: Any) -> None:
    """A malformed constraint is the caller's error, named by header or ``gateway.<key>``."""
    gw = policy_gateway(SIM_CONFIG, SIM_POLICY)
    base = {"model": "chat", "messages": USER}
    with httpx.Client(base_url=gw.url, timeout=5) as http:
        for headers, body, param in (
            ({"x-gateway-max-price": "cheap"}, base, "x-gateway-max-price"),
            ({"x-gateway-weights": "speed=2"}, base, "x-gateway-weights"),
            ({}, {**base, "gateway": {"max_price": -1}}, "gateway.max_price"),
            ({}, {**base, "gateway": {"colour": "red"}}, None),
        ):
            resp = http.post("/v1/chat/completions", json=body, headers=headers)
            assert resp.status_code == 400, resp.text
            error = _openai_error(resp)
            if param is not None:
                assert error["param"] == param
            else:
                assert "colour" in error["message"]
            assert resp.headers["x-gateway-attempts"] == "0"
            assert resp.headers["x-gateway-policy-version"] == _version(gw.policy_file)
            assert "x-gateway-route" not in resp.headers


def test_the_gateway_key_never_reaches_the_upstream_and_other_bodies_pass_byte_for_byte(
    policy_gateway: Any, scripted_upstream: Any
) -> None:
    """``gateway`` constraints in the body are used for routing and removed; a body without
    them reaches the provider exactly as the caller sent it."""
    pricey, pricey_server = scripted_upstream()
    cheap, cheap_server = scripted_upstream()
    gw = policy_gateway(_up_config(pricey_server.url, cheap_server.url), UP_POLICY)
    client = _client(gw.url)

    raw = _chat(client, temperature=0.5, extra_body={"gateway": {"max_price": 0.01}})
    assert raw.headers["x-gateway-deployment"] == "up-cheap"
    assert pricey.received == []
    assert cheap.received == [{"model": "chat", "messages": USER, "temperature": 0.5}]
    assert b"gateway" not in cheap.raw[0] and b"max_price" not in cheap.raw[0]

    raw = _chat(client, extra_body={"gateway": {"tags": ["premium"]}}, metadata={"a": "b"})
    assert raw.headers["x-gateway-deployment"] == "up-pricey"
    assert pricey.received == [{"model": "chat", "messages": USER, "metadata": {"a": "b"}}]

    # odd spacing, key order and escapes survive: nothing was re-serialised
    sent = b'{ "messages":[{"role":"user","content":"h\\u00e9llo"}],\n "model" :"chat","n":1 }'
    resp = httpx.post(
        f"{gw.url}/v1/chat/completions",
        content=sent,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert resp.status_code == 200 and resp.headers["x-gateway-deployment"] == "up-pricey"
    assert pricey.raw[-1] == sent


# --- capabilities and health -------------------------------------------------------------------


def test_an_image_to_a_route_without_vision_is_a_400_saying_why_each_was_excluded(
    policy_gateway: Any,
) -> None:
    """No candidate of `chat` has vision: a 400 listing every candidate with its reason."""
    gw = policy_gateway(SIM_CONFIG, SIM_POLICY)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]
    with pytest.raises(openai.BadRequestError) as bad:
        _client(gw.url).chat.completions.create(model="chat", messages=messages)
    resp = bad.value.response
    error = _openai_error(resp)
    assert "route `chat`" in error["message"]
    assert "cheap: needs vision" in error["message"]
    assert "pricey: needs vision" in error["message"]
    assert resp.headers["x-gateway-policy-version"] == _version(gw.policy_file)
    assert resp.headers["x-gateway-attempts"] == "0"


def test_ejected_deployments_are_skipped_and_panic_still_tries_them(
    policy_gateway: Any, scripted_upstream: Any
) -> None:
    """Probes eject `gone` (closed port) and `sick` (its /models fails, its completions work).
    Route `main` [gone, well] skips gone without an attempt; route `panic` [gone, sick] has
    nothing healthy left, so both are tried anyway and sick answers."""
    sick, sick_server = scripted_upstream()
    sick.models_script = [("status", 503, None)] * 100_000
    well, well_server = scripted_upstream()
    config = f"""
server: {{request_timeout: 10s}}
health: {{probes: {{kind: none}}}}
policy: {{path: policy.yaml, watch: false}}
deployments:
  - {{name: gone, provider: openai, model: chat, base_url: "http://127.0.0.1:{_closed_port()}/v1",
      probe: {QUICK_PROBE}}}
  - {{name: sick, provider: openai, model: chat, base_url: "{sick_server.url}/v1",
      probe: {QUICK_PROBE}}}
  - {{name: well, provider: openai, model: chat, base_url: "{well_server.url}/v1"}}
"""
    policy = """
routes:
  - {name: main, match: {models: [chat]}, candidates: [{deployment: gone}, {deployment: well}],
     strategy: ordered}
  - {name: panic, match: {models: [last-resort]},
     candidates: [{deployment: gone}, {deployment: sick}], strategy: ordered}
"""
    gw = policy_gateway(config, policy)

    def states() -> dict[str, str]:
        report = httpx.get(f"{gw.url}/admin/deployments", timeout=5).json()
        return {d["name"]: d["status"] for d in report["deployments"]}

    assert wait_for(lambda: states() == {"gone": "ejected", "sick": "ejected", "well": "healthy"})
    client = _client(gw.url)
    raw = _chat(client)
    assert _route(raw) == ("main", "well")
    assert raw.headers["x-gateway-attempts"] == "1"  # gone was never tried

    plan = _explain(gw.url, {"model": "chat", "messages": USER}).json()
    assert plan["panic"] is False and plan["order"] == ["well"]
    assert [e["name"] for e in plan["excluded"]] == ["gone"]
    assert plan["excluded"][0]["reason"].startswith("status ejected: ")

    plan = _explain(gw.url, {"model": "last-resort", "messages": USER}).json()
    assert plan["panic"] is True
    assert sorted(plan["order"]) == ["gone", "sick"]
    assert {e["name"] for e in plan["excluded"]} == {"gone", "sick"}
    raw = _chat(client, model="last-resort")
    assert _route(raw) == ("panic", "sick")
    assert sick.received == [{"model": "chat", "messages": USER}]  # upstream model name
    assert well.received == [{"model": "chat", "messages": USER}]


# --- POST /admin/route/explain ------------------------------------------------------------------


def test_explain_of_a_bare_body_shows_route_exclusions_and_request_and_calls_no_provider(
    policy_gateway: Any, scripted_upstream: Any
) -> None:
    """A bare request body (the call's own x-gateway-* headers apply) gives route, version,
    strategy, order, candidates, exclusions with reasons and a request summary; no upstream
    sees a request."""
    pricey, pricey_server = scripted_upstream()
    cheap, cheap_server = scripted_upstream()
    gw = policy_gateway(_up_config(pricey_server.url, cheap_server.url), UP_POLICY)
    version = _version(gw.policy_file)

    # bare body; the x-gateway-* headers of the explain call apply
    resp = _explain(
        gw.url,
        {"model": "chat", "messages": USER, "max_tokens": 50},
        **{"x-gateway-max-price": "0.005"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-gateway-route"] == "chat"
    assert resp.headers["x-gateway-policy-version"] == version
    plan = resp.json()
    assert plan["route"] == "chat" and plan["policy_version"] == version
    assert plan["strategy"] == "ordered" and plan["panic"] is False
    assert plan["order"] == ["up-cheap"]
    assert [c["name"] for c in plan["candidates"]] == ["up-cheap"]
    assert len(plan["excluded"]) == 1 and plan["excluded"][0]["name"] == "up-pricey"
    assert re.fullmatch(
        r"estimated price \$[\d.e-]+ > max price \$0\.005", plan["excluded"][0]["reason"]
    )
    request = plan["request"]
    assert request["model"] == "chat" and request["endpoint"] == "chat/completions"
    assert request["max_output_tokens"] == 50 and request["prompt_tokens_estimate"] > 0
    assert request["stream"] is False and request["capabilities"] == []
    assert request["constraints"]["max_price"] == 0.005
    assert pricey.received == [] and cheap.received == []


def test_explain_of_the_wrapper_form_scores_every_component_and_calls_no_provider(
    policy_gateway: Any, scripted_upstream: Any
) -> None:
    """``{endpoint, body, headers}`` applies its own headers; each candidate has a score and all
    five components, in score order; an unservable body is a 400 saying why for each
    candidate; no provider is called by any explain request."""
    pricey, pricey_server = scripted_upstream()
    cheap, cheap_server = scripted_upstream()
    gw = policy_gateway(_up_config(pricey_server.url, cheap_server.url), UP_POLICY)
    wrapped = {
        "endpoint": "chat/completions",
        "body": {"model": "chat", "messages": USER, "stream": True},
        "headers": {"X-Gateway-Policy": "scored", "x-gateway-weights": "price=3"},
    }
    resp = _explain(gw.url, wrapped)
    assert resp.status_code == 200, resp.text
    plan = resp.json()
    assert plan["route"] == "scored" and plan["strategy"] == "score"
    assert plan["order"] == ["up-cheap", "up-pricey"]  # price weighs most
    assert plan["excluded"] == []
    for candidate in plan["candidates"]:
        assert set(candidate["components"]) == set(COMPONENTS)
        assert all(0 <= v <= 1 for v in candidate["components"].values())
        assert 0 <= candidate["score"] <= 1
        assert candidate["status"] == "healthy"
    scores = [c["score"] for c in plan["candidates"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    cheap_c = plan["candidates"][0]["components"]
    assert cheap_c["price"] == 1.0 and cheap_c["latency"] == 0.5  # no latency data: neutral
    request = plan["request"]
    assert request["stream"] is True and request["capabilities"] == ["stream"]
    assert request["constraints"]["policy"] == "scored"
    assert request["constraints"]["weights"] == {"price": 3.0}

    # a body with `gateway` constraints in the wrapper: they are read, the 400 lists why
    wrapped["body"] = {"model": "chat", "messages": USER, "gateway": {"tags": ["gpu"]}}
    wrapped["headers"] = {}
    resp = _explain(gw.url, wrapped)
    assert resp.status_code == 400
    error = _openai_error(resp)
    assert "up-pricey: missing tags gpu" in error["message"]
    assert "up-cheap: missing tags gpu" in error["message"]
    assert pricey.received == [] and cheap.received == []


def test_explain_rejects_bad_input_in_openai_shape(policy_gateway: Any) -> None:
    """Not JSON, not an object, unknown wrapper fields, a bad endpoint, a bad body and an unknown
    policy are each a 400 naming the problem."""
    gw = policy_gateway(SIM_CONFIG, SIM_POLICY)
    url = f"{gw.url}/admin/route/explain"
    with httpx.Client(timeout=5) as http:
        resp = http.post(url, content=b"{nope", headers={"Content-Type": "application/json"})
        assert resp.status_code == 400 and "not valid JSON" in _openai_error(resp)["message"]
        for given, param in (
            ([1, 2], None),
            ({"body": {"model": "chat", "messages": USER}, "extra": 1}, "extra"),
            ({"endpoint": "images", "body": {"model": "chat"}}, "endpoint"),
            ({"body": "text"}, "body"),
            ({"body": {"model": "chat", "messages": USER}, "headers": {"a": 1}}, "headers"),
            ({"model": "chat"}, "messages"),
            (
                {
                    "body": {"model": "chat", "messages": USER},
                    "headers": {"x-gateway-max-price": "0"},
                },
                "x-gateway-max-price",
            ),
            # the engine names the header whichever way the route name came (spec: rank step 1)
            (
                {"model": "chat", "messages": USER, "gateway": {"policy": "nope"}},
                "x-gateway-policy",
            ),
        ):
            resp = http.post(url, json=given)
            assert resp.status_code == 400, (given, resp.text)
            error = _openai_error(resp)
            assert error["param"] == param, (given, error)
            assert resp.headers["x-gateway-policy-version"] == _version(gw.policy_file)
        resp = http.post(
            url,
            json={"model": "chat", "messages": USER},
            headers={"x-gateway-policy": "nope"},
        )
        assert resp.status_code == 400
        assert _openai_error(resp)["param"] == "x-gateway-policy"
        resp = http.post(url, json={"model": "unknown", "messages": USER})
        assert resp.status_code == 404
        assert _openai_error(resp)["param"] == "model"


def test_admin_token_guards_policy_endpoints(policy_gateway: Any, scripted_upstream: Any) -> None:
    """With admin.token set, explain, the policy status and reload answer 401 without the
    bearer and 200 with it; the token shows up nowhere."""
    _, pricey_server = scripted_upstream()
    _, cheap_server = scripted_upstream()
    head = f"admin: {{token: {ADMIN_TOKEN}}}"
    gw = policy_gateway(_up_config(pricey_server.url, cheap_server.url, head), UP_POLICY)
    good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    calls = (
        ("POST", "/admin/route/explain", {"model": "chat", "messages": USER}),
        ("GET", "/admin/policies", None),
        ("POST", "/admin/policies/reload", None),
    )
    with httpx.Client(base_url=gw.url, timeout=5) as http:
        for method, path, body in calls:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                resp = http.request(method, path, json=body, headers=headers)
                assert resp.status_code == 401, path
                error = _openai_error(resp)
                assert "admin.token" in error["message"]
                assert ADMIN_TOKEN not in resp.text
            resp = http.request(method, path, json=body, headers=good)
            assert resp.status_code == 200, (path, resp.text)
            assert ADMIN_TOKEN not in resp.text


# --- policy status and metrics -------------------------------------------------------------------


def test_admin_policies_and_metrics_describe_the_active_policy(policy_gateway: Any) -> None:
    """GET /admin/policies names the version, source, routes and reload state; /metrics has
    the reload counters, the failing gauge and the load time."""
    before = time.time()
    gw = policy_gateway(SIM_CONFIG, SIM_POLICY)
    status = httpx.get(f"{gw.url}/admin/policies", timeout=5).json()
    assert status["version"] == _version(gw.policy_file)
    assert status["sources"] == [str(gw.policy_file)]
    assert status["routes"] == [
        "research",
        "gold",
        "tooling",
        "long-prompt",
        "chat",
        "premium",
        "scored",
    ]
    assert status["default_route"] is None
    assert status["reloadable"] is True
    assert status["watching"] == []  # watch: false
    assert status["last_error"] is None and status["last_error_at"] is None
    assert status["reloads"] == {"ok": 0, "error": 0, "unchanged": 0}
    assert before - 1 <= status["loaded_at"] <= time.time() + 1

    resp = httpx.post(f"{gw.url}/admin/policies/reload", timeout=5)
    assert resp.status_code == 200
    assert resp.json()["reloaded"] is False and resp.json()["error"] is None  # unchanged

    text = httpx.get(f"{gw.url}/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    reloads = {
        s.labels["outcome"]: s.value
        for s in families["llm_gateway_policy_reloads"].samples
        if s.name == "llm_gateway_policy_reloads_total"
    }
    assert reloads == {"ok": 0, "error": 0, "unchanged": 1}
    assert families["llm_gateway_policy_reload_failing"].samples[0].value == 0
    loaded = families["llm_gateway_policy_loaded_timestamp_seconds"].samples[0].value
    assert loaded == pytest.approx(status["loaded_at"])


def test_without_a_policy_file_the_config_routes_are_the_policy(
    policy_gateway: Any,
) -> None:
    """No ``policy:``: one ordered route per configured name, version ``config-…``, not
    reloadable (POST reload answers 422 saying so)."""
    gw = policy_gateway(SIM_CONFIG.replace("policy: {path: policy.yaml, watch: false}", ""), "")
    client = _client(gw.url)
    raw = _chat(client, model="legacy-cheap")
    assert _route(raw) == ("legacy-cheap", "cheap")
    assert raw.headers["x-gateway-policy-version"].startswith("config-")
    assert [m.id for m in client.models.list()] == ["legacy-cheap", "legacy-pricey"]
    status = httpx.get(f"{gw.url}/admin/policies", timeout=5).json()
    assert status["reloadable"] is False and status["sources"] == ["<config routes>"]
    resp = httpx.post(f"{gw.url}/admin/policies/reload", timeout=5)
    assert resp.status_code == 422
    assert "no policy file" in resp.json()["error"]
