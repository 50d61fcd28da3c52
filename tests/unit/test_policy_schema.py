"""Policy documents: every section round-trips and compiles as documented, every problem is
reported as ``FILE:LINE: PATH: reason`` (all at once, across files), the version follows the
bytes, and a config without a policy derives one from its routes."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ENDPOINT_TAGS, GatewayConfig, parse_config
from gateway.policy_loader import (
    CONFIG_SOURCE,
    deployment_infos,
    load_configured_policy,
    load_policy,
    policy_files,
    read_policy,
    snapshot_from_routes,
)
from gateway.yamlfile import ConfigError
from policies.compile import PolicyCompileError, check_policy, compile_policy
from policies.schema import PolicyDocument
from policies.types import DeploymentInfo, Match, RouteConstraints, Weights

REPO = Path(__file__).resolve().parents[2]
ISSUE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<path>\S+): (?P<reason>.+)$")

DEPLOYMENTS = {
    "big": DeploymentInfo(
        "big", frozenset({"chat", "tools", "vision"}), context_window=128_000, price_in=2.5
    ),
    "cheap-a": DeploymentInfo("cheap-a", frozenset({"chat", "tier:cheap", "tools"})),
    "cheap-b": DeploymentInfo("cheap-b", frozenset({"chat", "tier:cheap"})),
    "embed": DeploymentInfo("embed", frozenset({"embeddings"}), frozenset({"embeddings"})),
}
ONE_ROUTE = "routes:\n  - name: r\n    candidates: [{deployment: big}]\n"

FULL = """\
version: 1
defaults:
  strategy: cheapest
  weights: {latency: 3, price: 0}
  constraints:
    max_price: 0.05
    latency_slo: 1500ms
    max_error_rate: 0.4
    min_requests: 5
    exclude_statuses: [ejected, unhealthy]
    require_tags: [chat]
  default_output_tokens: 300
  retry: {max_attempts: 3, base_delay: 100ms}
  hedge: {after: 2s}
quality: {big: 0.9, cheap-b: 0.2}
routes:
  - name: premium
    match:
      models: [gpt-4o, demo-chat]
      headers: {X-Team: [research, ml], x-env: prod}
      metadata: {tier: gold}
      tags: [premium]
      capabilities: [vision, tools]
      prompt_tokens: {min: 10, max: 8000}
    candidates:
      - {deployment: big, weight: 3, quality: 0.95}
      - {tags: [tier:cheap], weight: 2}
      - {deployment: cheap-a, weight: 9}
    strategy: weighted
    weights: {error_rate: 4}
    constraints: {max_price: 0.01, require_tags: [tools]}
    default_output_tokens: 512
    retry: {max_attempts: 5}
    hedge: {after: 1s}
  - name: rest
    candidates: [{tags: [chat]}]
