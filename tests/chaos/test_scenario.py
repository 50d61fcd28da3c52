"""Chaos scenario files: a full scenario loads, each fault kind becomes the right simulated
faults, scaling touches only the timeline, every bad input (and a load beyond the driver's
bounds) is reported as ``FILE:LINE: PATH: reason``, the generated gateway config passes the
gateway's own checks, and interpolated secrets reach that config but never the JSON form or a
repr. Pure: no sockets."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.chaos.scenario import (
    MAX_SCALE,
    REDACTED,
    FaultSpec,
    Scenario,
    load_scenario,
    parse_scenario,
    scenario_from_json,
)
from gateway.config import GatewayConfig, parse_config
from gateway.policy_loader import deployment_infos, load_policy
from gateway.providers.simulated.settings import Fault
from gateway.yamlfile import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "chaos" / "primary-outage.yaml"
URLS = {"primary": "http://127.0.0.1:1001/v1", "fallback": "http://127.0.0.1:1002/v1"}

# Two simulated deployments serving `chat`, 30 s of traffic; tests append `faults:` and more.
BASE = """\
name: base
deployments:
  - name: primary
    aliases: [chat]
    simulated: {latency: 40ms}
  - name: fallback
    aliases: [chat]
    simulated: {latency: 20ms}
traffic:
  model: chat
  rate: 40
  duration: 30s
"""

FULL = """\
name: full-house
description: "Every section at once."
seed: 7
ci: {scale: 0.5}
deployments:
  - name: primary
    model: sim-large
    aliases: [chat]
    tags: [chat, completions, stream]
    context_window: 128000
    price: {input: 2.5, output: 10}
    timeouts: {connect: 1s, first_token: 2s}
    max_concurrency: 64
    simulated: {latency: 40ms, tokens_per_second: 400, seed: 3}
  - name: real
    aliases: [chat]
    upstream: {base_url: "https://api.example.com/v1", api_key_env: EXAMPLE_API_KEY}
gateway:
  replicas: 2
  health: {window: {buckets: 10, bucket: 1s}, probes: {interval: 1s, timeout: 500ms}}
  resilience: {breaker: {open_for: 1s}}
policy:
  routes:
    - name: chat
      match: {models: [chat]}
      candidates: [{deployment: primary}, {deployment: real}]
      strategy: ordered
traffic:
  model: chat
  concurrency: 8
  duration: 60s
  stream_share: 0.25
  prompt_tokens: 100
  output_tokens: [4, 12]
  timeout: 20s
  headers: {x-gateway-timeout: 10s}
faults:
  - {at: 5s, for: 10s, target: primary, kind: outage, detect_within: 3s, recover_within: 6s}
  - {at: 20s, for: 4s, target: real, kind: rate_limit, retry_after: 2s}
  - {at: 30s, for: 5s, kind: redis_outage, mode: freeze}
  - at: 40s
    kind: policy_reload
    policy:
      routes:
        - name: chat
          match: {models: [chat]}
          candidates: [{deployment: real}, {deployment: primary}]
          strategy: ordered
  - {at: 50s, for: 5s, kind: kill_replica, replica: 0}
expect:
  max_client_failures: 3
  allowed_failure_reasons: [replica_killed]
  max_retry_amplification: 1.5
  max_p99: 3s
  max_wasted_share: 0.5
"""


def _scenario(text: str, scale: float | None = None, file: str = "chaos.yaml") -> Scenario:
    return parse_scenario(textwrap.dedent(text), file, scale)


def _with_faults(*faults: str, extra: str = "") -> str:
    return BASE + extra + "faults:\n" + "".join(f"  - {f}\n" for f in faults)


def _rejected(text: str) -> list[str]:
    """Load ``text`` expecting rejection; return the rendered issues."""
    with pytest.raises(ConfigError) as info:
        _scenario(text)
    return str(info.value).splitlines()


def _line(text: str, needle: str) -> int:
    """The 1-based number of the first line of ``text`` containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _validated(scenario: Scenario, tmp_path: Path, **kwargs: Any) -> GatewayConfig:
    """The scenario's generated config, written and checked as the gateway checks a file."""
    policy_path = None
    if scenario.policy is not None:
        policy_path = tmp_path / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(scenario.policy), encoding="utf-8")
    urls = {d.name: f"http://127.0.0.1:{2000 + i}/v1" for i, d in enumerate(scenario.deployments)}
    document = scenario.gateway_config(
        urls,
        redis_url=kwargs.get("redis_url"),
        policy_path=None if policy_path is None else str(policy_path),
    )
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return parse_config(config_path.read_text(encoding="utf-8"), str(config_path))


# --- loading ------------------------------------------------------------------------------------


