"""The gateway config: every section round-trips, defaults hold, and every bad input is reported
as ``FILE:LINE: PATH: reason`` naming the exact place, with no secret ever shown."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from gateway.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_FIRST_TOKEN_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_PORT,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_TAGS,
    ConfigError,
    GatewayConfig,
    LiteLLMDeployment,
    OpenAIDeployment,
    SimulatedDeployment,
    load_config,
    parse_config,
)
from gateway.providers.simulated.server import load_settings_file

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-test-DO-NOT-LEAK-4f9a1c"
MINIMAL = """\
deployments:
  - {name: only, provider: simulated, model: sim-model}
"""
# One issue rendered by ConfigError: FILE:LINE: PATH: reason
ISSUE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<path>\S+): (?P<reason>.+)$")


def _parse(text: str) -> GatewayConfig:
    return parse_config(textwrap.dedent(text), "gw.yaml")


def _rejected(text: str) -> list[str]:
    """Parse ``text`` expecting rejection; return the rendered issues."""
    with pytest.raises(ConfigError) as info:
        _parse(text)
    lines = str(info.value).splitlines()
    assert lines == [str(issue) for issue in info.value.issues]
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


def _round_trip(config: GatewayConfig) -> GatewayConfig:
    return parse_config(yaml.safe_dump(_plain(config), sort_keys=False), "dumped.yaml")


# --- round trips, one per section ------------------------------------------------------------


def test_server_section_round_trips() -> None:
    """Every server key is read, human units are converted, and a dump loads back equal."""
    server_section = f"""\
        server:
          host: 0.0.0.0
          port: 9090
          max_body_size: 2MiB
          request_timeout: 1m
          api_keys: ["{SECRET}", other-key]
        """
    config = _parse(textwrap.dedent(server_section) + MINIMAL)
    server = config.server
    assert (server.host, server.port) == ("0.0.0.0", 9090)
    assert server.max_body_size == 2 * 1024 * 1024
    assert server.request_timeout == 60.0
    assert [k.get_secret_value() for k in server.api_keys] == [SECRET, "other-key"]
    assert _round_trip(config) == config


def test_logging_section_round_trips() -> None:
    """Logging level and format are read and survive a dump."""
    config = _parse(f"logging: {{level: debug, format: json}}\n{MINIMAL}")
    assert (config.logging.level, config.logging.format) == ("debug", "json")
    assert _round_trip(config) == config


def test_openai_deployment_round_trips() -> None:
    """An OpenAI-dialect deployment keeps every field, secrets included, through a dump."""
    config = _parse(
        f"""
        deployments:
          - name: azure-eu
            provider: openai
            base_url: https://example.invalid/openai/deployments/gpt/
            model: gpt-4o
            aliases: [gpt-4o, smart]
            tags: [chat, stream, tools]
            context_window: 128000
            max_output_tokens: 4096
            price: {{input: 2.5, output: 10}}
            timeouts: {{connect: 250ms, first_token: 20s, idle: 5s}}
            max_concurrency: 64
            api_key: {SECRET}
            api_key_header: api-key
            query_params: {{api-version: "2024-06-01"}}
            headers: {{x-org: {SECRET}}}
        """
    )
    d = config.deployments[0]
    assert isinstance(d, OpenAIDeployment)
    assert d.base_url == "https://example.invalid/openai/deployments/gpt/"
    assert d.served_names == ("gpt-4o", "smart")
    assert d.tags == ("chat", "stream", "tools")
    assert (d.context_window, d.max_output_tokens, d.max_concurrency) == (128000, 4096, 64)
    assert (d.price.input, d.price.output) == (2.5, 10.0)
    assert (d.timeouts.connect, d.timeouts.first_token, d.timeouts.idle) == (0.25, 20.0, 5.0)
    assert d.api_key is not None and d.api_key.get_secret_value() == SECRET
    assert d.api_key_header == "api-key"
    assert all(isinstance(v, SecretStr) for v in d.query_params.values())
    assert {k: v.get_secret_value() for k, v in d.query_params.items()} == {
        "api-version": "2024-06-01"
    }
    assert d.headers["x-org"].get_secret_value() == SECRET
    assert _round_trip(config) == config


def test_litellm_deployment_round_trips() -> None:
    """A litellm deployment keeps its model string, optional base_url, key and free-form params."""
    config = _parse(
        f"""
        deployments:
          - name: claude
            provider: litellm
            model: anthropic/claude-3-5-sonnet-latest
            api_key: {SECRET}
            params: {{vertex_project: p, metadata: {{team: core}}}}
          - name: local
            provider: litellm
            model: ollama/llama3
            base_url: http://127.0.0.1:11434
        """
    )
    claude, local = config.deployments
    assert isinstance(claude, LiteLLMDeployment) and isinstance(local, LiteLLMDeployment)
    assert claude.base_url is None and local.base_url == "http://127.0.0.1:11434"
    assert claude.params == {"vertex_project": "p", "metadata": {"team": "core"}}
    assert claude.api_key is not None and claude.api_key.get_secret_value() == SECRET
    assert local.api_key is None
    assert _round_trip(config) == config


def test_litellm_params_that_the_gateway_sets_are_refused_at_params() -> None:
    """`params` may not hold what the gateway sets per request (`stream` would turn every answer
    into a stream): reported at FILE:LINE: deployments[N].params with what to do instead."""
    issues = _rejected(
        """\
        deployments:
          - name: ok
            provider: simulated
            model: m
          - name: claude
            provider: litellm
            model: anthropic/claude-3-5-haiku-latest
            params:
              stream: true
              timeout: 5
              vertex_project: p
        """
    )
    assert issues == [
        "gw.yaml:8: deployments[1].params: `stream` is set by the gateway per request; remove it "
        "from params; `timeout` is set by the gateway per request, from `timeouts`; remove it "
        "from params"
    ]


@pytest.mark.parametrize("key", sorted(LiteLLMDeployment.RESERVED_PARAMS))
def test_every_reserved_litellm_param_is_refused(key: str) -> None:
    """Each argument the gateway passes to litellm itself is refused in `params`, by name."""
    issues = _rejected(
        f"""\
        deployments:
          - name: claude
            provider: litellm
            model: anthropic/claude-3-5-haiku-latest
            params: {{{key}: x}}
        """
    )
    assert len(issues) == 1
    assert issues[0].startswith(f"gw.yaml:5: deployments[0].params: `{key}` is set by the gateway")
    assert issues[0].endswith("; remove it from params")


def test_simulated_deployment_round_trips() -> None:
    """A simulated deployment keeps its behaviour and fault schedule through a dump."""
    config = _parse(
        """
        deployments:
          - name: sim
            provider: simulated
            model: sim-large
            simulated:
              latency: 40ms
              tokens_per_second: 400
              echo: true
              seed: 7
              faults:
                - {kind: status, status: 503, rate: 0.2, retry_after: 2s, message: busy}
                - {kind: stream_cut, after_chunks: 3, start: 10s, end: 1m, count: 5}
        """
    )
    d = config.deployments[0]
    assert isinstance(d, SimulatedDeployment)
    sim = d.simulated
    assert (sim.latency, sim.tokens_per_second, sim.echo, sim.seed) == (0.04, 400.0, True, 7)
    first, second = sim.faults
    assert (first.kind, first.status, first.rate, first.retry_after) == ("status", 503, 0.2, 2.0)
    assert (second.kind, second.after_chunks, second.start, second.end) == (
        "stream_cut",
        3,
        10.0,
        60.0,
    )
    assert _round_trip(config) == config


def test_routes_section_round_trips() -> None:
    """Explicit routes keep their order of deployments through a dump."""
    config = _parse(
        """
        deployments:
          - {name: a, provider: simulated, model: m}
          - {name: b, provider: simulated, model: m}
        routes:
          chat: [b, a]
          only-a: [a]
        """
    )
    assert config.routes == {"chat": ("b", "a"), "only-a": ("a",)}
    assert _round_trip(config) == config


def test_demo_config_loads_and_round_trips() -> None:
    """The shipped demo config is valid and survives a dump."""
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.deployments
    assert _round_trip(config) == config


# --- defaults ----------------------------------------------------------------------------------


def test_minimal_config_gets_the_documented_defaults() -> None:
    """With only one deployment given, every other setting takes its named default."""
    config = _parse(MINIMAL)
    assert config.server.host == DEFAULT_HOST == "127.0.0.1"
    assert config.server.port == DEFAULT_PORT == 8080
    assert config.server.max_body_size == DEFAULT_MAX_BODY_SIZE
    assert config.server.request_timeout == DEFAULT_REQUEST_TIMEOUT
    assert config.server.api_keys == ()
    assert (config.logging.level, config.logging.format) == ("info", "auto")
    assert config.routes == {}
    d = config.deployments[0]
    assert d.aliases == () and d.served_names == ("sim-model",)
    assert d.tags == DEFAULT_TAGS
    assert (d.context_window, d.max_output_tokens, d.max_concurrency) == (None, None, None)
    assert (d.price.input, d.price.output) == (0.0, 0.0)
    assert d.timeouts.connect == DEFAULT_CONNECT_TIMEOUT
    assert d.timeouts.first_token == DEFAULT_FIRST_TOKEN_TIMEOUT
    assert d.timeouts.idle == DEFAULT_IDLE_TIMEOUT


def test_openai_deployment_defaults_to_bearer_auth_and_no_key() -> None:
    """An OpenAI deployment without a key sends none, and would use the Authorization header."""
    config = _parse(
        "deployments:\n  - {name: a, provider: openai, model: m, base_url: http://h:1/v1}\n"
    )
    d = config.deployments[0]
    assert isinstance(d, OpenAIDeployment)
    assert d.api_key is None and d.api_key_header == "authorization"
    assert d.headers == {} and d.query_params == {}


def test_default_tags_support_chat_and_completions_but_not_embeddings() -> None:
    """A deployment serves chat and completions unless its tags say otherwise."""
    d = _parse(MINIMAL).deployments[0]
    assert d.supports("chat/completions") and d.supports("completions")
    assert not d.supports("embeddings")


def test_config_is_frozen() -> None:
    """A loaded config cannot be mutated in place (snapshots are swapped, never edited)."""
    config = _parse(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        config.server.port = 1


# --- route table and lookups ---------------------------------------------------------------------


def test_route_table_routes_each_served_name_to_its_deployments_in_config_order() -> None:
    """Aliases (or the model name when there are none) route to every deployment serving them."""
    config = _parse(
        """
        deployments:
          - {name: big, provider: simulated, model: m-large, aliases: [chat, large]}
          - {name: small, provider: simulated, model: m-small, aliases: [chat]}
          - {name: plain, provider: simulated, model: m-plain}
        """
    )
    assert config.route_table() == {
        "chat": ("big", "small"),
        "large": ("big",),
        "m-plain": ("plain",),
    }


def test_explicit_route_wins_over_the_implicit_one() -> None:
    """A route in `routes` replaces the implicit order and can add a name nobody serves."""
    config = _parse(
        """
        deployments:
          - {name: big, provider: simulated, model: m, aliases: [chat]}
          - {name: small, provider: simulated, model: m, aliases: [chat]}
        routes:
          chat: [small, big]
          cheap: [small]
        """
    )
    assert config.route_table() == {"chat": ("small", "big"), "cheap": ("small",)}


def test_deployment_lookup_by_name() -> None:
    """`deployment(name)` finds a deployment and raises KeyError for an unknown name."""
    config = _parse(MINIMAL)
    assert config.deployment("only").model == "sim-model"
    with pytest.raises(KeyError):
        config.deployment("missing")


# --- environment interpolation -------------------------------------------------------------------


def test_env_var_is_interpolated_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """`${VAR}` is replaced by the variable's value, also inside a longer string."""
    monkeypatch.setenv("GW_TEST_KEY", SECRET)
    monkeypatch.setenv("GW_TEST_HOST", "upstream.invalid")
    config = _parse(
        """
        deployments:
          - name: a
            provider: openai
            model: m
            base_url: https://${GW_TEST_HOST}/v1
            api_key: ${GW_TEST_KEY}
        """
    )
    d = config.deployments[0]
    assert isinstance(d, OpenAIDeployment)
    assert d.base_url == "https://upstream.invalid/v1"
    assert d.api_key is not None and d.api_key.get_secret_value() == SECRET