default_route: rest
"""


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _rejected(path: Path, deployments: Any = DEPLOYMENTS) -> list[str]:
    """Load ``path`` expecting rejection; the rendered issues (each FILE:LINE: PATH: reason)."""
    with pytest.raises(ConfigError) as info:
        read_policy(path, deployments)
    lines = str(info.value).splitlines()
    assert lines == [str(issue) for issue in info.value.issues]
    return lines


def _load(tmp_path: Path, text: str) -> Any:
    return load_policy(_write(tmp_path, "p.yaml", text), DEPLOYMENTS, loaded_at=12.5)


# --- round trips and compiled values ---------------------------------------------------------


def _round_trip(doc: PolicyDocument) -> PolicyDocument:
    dumped = yaml.safe_dump(doc.model_dump(mode="json", exclude_none=True), sort_keys=False)
    return PolicyDocument.model_validate(yaml.safe_load(dumped))


def test_every_section_round_trips(tmp_path: Path) -> None:
    """Defaults, quality, routes (match, candidates, overrides) and default_route dump and load
    back equal, human durations included."""
    source = read_policy(_write(tmp_path, "p.yaml", FULL), DEPLOYMENTS)
    doc = source.documents[0][1]
    assert _round_trip(doc) == doc
    assert doc.defaults is not None and doc.defaults.constraints is not None
    assert doc.defaults.constraints.latency_slo == 1.5
    assert doc.routes[0].match.headers == {"X-Team": ("research", "ml"), "x-env": ("prod",)}
    assert doc.routes[0].match.metadata == {"tier": ("gold",)}
    for section in ("defaults", "quality", "routes", "default_route"):
        alone = PolicyDocument.model_validate({section: doc.model_dump()[section]})
        assert _round_trip(alone) == alone


def test_route_inherits_and_overrides_defaults_field_by_field(tmp_path: Path) -> None:
    """A route's strategy, weights, constraints, output estimate and resilience sections are
    merged over the defaults, key by key; a route that sets nothing gets the defaults."""
    snap = _load(tmp_path, FULL)
    premium, rest = snap.routes
    assert premium.strategy == "weighted" and rest.strategy == "cheapest"
    assert premium.weights == Weights(latency=3, error_rate=4, price=0)
    assert rest.weights == Weights(latency=3, price=0)
    assert premium.constraints == RouteConstraints(
        max_price=0.01,
        latency_slo=1.5,
        max_error_rate=0.4,
        min_requests=5,
        exclude_statuses=frozenset({"ejected", "unhealthy"}),
        require_tags=frozenset({"tools"}),
    )
    assert rest.constraints.max_price == 0.05
    assert rest.constraints.require_tags == frozenset({"chat"})
    assert (premium.default_output_tokens, rest.default_output_tokens) == (512, 300)
    assert dict(premium.resilience["retry"]) == {"max_attempts": 5, "base_delay": "100ms"}
    assert dict(premium.resilience["hedge"]) == {"after": "1s"}
    assert dict(rest.resilience["hedge"]) == {"after": "2s"}
    assert set(premium.resilience) == {"retry", "hedge"}
    with pytest.raises(TypeError):
        premium.resilience["retry"]["attempts"] = 1  # type: ignore[index]


def test_candidates_resolve_in_order_once_with_their_weight_and_quality(tmp_path: Path) -> None:
    """Selectors expand in deployment order, a deployment reached twice stays at its first
    place with that entry's weight; quality: candidate's own, else the map, else 0.5."""
    snap = _load(tmp_path, FULL)
    premium, rest = snap.routes
    got = [(c.info.name, c.weight, c.quality) for c in premium.candidates]
    assert got == [("big", 3, 0.95), ("cheap-a", 2, 0.5), ("cheap-b", 2, 0.2)]
    assert [c.info for c in rest.candidates] == [
        DEPLOYMENTS[n] for n in ("big", "cheap-a", "cheap-b")
    ]
    assert [c.quality for c in rest.candidates] == [0.9, 0.5, 0.2]


def test_match_compiles_with_lowercase_header_names(tmp_path: Path) -> None:
    """Match fields become frozensets; header names are lowercased; prompt bounds kept."""
    snap = _load(tmp_path, FULL)
    match = snap.routes[0].match
    assert match == Match(
        models=frozenset({"gpt-4o", "demo-chat"}),
        headers={"x-team": frozenset({"research", "ml"}), "x-env": frozenset({"prod"})},
        metadata={"tier": frozenset({"gold"})},
        tags=frozenset({"premium"}),
        capabilities=frozenset({"vision", "tools"}),
        min_prompt_tokens=10,
        max_prompt_tokens=8000,
    )
    assert snap.routes[1].match == Match()  # omitted: matches every request


def test_snapshot_carries_default_version_sources_and_time(tmp_path: Path) -> None:
    """The default route is the named route itself; version, sources and time are recorded."""
    path = _write(tmp_path, "p.yaml", FULL)
    snap = load_policy(path, DEPLOYMENTS, loaded_at=12.5)
    assert snap.default is snap.routes[1]
    assert snap.route("premium") is snap.routes[0]
    assert snap.sources == (str(path),)
    assert snap.loaded_at == 12.5
    assert re.fullmatch(r"[0-9a-f]{12}", snap.version)
    assert snap.version == read_policy(path).version


def test_engine_defaults_apply_when_nothing_is_said(tmp_path: Path) -> None:
    """No defaults section: strategy score, the engine's weights and constraints, 256 tokens."""
    route = _load(tmp_path, ONE_ROUTE).routes[0]
    assert (route.strategy, route.weights, route.constraints) == (
        "score",
        Weights(),
        RouteConstraints(),
    )
    assert route.default_output_tokens == 256
    assert dict(route.resilience) == {}
    assert route.candidates[0].quality == 0.5


