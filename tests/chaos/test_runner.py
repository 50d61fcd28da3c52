"""The runner's own behaviour around a run: a gateway behind an admin token is still sampled, and
a timeline step that fails ends the run at once with a clear error and nothing left running."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.chaos import runner
from gateway.chaos.fleet import RunError
from gateway.chaos.scenario import parse_scenario

pytestmark = pytest.mark.integration

BASE = """
name: {name}
seed: 2
deployments:
  - {{name: primary, aliases: [chat], tags: [chat, completions, stream],
     simulated: {{latency: 5ms, tokens_per_second: 5000}}}}
  - {{name: fallback, aliases: [chat], tags: [chat, completions, stream],
     simulated: {{latency: 5ms, tokens_per_second: 5000}}}}
gateway:
  admin: {{token: "${{CHAOS_ADMIN_TOKEN}}"}}
policy:
  version: 1
  routes:
    - {{name: chat, match: {{models: [chat]}}, strategy: ordered,
       candidates: [{{deployment: primary}}, {{deployment: fallback}}]}}
traffic: {{model: chat, rate: 20, duration: {duration}}}
faults:
{faults}
"""

RELOAD = """
  - at: 1s
    kind: policy_reload
    policy:
      version: 1
      routes:
        - {name: chat, match: {models: [chat]}, strategy: ordered,
           candidates: [{deployment: fallback}, {deployment: primary}]}
"""


def _scenario(tmp: Path, name: str, duration: str, faults: str) -> Any:
    text = BASE.format(name=name, duration=duration, faults=faults)
    return parse_scenario(text, str(tmp / f"{name}.yaml"))


def test_a_gateway_behind_an_admin_token_is_sampled_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAOS_ADMIN_TOKEN", "admin-secret-for-the-test")
    scenario = _scenario(tmp_path, "token", "2s", RELOAD)
    result = asyncio.run(runner.run(scenario, tmp_path / "out"))
    assert result["sampler_failures"] == 0
    assert len(result["samples"]) >= 6  # about 4 a second, each a real /metrics page
    assert result["figures"]["upstream_attempts"] >= result["figures"]["succeeded"] > 0
    assert "admin-secret-for-the-test" not in (tmp_path / "out" / "result.json").read_text()


def test_a_failing_timeline_step_ends_the_run_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAOS_ADMIN_TOKEN", "t")
    real_write = runner.write_yaml
    writes: list[Path] = []

    def failing_write(path: Path, data: Any, mode: int = 0o644) -> None:
        writes.append(path)
        if path.name == "policy.yaml" and writes.count(path) > 1:  # the reload, not the setup
            raise OSError(28, "No space left on device")
        real_write(path, data, mode)

    monkeypatch.setattr(runner, "write_yaml", failing_write)
    scenario = _scenario(tmp_path, "broken", "20s", RELOAD)
    started = time.monotonic()
    with pytest.raises(RunError, match=r"the fault timeline failed at t = 1\.\d+ s: .*No space"):
        asyncio.run(runner.run(scenario, tmp_path / "out"))
    # the traffic was cancelled when the step failed, not driven for its 20 s
    assert time.monotonic() - started < 15
    log = (tmp_path / "out" / "gateway-0.log").read_text()
    banner = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log)
    assert banner is not None
    port = int(banner.group(1))
    with pytest.raises(ConnectionRefusedError):  # the replica was stopped, not left behind
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