def test_full_scenario_loads_every_section() -> None:
    """Every section is read into the runner's types, durations in seconds."""
    s = _scenario(FULL)
    assert (s.name, s.description, s.seed, s.scale, s.ci_scale) == (
        "full-house",
        "Every section at once.",
        7,
        1.0,
        0.5,
    )
    primary, real = s.deployments
    assert (primary.name, primary.model, primary.price_input, primary.price_output) == (
        "primary",
        "sim-large",
        2.5,
        10.0,
    )
    assert primary.simulated is not None
    assert (primary.simulated.latency, primary.simulated.seed) == (0.04, 3)
    assert primary.simulated.echo is True and primary.simulated.faults == ()
    assert primary.extra == {
        "aliases": ["chat"],
        "tags": ["chat", "completions", "stream"],
        "context_window": 128000,
        "timeouts": {"connect": "1s", "first_token": "2s"},
        "max_concurrency": 64,
    }
    assert (real.simulated, real.upstream_url, real.api_key_env) == (
        None,
        "https://api.example.com/v1",
        "EXAMPLE_API_KEY",
    )
    assert (real.model, real.price_input, real.price_output) == ("real", 0.0, 0.0)
    assert s.replicas == 2 and "replicas" not in s.gateway
    assert s.gateway["resilience"] == {"breaker": {"open_for": "1s"}}
    assert s.policy is not None and s.policy["routes"][0]["name"] == "chat"
    t = s.traffic
    assert (t.model, t.rate, t.concurrency, t.duration, t.stream_share) == (
        "chat",
        None,
        8,
        60.0,
        0.25,
    )
    assert (t.prompt_tokens, t.output_tokens, t.timeout) == ((100, 100), (4, 12), 20.0)
    assert t.headers == {"x-gateway-timeout": "10s"}
    assert [(f.index, f.kind, f.at, f.duration, f.target) for f in s.faults] == [
        (0, "outage", 5.0, 10.0, "primary"),
        (1, "rate_limit", 20.0, 4.0, "real"),
        (2, "redis_outage", 30.0, 5.0, None),
        (3, "policy_reload", 40.0, None, None),
        (4, "kill_replica", 50.0, 5.0, None),
    ]
    assert (s.faults[0].detect_within, s.faults[0].recover_within, s.faults[0].end) == (
        3.0,
        6.0,
        15.0,
    )
    assert s.faults[1].params == {"rate": 1.0, "retry_after": 2.0}
    assert s.faults[2].params == {"mode": "freeze"}
    assert s.faults[3].params["policy"]["routes"][0]["candidates"][0] == {"deployment": "real"}
    assert s.faults[4].params == {"replica": 0}
    e = s.expect
    assert (e.max_client_failures, e.allowed_failure_reasons, e.max_retry_amplification) == (
        3,
        ("replica_killed",),
        1.5,
    )
    assert (e.max_p99, e.max_wasted_share) == (3.0, 0.5)
    assert s.uses_redis()


def test_defaults_apply_when_left_out() -> None:
    """Name from the file stem, seed 0, model = name, default traffic shape and expectations."""
    text = BASE.replace("name: base\n", "")
    s = _scenario(text, file="configs/chaos/my-run.yaml")
    assert (s.name, s.description, s.seed, s.scale, s.ci_scale, s.replicas) == (
        "my-run",
        "",
        0,
        1.0,
        1.0,
        1,
    )
    assert s.deployments[0].model == "primary"
    assert (s.traffic.stream_share, s.traffic.prompt_tokens, s.traffic.output_tokens) == (
        0.0,
        (50, 400),
        (8, 32),
    )
    assert s.traffic.timeout == 30.0 and s.traffic.headers == {}
    assert s.faults == () and s.policy is None and s.gateway == {}
    e = s.expect
    assert (e.max_client_failures, e.allowed_failure_reasons, e.max_retry_amplification) == (
        0,
        (),
        "budget",
    )
    assert (e.max_p99, e.max_wasted_share) == (None, None)
    assert not s.uses_redis()


def test_load_scenario_reads_the_file_and_names_it(tmp_path: Path) -> None:
    """load_scenario reads the path; its errors name that file."""
    path = tmp_path / "from-disk.yaml"
    path.write_text(BASE.replace("name: base\n", ""), encoding="utf-8")
    assert load_scenario(path).name == "from-disk"
    path.write_text(BASE.replace("rate: 40", "rate: -1"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}:{_line(BASE, 'rate: 40')}: traffic.rate: ")


# --- fault kinds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("{kind: outage}", [Fault(kind="refuse", start=2, end=6)]),
        ("{kind: brownout}", [Fault(kind="status", status=500, rate=0.3, start=2, end=6)]),
        (
            "{kind: brownout, status: 503, rate: 0.5}",
            [Fault(kind="status", status=503, rate=0.5, start=2, end=6)],
        ),
        (
            "{kind: rate_limit, retry_after: 1s}",
            [
                Fault(
                    kind="status",
                    status=429,
                    retry_after=1,
                    rate=1.0,
                    code="rate_limit_exceeded",
                    message="Rate limit reached (chaos)",
                    start=2,
                    end=6,
                )
            ],
        ),
        (
            "{kind: rate_limit, rate: 0.5}",
            [
                Fault(
                    kind="status",
                    status=429,
                    rate=0.5,
                    code="rate_limit_exceeded",
                    message="Rate limit reached (chaos)",
                    start=2,
                    end=6,
                )
            ],
        ),
        (
            "{kind: latency, delay: 800ms}",
            [Fault(kind="slow_first_token", delay=0.8, rate=1.0, start=2, end=6)],
        ),
        (
            "{kind: slow_first_token, delay: 10s, rate: 0.2}",
            [Fault(kind="slow_first_token", delay=10, rate=0.2, start=2, end=6)],
        ),
        ("{kind: hang, rate: 0.1}", [Fault(kind="hang", rate=0.1, start=2, end=6)]),
        (
            "{kind: stream_cut}",
            [Fault(kind="stream_cut", after_chunks=3, rate=1.0, start=2, end=6)],
        ),
        (
            "{kind: stream_stall, after_chunks: 0, rate: 0.5}",
            [Fault(kind="stream_stall", after_chunks=0, rate=0.5, start=2, end=6)],
        ),
    ],
)
def test_each_fault_kind_compiles_to_its_simulated_fault(fault: str, expected: list[Fault]) -> None:
    """A deployment fault becomes the simulator's fault with its window in run time."""
    entry = fault.replace("{", "{at: 2s, for: 4s, target: primary, ", 1)
    s = _scenario(_with_faults(entry))
    assert s.deployment_faults() == {"primary": tuple(expected), "fallback": ()}