# --- schema errors -------------------------------------------------------------------------------


def test_schema_errors_name_file_line_and_path(tmp_path: Path) -> None:
    """Unknown keys, bad enums, out-of-range numbers, bad durations, empty lists and malformed
    candidates are all reported at once, each at its own line."""
    path = _write(
        tmp_path,
        "bad.yaml",
        """\
        version: 2
        defaults:
          strategy: fastest
          weights: {latency: -1}
          constraints: {latency_slo: soon, exclude_statuses: [sick]}
        routes:
          - name: a
            match: {prompt_tokens: {min: 10, max: 5}, capabilities: [telepathy]}
            candidates: []
          - name: b
            candidates:
              - {deployment: big, tags: [chat]}
              - {weight: 2}
              - {deployment: big, wieght: 2}
          - name: "bad name"
            candidates: [{deployment: big, weight: 0, quality: 1.5}]
        """,
    )
    f = str(path)
    assert _rejected(path) == [
        f"{f}:1: version: unsupported version 2: only version 1 exists",
        f"{f}:3: defaults.strategy: Input should be 'score', 'ordered', 'lowest-latency', "
        "'least-busy', 'p2c', 'cheapest' or 'weighted'",
        f"{f}:4: defaults.weights.latency: Input should be greater than or equal to 0",
        f"{f}:5: defaults.constraints.latency_slo: expected a duration such as '250ms', '30s', "
        "'2m' or a number of seconds, got 'soon'",
        f"{f}:5: defaults.constraints.exclude_statuses[0]: Input should be 'healthy', "
        "'degraded', 'unhealthy' or 'ejected'",
        f"{f}:8: routes[0].match.capabilities[0]: Input should be 'vision', 'tools', 'json', "
        "'stream' or 'prefill'",
        f"{f}:8: routes[0].match.prompt_tokens: min (10) must not be above max (5)",
        f"{f}:9: routes[0].candidates: list at least one candidate (a deployment or a tag "
        "selector)",
        f"{f}:12: routes[1].candidates[0]: give `deployment` or `tags`, not both",
        f"{f}:13: routes[1].candidates[1]: give `deployment` (one deployment by name) or `tags` "
        "(every deployment carrying all of them)",
        f"{f}:14: routes[1].candidates[2].wieght: unknown key (check the spelling; see the "
        "config reference in README.md)",
        f"{f}:15: routes[2].name: String should match pattern '^[A-Za-z0-9._:-]+$'",
        f"{f}:16: routes[2].candidates[0].weight: Input should be greater than 0",
        f"{f}:16: routes[2].candidates[0].quality: Input should be less than or equal to 1",
    ]


def test_header_given_twice_in_different_case_is_refused(tmp_path: Path) -> None:
    """Header names are case-insensitive, so `X-Team` and `x-team` in one match collide."""
    path = _write(
        tmp_path,
        "p.yaml",
        "routes:\n  - name: r\n    match:\n      headers: {X-Team: a, x-team: b}\n"
        "    candidates: [{deployment: big}]\n",
    )
    assert _rejected(path) == [
        f"{path}:4: routes[0].match.headers: header `x-team` is also given as `X-Team` "
        "(header names are case-insensitive)"
    ]


