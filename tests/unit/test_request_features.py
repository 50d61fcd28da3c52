"""What routing reads from a request: capabilities, size, output limit, metadata, constraints."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import InvalidRequest
from gateway.validation import validate
from policies.request import IMAGE_TOKENS, HeaderView, describe
from policies.types import RequestConstraints, RequestFeatures, RoutingError
from policies.units import parse_duration

CHAT = "chat/completions"
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {}}}


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A chat body; one user message when none is given."""
    return {
        "model": "demo-chat",
        "messages": list(messages) or [{"role": "user", "content": "hi"}],
        **fields,
    }


def features(
    body: dict[str, Any], headers: Mapping[str, str] | None = None, endpoint: str = CHAT
) -> RequestFeatures:
    """Describe ``body`` as a 100-byte request with ``headers`` (none by default)."""
    return describe(endpoint, body, 100, headers if headers is not None else {})


def ci(headers: dict[str, str]) -> CIMultiDictProxy[str]:
    """Headers as aiohttp hands them over: case-insensitive, names in their original case."""
    return CIMultiDictProxy(CIMultiDict(headers))


# --- capabilities ---------------------------------------------------------------------------

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "Sure, here is"}


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        pytest.param(CHAT, chat(), set(), id="plain-chat"),
        pytest.param(
            CHAT,
            chat({"role": "user", "content": [{"type": "text", "text": "what?"}, IMAGE]}),
            {"vision"},
            id="image_url-part",
        ),
        pytest.param(
            CHAT,
            chat({"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}),
            {"vision"},
            id="input_image-part",
        ),
        pytest.param(
            CHAT,
            chat({"role": "user", "content": [{"type": "image", "source": {}}]}),
            {"vision"},
            id="image-type-part",
        ),
        pytest.param(
            CHAT,
            chat({"role": "user", "content": [{"image": "data:..."}]}),
            {"vision"},
            id="image-key-part",
        ),
        pytest.param(
            CHAT,
            chat(USER, {"role": "user", "content": [{"type": "text", "text": "no image"}]}),
            set(),
            id="text-parts-only",
        ),
        pytest.param(
            CHAT,
            chat({"role": "system", "content": "s"}, USER, {"role": "user", "content": [IMAGE]}),
            {"vision"},
            id="image-in-a-later-message",
        ),
        pytest.param(CHAT, chat(tools=[TOOL]), {"tools"}, id="tools"),
        pytest.param(CHAT, chat(functions=[{"name": "f"}]), {"tools"}, id="functions"),
        pytest.param(CHAT, chat(tools=[]), set(), id="empty-tools"),
        pytest.param(CHAT, chat(tools=[], functions=[]), set(), id="empty-tools-and-functions"),
        pytest.param(
            CHAT, chat(response_format={"type": "json_object"}), {"json"}, id="json_object"
        ),
        pytest.param(
            CHAT,
            chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
            {"json"},
            id="json_schema",
        ),
        pytest.param(CHAT, chat(response_format={"type": "text"}), set(), id="text-format"),
        pytest.param(CHAT, chat(response_format={"type": ["json_object"]}), set(), id="odd-type"),
        pytest.param(CHAT, chat(stream=True), {"stream"}, id="stream"),
        pytest.param(CHAT, chat(stream=False), set(), id="stream-false"),
        pytest.param(CHAT, chat(USER, ASSISTANT), {"prefill"}, id="assistant-prefill"),
        pytest.param(CHAT, chat(ASSISTANT, USER), set(), id="assistant-not-last"),
        pytest.param(
            CHAT,
            chat(
                {"role": "user", "content": [IMAGE]},
                ASSISTANT,
                tools=[TOOL],
                response_format={"type": "json_object"},
                stream=True,
            ),
            {"vision", "tools", "json", "stream", "prefill"},
            id="everything",
        ),
        pytest.param(
            "completions",
            {"model": "demo-chat", "prompt": "Once upon a time", "stream": True},
            {"stream"},
            id="completions-prompt-string",
        ),
        pytest.param(
            "completions",
            {"model": "demo-chat", "prompt": "x", "messages": [USER, ASSISTANT]},
            set(),
            id="completions-ignores-messages",
        ),
        pytest.param(
            "embeddings",
            {"model": "embed", "input": ["a", "b"]},
            set(),
            id="embeddings",
        ),
    ],
)
def test_capabilities_are_derived_from_the_body(
    endpoint: str, body: dict[str, Any], expected: set[str]
) -> None:
    """Images, tools, JSON output, streaming and assistant prefill each require a capability."""
    validate(endpoint, body)  # every row is a request the gateway would accept
    result = describe(endpoint, body, 100, {})
    assert result.capabilities == expected
    assert result.stream == ("stream" in expected)
    assert result.endpoint == endpoint
    assert result.model == body["model"]