def test_env_default_applies_when_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """`${VAR:-default}` gives the default when VAR is unset or empty, VAR's value otherwise."""
    monkeypatch.delenv("GW_TEST_UNSET", raising=False)
    monkeypatch.setenv("GW_TEST_EMPTY", "")
    monkeypatch.setenv("GW_TEST_PORT", "9999")
    sections = """\
        server:
          host: ${GW_TEST_UNSET:-0.0.0.0}
          port: ${GW_TEST_PORT:-1}
        logging:
          level: ${GW_TEST_EMPTY:-warning}
        """
    config = _parse(textwrap.dedent(sections) + MINIMAL)
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 9999
    assert config.logging.level == "warning"


def test_empty_env_var_without_default_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """`${VAR}` with VAR set but empty is an error (an empty client key would admit anyone)."""
    monkeypatch.setenv("GW_TEST_EMPTY", "")
    issues = _rejected(f'server:\n  api_keys: ["${{GW_TEST_EMPTY}}"]\n{MINIMAL}')
    assert issues == [
        "gw.yaml:2: server.api_keys[0]: environment variable GW_TEST_EMPTY is set but empty "
        "(referenced as ${GW_TEST_EMPTY}); set it or give a default with ${GW_TEST_EMPTY:-value}"
    ]