def test_flap_is_one_refuse_window_per_period_cut_at_the_end() -> None:
    """[at + k*period, at + k*period + down) for each period starting inside [at, end)."""
    s = _scenario(
        _with_faults(
            "{at: 2s, for: 5200ms, target: fallback, kind: flap, period: 2s, down: 1500ms}"
        )
    )
    assert s.deployment_faults()["fallback"] == (
        Fault(kind="refuse", start=2, end=3.5),
        Fault(kind="refuse", start=4, end=5.5),
        Fault(kind="refuse", start=6, end=7.2),  # cut at at + for
    )
    exact = _scenario(
        _with_faults("{at: 0s, for: 4s, target: primary, kind: flap, period: 1s, down: 250ms}")
    )
    assert [(f.start, f.end) for f in exact.deployment_faults()["primary"]] == [
        (0, 0.25),
        (1, 1.25),
        (2, 2.25),
        (3, 3.25),
    ]


def test_faults_keep_file_order_within_a_deployment() -> None:
    """The simulator takes the first matching fault, so the file's order is kept."""
    s = _scenario(
        _with_faults(
            "{at: 1s, for: 10s, target: primary, kind: hang, rate: 0.1}",
            "{at: 2s, for: 3s, target: fallback, kind: outage}",
            "{at: 0s, for: 20s, target: primary, kind: brownout}",
        )
    )
    faults = s.deployment_faults()
    assert [f.kind for f in faults["primary"]] == ["hang", "status"]
    assert [f.kind for f in faults["fallback"]] == ["refuse"]


def test_run_wide_faults_compile_to_no_simulated_fault() -> None:
    """redis_outage and kill_replica are the runner's to apply, not an upstream's."""
    s = _scenario(
        _with_faults(
            "{at: 1s, for: 2s, kind: redis_outage}",
            "{at: 3s, kind: kill_replica}",
            extra="gateway: {replicas: 2}\n",
        )
    )
    assert s.deployment_faults() == {"primary": (), "fallback": ()}
    assert s.faults[0].params == {"mode": "kill"} and s.faults[1].params == {"replica": 1}
    assert s.faults[1].end is None


def test_labels_name_the_fault_and_its_target() -> None:
    """Labels are short and say what happened to whom."""
    s = _scenario(FULL)
    assert [f.label() for f in s.faults] == [
        "outage of primary",
        "rate limiting of real",
        "redis outage (freeze)",
        "policy reload",
        "kill of replica 0",
    ]


# --- scaling ------------------------------------------------------------------------------------


def test_scaling_multiplies_the_timeline_only() -> None:
    """duration, at, for, period and down scale; delays, retry_after, expectations and the
    gateway section do not."""
    text = _with_faults(
        "{at: 4s, for: 8s, target: primary, kind: flap, period: 2s, down: 1s, detect_within: 3s}",
        "{at: 12s, for: 6s, target: fallback, kind: latency, delay: 2s}",
        "{at: 20s, for: 4s, target: fallback, kind: rate_limit, retry_after: 3s}",
        extra="gateway: {resilience: {breaker: {open_for: 1s}}}\nexpect: {max_p99: 2s}\n",
    )
    s = _scenario(text, scale=0.5)
    assert s.scale == 0.5 and s.traffic.duration == 15.0
    flap, latency, limit = s.faults
    assert (flap.at, flap.duration, flap.params) == (2.0, 4.0, {"period": 1.0, "down": 0.5})
    assert flap.detect_within == 3.0
    assert (latency.at, latency.duration, latency.params["delay"]) == (6.0, 3.0, 2.0)
    assert (limit.at, limit.duration, limit.params["retry_after"]) == (10.0, 2.0, 3.0)
    assert s.expect.max_p99 == 2.0 and s.traffic.timeout == 30.0
    assert s.gateway == {"resilience": {"breaker": {"open_for": "1s"}}}
    assert [(f.start, f.end) for f in s.deployment_faults()["primary"]] == [
        (2.0, 2.5),
        (3.0, 3.5),
        (4.0, 4.5),
        (5.0, 5.5),
    ]
    assert _scenario(text, scale=2).traffic.duration == 60.0