def test_capabilities_are_shared_frozensets() -> None:
    """Two requests that need the same capabilities get the same (immutable) set object."""
    a = features(chat(tools=[TOOL], stream=True))
    b = features(chat(stream=True, tools=[TOOL, TOOL]))
    assert isinstance(a.capabilities, frozenset)
    assert a.capabilities is b.capabilities


@pytest.mark.parametrize("model", [None, "", 5])
def test_a_missing_or_bad_model_is_a_routing_error(model: object) -> None:
    """Without a model name there is nothing to route; the error names the field."""
    body = chat()
    if model is None:
        del body["model"]
    else:
        body["model"] = model
    with pytest.raises(RoutingError, match="`model` must be a non-empty string") as info:
        features(body)
    assert info.value.param == "model"


# --- size and output limit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_size", "tokens"),
    [(0, 0), (1, 1), (3, 1), (4, 1), (5, 2), (400, 100), (401, 101), (-7, 0)],
)
def test_prompt_tokens_are_the_body_size_over_four_rounded_up(raw_size: int, tokens: int) -> None:
    """The estimate is ceil(bytes / 4): no tokenizer runs on the hot path."""
    assert describe(CHAT, chat(), raw_size, {}).prompt_tokens == tokens


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 200}, 200),
        ({"max_tokens": 100, "max_completion_tokens": 200}, 200),
        ({"max_tokens": 100, "max_completion_tokens": 0}, 100),
        ({"max_tokens": 0}, None),
        ({"max_tokens": -5}, None),
        ({"max_tokens": True}, None),
        ({"max_tokens": 1.5}, None),
        ({"max_tokens": "100"}, None),
        ({"max_tokens": None, "max_completion_tokens": None}, None),
    ],
)
def test_max_output_tokens_takes_the_first_positive_integer(
    fields: dict[str, Any], expected: int | None
) -> None:
    """max_completion_tokens wins over max_tokens; non-integers and values <= 0 are ignored."""
    assert features(chat(**fields)).max_output_tokens == expected


# --- metadata -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"tier": "gold", "team": "ml"}, {"tier": "gold", "team": "ml"}),
        ({"tier": "gold", "n": 3, "x": None, "l": ["a"]}, {"tier": "gold"}),
        ({"n": 3}, {}),
        ({}, {}),
        (None, {}),
        ("tier=gold", {}),
        (["tier", "gold"], {}),
    ],
)
def test_metadata_keeps_string_entries_only(metadata: object, expected: dict[str, str]) -> None:
    """body.metadata is read when it is an object; entries whose value is not a string drop."""
    body = chat() if metadata is None else chat(metadata=metadata)
    assert dict(features(body).metadata) == expected


def test_metadata_does_not_follow_later_changes_to_the_body() -> None:
    """The features hold their own (read-only) metadata, not the body's dict."""
    body = chat(metadata={"tier": "gold"})
    result = features(body)
    body["metadata"]["tier"] = "bronze"
    assert result.metadata == {"tier": "gold"}
    with pytest.raises(TypeError):
        result.metadata["tier"] = "x"  # type: ignore[index]