def test_empty_env_var_inside_a_longer_string_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty `${VAR}` is refused wherever it appears, not only as a whole value."""
    monkeypatch.setenv("GW_TEST_EMPTY", "")
    issues = _rejected(
        """\
        deployments:
          - name: a
            provider: openai
            model: m
            base_url: https://${GW_TEST_EMPTY}/v1
        """
    )
    assert len(issues) == 1
    assert issues[0].startswith(
        "gw.yaml:5: deployments[0].base_url: environment variable GW_TEST_EMPTY is set but empty"
    )


# --- bad input: FILE:LINE: PATH: reason ----------------------------------------------------------


def test_unknown_key_is_reported_at_its_line_and_path() -> None:
    """A misspelt key names its file, line and full path, and says it is unknown."""
    issues = _rejected(
        """\
        deployments:
          - name: a
            provider: simulated
            model: m
            modle: typo
        """
    )
    assert issues == [
        "gw.yaml:5: deployments[0].modle: unknown key "
        "(check the spelling; see the config reference in README.md)"
    ]


def test_unknown_top_level_key_is_reported() -> None:
    """A misspelt section name is reported on its own line."""
    issues = _rejected("servr: {port: 1}\n" + MINIMAL)
    assert issues[0].startswith("gw.yaml:1: servr: unknown key")


def test_bad_duration_is_reported_with_the_accepted_forms() -> None:
    """A duration that does not parse names its line, path, the accepted forms and the input."""
    issues = _rejected(
        """\
        deployments:
          - name: a
            provider: openai
            base_url: http://h:1/v1
            model: m
            timeouts:
              connect: 5 parsecs
        """
    )
    assert issues == [
        "gw.yaml:7: deployments[0].timeouts.connect: expected a duration such as '250ms', "
        "'30s', '2m' or a number of seconds, got '5 parsecs'"
    ]


def test_zero_request_timeout_is_refused() -> None:
    """The overall deadline must be positive."""
    issues = _rejected(f"server:\n  request_timeout: 0s\n{MINIMAL}")
    assert issues == ["gw.yaml:2: server.request_timeout: must be greater than zero"]


def test_missing_env_var_names_the_variable_and_where_it_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unset `${VAR}` without a default is an error at the line that references it."""
    monkeypatch.delenv("GW_TEST_MISSING", raising=False)
    issues = _rejected(
        """\
        deployments:
          - name: a
            provider: openai
            base_url: http://h:1/v1
            model: m
            api_key: ${GW_TEST_MISSING}
        """
    )
    assert issues == [
        "gw.yaml:6: deployments[0].api_key: environment variable GW_TEST_MISSING is not set "
        "(referenced as ${GW_TEST_MISSING})"
    ]