@pytest.mark.parametrize("scale", [0, -1, MAX_SCALE + 0.5, math.nan, math.inf])
def test_a_scale_out_of_range_is_refused(scale: float) -> None:
    """0 < scale <= 10, else ConfigError naming the scale."""
    with pytest.raises(ConfigError) as info:
        _scenario(BASE, scale=scale)
    assert str(info.value).startswith("chaos.yaml: scale: the time scale must be above 0")


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle", "path", "reason"),
    [
        (  # an unknown key
            BASE.replace("  rate: 40", "  rate: 40\n  burst: 3"),
            "burst: 3",
            "traffic.burst",
            "unknown key",
        ),
        (  # a field of another kind is unknown on this one
            _with_faults("{at: 1s, for: 2s, target: primary, kind: outage, delay: 1s}"),
            "kind: outage",
            "faults[0].delay",
            "unknown key",
        ),
        (
            _with_faults("{at: 1s, for: 2s, target: primary, kind: meltdown}"),
            "kind: meltdown",
            "faults[0].kind",
            "unknown kind `meltdown`",
        ),
        (
            _with_faults("{at: 1s, for: 2s, target: primry, kind: outage}"),
            "target: primry",
            "faults[0].target",
            "unknown deployment `primry` (known: primary, fallback)",
        ),
        (
            _with_faults("{at: 25s, for: 10s, target: primary, kind: outage}"),
            "at: 25s",
            "faults[0].for",
            "the fault ends at 35s (at + for), after the traffic ends (30s)",
        ),
        (
            _with_faults("{at: 31s, kind: kill_replica}", extra="gateway: {replicas: 2}\n"),
            "at: 31s",
            "faults[0].at",
            "`at` (31s) is after the traffic ends (30s)",
        ),
        (
            _with_faults("{at: 1s, target: primary, kind: outage}"),
            "kind: outage",
            "faults[0].for",
            "required key is missing",
        ),
        (
            _with_faults("{at: 1s, for: 1s, kind: policy_reload, policy: {routes: []}}"),
            "policy_reload",
            "faults[0].for",
            "unknown key",
        ),
        (
            _with_faults(
                "{at: 1s, kind: policy_reload, policy: "
                "{routes: [{name: chat, candidates: [{deployment: fallback}]}]}}"
            ),
            "policy_reload",
            "faults[0].kind",
            "a policy_reload needs a top-level `policy:`",
        ),
        (
            _with_faults("{at: 1s, for: 2s, kind: kill_replica}"),
            "kill_replica",
            "faults[0].kind",
            "kill_replica needs `gateway.replicas: 2`",
        ),
        (
            _with_faults(
                "{at: 1s, kind: kill_replica, replica: 2}", extra="gateway: {replicas: 2}\n"
            ),
            "kill_replica",
            "faults[0].replica",
            "replica 2 does not exist (replicas: 2, counted from 0)",
        ),
        (
            _with_faults(
                "{at: 1s, for: 2s, kind: redis_outage}",
                extra="gateway: {health: {store: memory}}\n",
            ),
            "redis_outage",
            "faults[0].kind",
            "a redis_outage needs the redis store, but `gateway.health.store` is `memory`",
        ),
        (
            _with_faults("{at: 1s, for: 2s, target: primary, kind: flap, period: 1s, down: 1s}"),
            "kind: flap",
            "faults[0]",
            "`down` (1s) must be shorter than `period` (1s)",
        ),
        (
            _with_faults("{at: 1s, for: 2s, target: primary, kind: latency}"),
            "kind: latency",
            "faults[0].delay",
            "required key is missing",
        ),
        (  # rate and concurrency both
            BASE.replace("  rate: 40", "  rate: 40\n  concurrency: 4"),
            "traffic:",
            "traffic",
            "give exactly one of `rate` (requests/s, open loop) or `concurrency`",
        ),
        (  # neither
            BASE.replace("  rate: 40\n", ""),
            "traffic:",
            "traffic",
            "give exactly one of `rate`",
        ),
        (
            BASE.replace("duration: 30s", "duration: 30 seconds"),
            "duration: 30 seconds",
            "traffic.duration",
            "expected a duration such as '250ms', '30s', '2m' or a number of seconds",
        ),
        (
            BASE.replace("duration: 30s", "duration: 30s\n  output_tokens: [10, 5]"),
            "output_tokens",
            "traffic.output_tokens",
            "low (10) must not be above high (5)",
        ),
        (  # YAML reads 1e9 as a string; pydantic reads it as a number, and so does the bound
            BASE.replace("rate: 40", "rate: 1e9"),
            "rate: 1e9",
            "traffic.rate",
            "at most 5000 requests/s, got 1e+09",
        ),
        (
            BASE.replace("rate: 40", "rate: 5001"),
            "rate: 5001",
            "traffic.rate",
            "at most 5000 requests/s, got 5001",
        ),
        (
            BASE.replace("rate: 40", "concurrency: 2001"),
            "concurrency: 2001",
            "traffic.concurrency",
            "at most 2000 workers, got 2001",
        ),
        (  # 5000/s x 41 s
            BASE.replace("rate: 40", "rate: 5000").replace("duration: 30s", "duration: 41s"),
            "rate: 5000",
            "traffic.rate",
            "rate x duration plans 205000 requests (5000/s for 41s): at most 200000",
        ),
        (
            BASE.replace("rate: 40", "concurrency: 4").replace("duration: 30s", "duration: 25h"),
            "duration: 25h",
            "traffic.duration",
            "the traffic lasts 90000s: at most 24h (86400s)",
        ),
        (
            BASE.replace("duration: 30s", "duration: 30s\n  timeout: 601s"),
            "timeout: 601s",
            "traffic.timeout",
            "at most 10m (600s), got 601s",
        ),
        (
            BASE.replace("duration: 30s", "duration: 30s\n  prompt_tokens: [1, 100001]"),
            "prompt_tokens",
            "traffic.prompt_tokens",
            "at most 100000 tokens, got 100001",
        ),
        (
            BASE.replace("duration: 30s", "duration: 30s\n  output_tokens: 100001"),
            "output_tokens",
            "traffic.output_tokens",
            "at most 100000 tokens, got 100001",
        ),
        (
            BASE.replace("model: chat", "model: other"),
            "model: other",
            "traffic.model",
            "no deployment serves model `other` (served: chat)",
        ),
        (
            BASE.replace("name: fallback", "name: primary  # again"),
            "# again",
            "deployments[1].name",
            "deployment name `primary` is already used by deployments[0]",
        ),
        (
            BASE.replace("simulated: {latency: 20ms}", "simulated: {latency: 20ms, echo: false}"),
            "latency: 20ms",
            "deployments[1].simulated.echo",
            "not here: the chaos runner forces `echo: true`",
        ),
        (
            BASE.replace("simulated: {latency: 20ms}", "simulated: {faults: [{kind: hang}]}"),
            "faults: [{kind: hang}]",
            "deployments[1].simulated.faults",
            "not here: faults come from the scenario's `faults:` timeline",
        ),
        (
            BASE.replace("simulated: {latency: 20ms}", "simulated: {content: hi}"),
            "content: hi",
            "deployments[1].simulated.content",
            "not here: the chaos runner forces `echo: true`",
        ),
        (
            BASE.replace("aliases: [chat]\n    simulated: {latency: 20ms}", "aliases: [chat]"),
            "name: fallback",
            "deployments[1]",
            "give `simulated:` (an upstream simulated in the runner) or `upstream:`",
        ),
        (
            BASE.replace("    aliases: [chat]\n", "    aliases: [chat]\n    provider: openai\n", 1),
            "provider: openai",
            "deployments[0].provider",
            "set by the chaos runner",
        ),
        (
            BASE.replace("    aliases: [chat]\n", "    aliases: [chat]\n    api_key: sk-x\n", 1),
            "api_key: sk-x",
            "deployments[0].api_key",
            "give `upstream: {api_key_env: NAME}`",
        ),
        (  # a passthrough key, checked by the gateway's own deployment model
            BASE.replace(
                "    aliases: [chat]\n", "    aliases: [chat]\n    timeouts: {conect: 1s}\n", 1
            ),
            "conect: 1s",
            "deployments[0].timeouts.conect",
            "unknown key",
        ),
        (
            BASE.replace(
                "    aliases: [chat]\n", "    aliases: [chat]\n    price: {input: -1}\n", 1
            ),
            "price: {input: -1}",
            "deployments[0].price.input",
            "greater than or equal to 0",
        ),
        (
            BASE.replace("name: fallback", "name: 'bad name'"),
            "bad name",
            "deployments[1].name",
            "String should match pattern",
        ),
        (  # the gateway section, checked by the gateway's own config model
            BASE + "gateway:\n  health:\n    window: {bucket: soon}\n",
            "bucket: soon",
            "gateway.health.window.bucket",
            "expected a duration",
        ),
        (
            BASE + "gateway:\n  replicas: 3\n",
            "replicas: 3",
            "gateway.replicas",
            "replicas must be 1 or 2, got 3",
        ),
        (
            BASE + "gateway:\n  policy: {path: p.yaml}\n",
            "policy: {path",
            "gateway.policy",
            "set by the chaos runner: give the policy document as the scenario's top-level",
        ),
        (
            BASE + "gateway:\n  health: {redis: {url: 'redis://elsewhere'}}\n",
            "redis://elsewhere",
            "gateway.health.redis.url",
            "set by the chaos runner: it starts a private redis-server",
        ),
        (
            BASE + "gateway:\n  routes: {chat: [primary, nowhere]}\n",
            "routes:",
            "gateway.routes.chat[1]",
            "route `chat` references unknown deployment `nowhere`",
        ),
        (  # the policy: its schema ...
            BASE + "policy:\n  routes:\n    - {name: chat, candidates: [], strategy: fastest}\n",
            "strategy: fastest",
            "policy.routes[0].strategy",
            "Input should be",
        ),
        (  # ... and its cross-checks against the deployments
            BASE
            + "policy:\n  routes:\n    - name: chat\n      candidates: [{deployment: ghost}]\n",
            "deployment: ghost",
            "policy.routes[0].candidates[0].deployment",
            "ghost",
        ),
        (
            BASE.replace("name: base", "name: Base_1"),
            "name: Base_1",
            "name",
            "String should match pattern",
        ),
        (
            BASE + "expect: {max_retry_amplification: lots}\n",
            "lots",
            "expect.max_retry_amplification",
            "expected a number or `budget`, got 'lots'",
        ),
    ],
)
def test_bad_input_is_reported_at_its_line_and_path(
    text: str, needle: str, path: str, reason: str
) -> None:
    """Each problem names file, line, path and why."""
    issues = _rejected(text)
    expected = f"chaos.yaml:{_line(text, needle)}: {path}: "
    found = [i for i in issues if i.startswith(expected) and reason in i]
    assert found, f"no issue {expected}...{reason} in {issues}"