# --- constraints: accepted forms ------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value", "field", "expected"),
    [
        ("x-gateway-policy", "premium", "policy", "premium"),
        ("x-gateway-policy", "  team.ml:v2-x_y ", "policy", "team.ml:v2-x_y"),
        ("x-gateway-max-price", "0.05", "max_price", 0.05),
        ("x-gateway-max-price", " 2 ", "max_price", 2.0),
        ("x-gateway-max-price", "1e-3", "max_price", 0.001),
        ("x-gateway-latency-slo", "800ms", "latency_slo", 0.8),
        ("x-gateway-latency-slo", "2s", "latency_slo", 2.0),
        ("x-gateway-latency-slo", "1m", "latency_slo", 60.0),
        ("x-gateway-latency-slo", "1.5", "latency_slo", 1.5),
        ("x-gateway-tags", "eu", "tags", frozenset({"eu"})),
        ("x-gateway-tags", " eu , tier:cheap ,, ", "tags", frozenset({"eu", "tier:cheap"})),
        ("x-gateway-weights", "latency=2,price=0.5", "weights", {"latency": 2.0, "price": 0.5}),
        (
            "x-gateway-weights",
            " error_rate = 0 , load=1.5, quality=3,",
            "weights",
            {"error_rate": 0.0, "load": 1.5, "quality": 3.0},
        ),
    ],
)
def test_constraint_headers_are_parsed(header: str, value: str, field: str, expected: Any) -> None:
    """Each x-gateway-* header sets its constraint, in every documented form."""
    constraints = features(chat(), {header: value}).constraints
    got = getattr(constraints, field)
    if isinstance(expected, float):
        assert got == pytest.approx(expected)
    elif isinstance(expected, dict):
        assert dict(got) == pytest.approx(expected)
    else:
        assert got == expected
    others = {"policy", "max_price", "latency_slo", "tags", "weights"} - {field}
    default = RequestConstraints()
    assert all(getattr(constraints, name) == getattr(default, name) for name in others)


@pytest.mark.parametrize(
    ("options", "field", "expected"),
    [
        ({"policy": "premium"}, "policy", "premium"),
        ({"max_price": 0.05}, "max_price", 0.05),
        ({"max_price": 2}, "max_price", 2.0),
        ({"latency_slo": "800ms"}, "latency_slo", 0.8),
        ({"latency_slo": 2}, "latency_slo", 2.0),
        ({"latency_slo": 0.25}, "latency_slo", 0.25),
        ({"tags": ["eu", " tools "]}, "tags", frozenset({"eu", "tools"})),
        ({"tags": []}, "tags", frozenset()),
        ({"weights": {"latency": 2, "price": 0.5}}, "weights", {"latency": 2.0, "price": 0.5}),
        ({"weights": {"quality": 0}}, "weights", {"quality": 0.0}),
        ({"weights": {}}, "weights", {}),
        ({"max_price": None, "policy": None}, "max_price", None),
    ],
)
def test_constraint_body_keys_are_parsed(
    options: dict[str, Any], field: str, expected: Any
) -> None:
    """The same constraints come from the body's `gateway` object (null means not given)."""
    got = getattr(features(chat(gateway=options)).constraints, field)
    if isinstance(expected, float):
        assert got == pytest.approx(expected)
    elif isinstance(expected, dict):
        assert dict(got) == pytest.approx(expected)
    else:
        assert got == expected


def test_headers_win_over_the_body() -> None:
    """When a constraint is given both ways, the header's value is used."""
    body = chat(
        gateway={
            "policy": "from-body",
            "max_price": 1.0,
            "latency_slo": "5s",
            "tags": ["body"],
            "weights": {"latency": 9},
        }
    )
    headers = {
        "x-gateway-policy": "from-header",
        "x-gateway-max-price": "0.5",
        "x-gateway-latency-slo": "250ms",
        "x-gateway-tags": "header",
        "x-gateway-weights": "price=3",
    }
    constraints = features(body, headers).constraints
    assert constraints == RequestConstraints(
        policy="from-header",
        max_price=0.5,
        latency_slo=0.25,
        tags=frozenset({"header"}),
        weights={"price": 3.0},
    )


def test_body_and_headers_combine_field_by_field() -> None:
    """A header overrides only its own constraint; the body supplies the rest."""
    body = chat(gateway={"policy": "cheap", "max_price": 1.0})
    constraints = features(body, {"x-gateway-max-price": "0.01"}).constraints
    assert (constraints.policy, constraints.max_price) == ("cheap", 0.01)


@pytest.mark.parametrize(
    "header",
    [
        "x-gateway-policy",
        "x-gateway-max-price",
        "x-gateway-latency-slo",
        "x-gateway-tags",
        "x-gateway-weights",
    ],
)
def test_a_blank_header_counts_as_absent(header: str) -> None:
    """An empty header (some proxies add them) neither errs nor overrides the body."""
    options = {
        "policy": "p",
        "max_price": 1.0,
        "latency_slo": 1,
        "tags": ["t"],
        "weights": {"load": 2},
    }
    assert (
        features(chat(gateway=options), {header: "  "}).constraints
        == features(chat(gateway=options)).constraints
    )