def test_route_to_unknown_deployment_names_both_ends() -> None:
    """A route naming a deployment that does not exist names the route and the missing name."""
    issues = _rejected(
        """\
        deployments:
          - {name: a, provider: simulated, model: m}
          - {name: b, provider: simulated, model: m}
        routes:
          chat:
            - a
            - azure-eu
        """
    )
    assert issues == [
        "gw.yaml:7: routes.chat[1]: route `chat` references unknown deployment `azure-eu` "
        "(known: a, b)"
    ]


def test_route_listing_no_deployment_is_refused() -> None:
    """An empty route would make its model unroutable, so it is an error."""
    issues = _rejected(f"{MINIMAL}routes:\n  chat: []\n")
    assert issues == ["gw.yaml:4: routes.chat: route `chat` lists no deployment"]


def test_duplicate_deployment_name_points_at_the_second_use() -> None:
    """A reused deployment name is reported where it is reused, naming the first use."""
    issues = _rejected(
        """\
        deployments:
          - name: a
            provider: simulated
            model: m
          - name: a
            provider: simulated
            model: n
        """
    )
    assert issues == [
        "gw.yaml:5: deployments[1].name: deployment name `a` is already used by deployments[0]"
    ]


def test_route_listing_a_deployment_twice_is_refused_at_the_second_place() -> None:
    """A deployment repeated in one route is reported once, where it is repeated."""
    issues = _rejected(
        """\
        deployments:
          - {name: a, provider: simulated, model: m}
          - {name: b, provider: simulated, model: m}
        routes:
          chat:
            - a
            - b
            - a
            - a
          other: [b, a]
        """
    )
    assert issues == ["gw.yaml:8: routes.chat[2]: route `chat` lists deployment `a` twice"]