def test_load_limits_are_inclusive() -> None:
    """A load exactly at every bound loads."""
    at_limits = BASE.replace("rate: 40", "rate: 5000").replace(
        "duration: 30s",
        "duration: 40s\n  timeout: 10m\n  prompt_tokens: 100000\n  output_tokens: [1, 100000]",
    )
    t = _scenario(at_limits).traffic
    assert (t.rate, t.duration, t.timeout) == (5000, 40.0, 600.0)
    assert (t.prompt_tokens, t.output_tokens) == ((100000, 100000), (1, 100000))
    closed = BASE.replace("rate: 40", "concurrency: 2000").replace("duration: 30s", "duration: 24h")
    assert (_scenario(closed).traffic.concurrency, _scenario(closed).traffic.duration) == (
        2000,
        86400.0,
    )


def test_load_limits_apply_after_scaling() -> None:
    """The planned requests and the duration are counted in run time: a scale can push a
    scenario that loads at scale 1 over a bound, and the issue says so."""
    planned = BASE.replace("rate: 40", "rate: 4000")  # 4000/s x 30 s = 120000
    assert _scenario(planned).traffic.rate == 4000
    with pytest.raises(ConfigError) as info:
        _scenario(planned, scale=2)
    assert str(info.value) == (
        f"chaos.yaml:{_line(planned, 'rate: 4000')}: traffic.rate: rate x duration plans "
        "240000 requests (4000/s for 60s at scale 2): at most 200000; lower `rate` or shorten "
        "`duration`"
    )
    long = BASE.replace("duration: 30s", "duration: 10h").replace("rate: 40", "rate: 1")
    assert _scenario(long).traffic.duration == 36000.0
    with pytest.raises(ConfigError) as info:
        _scenario(long, scale=3)
    assert str(info.value) == (
        f"chaos.yaml:{_line(long, 'duration: 10h')}: traffic.duration: the traffic lasts "
        "108000s at scale 3: at most 24h (86400s)"
    )


