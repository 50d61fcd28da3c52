"""The configuration reference in README.md is itself a valid configuration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import parse_config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_config_reference_is_a_valid_config(monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text()
    section = text.split("## Configuration reference", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, "the configuration reference has no yaml block"
    for var in ("GATEWAY_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GATEWAY_ADMIN_TOKEN"):
        monkeypatch.setenv(var, f"test-{var.lower()}")
    config = parse_config(block.group(1), "README.md")
    assert config.health.store == "memory"
    assert config.admin.token is not None
    assert {d.name for d in config.deployments} >= {"openai-main", "claude", "sim"}


def test_readme_policy_example_is_a_valid_policy(tmp_path: Path) -> None:
    """The policy example in the README's "Routing policies" section passes the schema check."""
    from gateway.policy_loader import read_policy

    section = README.read_text().split("## Routing policies", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, "the routing policies section has no yaml block"
    path = tmp_path / "policy.yaml"
    path.write_text(block.group(1))
    source = read_policy(path)
    ((_, document),) = source.documents
    assert [r.name for r in document.routes] == ["premium"]


def test_readme_chaos_scenario_example_is_a_valid_scenario() -> None:
    """The scenario example in the README's "Chaos suite" section loads, with its fault."""
    from gateway.chaos.scenario import parse_scenario

    section = README.read_text().split("## Chaos suite", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, "the chaos suite section has no yaml block"
    scenario = parse_scenario(block.group(1), "README.md")
    assert [d.name for d in scenario.deployments] == ["primary", "fallback"]
    assert [(f.kind, f.target, f.at, f.duration) for f in scenario.faults] == [
        ("outage", "primary", 10.0, 10.0)
    ]