def test_duplicate_section_is_refused_at_its_second_occurrence() -> None:
    """Two `server:` blocks are an error naming both lines, not a silent last-one-wins."""
    issues = _rejected(f"server:\n  port: 1\n{MINIMAL}server:\n  port: 2\n")
    assert issues == ["gw.yaml:5: server: duplicate key `server` (first at line 1)"]


def test_duplicate_route_name_is_refused() -> None:
    """A route name given twice under `routes:` is reported at the repeat."""
    issues = _rejected(
        """\
        deployments:
          - {name: a, provider: simulated, model: m}
          - {name: b, provider: simulated, model: m}
        routes:
          chat: [a]
          chat: [b]
        """
    )
    assert issues == ["gw.yaml:6: routes.chat: duplicate key `chat` (first at line 5)"]


def test_duplicate_key_inside_a_list_item_has_the_full_path() -> None:
    """A key repeated in a flow mapping inside a list is reported with its index in the path."""
    issues = _rejected("deployments:\n  - {name: a, provider: simulated, model: m, model: n}\n")
    assert issues == ["gw.yaml:2: deployments[0].model: duplicate key `model` (first at line 2)"]


def test_keys_equal_once_loaded_count_as_duplicates() -> None:
    """`yes` and `true` are one key once loaded, as are `1` and `01` (the schema then also
    refuses them as non-string keys)."""
    issues = _rejected(
        """\
        deployments:
          - name: a
            provider: openai
            model: m
            base_url: http://h:1/v1
            query_params: {1: x, 01: y}
            headers: {yes: x, true: y}
        """
    )
    assert (
        "gw.yaml:6: deployments[0].query_params.01: duplicate key `01` (first at line 6)" in issues
    )
    assert (
        "gw.yaml:7: deployments[0].headers.true: duplicate key `true` (first at line 7)" in issues
    )
    assert not any("query_params.1:" in i or "headers.yes:" in i for i in issues)