def test_name_defaults_to_a_valid_file_stem_or_asks_for_one() -> None:
    """Without `name:`, a file stem that is no scenario name is reported."""
    with pytest.raises(ConfigError) as info:
        _scenario(BASE.replace("name: base\n", ""), file="My_Scenario.yaml")
    assert str(info.value) == (
        "My_Scenario.yaml:1: <document>: no `name:`, and the file name `My_Scenario` is not a "
        "scenario name (lower-case letters, digits and `-`): set `name:`"
    )


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    """Schema errors and cross-checks come together, sorted by line."""
    text = _with_faults(
        "{at: 1s, for: 2s, target: ghost, kind: outage}",
        "{at: 1s, for: 2s, target: primary, kind: hang, rate: 2}",
        "{at: 1s, for: 2s, kind: kill_replica}",
    ).replace("duration: 30s", "duration: 30s\n  stream_share: 1.5")
    issues = _rejected(text)
    assert [i.split(": ")[1] for i in issues] == [
        "traffic.stream_share",
        "faults[0].target",
        "faults[1].rate",
        "faults[2].kind",
    ]
    lines = [int(i.split(":")[1]) for i in issues]
    assert lines == sorted(lines)


def test_a_duplicate_key_is_reported_like_in_the_gateway_config() -> None:
    """The gateway's YAML loader is reused: a key given twice is an error at its second line."""
    text = BASE.replace("  rate: 40", "  rate: 40\n  rate: 50")
    assert any(
        i.startswith(f"chaos.yaml:{_line(text, 'rate: 50')}: traffic.rate: duplicate key")
        for i in _rejected(text)
    )


def test_redis_outage_turns_the_redis_store_on(tmp_path: Path) -> None:
    """A redis_outage needs no `store: redis`: uses_redis() switches the store on."""
    s = _scenario(_with_faults("{at: 1s, for: 2s, kind: redis_outage}"))
    assert s.uses_redis() and s.replicas == 1
    config = _validated(s, tmp_path, redis_url="redis://127.0.0.1:6390/0")
    assert config.health.store == "redis"
    assert config.health.redis.url.get_secret_value() == "redis://127.0.0.1:6390/0"


@pytest.mark.parametrize(
    ("extra", "redis"),
    [
        ("", False),
        ("gateway: {replicas: 2}\n", True),
        ("gateway: {health: {store: redis}}\n", True),
    ],
)
def test_uses_redis_for_two_replicas_or_the_redis_store(extra: str, redis: bool) -> None:
    """Redis is needed by two replicas, by the redis store, or by a redis_outage."""
    assert _scenario(BASE + extra).uses_redis() is redis


# --- the generated gateway config ---------------------------------------------------------------


def test_generated_config_passes_the_gateway_checks(tmp_path: Path) -> None:
    """The base, the merged `gateway:` section and one openai entry per deployment load as a
    gateway config; a simulated upstream gets no key."""
    s = _scenario(BASE + "gateway: {server: {request_timeout: 10s}, logging: {level: error}}\n")
    config = _validated(s, tmp_path)
    assert (config.server.host, config.server.port, config.server.request_timeout) == (
        "127.0.0.1",
        0,
        10.0,
    )
    assert (config.logging.level, config.logging.format) == ("error", "json")
    assert config.health.store == "memory" and config.policy is None
    assert [(d.name, d.provider, d.base_url, d.api_key) for d in config.deployments] == [
        ("primary", "openai", "http://127.0.0.1:2000/v1", None),
        ("fallback", "openai", "http://127.0.0.1:2001/v1", None),
    ]
    assert config.route_table()["chat"] == ("primary", "fallback")


