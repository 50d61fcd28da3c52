"""The ``health`` and ``admin`` config sections: defaults, the effective probe of each deployment,
every bad value reported as ``FILE:LINE: PATH: reason``, secrets kept out of sight, and the store
and monitor the gateway builds from them."""

from __future__ import annotations

import asyncio
import re
import textwrap
from typing import Any

import aiohttp
import pytest
import yaml
from pydantic import BaseModel, SecretStr

from gateway.app import build_monitor, make_provider, make_store
from gateway.config import (
    AdminSettings,
    ConfigError,
    GatewayConfig,
    HealthSettings,
    ProbeDefaults,
    RedisSettings,
    StatusConfig,
    WindowConfig,
    parse_config,
)
from health.store import MemoryStore, ProbeResult

ACCEPTED = "a duration such as '250ms', '30s', '2m' or a number of seconds"
REDIS_PASSWORD = "redis-pw-DO-NOT-LEAK-93b1"
ADMIN_TOKEN = "admin-tok-DO-NOT-LEAK-5d2e"
ISSUE = re.compile(r"^gw\.yaml:\d+: \S+: .+$")
THREE = """\
deployments:
  - {name: oa, provider: openai, model: m, base_url: "http://127.0.0.1:9/v1"}
  - {name: sim, provider: simulated, model: m}
  - {name: ll, provider: litellm, model: anthropic/claude}
"""


def _parse(text: str, tail: str = "") -> GatewayConfig:
    """Validate ``text`` (dedented) followed by ``tail`` (e.g. :data:`THREE`)."""
    return parse_config(textwrap.dedent(text) + tail, "gw.yaml")


def _rejected(text: str, tail: str = "") -> list[str]:
    with pytest.raises(ConfigError) as info:
        _parse(text, tail)
    lines = str(info.value).splitlines()
    assert all(ISSUE.match(line) for line in lines), lines
    return lines


def _plain(value: Any) -> Any:
    """A validated model as plain YAML data, secrets revealed (the inverse of loading)."""
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# --- defaults and round trips ----------------------------------------------------------------


def test_minimal_config_gets_the_documented_health_and_admin_defaults() -> None:
    """Memory store, 12 x 5 s window, the status rules, probes on auto every 15 s, no token."""
    config = _parse(THREE)
    h = config.health
    assert h.store == "memory"
    assert h.window == WindowConfig(buckets=12, bucket=5.0, ewma_alpha=0.3)
    assert h.status == StatusConfig(
        min_requests=10, degraded_error_rate=0.1, unhealthy_error_rate=0.5, degraded_latency=None
    )
    assert h.probes == ProbeDefaults(
        kind="auto",
        interval=15.0,
        timeout=5.0,
        jitter=0.2,
        healthy_threshold=2,
        unhealthy_threshold=3,
    )
    assert h.redis.url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert (h.redis.namespace, h.redis.flush_interval, h.redis.timeout) == ("default", 0.25, 0.5)
    assert config.admin == AdminSettings(token=None)


def test_auto_probe_is_models_for_openai_and_simulated_and_none_for_litellm() -> None:
    """``kind: auto`` probes /models where there is one; a litellm probe would cost a completion."""
    config = _parse(THREE)
    assert [config.probe(n)[0] for n in ("oa", "sim", "ll")] == ["models", "models", "none"]
    assert config.probe("oa")[1] == config.health.probes


@pytest.mark.parametrize(
    ("fleet", "expected"),
    [
        ("models", ["models", "models", "none"]),  # litellm has no /models: not probed
        ("completion", ["completion", "completion", "completion"]),
        ("none", ["none", "none", "none"]),
    ],
)
def test_fleet_wide_probe_kind_applies_to_every_deployment_that_can_take_it(
    fleet: str, expected: list[str]
) -> None:
    """``health.probes.kind`` is every deployment's kind, except /models on litellm."""
    config = _parse(f"health:\n  probes: {{kind: {fleet}}}\n{THREE}")
    assert [config.probe(n)[0] for n in ("oa", "sim", "ll")] == expected