def test_duplicate_key_and_schema_errors_are_reported_together_at_the_loaded_lines() -> None:
    """A schema error in the block that was loaded (the last) is reported at that block's line."""
    issues = _rejected(f"server:\n  port: 1\n{MINIMAL}server:\n  port: 70000\n")
    assert [i.split(": ")[:2] for i in issues] == [
        ["gw.yaml:5", "server"],
        ["gw.yaml:6", "server.port"],
    ]


def test_anchored_mapping_with_a_duplicate_is_reported_once() -> None:
    """A mapping reused through aliases is checked once, at the place it is written."""
    issues = _rejected(
        """\
        deployments:
          - {name: a, provider: simulated, model: m, timeouts: &t {idle: 1s, idle: 2s}}
          - {name: b, provider: simulated, model: m, timeouts: *t}
          - {name: c, provider: simulated, model: m, timeouts: *t}
        """
    )
    assert issues == [
        "gw.yaml:2: deployments[0].timeouts.idle: duplicate key `idle` (first at line 2)"
    ]


def test_merge_key_override_is_not_a_duplicate() -> None:
    """A key that overrides one merged in with `<<:` is legitimate YAML, not a repeated key."""
    config = _parse(
        """\
        deployments:
          - {name: a, provider: simulated, model: m, timeouts: &t {idle: 1s, connect: 2s}}
          - name: b
            provider: simulated
            model: m
            timeouts:
              <<: *t
              idle: 3s
        """
    )
    assert (config.deployments[1].timeouts.idle, config.deployments[1].timeouts.connect) == (
        3.0,
        2.0,
    )