def test_yaml_level_errors_are_reported_per_file(tmp_path: Path, monkeypatch: Any) -> None:
    """Duplicate keys, unset environment variables, invalid YAML and a non-mapping document."""
    monkeypatch.delenv("POLICY_TEST_UNSET", raising=False)
    dup = _write(tmp_path, "dup.yaml", ONE_ROUTE + "default_route: r\ndefault_route: r\n")
    env = _write(
        tmp_path,
        "env.yaml",
        "routes:\n  - name: r\n    candidates: [{deployment: big}]\n"
        "    retry: {key: '${POLICY_TEST_UNSET}'}\n",
    )
    broken = _write(tmp_path, "broken.yaml", "routes: [oops\n")
    listed = _write(tmp_path, "list.yaml", "- a\n- b\n")
    assert _rejected(dup) == [
        f"{dup}:5: default_route: duplicate key `default_route` (first at line 4)"
    ]
    assert _rejected(env) == [
        f"{env}:4: routes[0].retry.key: environment variable POLICY_TEST_UNSET is not set "
        "(referenced as ${POLICY_TEST_UNSET})"
    ]
    [invalid] = _rejected(broken)
    assert invalid.startswith(f"{broken}:2: <document>: invalid YAML:")
    assert _rejected(listed) == [
        f"{listed}:1: <document>: the document must be a mapping with a `routes` list"
    ]


def test_environment_references_are_interpolated(tmp_path: Path, monkeypatch: Any) -> None:
    """`${VAR}` in a policy is replaced once, at load."""
    monkeypatch.setenv("POLICY_TEST_TARGET", "cheap-b")
    snap = _load(
        tmp_path, "routes:\n  - name: r\n    candidates: [{deployment: '${POLICY_TEST_TARGET}'}]\n"
    )
    assert snap.routes[0].candidates[0].info.name == "cheap-b"