def test_a_real_upstream_key_is_an_environment_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document names the variable; the gateway reads its value at load."""
    secret = "sk-chaos-DO-NOT-LEAK"
    monkeypatch.setenv("EXAMPLE_API_KEY", secret)
    s = _scenario(FULL)
    document = s.gateway_config(
        {"primary": "http://127.0.0.1:1/v1", "real": "http://127.0.0.1:2/v1"},
        redis_url="redis://127.0.0.1:6390/0",
        policy_path=str(tmp_path / "policy.yaml"),
    )
    assert document["deployments"][1]["api_key"] == "${EXAMPLE_API_KEY}"
    assert secret not in str(document) and secret not in str(s.to_json())
    config = _validated(s, tmp_path, redis_url="redis://127.0.0.1:6390/0")
    real = config.deployment("real")
    assert real.api_key is not None and real.api_key.get_secret_value() == secret


def test_a_policy_is_written_where_the_config_points(tmp_path: Path) -> None:
    """With a policy, `policy.path` names the runner's file, watched, polled every 200 ms."""
    s = _scenario(FULL.replace(", api_key_env: EXAMPLE_API_KEY", ""))
    config = _validated(s, tmp_path, redis_url="redis://127.0.0.1:6390/0")
    assert config.policy is not None
    assert config.policy.path == str(tmp_path / "policy.yaml")
    assert (config.policy.watch, config.policy.poll_interval) == (True, 0.2)
    snapshot = load_policy(config.policy.path, deployment_infos(config))
    assert [c.info.name for c in snapshot.routes[0].candidates] == ["primary", "real"]
    assert config.resilience.breaker == {"open_for": "1s"}
    assert config.health.window.buckets == 10 and config.health.probes.interval == 1.0


def test_gateway_config_refuses_to_leave_out_what_the_run_needs() -> None:
    """A missing upstream URL, redis URL or policy path is a ValueError, not a broken config."""
    s = _scenario(FULL)
    urls = {"primary": "http://127.0.0.1:1/v1", "real": "http://127.0.0.1:2/v1"}
    with pytest.raises(ValueError, match="no upstream URL for deployment"):
        s.gateway_config({"primary": urls["primary"]}, redis_url="redis://x", policy_path="p")
    with pytest.raises(ValueError, match="redis_url"):
        s.gateway_config(urls, redis_url=None, policy_path="p")
    with pytest.raises(ValueError, match="policy_path"):
        s.gateway_config(urls, redis_url="redis://x", policy_path=None)


def test_gateway_config_does_not_share_state_with_the_scenario() -> None:
    """Editing a generated document leaves the scenario as it was."""
    s = _scenario(BASE + "gateway: {health: {window: {buckets: 10}}}\n")
    document = s.gateway_config(URLS, redis_url=None, policy_path=None)
    document["health"]["window"]["buckets"] = 99
    document["deployments"][0]["aliases"].append("other")
    assert s.gateway == {"health": {"window": {"buckets": 10}}}
    assert s.deployments[0].extra == {"aliases": ["chat"]}


def test_example_scenario_loads_and_its_config_and_policy_pass(tmp_path: Path) -> None:
    """configs/chaos/primary-outage.yaml at its CI scale: the spec's example, valid end to end."""
    ci = load_scenario(EXAMPLE).ci_scale
    assert ci == 0.4
    s = load_scenario(EXAMPLE, scale=ci)
    assert s.name == "primary-outage" and s.traffic.duration == pytest.approx(12.0)
    assert (s.traffic.rate, s.traffic.stream_share) == (40, 0.3)
    assert [d.name for d in s.deployments] == ["primary", "fallback"]
    assert all(d.simulated is not None for d in s.deployments)
    (outage,) = s.faults
    assert (outage.kind, outage.target) == ("outage", "primary")
    assert (outage.at, outage.end) == (pytest.approx(4.0), pytest.approx(8.0))
    assert s.deployment_faults()["primary"] == (
        Fault(kind="refuse", start=outage.at, end=outage.end),
    )
    config = _validated(s, tmp_path)
    assert config.policy is not None
    snapshot = load_policy(config.policy.path, deployment_infos(config))
    (route,) = snapshot.routes
    assert route.strategy == "ordered"
    assert [c.info.name for c in route.candidates] == ["primary", "fallback"]
    assert config.health.window.buckets == 10 and config.health.window.bucket == 1.0
    assert config.health.probes.interval == 1.0
    assert config.resilience.breaker["open_for"] == "1s"


# --- JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [FULL, BASE])
def test_json_round_trip_gives_the_same_scenario(text: str) -> None:
    """to_json is plain JSON; scenario_from_json gives back an equal scenario."""
    s = _scenario(text, scale=0.5)
    data = orjson.loads(orjson.dumps(s.to_json()))
    assert scenario_from_json(data) == s
    assert scenario_from_json(data).deployment_faults() == s.deployment_faults()


def test_json_faults_carry_what_the_figures_read() -> None:
    """Each fault has index, kind, at, for, end, target, label and its expectations."""
    fault = _scenario(FULL).to_json()["faults"][0]
    assert fault == {
        "index": 0,
        "kind": "outage",
        "at": 5.0,
        "for": 10.0,
        "end": 15.0,
        "target": "primary",
        "label": "outage of primary",
        "params": {},
        "detect_within": 3.0,
        "recover_within": 6.0,
    }


def test_fault_spec_end_is_at_plus_duration() -> None:
    """A fault without a length has no end."""
    spec = FaultSpec(0, "policy_reload", 3.0, None, None, {}, None, None)
    assert spec.end is None
    assert FaultSpec(0, "outage", 3.0, 2.0, "a", {}, None, None).end == 5.0


# --- secrets ------------------------------------------------------------------------------------

SECRETS = {
    "CHAOS_TEST_HEADER": "hdr-5ecret-value-1",
    "CHAOS_TEST_QUERY": "qp-5ecret-value-2",
    "CHAOS_TEST_ADMIN": "adm-5ecret-value-3",
    "CHAOS_TEST_CLIENT": "cli-5ecret-value-4",
    "CHAOS_TEST_BEARER": "bearer-5ecret-value-5",
}