def test_duplicate_key_in_a_fault_file_is_refused(tmp_path: Path) -> None:
    """Fault files share the loader, so a repeated key is refused there too."""
    path = tmp_path / "faults.yaml"
    path.write_text("latency: 10ms\nseed: 1\nlatency: 20ms\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings_file(str(path))
    assert str(info.value) == f"{path}:3: latency: duplicate key `latency` (first at line 1)"


def test_wrong_provider_kind_names_the_kind_and_the_accepted_ones() -> None:
    """An unknown `provider:` is reported on that deployment, listing the known providers."""
    issues = _rejected(
        """\
        deployments:
          - name: a
            provider: bedrock
            model: m
        """
    )
    assert len(issues) == 1
    match = ISSUE.match(issues[0])
    assert match is not None, issues[0]
    assert (match["file"], match["line"], match["path"]) == (
        "gw.yaml",
        "3",
        "deployments[0].provider",
    )
    assert match["reason"].startswith("unknown provider `bedrock`")
    for word in ("openai", "litellm", "simulated"):
        assert word in match["reason"]


def test_missing_provider_is_reported_on_the_deployment() -> None:
    """A deployment without `provider:` is reported at its line and path."""
    issues = _rejected("deployments:\n  - {name: a, model: m}\n")
    assert len(issues) == 1
    match = ISSUE.match(issues[0])
    assert match is not None, issues[0]
    assert (match["line"], match["path"]) == ("2", "deployments[0].provider")
    assert "required key is missing: `provider`" in match["reason"]


def test_missing_required_key_is_reported_at_its_parent() -> None:
    """A missing required key is reported at its mapping's line, with the key in the path."""
    issues = _rejected("deployments:\n  - name: a\n    provider: simulated\n")
    assert issues == ["gw.yaml:2: deployments[0].model: required key is missing"]


def test_every_problem_is_reported_at_once() -> None:
    """Several invalid values yield one issue each, in document order, not just the first."""
    issues = _rejected(
        """\
        server:
          port: 70000
        deployments:
          - {name: a, provider: simulated, model: m, context_window: 0}
        """
    )
    assert [i.split(": ")[0:2] for i in issues] == [
        ["gw.yaml:2", "server.port"],
        ["gw.yaml:4", "deployments[0].context_window"],
    ]


def test_error_inside_simulated_settings_has_a_clean_path() -> None:
    """An invalid fault kind is reported at its line with the path as written in the file."""
    issues = _rejected(
        """\
        deployments:
          - name: a
            provider: simulated
            model: m
            simulated:
              faults:
                - kind: explode
        """
    )
    assert len(issues) == 1
    assert issues[0].startswith("gw.yaml:7: deployments[0].simulated.faults[0].kind: ")


def test_invalid_yaml_is_reported_at_the_line_of_the_problem() -> None:
    """A YAML syntax error names the file, the line and the parser's problem, no traceback."""
    issues = _rejected("deployments:\n  - name: a\n    provider: [simulated\n")
    assert len(issues) == 1
    assert issues[0].startswith("gw.yaml:4: <document>: invalid YAML: ")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n", ""])
def test_document_that_is_not_a_mapping_is_refused(text: str) -> None:
    """A list, a scalar or an empty file is not a config: the error says what is expected."""
    issues = _rejected(text)
    assert issues == [
        "gw.yaml:1: <document>: the document must be a mapping with a `deployments` list"
    ]


def test_empty_deployments_list_is_refused() -> None:
    """A gateway with nothing to route to is a config error, not a server that 404s."""
    issues = _rejected("deployments: []\n")
    assert len(issues) == 1
    match = ISSUE.match(issues[0])
    assert match is not None, issues[0]
    assert (match["line"], match["path"]) == ("1", "deployments")
    assert match["reason"] == "list at least one deployment"


def test_missing_deployments_key_is_refused() -> None:
    """A config without `deployments` says the key is required."""
    assert _rejected("server: {port: 1}\n") == ["gw.yaml:1: deployments: required key is missing"]


def test_missing_file_is_reported_without_a_line(tmp_path: Path) -> None:
    """A config path that does not exist names the file and the OS reason."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: <document>: cannot read file: No such file or directory"


def test_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported as such, not as a decoding traceback."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"deployments:\n  - name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: <document>: file is not valid UTF-8"


def test_load_config_names_the_real_file(tmp_path: Path) -> None:
    """Issues from a file carry that file's path."""
    path = tmp_path / "bad.yaml"
    path.write_text("deployments: []\nextra: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert all(issue.file == str(path) for issue in info.value.issues)
    assert f"{path}:2: extra: unknown key" in str(info.value)


# --- secrets -------------------------------------------------------------------------------------

SECRET_CONFIG = f"""
server:
  api_keys: ["{SECRET}"]
deployments:
  - name: a
    provider: openai
    base_url: http://h:1/v1
    model: m
    api_key: {SECRET}
    headers: {{x-api-token: {SECRET}}}
    query_params: {{key: {SECRET}}}
  - name: b
    provider: litellm
    model: anthropic/claude
    api_key: {SECRET}
"""


def test_repr_and_str_of_a_config_never_show_a_secret() -> None:
    """Keys, secret headers and client keys are masked in repr and str, at every level."""
    config = _parse(SECRET_CONFIG)
    shown = [repr(config), str(config), repr(config.deployments), str(config.server)]
    shown += [repr(d) for d in config.deployments]
    for text in shown:
        assert SECRET not in text
    assert "**********" in repr(config)


def test_repr_and_str_of_a_config_never_show_a_query_param_value() -> None:
    """Query parameters may carry a key (`?key=`), so their values are masked like headers."""
    config = _parse(
        f"""
        deployments:
          - name: a
            provider: openai
            base_url: http://h:1/v1
            model: m
            query_params: {{key: {SECRET}}}
        """
    )
    d = config.deployments[0]
    assert isinstance(d, OpenAIDeployment)
    assert d.query_params["key"].get_secret_value() == SECRET
    for text in (repr(config), str(config), repr(d), str(d), repr(d.query_params)):
        assert SECRET not in text
    assert "**********" in repr(d)


def test_empty_secrets_are_refused_where_they_are_written() -> None:
    """Client keys, upstream keys and secret headers must not be empty or whitespace."""
    issues = _rejected(
        """\
        server:
          api_keys: [good-key, ""]
        deployments:
          - name: a
            provider: openai
            base_url: http://h:1/v1
            model: m
            api_key: ""
            headers: {x-token: ""}
          - name: b
            provider: litellm
            model: anthropic/claude
            api_key: "   "
        """
    )
    assert issues == [
        "gw.yaml:2: server.api_keys[1]: must not be empty",
        "gw.yaml:8: deployments[0].api_key: must not be empty",
        "gw.yaml:9: deployments[0].headers.x-token: must not be empty",
        "gw.yaml:13: deployments[1].api_key: must not be only whitespace",
    ]


def test_client_key_defaulting_to_empty_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """`${VAR:-}` interpolates to "", which the schema still refuses for a client key."""
    monkeypatch.delenv("GW_TEST_UNSET", raising=False)
    issues = _rejected(f'server:\n  api_keys: ["${{GW_TEST_UNSET:-}}"]\n{MINIMAL}')
    assert issues == ["gw.yaml:2: server.api_keys[0]: must not be empty"]


def test_empty_query_param_value_is_allowed() -> None:
    """Unlike a key, a query parameter may legitimately be empty (`?flag=`)."""
    config = _parse(
        "deployments:\n  - {name: a, provider: openai, model: m, base_url: http://h:1/v1, "
        'query_params: {flag: ""}}\n'
    )
    d = config.deployments[0]
    assert isinstance(d, OpenAIDeployment)
    assert d.query_params["flag"].get_secret_value() == ""


def test_config_error_never_shows_a_secret() -> None:
    """A rejected config with secrets in it does not echo them in its error message."""
    text = SECRET_CONFIG.replace("model: m\n", "model: m\n    port: 1\n", 1)
    with pytest.raises(ConfigError) as info:
        _parse(text)
    assert "deployments[0].port: unknown key" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.issues)


# --- the CLI -------------------------------------------------------------------------------------


def _config_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_cli_config_check_rejects_a_bad_file_with_exit_2(tmp_path: Path) -> None:
    """`gateway config check BAD` exits 2 and prints FILE:LINE: PATH: reason, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "deployments:\n  - name: a\n    provider: simulated\n    model: m\n    modle: x\n",
        encoding="utf-8",
    )
    result = _config_check(bad)
    assert result.returncode == 2
    assert f"{bad}:5: deployments[0].modle: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_config_check_reports_a_missing_file_with_exit_2(tmp_path: Path) -> None:
    """A config path that does not exist is a clean error, not a traceback."""
    result = _config_check(tmp_path / "absent.yaml")
    assert result.returncode == 2
    assert "absent.yaml: <document>: cannot read file" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    """A valid file exits 0 and says which models it serves."""
    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL, encoding="utf-8")
    result = _config_check(good)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "sim-model" in result.stdout


def test_every_kind_of_problem_is_reported_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset variable, a schema error and a dangling route come back together, by line."""
    monkeypatch.delenv("GW_TEST_MISSING", raising=False)
    issues = _rejected(
        """\
        deployments:
          - {name: sim-a, provider: simulated, model: m}
          - name: main
            provider: openai
            model: m
            base_url: http://h:1/v1
            api_key: ${GW_TEST_MISSING}
            timeouts: {connect: 5 parsecs}
        routes:
          chat: [sim-a, azure-eu]
        """
    )
    assert [i.split(": ")[:2] for i in issues] == [
        ["gw.yaml:7", "deployments[1].api_key"],
        ["gw.yaml:8", "deployments[1].timeouts.connect"],
        ["gw.yaml:10", "routes.chat[1]"],
    ]


def test_document_nested_too_deeply_is_a_config_error_not_a_traceback() -> None:
    """A pathological document (thousands of nested lists) is reported, never a RecursionError."""
    text = "deployments: " + "[" * 3000 + "]" * 3000
    with pytest.raises(ConfigError) as info:
        parse_config(text, "deep.yaml")
    assert [str(i) for i in info.value.issues] == [
        "deep.yaml: <document>: the document is nested too deeply to read"
    ]