def test_missing_path_and_empty_directory_are_reported(tmp_path: Path) -> None:
    """A path that does not exist and a directory without *.yaml/*.yml are errors."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a policy")
    for path, reason in (
        (tmp_path / "nope.yaml", "no such file or directory"),
        (empty, "no policy file here (expected *.yaml or *.yml files)"),
    ):
        with pytest.raises(ConfigError) as info:
            read_policy(path)
        assert [str(i) for i in info.value.issues] == [f"{path}: <document>: {reason}"]


# --- cross-reference errors ------------------------------------------------------------------


def test_unknown_deployment_names_route_candidate_and_known_ones(tmp_path: Path) -> None:
    """A candidate naming no deployment is reported at its line with the known names."""
    path = _write(
        tmp_path,
        "p.yaml",
        """\
        routes:
          - name: premium
            candidates:
              - deployment: big
              - deployment: azure-eu
        """,
    )
    assert _rejected(path) == [
        f"{path}:5: routes[0].candidates[1].deployment: route `premium` candidate 1: unknown "
        "deployment `azure-eu` (known: big, cheap-a, cheap-b, embed)"
    ]
    read_policy(path)  # without deployments, names are not checked


def test_tag_selector_matching_nothing_is_an_error(tmp_path: Path) -> None:
    """A selector no deployment satisfies is reported with the tags in use."""
    path = _write(
        tmp_path,
        "p.yaml",
        "routes:\n  - name: r\n    candidates:\n      - tags: [tier:cheap, vision]\n",
    )
    assert _rejected(path) == [
        f"{path}:4: routes[0].candidates[0].tags: route `r` candidate 0: no deployment carries "
        "all of the tags tier:cheap, vision (tags in use: chat, embeddings, tier:cheap, tools, "
        "vision)"
    ]


def test_policy_level_reference_errors(tmp_path: Path) -> None:
    """Unknown quality deployment, duplicate route name, unknown default_route, all-zero
    weights: reported together, sorted by line."""
    path = _write(
        tmp_path,
        "p.yaml",
        """\
        quality: {big: 0.9, ghost: 0.1}
        routes:
          - name: r
            candidates: [{deployment: big}]
          - name: r
            candidates: [{deployment: big}]
            weights: {latency: 0, error_rate: 0, load: 0, price: 0, quality: 0}
        default_route: nowhere
        """,
    )
    assert _rejected(path) == [
        f"{path}:1: quality.ghost: quality names unknown deployment `ghost` (known: big, "
        "cheap-a, cheap-b, embed)",
        f"{path}:5: routes[1].name: route name `r` is already used by routes[0]",
        f"{path}:7: routes[1].weights: the weights are all zero: give at least one component "
        "a positive weight",
        f"{path}:8: default_route: default_route `nowhere` names no route (routes: r)",
    ]


def test_policy_without_routes_is_refused(tmp_path: Path) -> None:
    """An empty file, or one with only defaults, defines no route."""
    path = _write(tmp_path, "p.yaml", "")
    assert _rejected(path) == [f"{path}: <document>: the policy defines no route"]
    path = _write(tmp_path, "q.yaml", "defaults: {strategy: p2c}\n")
    assert _rejected(path) == [f"{path}:1: <document>: the policy defines no route"]


def test_cross_references_are_reported_with_schema_errors(tmp_path: Path) -> None:
    """A typo in one route does not hide an unknown deployment in another: both at once."""
    path = _write(
        tmp_path,
        "p.yaml",
        """\
        routes:
          - name: a
            candidates: [{deployment: big}]
            stratgy: ordered
          - name: b
            candidates: [{deployment: ghost}]
        default_route: a
        """,
    )
    issues = _rejected(path)
    assert [ISSUE.match(i).group("line", "path") for i in issues] == [  # type: ignore[union-attr]
        ("4", "routes[0].stratgy"),
        ("6", "routes[1].candidates[0].deployment"),
    ]  # and default_route `a` is not blamed although route `a` failed validation


def test_compile_policy_raises_every_problem_without_the_loader() -> None:
    """The pure compiler returns (file, path, message) problems for the caller to place."""
    doc = PolicyDocument.model_validate(
        {"routes": [{"name": "r", "candidates": [{"deployment": "x"}, {"tags": ["gpu"]}]}]}
    )
    with pytest.raises(PolicyCompileError) as info:
        compile_policy([("f.yaml", doc)], DEPLOYMENTS, 0.0, "v")
    assert [(p.file, p.path) for p in info.value.problems] == [
        ("f.yaml", ("routes", 0, "candidates", 0, "deployment")),
        ("f.yaml", ("routes", 0, "candidates", 1, "tags")),
    ]
    assert check_policy([("f.yaml", doc)]) == []


# --- directories and versions ----------------------------------------------------------------


def test_directory_concatenates_files_in_lexical_order(tmp_path: Path) -> None:
    """Every *.yaml/*.yml file, in name order; defaults from one file apply to routes of all;
    other files are ignored."""
    _write(
        tmp_path,
        "20-embed.yml",
        "routes:\n  - name: embed\n    candidates: [{tags: [embeddings]}]\n",
    )
    _write(
        tmp_path,
        "10-chat.yaml",
        "defaults: {strategy: p2c}\nroutes:\n  - name: chat\n    candidates: [{deployment: big}]\n",
    )
    _write(tmp_path, "99-last.yaml", "default_route: chat\n")
    _write(tmp_path, "README.md", "not: [a policy")
    assert [p.name for p in policy_files(tmp_path)] == [
        "10-chat.yaml",
        "20-embed.yml",
        "99-last.yaml",
    ]
    snap = load_policy(tmp_path, DEPLOYMENTS)
    assert [(r.name, r.strategy) for r in snap.routes] == [("chat", "p2c"), ("embed", "p2c")]
    assert snap.default is snap.routes[0]
    assert snap.sources == tuple(
        str(tmp_path / n) for n in ("10-chat.yaml", "20-embed.yml", "99-last.yaml")
    )


def test_duplicates_across_files_name_both_files(tmp_path: Path) -> None:
    """defaults/quality/default_route in two files, and one route name twice, are errors in the
    later file that name the earlier one; problems are sorted by file, then line."""
    a = _write(
        tmp_path,
        "a.yaml",
        "defaults: {strategy: ordered}\nquality: {big: 1}\n" + ONE_ROUTE + "default_route: r\n",
    )
    b = _write(
        tmp_path,
        "b.yaml",
        ONE_ROUTE + "defaults: {}\nquality: {big: 0}\ndefault_route: r\n",
    )
    assert _rejected(tmp_path) == [
        f"{b}:2: routes[0].name: route name `r` is already used by routes[0] in {a}",
        f"{b}:4: defaults: `defaults` may appear in only one policy file; it is also in {a}",
        f"{b}:5: quality: `quality` may appear in only one policy file; it is also in {a}",
        f"{b}:6: default_route: `default_route` may appear in only one policy file; it is also "
        f"in {a}",
    ]


def test_problems_of_several_files_are_reported_together(tmp_path: Path) -> None:
    """A broken file does not stop the others from being checked."""
    a = _write(tmp_path, "a.yaml", "routes: [oops\n")
    b = _write(tmp_path, "b.yaml", "routes:\n  - name: r\n    candidates: [{deployment: nope}]\n")
    issues = _rejected(tmp_path)
    assert [i.split(": ")[0] for i in issues] == [f"{a}:2", f"{b}:3"]


def test_version_is_stable_and_follows_the_bytes(tmp_path: Path) -> None:
    """Same bytes, same version; any change of content or file name changes it; it is the
    documented hash."""
    import hashlib

    path = _write(tmp_path, "p.yaml", ONE_ROUTE)
    first = read_policy(path).version
    assert read_policy(path).version == first
    expected = hashlib.sha256(b"p.yaml\0" + ONE_ROUTE.encode()).hexdigest()[:12]
    assert first == expected
    path.write_text(ONE_ROUTE + "# a comment\n")
    assert read_policy(path).version not in (first,)
    path.write_text(ONE_ROUTE)
    assert read_policy(path).version == first
    renamed = path.rename(tmp_path / "q.yaml")
    assert read_policy(renamed).version != first


# --- from the gateway config -----------------------------------------------------------------

CONFIG = """\
deployments:
  - {name: s1, provider: simulated, model: small, aliases: [chat, fast], tags: [chat, stream],
     context_window: 8000, max_output_tokens: 1000, price: {input: 1.5, output: 2},
     max_concurrency: 4}
  - {name: s2, provider: simulated, model: big, aliases: [chat], tags: [chat, completions, tools]}
  - {name: e, provider: simulated, model: emb, tags: [embeddings]}
routes:
  fast: [s2, s1]
"""


def _config(text: str = CONFIG, file: str = "gw.yaml") -> GatewayConfig:
    return parse_config(text, file)


def test_deployment_infos_carry_the_static_facts() -> None:
    """Tags, endpoints derived from tags, limits and prices, in config order."""
    infos = deployment_infos(_config())
    assert list(infos) == ["s1", "s2", "e"]
    assert infos["s1"] == DeploymentInfo(
        "s1",
        tags=frozenset({"chat", "stream"}),
        endpoints=frozenset({"chat/completions"}),
        context_window=8000,
        max_output_tokens=1000,
        price_in=1.5,
        price_out=2.0,
        max_concurrency=4,
    )
    assert infos["s2"].endpoints == frozenset({"chat/completions", "completions"})
    assert infos["e"].endpoints == frozenset({"embeddings"})
    assert set(ENDPOINT_TAGS) >= infos["s2"].endpoints


def test_snapshot_from_routes_follows_the_route_table() -> None:
    """One ordered route per client-facing name, in route_table order, candidates in order."""
    config = _config()
    snap = snapshot_from_routes(config, loaded_at=3.0)
    table = config.route_table()
    assert [r.name for r in snap.routes] == list(table)
    for route in snap.routes:
        assert [c.info.name for c in route.candidates] == list(table[route.name])
        assert route.strategy == "ordered"
        assert route.match == Match(models=frozenset({route.name}))
    assert snap.route("fast") is not None
    assert [c.info.name for c in snap.route("fast").candidates] == ["s2", "s1"]  # type: ignore[union-attr]
    assert snap.default is None and snap.sources == (CONFIG_SOURCE,) and snap.loaded_at == 3.0
    assert re.fullmatch(r"config-[0-9a-f]{12}", snap.version)
    assert snapshot_from_routes(_config()).version == snap.version
    changed = _config(CONFIG.replace("fast: [s2, s1]", "fast: [s1, s2]"))
    assert snapshot_from_routes(changed).version != snap.version


def test_policy_section_resolves_its_path_against_the_config_file(tmp_path: Path) -> None:
    """`policy.path` is read relative to the config file's directory; absolute paths stay."""
    conf = tmp_path / "conf" / "gw.yaml"
    text = CONFIG + "policy: {path: policies/main.yaml, watch: false, poll_interval: 250ms}\n"
    config = _config(text, str(conf))
    assert config.policy is not None
    assert config.policy.path == str(tmp_path / "conf" / "policies" / "main.yaml")
    assert (config.policy.watch, config.policy.poll_interval) == (False, 0.25)
    absolute = _config(CONFIG + f"policy: {{path: {tmp_path}/p.yaml}}\n", str(conf))
    assert absolute.policy is not None and absolute.policy.path == f"{tmp_path}/p.yaml"
    assert (absolute.policy.watch, absolute.policy.poll_interval) == (True, 0.5)
    assert _config().policy is None


def test_policy_section_errors_are_config_issues() -> None:
    """Unknown keys and a bad interval in `policy:` are reported like any config error."""
    with pytest.raises(ConfigError) as info:
        _config(CONFIG + "policy: {path: p.yaml, poll_interval: 0, wach: true}\n")
    assert [str(i) for i in info.value.issues] == [
        "gw.yaml:9: policy.poll_interval: Input should be greater than 0",
        "gw.yaml:9: policy.wach: unknown key (check the spelling; see the config reference in "
        "README.md)",
    ]


def test_configured_policy_is_loaded_or_derived(tmp_path: Path) -> None:
    """With `policy:` the file is compiled against the config's deployments; without, routes."""
    _write(tmp_path, "p.yaml", "routes:\n  - name: all\n    candidates: [{tags: [chat]}]\n")
    config = _config(CONFIG + "policy: {path: p.yaml}\n", str(tmp_path / "gw.yaml"))
    snap = load_configured_policy(config)
    assert [c.info.name for c in snap.routes[0].candidates] == ["s1", "s2"]
    assert load_configured_policy(_config()).sources == (CONFIG_SOURCE,)


def test_demo_policy_compiles_against_the_demo_config() -> None:
    """configs/policies/demo.yaml is valid for configs/demo.yaml's deployments."""
    config = parse_config((REPO / "configs/demo.yaml").read_text(), str(REPO / "configs/demo.yaml"))
    snap = load_policy(REPO / "configs/policies/demo.yaml", deployment_infos(config))
    assert {r.name for r in snap.routes} >= {"demo-chat", "demo-small", "demo-embed"}
    assert snap.route("demo-chat").strategy == "score"  # type: ignore[union-attr]
    assert snap.default is not None