def test_deployment_probe_override_merges_with_the_fleet_defaults() -> None:
    """Each key a deployment sets wins; each key it leaves out comes from ``health.probes``."""
    config = _parse(
        """\
        health:
          probes: {kind: none, interval: 10s, timeout: 2s, unhealthy_threshold: 4}
        deployments:
          - name: oa
            provider: openai
            model: m
            base_url: http://127.0.0.1:9/v1
            probe: {kind: models, interval: 500ms, healthy_threshold: 5}
          - name: ll
            provider: litellm
            model: anthropic/claude
            probe: {kind: completion, jitter: 0}
          - {name: sim, provider: simulated, model: m}
        """
    )
    kind, oa = config.probe("oa")
    assert kind == "models"
    assert (oa.interval, oa.timeout, oa.jitter) == (0.5, 2.0, 0.2)
    assert (oa.healthy_threshold, oa.unhealthy_threshold) == (5, 4)
    kind, ll = config.probe("ll")
    assert kind == "completion"
    assert (ll.interval, ll.timeout, ll.jitter, ll.unhealthy_threshold) == (10.0, 2.0, 0.0, 4)
    kind, sim = config.probe("sim")
    assert kind == "none"
    assert sim == config.health.probes


def test_health_and_admin_sections_round_trip() -> None:
    """Every health and admin key is read (human units converted) and a dump loads back equal."""
    config = _parse(
        f"""\
        health:
          store: redis
          redis:
            url: redis://:{REDIS_PASSWORD}@cache:6379/2
            namespace: fleet-a
            flush_interval: 100ms
            timeout: 2s
          window: {{buckets: 30, bucket: 2s, ewma_alpha: 0.5}}
          status:
            min_requests: 4
            degraded_error_rate: 0.2
            unhealthy_error_rate: 0.2
            degraded_latency: 1.5s
          probes:
            kind: completion
            interval: 1m
            timeout: 250ms
            jitter: 0
            healthy_threshold: 1
            unhealthy_threshold: 7
        admin:
          token: {ADMIN_TOKEN}
        """,
        THREE,
    )
    h = config.health
    assert h.redis == RedisSettings(
        url=SecretStr(f"redis://:{REDIS_PASSWORD}@cache:6379/2"),
        namespace="fleet-a",
        flush_interval=0.1,
        timeout=2.0,
    )
    assert h.window == WindowConfig(buckets=30, bucket=2.0, ewma_alpha=0.5)
    assert h.status.degraded_latency == 1.5
    assert (h.probes.interval, h.probes.timeout, h.probes.unhealthy_threshold) == (60.0, 0.25, 7)
    assert config.admin.token is not None
    assert config.admin.token.get_secret_value() == ADMIN_TOKEN
    dumped = yaml.safe_dump(_plain(config), sort_keys=False)
    again = parse_config(dumped, "dumped.yaml")
    assert _plain(again.health) == _plain(h)
    assert _plain(again.admin) == _plain(config.admin)
    assert isinstance(again.health, HealthSettings)


# --- bad input ---------------------------------------------------------------------------------


def test_litellm_deployment_probing_models_is_refused_at_its_probe() -> None:
    """A litellm deployment has no /models to probe: the error says what to use instead."""
    issues = _rejected(
        """\
        deployments:
          - name: ll
            provider: litellm
            model: anthropic/claude
            probe:
              kind: models
        """
    )
    assert issues == [
        "gw.yaml:5: deployments[0].probe: litellm deployments have no models endpoint to probe: "
        "use kind `completion` (one token per probe) or `none`"
    ]


def test_unhealthy_rate_below_the_degraded_rate_is_refused() -> None:
    """The unhealthy threshold may not sit below the degraded one."""
    issues = _rejected(
        """\
        health:
          status:
            degraded_error_rate: 0.3
            unhealthy_error_rate: 0.2
        """,
        THREE,
    )
    assert issues == [
        "gw.yaml:2: health.status: unhealthy_error_rate (0.2) must not be below "
        "degraded_error_rate (0.3)"
    ]