def test_a_request_without_constraints_shares_the_empty_constraints() -> None:
    """The common request allocates no constraints object, and other headers are not read."""
    result = features(chat(), {"x-gateway-request-id": "abc", "content-type": "application/json"})
    assert result.constraints == RequestConstraints()
    assert result.constraints is features(chat()).constraints


# --- constraints: bad values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "options", "param", "message"),
    [
        ({"x-gateway-policy": "two words"}, None, "x-gateway-policy", "must name a route"),
        ({"x-gateway-policy": "a/b"}, None, "x-gateway-policy", "must name a route"),
        ({"x-gateway-max-price": "cheap"}, None, "x-gateway-max-price", "US dollars"),
        ({"x-gateway-max-price": "0"}, None, "x-gateway-max-price", r"number > 0"),
        ({"x-gateway-max-price": "-1"}, None, "x-gateway-max-price", r"number > 0"),
        ({"x-gateway-max-price": "nan"}, None, "x-gateway-max-price", "US dollars"),
        ({"x-gateway-max-price": "inf"}, None, "x-gateway-max-price", "US dollars"),
        ({"x-gateway-latency-slo": "soon"}, None, "x-gateway-latency-slo", "'800ms', '2s'"),
        ({"x-gateway-latency-slo": "1d"}, None, "x-gateway-latency-slo", "'800ms', '2s'"),
        ({"x-gateway-latency-slo": "-1s"}, None, "x-gateway-latency-slo", "duration > 0"),
        ({"x-gateway-latency-slo": "0ms"}, None, "x-gateway-latency-slo", "duration > 0"),
        ({"x-gateway-weights": "latency"}, None, "x-gateway-weights", "component=weight"),
        ({"x-gateway-weights": "speed=1"}, None, "x-gateway-weights", "accepted: latency, "),
        ({"x-gateway-weights": "latency=fast"}, None, "x-gateway-weights", "finite number >= 0"),
        ({"x-gateway-weights": "latency=-1"}, None, "x-gateway-weights", "finite number >= 0"),
        ({"x-gateway-weights": "latency=nan"}, None, "x-gateway-weights", "finite number >= 0"),
        ({"x-gateway-weights": "load=1,load=2"}, None, "x-gateway-weights", "`load` twice"),
        ({}, "fast please", "gateway", "must be an object with any of the keys"),
        ({}, ["policy"], "gateway", "must be an object"),
        ({}, {"max_prize": 1}, "gateway.max_prize", "accepted: latency_slo, max_price"),
        ({}, {"policy": 5}, "gateway.policy", "must name a route"),
        ({}, {"policy": ""}, "gateway.policy", "must name a route"),
        ({}, {"policy": "a b"}, "gateway.policy", "must name a route"),
        ({}, {"max_price": "0.05"}, "gateway.max_price", "US dollars per request"),
        ({}, {"max_price": True}, "gateway.max_price", "US dollars per request"),
        ({}, {"max_price": 0}, "gateway.max_price", r"number > 0"),
        ({}, {"max_price": -0.5}, "gateway.max_price", r"number > 0"),
        ({}, {"max_price": 10**400}, "gateway.max_price", r"number > 0"),
        ({}, {"max_price": math.inf}, "gateway.max_price", r"number > 0"),
        ({}, {"latency_slo": "soon"}, "gateway.latency_slo", "'800ms', '2s'"),
        ({}, {"latency_slo": 0}, "gateway.latency_slo", "duration > 0"),
        ({}, {"latency_slo": True}, "gateway.latency_slo", "duration > 0"),
        ({}, {"latency_slo": 10**400}, "gateway.latency_slo", "duration > 0"),
        ({}, {"latency_slo": ["2s"]}, "gateway.latency_slo", "duration > 0"),
        ({}, {"tags": "eu,tools"}, "gateway.tags", "array of tag names"),
        ({}, {"tags": ["eu", 1]}, "gateway.tags[1]", "non-empty tag name"),
        ({}, {"tags": [" "]}, "gateway.tags[0]", "non-empty tag name"),
        ({}, {"weights": [2]}, "gateway.weights", "components latency, error_rate"),
        ({}, {"weights": {"speed": 1}}, "gateway.weights.speed", "not a score component"),
        ({}, {"weights": {"latency": "2"}}, "gateway.weights.latency", "finite number >= 0"),
        ({}, {"weights": {"latency": True}}, "gateway.weights.latency", "finite number >= 0"),
        ({}, {"weights": {"latency": -1}}, "gateway.weights.latency", "finite number >= 0"),
        ({}, {"weights": {"price": math.nan}}, "gateway.weights.price", "finite number >= 0"),
        # A bad body value is reported even when a header would have overridden it.
        (
            {"x-gateway-max-price": "0.05"},
            {"max_price": "cheap"},
            "gateway.max_price",
            "US dollars",
        ),
    ],
)
def test_a_bad_constraint_is_a_routing_error_naming_it(
    headers: dict[str, str], options: object, param: str, message: str
) -> None:
    """Every bad value is a 400 whose param names the header or body key and whose message says
    what is accepted."""
    body = chat() if options is None else chat(gateway=options)
    with pytest.raises(RoutingError, match=message) as info:
        features(body, headers)
    assert info.value.param == param
    assert info.value.status == 400
    assert info.value.message == str(info.value)