# Every place a `${VAR}` can put a secret: an upstream header and query parameter, the admin
# token, the gateway's client keys, and the traffic's own credentials.
WITH_SECRETS = """\
name: secrets
deployments:
  - name: primary
    aliases: [chat]
    headers: {x-upstream-key: "${CHAOS_TEST_HEADER}"}
    query_params: {key: "${CHAOS_TEST_QUERY}"}
    simulated: {latency: 40ms}
gateway:
  admin: {token: "${CHAOS_TEST_ADMIN}"}
  server: {api_keys: ["${CHAOS_TEST_CLIENT}"], request_timeout: 10s}
traffic:
  model: chat
  rate: 40
  duration: 30s
  headers:
    Authorization: "Bearer ${CHAOS_TEST_CLIENT}"
    X-Session-Token: "${CHAOS_TEST_BEARER}"
    x-gateway-timeout: 10s
"""


@pytest.fixture
def secret_scenario(monkeypatch: pytest.MonkeyPatch) -> Scenario:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return _scenario(WITH_SECRETS)


def _leaked(text: str) -> list[str]:
    return [value for value in SECRETS.values() if value in text]


def test_json_form_redacts_every_secret(secret_scenario: Scenario) -> None:
    """to_json (what result.json holds) has no interpolated secret, each replaced in place;
    the rest of those sections is kept."""
    data = secret_scenario.to_json()
    assert _leaked(orjson.dumps(data).decode()) == []
    assert data["deployments"][0]["extra"] == {
        "aliases": ["chat"],
        "headers": {"x-upstream-key": REDACTED},
        "query_params": {"key": REDACTED},
    }
    assert data["gateway"] == {
        "admin": {"token": REDACTED},
        "server": {"api_keys": [REDACTED], "request_timeout": "10s"},
    }
    assert data["traffic"]["headers"] == {
        "Authorization": REDACTED,
        "X-Session-Token": REDACTED,
        "x-gateway-timeout": "10s",
    }


def test_repr_shows_no_secret(secret_scenario: Scenario) -> None:
    """Neither the scenario's repr nor its parts' show a secret."""
    for obj in (secret_scenario, secret_scenario.deployments[0], secret_scenario.traffic):
        assert _leaked(repr(obj)) == [] and _leaked(str(obj)) == []
    assert "secrets" in repr(secret_scenario)  # the repr still says what it is


def test_gateway_config_keeps_the_secrets(secret_scenario: Scenario, tmp_path: Path) -> None:
    """The gateway needs the real values: the generated config has them, and they load."""
    config = _validated(secret_scenario, tmp_path)
    admin = config.admin.token
    assert admin is not None and admin.get_secret_value() == SECRETS["CHAOS_TEST_ADMIN"]
    assert [k.get_secret_value() for k in config.server.api_keys] == [SECRETS["CHAOS_TEST_CLIENT"]]
    primary = config.deployment("primary")
    assert primary.provider == "openai"
    assert primary.headers["x-upstream-key"].get_secret_value() == SECRETS["CHAOS_TEST_HEADER"]
    assert primary.query_params["key"].get_secret_value() == SECRETS["CHAOS_TEST_QUERY"]
    assert secret_scenario.traffic.headers["Authorization"] == (
        f"Bearer {SECRETS['CHAOS_TEST_CLIENT']}"
    )


def test_admin_token_is_the_interpolated_value(secret_scenario: Scenario) -> None:
    """admin_token() gives the value the gateway will require, or None without one."""
    assert secret_scenario.admin_token() == SECRETS["CHAOS_TEST_ADMIN"]
    assert _scenario(BASE).admin_token() is None
    assert _scenario(BASE + "gateway: {admin: {}}\n").admin_token() is None


def test_a_redacted_document_loads_back_for_reports(secret_scenario: Scenario) -> None:
    """scenario_from_json reads a redacted document: everything but the secrets is as loaded,
    and writing it again gives the same document."""
    data = orjson.loads(orjson.dumps(secret_scenario.to_json()))
    back = scenario_from_json(data)
    assert back.to_json() == data
    assert _leaked(repr(back)) == [] and back.admin_token() == REDACTED
    redacted_traffic = dataclasses.replace(
        secret_scenario.traffic, headers=data["traffic"]["headers"]
    )
    assert (back.name, back.traffic, back.faults, back.expect) == (
        secret_scenario.name,
        redacted_traffic,
        secret_scenario.faults,
        secret_scenario.expect,
    )
    assert [d.name for d in back.deployments] == ["primary"]


@pytest.mark.parametrize(
    ("name", "redacted"),
    [
        ("Authorization", True),
        ("proxy-authorization", True),
        ("Cookie", True),
        ("X-API-Key", True),
        ("api-key", True),
        ("X-Refresh-Token", True),
        ("x-client-secret", True),
        ("x-gateway-timeout", False),
        ("x-request-id", False),
        ("User-Agent", False),
    ],
)
def test_traffic_headers_are_redacted_by_name(name: str, redacted: bool) -> None:
    """A header whose name says it carries a credential is redacted; others are kept."""
    text = BASE.replace("duration: 30s", f"duration: 30s\n  headers: {{{name}: v4lue}}")
    headers = _scenario(text).to_json()["traffic"]["headers"]
    assert headers == {name: REDACTED if redacted else "v4lue"}