def test_every_bad_health_and_admin_value_is_reported_at_its_line() -> None:
    """Bad durations, negative or out-of-range numbers and unknown keys under health, admin and a
    deployment's probe are all reported in one pass, each at its own line and path."""
    issues = _rejected(
        """\
        health:
          store: memry
          windw: {}
          window: {buckets: 0, bucket: 5 parsecs, ewma_alpha: 0}
          redis: {namespace: "bad space", flush_interval: -1s, timeout: 0}
          status: {min_requests: 0, degraded_error_rate: 1.5, degraded_latency: soon}
          probes:
            kind: sometimes
            interval: 0s
            timeout: -2
            jitter: 1
            healthy_threshold: 0
            unhealthy_threshold: -1
            intervall: 1s
        admin: {tokn: x}
        deployments:
          - name: a
            provider: openai
            model: m
            base_url: http://h:1/v1
            probe: {kind: auto, interval: 0, kindd: x}
        """
    )
    unknown = "unknown key (check the spelling; see the config reference in README.md)"
    duration = "expected a duration such as '250ms', '30s', '2m' or a number of seconds, got"
    assert issues == [
        "gw.yaml:2: health.store: Input should be 'memory' or 'redis'",
        f"gw.yaml:3: health.windw: {unknown}",
        "gw.yaml:4: health.window.buckets: Input should be greater than or equal to 1",
        f"gw.yaml:4: health.window.bucket: {duration} '5 parsecs'",
        "gw.yaml:4: health.window.ewma_alpha: Input should be greater than 0",
        "gw.yaml:5: health.redis.namespace: String should match pattern '^[A-Za-z0-9._:-]+$'",
        f"gw.yaml:5: health.redis.flush_interval: {duration} '-1s'",
        "gw.yaml:5: health.redis.timeout: Input should be greater than 0",
        "gw.yaml:6: health.status.min_requests: Input should be greater than or equal to 1",
        "gw.yaml:6: health.status.degraded_error_rate: Input should be less than or equal to 1",
        f"gw.yaml:6: health.status.degraded_latency: {duration} 'soon'",
        "gw.yaml:8: health.probes.kind: Input should be 'auto', 'models', 'completion' or 'none'",
        "gw.yaml:9: health.probes.interval: Input should be greater than 0",
        "gw.yaml:10: health.probes.timeout: a duration cannot be negative, got -2",
        "gw.yaml:11: health.probes.jitter: Input should be less than 1",
        "gw.yaml:12: health.probes.healthy_threshold: Input should be greater than or equal to 1",
        "gw.yaml:13: health.probes.unhealthy_threshold: Input should be greater than or equal to 1",
        f"gw.yaml:14: health.probes.intervall: {unknown}",
        f"gw.yaml:15: admin.tokn: {unknown}",
        "gw.yaml:21: deployments[0].probe.kind: Input should be 'models', 'completion' or 'none'",
        "gw.yaml:21: deployments[0].probe.interval: Input should be greater than 0",
        f"gw.yaml:21: deployments[0].probe.kindd: {unknown}",
    ]


def test_infinite_durations_are_refused_where_they_are_written() -> None:
    """YAML's ``.inf`` is a number, but no window, probe interval or deadline may be endless
    (an endless bucket would fail at start, an endless probe interval never probe)."""
    issues = _rejected(
        """\
        health:
          window: {bucket: .inf}
          probes: {interval: .inf}
        """,
        THREE,
    )
    assert issues == [
        f"gw.yaml:2: health.window.bucket: expected a finite duration ({ACCEPTED}), got inf",
        f"gw.yaml:3: health.probes.interval: expected a finite duration ({ACCEPTED}), got inf",
    ]


