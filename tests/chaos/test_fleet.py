"""The chaos runner's process handling: a private Redis it can kill, freeze and restart, gateway
replicas that fail to start with the gateway's own words, and the sampler's reading of
``/metrics``."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from gateway.chaos.fleet import GatewayReplica, RedisProcess, RunError, parse_metrics

METRICS = """\
# HELP llm_gateway_deployment_attempts_total Attempts sent to a deployment, by outcome.
# TYPE llm_gateway_deployment_attempts_total counter
llm_gateway_deployment_attempts_total{deployment="primary",outcome="success"} 12.0
llm_gateway_deployment_attempts_total{deployment="primary",outcome="error"} 3.0
llm_gateway_deployment_attempts_total{deployment="fallback",outcome="success"} 4.0
llm_gateway_deployment_attempts_total{deployment="fallback",outcome="error"} 0.0
# HELP llm_gateway_breaker_state Breaker state.
# TYPE llm_gateway_breaker_state gauge
llm_gateway_breaker_state{deployment="primary",state="closed"} 0.0
llm_gateway_breaker_state{deployment="primary",state="open"} 1.0
llm_gateway_breaker_state{deployment="fallback",state="closed"} 1.0
llm_gateway_breaker_state{deployment="fallback",state="open"} 0.0
# HELP llm_gateway_deployment_status Status.
# TYPE llm_gateway_deployment_status gauge
llm_gateway_deployment_status{deployment="primary",state="healthy"} 0.0
llm_gateway_deployment_status{deployment="primary",state="unhealthy"} 1.0
llm_gateway_deployment_status{deployment="fallback",state="healthy"} 1.0
"""


def test_parse_metrics_keeps_counters_breaker_and_status() -> None:
    assert parse_metrics(METRICS) == {
        "attempts": {
            "primary": {"success": 12.0, "error": 3.0},
            "fallback": {"success": 4.0, "error": 0.0},
        },
        "breaker": {"primary": "open", "fallback": "closed"},
        "status": {"primary": "unhealthy", "fallback": "healthy"},
    }


@pytest.mark.integration
def test_redis_can_be_killed_frozen_and_restarted_on_its_port(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        pytest.skip("redis-server is not installed")

    async def scenario() -> None:
        redis = RedisProcess(tmp_path)
        try:
            await redis.start()
            port = redis.port
            assert await redis.ping()
            redis.freeze()
            assert not await redis.ping()  # connected, but nothing answers
            redis.thaw()
            assert await redis.ping()
            await redis.kill()
            assert not await redis.ping()
            await redis.start()
            assert redis.port == port and await redis.ping()
        finally:
            await redis.stop()
        assert not await redis.ping()

    asyncio.run(scenario())


@pytest.mark.integration
def test_a_replica_that_cannot_start_raises_with_the_gateways_words(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server: {port: 0}\ndeployments: []\nbogus: 1\n")

    async def scenario() -> None:
        replica = GatewayReplica(0, config, tmp_path / "gateway-0.log")
        try:
            await replica.start()
        finally:
            await replica.stop()

    with pytest.raises(RunError) as raised:
        asyncio.run(scenario())
    message = str(raised.value)
    assert "gateway replica 0 did not start" in message
    assert "bogus" in message  # the gateway's own complaint, not a bare timeout
    assert "bogus" in (tmp_path / "gateway-0.log").read_text()
