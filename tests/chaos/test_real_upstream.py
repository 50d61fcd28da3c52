"""A scenario against a "real" upstream: a deployment given as ``upstream: {base_url, api_key_env}``
is reached through the runner's fault-injecting proxy, so the catalogue can be pointed at a
user's own deployments. A standalone simulated server stands in for the provider here (it does
not echo, so the driver checks completeness — finish_reason and ``[DONE]`` — not content)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.chaos.runner import run
from gateway.chaos.scenario import parse_scenario
from gateway.providers.simulated.handlers import Handler
from gateway.providers.simulated.server import SimulatedServer
from gateway.providers.simulated.settings import SimulatedSettings

pytestmark = pytest.mark.integration

SCENARIO = """
name: real-upstream
seed: 5
deployments:
  - name: provider
    aliases: [chat]
    tags: [chat, completions, stream]
    price: {{input: 1.0, output: 2.0}}
    upstream: {{base_url: "{url}", api_key_env: CHAOS_TEST_KEY}}
  - name: fallback
    aliases: [chat]
    tags: [chat, completions, stream]
    simulated: {{latency: 10ms, tokens_per_second: 2000}}
gateway:
  health: {{window: {{buckets: 10, bucket: 1s}}, probes: {{interval: 1s, timeout: 500ms}}}}
  resilience: {{breaker: {{open_for: 1s, open_max: 2s}}}}
policy:
  version: 1
  routes:
    - {{name: chat, match: {{models: [chat]}}, strategy: ordered,
       candidates: [{{deployment: provider}}, {{deployment: fallback}}]}}
traffic: {{model: chat, rate: 30, duration: 4s, stream_share: 0.4}}
faults:
  - {{at: 1s, for: 1.5s, target: provider, kind: brownout, rate: 1.0, status: 503}}
expect: {{max_client_failures: 0}}
"""


def test_a_real_upstream_behind_the_fault_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAOS_TEST_KEY", "sk-chaos-secret-value")
    seen_keys: set[str] = set()

    async def scenario() -> dict[str, Any]:
        provider = SimulatedServer(
            SimulatedSettings(latency=0.01, tokens_per_second=2000), model="provider-model"
        )

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            seen_keys.add(request.headers.get("Authorization", ""))
            return await handler(request)

        provider.app.middlewares.append(record)
        async with provider:
            loaded = parse_scenario(SCENARIO.format(url=provider.url), str(tmp_path / "s.yaml"))
            return await run(loaded, tmp_path)

    result = asyncio.run(scenario())
    figures = result["figures"]
    assert result["passed"], [c for c in result["checks"] if not c["passed"]]
    assert figures["truncated_successes"] == 0 and figures["client_failures"] == 0
    # the provider answered through the proxy, and the fallback covered the fault
    answered: dict[str, int] = {}
    columns = result["requests"]["columns"]
    for row in result["requests"]["rows"]:
        who = row[columns.index("deployment")]
        answered[who] = answered.get(who, 0) + 1
    assert answered.get("provider", 0) > 0 and answered.get("fallback", 0) > 0
    assert seen_keys == {"Bearer sk-chaos-secret-value"}  # the proxy added the key upstream
    # the key's value is nowhere in what the run wrote
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".png":
            assert "sk-chaos-secret-value" not in path.read_text(errors="replace"), path
    # the proxy billed the provider's answers from their usage
    assert result["upstreams"]["provider"]["billed_completion_tokens"] > 0