@pytest.mark.parametrize(
    ("token", "reason"), [('""', "must not be empty"), ('"   "', "must not be only whitespace")]
)
def test_empty_admin_token_is_refused(token: str, reason: str) -> None:
    """An empty token would let anyone with an empty bearer in: refused where it is written."""
    assert _rejected(f"admin:\n  token: {token}\n{THREE}") == [f"gw.yaml:2: admin.token: {reason}"]


# --- secrets -----------------------------------------------------------------------------------


def test_redis_url_and_admin_token_never_show_in_repr_or_json() -> None:
    """The Redis URL may carry a password and the admin token is a credential: both are masked
    in repr, str and a JSON dump of the config, at every level."""
    config = _parse(
        f"""\
        health:
          store: redis
          redis: {{url: "redis://:{REDIS_PASSWORD}@cache:6379/0"}}
        admin: {{token: {ADMIN_TOKEN}}}
        """,
        THREE,
    )
    shown = [
        repr(config),
        str(config),
        repr(config.health),
        repr(config.health.redis),
        str(config.admin),
        config.model_dump_json(),
        config.health.model_dump_json(),
        str(config.model_dump()),
    ]
    for text in shown:
        assert REDIS_PASSWORD not in text
        assert ADMIN_TOKEN not in text
    assert "**********" in config.model_dump_json()


def test_config_error_in_the_redis_section_does_not_echo_the_url() -> None:
    """A rejected config with a Redis password in it does not show the password."""
    with pytest.raises(ConfigError) as info:
        _parse(
            f"""\
            health:
              redis: {{url: "redis://:{REDIS_PASSWORD}@cache:6379/0", tls: yes}}
            """,
            THREE,
        )
    assert "health.redis.tls: unknown key" in str(info.value)
    assert REDIS_PASSWORD not in str(info.value)
    assert REDIS_PASSWORD not in repr(info.value.issues)


# --- what the gateway builds from it -----------------------------------------------------------


def test_memory_store_is_built_with_the_configured_window() -> None:
    """``store: memory`` gives a MemoryStore whose windows have the configured shape."""
    config = _parse(f"health:\n  window: {{buckets: 6, bucket: 250ms, ewma_alpha: 0.5}}\n{THREE}")
    store = make_store(config)
    assert isinstance(store, MemoryStore)
    window = store.window("oa")
    assert (window.buckets, window.width, window.alpha) == (6, 0.25, 0.5)
    assert window.window_seconds == 1.5
    assert store.shared().to_dict() == {"store": "memory", "shared_metrics": "local"}


def test_monitor_takes_probe_settings_and_status_rules_from_the_config() -> None:
    """Each deployment is probed (or not) as ``config.probe`` says, and its ejection threshold
    and the fleet's min_requests decide its status."""
    config = _parse(
        """\
        health:
          status: {min_requests: 2}
          probes: {kind: none, interval: 3s, unhealthy_threshold: 5}
        deployments:
          - name: oa
            provider: openai
            model: m
            base_url: http://127.0.0.1:9/v1
            probe: {kind: models, unhealthy_threshold: 2}
          - {name: sim, provider: simulated, model: m}
        """
    )

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            providers = [make_provider(d, session) for d in config.deployments]
            monitor = build_monitor(config, providers)
            try:
                report = {d["name"]: d for d in monitor.report()["deployments"]}
                assert report["oa"]["probe"] == {
                    "kind": "models",
                    "interval_s": 3.0,
                    "timeout_s": 5.0,
                    "healthy_threshold": 2,
                    "unhealthy_threshold": 2,
                }
                assert report["sim"]["probe"] == {"kind": "none"}
                for _ in range(2):
                    monitor.store.add_probe("oa", ProbeResult(0.0, False, None, "refused"))
                assert monitor.status("oa").state == "ejected"
                window = monitor.window("sim")
                window.failure("server_error")
                assert monitor.status("sim").state == "healthy"  # one request: too few
                window.failure("server_error")
                assert monitor.status("sim").state == "unhealthy"
            finally:
                for provider in providers:
                    await provider.close()

    asyncio.run(main())
