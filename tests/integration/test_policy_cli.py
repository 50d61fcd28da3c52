"""`gateway policy check FILE_OR_DIR [--config FILE]`: OK summary and exit 0 for a good policy;
every problem as FILE:LINE: PATH: reason and exit 2 for a bad one, without a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_POLICY = REPO / "configs" / "policies" / "demo.yaml"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
GOOD = """\
routes:
  - name: chat
    match: {models: [demo-chat]}
    candidates: [{deployment: sim-primary}, {tags: [chat]}]
  - name: embed
    candidates: [{deployment: sim-embed}]
default_route: chat
"""


def _check(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "check", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_demo_policy_passes_against_the_demo_config() -> None:
    """The shipped example policy checks clean against the demo deployments."""
    result = _check("configs/policies/demo.yaml", "--config", "configs/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    m = re.fullmatch(
        r"configs/policies/demo\.yaml: OK \((\d+) routes: ([^;]+); default: (\S+); "
        r"version: ([0-9a-f]{12})\)\n",
        result.stdout,
    )
    assert m is not None, result.stdout
    routes = m.group(2).split(", ")
    assert int(m.group(1)) == len(routes)
    assert {"demo-chat", "demo-small", "demo-embed"} <= set(routes)
    assert m.group(3) in routes


def test_good_file_prints_summary_with_and_without_config(tmp_path: Path) -> None:
    """Exit 0 and one line naming the routes, the default and the version."""
    policy = tmp_path / "p.yaml"
    policy.write_text(GOOD, encoding="utf-8")
    alone = _check(policy)
    checked = _check(policy, "--config", DEMO_CONFIG)
    for result in (alone, checked):
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(
            rf"{re.escape(str(policy))}: OK \(2 routes: chat, embed; default: chat; "
            r"version: [0-9a-f]{12}\)\n",
            result.stdout,
        )
    assert alone.stdout == checked.stdout


def test_bad_file_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    """Schema and cross-reference problems are printed together, sorted by line, on stderr."""
    policy = tmp_path / "bad.yaml"
    policy.write_text(
        "routes:\n"
        "  - name: chat\n"
        "    candidates: [{deployment: sim-primary}]\n"
        "    strategy: fastest\n"
        "  - name: other\n"
        "    candidates: [{deployment: azure-eu}]\n"
        "default_route: chat\n",
        encoding="utf-8",
    )
    result = _check(policy, "--config", DEMO_CONFIG)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "policy check failed: 2 problem(s)",
        f"{policy}:4: routes[0].strategy: Input should be 'score', 'ordered', 'lowest-latency', "
        "'least-busy', 'p2c', 'cheapest' or 'weighted'",
        f"{policy}:6: routes[1].candidates[0].deployment: route `other` candidate 0: unknown "
        "deployment `azure-eu` (known: sim-embed, sim-fallback, sim-primary)",
    ]


def test_deployment_names_are_checked_only_with_a_config(tmp_path: Path) -> None:
    """Without --config an unknown deployment cannot be known; with it, exit 2."""
    policy = tmp_path / "p.yaml"
    policy.write_text("routes:\n  - name: r\n    candidates: [{tags: [gpu]}]\n", encoding="utf-8")
    unchecked = _check(policy)
    assert unchecked.returncode == 0
    assert "deployment names and tag selectors were not checked; pass --config" in (
        unchecked.stderr
    )
    result = _check(policy, "--config", DEMO_CONFIG)
    assert result.returncode == 2
    assert f"{policy}:3: routes[0].candidates[0].tags: route `r` candidate 0: no deployment " in (
        result.stderr
    )


def test_directory_with_conflicting_files_names_both(tmp_path: Path) -> None:
    """A directory is one policy; a route name and defaults given in two files are errors."""
    (tmp_path / "a.yaml").write_text(GOOD + "defaults: {strategy: ordered}\n", encoding="utf-8")
    (tmp_path / "b.yml").write_text(
        "defaults: {}\nroutes:\n  - name: embed\n    candidates: [{deployment: sim-embed}]\n",
        encoding="utf-8",
    )
    result = _check(tmp_path)
    assert result.returncode == 2
    a, b = tmp_path / "a.yaml", tmp_path / "b.yml"
    assert result.stderr.splitlines()[1:] == [
        f"{b}:1: defaults: `defaults` may appear in only one policy file; it is also in {a}",
        f"{b}:3: routes[0].name: route name `embed` is already used by routes[1] in {a}",
    ]
    (tmp_path / "b.yml").write_text(
        "routes:\n  - name: more\n    candidates: [{deployment: sim-embed}]\n", encoding="utf-8"
    )
    good = _check(tmp_path)
    assert good.returncode == 0, good.stderr
    assert "OK (3 routes: chat, embed, more; default: chat;" in good.stdout


def test_bad_config_or_missing_policy_exits_2(tmp_path: Path) -> None:
    """A rejected --config is reported as a config problem; a missing policy path too."""
    config = tmp_path / "gw.yaml"
    config.write_text("deployments: []\n", encoding="utf-8")
    result = _check(DEMO_POLICY, "--config", config)
    assert result.returncode == 2
    assert result.stderr.startswith("config check failed: 1 problem(s)\n")
    assert f"{config}:1: deployments" in result.stderr
    missing = _check(tmp_path / "nope.yaml")
    assert missing.returncode == 2
    assert f"{tmp_path / 'nope.yaml'}: <document>: no such file or directory" in missing.stderr