def test_a_long_bad_value_is_not_echoed_in_full() -> None:
    """An error message quotes at most a short prefix of what the caller sent."""
    with pytest.raises(RoutingError) as info:
        features(chat(), {"x-gateway-max-price": "x" * 10_000})
    assert len(info.value.message) < 200


# --- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            ci({"X-Gateway-Max-Price": "0.5", "X-Team": "ml", "Authorization": "Bearer sk-1"}),
            id="aiohttp-CIMultiDictProxy",
        ),
        pytest.param(
            {"x-gateway-max-price": "0.5", "x-team": "ml", "authorization": "Bearer sk-1"},
            id="lowercase-dict",
        ),
    ],
)
def test_headers_are_read_case_insensitively(headers: Mapping[str, str]) -> None:
    """aiohttp's case-insensitive headers and a dict with lowercase names read the same way."""
    result = features(chat(), headers)
    assert result.constraints.max_price == 0.5
    assert result.headers.get("x-team") == "ml"
    assert result.headers.get("X-Team") == "ml"
    assert result.headers["X-TEAM"] == "ml"
    assert "x-team" in result.headers
    assert result.headers.get("x-missing") is None
    assert sorted(result.headers) == ["authorization", "x-gateway-max-price", "x-team"]
    assert len(result.headers) == 3


def test_header_view_does_not_copy_and_redacts_credentials() -> None:
    """The features wrap the request's headers; their repr never shows a credential."""
    headers = ci({"Authorization": "Bearer sk-secret", "X-Api-Key": "k-secret", "X-Team": "ml"})
    result = features(chat(), headers)
    assert isinstance(result.headers, HeaderView)
    text = repr(result)
    assert "secret" not in text
    assert "'x-team': 'ml'" in text
    assert "<redacted>" in text


def test_header_view_iterates_a_repeated_header_once() -> None:
    """A multidict repeats a name per value; the view lists each name once (the first value)."""
    raw: CIMultiDict[str] = CIMultiDict()
    raw.add("X-Team", "ml")
    raw.add("x-team", "research")
    view = HeaderView(CIMultiDictProxy(raw))
    assert list(view) == ["x-team"]
    assert len(view) == 1
    assert dict(view) == {"x-team": "ml"}


# --- purity ---------------------------------------------------------------------------------


def test_describe_does_not_mutate_the_body() -> None:
    """The body is read in place: same keys, same values, same nested objects, `gateway` kept."""
    body = chat(
        {"role": "user", "content": [IMAGE]},
        ASSISTANT,
        tools=[TOOL],
        response_format={"type": "json_object"},
        metadata={"tier": "gold", "n": 1},
        max_tokens=10,
        gateway={"policy": "p", "tags": ["eu"], "weights": {"load": 1}},
    )
    before = copy.deepcopy(body)
    nested = {key: body[key] for key in ("messages", "tools", "metadata", "gateway")}
    features(body, {"x-gateway-max-price": "1"})
    assert body == before
    assert all(body[key] is value for key, value in nested.items())


def test_removing_gateway_key_afterwards_leaves_the_features_intact() -> None:
    """The gateway deletes `gateway` before forwarding; the constraints already hold copies."""
    body = chat(gateway={"tags": ["eu"], "weights": {"load": 1}})
    result = features(body)
    body.pop("gateway")["tags"].append("us")
    assert result.constraints.tags == {"eu"}
    assert dict(result.constraints.weights) == {"load": 1.0}


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        (" 1.5 s ", 1.5),
        ("3", 3.0),
        (0, 0.0),
        (2, 2.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration_converts_to_seconds(value: object, seconds: float) -> None:
    """ms/s/m/h scale the number; bare numbers (or numeric text) are seconds."""
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["soon", "", "1d", "ms", "-1s", "1e3s", None, True, [1], math.inf, math.nan, 10**400]
)
def test_parse_duration_refuses_anything_else_saying_what_is_accepted(value: object) -> None:
    """Other values, booleans and non-finite numbers are refused, naming the accepted forms."""
    with pytest.raises(ValueError, match=r"'250ms', '30s', '2m' or a number of seconds"):
        parse_duration(value)


def test_parse_duration_refuses_negative_numbers() -> None:
    """A negative duration is refused as such."""
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(-0.5)


# --- property -------------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
_part = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["text", "image_url", "input_image", "image"]) | _json,
        "image_url": _json,
        "image": _json,
        "text": _json,
    },
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer"])},
    optional={"content": st.none() | st.text(max_size=8) | st.lists(_part | _json, max_size=3)},
)
_gateway = st.fixed_dictionaries(
    {},
    optional={
        "policy": st.text(max_size=6) | _json,
        "max_price": st.floats() | st.integers(min_value=-5, max_value=2**70) | _json,
        "latency_slo": st.sampled_from(["800ms", "2s", "0", "x"]) | st.floats() | _json,
        "tags": st.lists(st.text(max_size=4), max_size=3) | _json,
        "weights": st.dictionaries(
            st.sampled_from(["latency", "price", "load", "speed"]), st.floats() | _json
        )
        | _json,
        "other": _json,
    },
)
_body = st.fixed_dictionaries(
    {
        "model": st.text(min_size=1, max_size=6),
        "messages": st.lists(_message, min_size=1, max_size=4),
        "prompt": st.text(max_size=8),
        "input": st.text(max_size=8),
    },
    optional={
        "stream": st.booleans(),
        "tools": st.lists(_json, max_size=2),
        "functions": st.lists(_json, max_size=2),
        "response_format": st.dictionaries(
            st.just("type"), st.sampled_from(["json_object", "json_schema", "text"]) | _json
        ),
        "max_tokens": st.integers(min_value=-(2**70), max_value=2**70),
        "max_completion_tokens": st.integers(min_value=-3, max_value=10),
        "metadata": st.dictionaries(st.text(max_size=4), _json, max_size=3),
        "gateway": _gateway | _json,
    },
)
_headers = st.dictionaries(
    st.sampled_from(
        [
            "x-gateway-policy",
            "x-gateway-max-price",
            "x-gateway-latency-slo",
            "x-gateway-tags",
            "x-gateway-weights",
            "x-team",
        ]
    ),
    st.sampled_from(["0.5", "2s", "latency=1,price=2", "a,b", "premium", ""])
    | st.text(max_size=12),
    max_size=3,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    endpoint=st.sampled_from([CHAT, "completions", "embeddings"]),
    body=_body,
    headers=_headers,
    raw_size=st.integers(min_value=0, max_value=10**7),
)
def test_describe_raises_nothing_but_routing_error_for_valid_bodies(
    endpoint: str, body: dict[str, Any], headers: dict[str, str], raw_size: int
) -> None:
    """Whatever a body that passes gateway validation holds, describe answers or raises a
    RoutingError with a param, and leaves the body untouched."""
    if endpoint == "embeddings":
        body.pop("stream", None)
    try:
        validate(endpoint, body)
    except InvalidRequest:
        assume(False)
    before = copy.deepcopy(body)
    try:
        result = describe(endpoint, body, raw_size, headers)
    except RoutingError as exc:
        assert exc.param
        assert exc.message
    else:
        assert result.capabilities <= {"vision", "tools", "json", "stream", "prefill"}
        if "vision" in result.capabilities:  # images count as images, not base64 bytes
            assert result.prompt_tokens >= IMAGE_TOKENS
        else:
            assert result.prompt_tokens == -(-raw_size // 4)
        assert result.max_output_tokens is None or result.max_output_tokens > 0
        assert all(isinstance(v, str) for v in result.metadata.values())
        assert all(w >= 0 and math.isfinite(w) for w in result.constraints.weights.values())
    assert body == before  # deepcopy keeps float objects, so a NaN compares equal by identity
