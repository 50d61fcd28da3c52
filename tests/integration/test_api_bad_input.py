"""Bad input reaches the caller as a clear OpenAI-shaped error that names what was wrong."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

CONFIG = """
server:
  max_body_size: 2KiB
deployments:
  - name: nowhere
    provider: openai
    model: upstream-model
    aliases: [chat-model]
    base_url: http://127.0.0.1:1/v1
  - name: embedder
    provider: openai
    model: embed-model
    tags: [embeddings]
    base_url: http://127.0.0.1:1/v1
"""


def _post(
    url: str, data: bytes, method: str = "POST", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


@pytest.fixture
def url(gateway: Any) -> str:
    return gateway(CONFIG).url


def _chat(url: str, body: Any) -> tuple[int, dict[str, Any], Any]:
    return _post(f"{url}/v1/chat/completions", json.dumps(body).encode())


def test_malformed_json_is_400_naming_json(url: str) -> None:
    """A body that is not JSON gets a 400 that says so."""
    status, headers, body = _post(f"{url}/v1/chat/completions", b'{"model": "chat-model", ')
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in body["error"]["message"]
    assert headers["x-request-id"]


@pytest.mark.parametrize("payload", [[], "text", 3, None])
def test_body_that_is_not_an_object_is_400(url: str, payload: Any) -> None:
    """A JSON body that is not an object is rejected and the message names the type it was."""
    status, _, body = _chat(url, payload)
    assert status == 400
    assert "must be a JSON object" in body["error"]["message"]


@pytest.mark.parametrize(
    ("payload", "param", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model", "`model` is required"),
        ({"model": "chat-model"}, "messages", "`messages` is required"),
        ({"model": 7, "messages": []}, "model", "non-empty string, got integer"),
        ({"model": "chat-model", "messages": "hi"}, "messages", "must be an array, got string"),
        ({"model": "chat-model", "messages": []}, "messages", "at least one message"),
        (
            {"model": "chat-model", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "must be one of",
        ),
        (
            {"model": "chat-model", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "string or an array",
        ),
        (
            {
                "model": "chat-model",
                "messages": [{"role": "user", "content": "x"}],
                "stream": "yes",
            },
            "stream",
            "must be a boolean",
        ),
        (
            {
                "model": "chat-model",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": "9",
            },
            "max_tokens",
            "must be an integer, got string",
        ),
        (
            {
                "model": "chat-model",
                "messages": [{"role": "user", "content": "x"}],
                "temperature": True,
            },
            "temperature",
            "must be a number, got boolean",
        ),
    ],
)
def test_missing_or_mistyped_field_is_400_naming_the_field(
    url: str, payload: dict[str, Any], param: str, fragment: str
) -> None:
    """Each missing or mistyped field yields a 400 whose `param` names that field."""
    status, _, body = _chat(url, payload)
    assert status == 400
    assert body["error"]["param"] == param
    assert fragment in body["error"]["message"]


def test_missing_prompt_and_input_are_400(url: str) -> None:
    """/v1/completions needs `prompt`; /v1/embeddings needs `input`."""
    status, _, body = _post(f"{url}/v1/completions", b'{"model": "chat-model"}')
    assert (status, body["error"]["param"]) == (400, "prompt")
    status, _, body = _post(f"{url}/v1/embeddings", b'{"model": "embed-model"}')
    assert (status, body["error"]["param"]) == (400, "input")


def test_unknown_model_is_404_listing_available_names(url: str) -> None:
    """An unknown model gets a 404 whose message lists every servable name."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
        )
    err = info.value
    assert err.status_code == 404
    assert isinstance(err.body, dict)
    assert err.body["code"] == "model_not_found"
    assert "chat-model" in err.body["message"] and "embed-model" in err.body["message"]


def test_model_without_a_deployment_for_the_endpoint_is_400(url: str) -> None:
    """Asking an embeddings-only model for a chat completion is the caller's error, said clearly."""
    status, _, body = _chat(
        url, {"model": "embed-model", "messages": [{"role": "user", "content": "x"}]}
    )
    assert status == 400
    assert "embedder: does not serve /v1/chat/completions" in body["error"]["message"]


def test_body_over_limit_is_413(url: str) -> None:
    """A body over server.max_body_size is refused with 413 before it is parsed."""
    big = json.dumps(
        {"model": "chat-model", "messages": [{"role": "user", "content": "x" * 4096}]}
    ).encode()
    status, _, body = _post(f"{url}/v1/chat/completions", big)
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert "2048 bytes" in body["error"]["message"]


def test_chunked_body_over_limit_is_413(url: str) -> None:
    """A body without Content-Length is still cut off at the limit."""

    def chunks() -> Any:
        for _ in range(8):
            yield b"x" * 1024

    req = urllib.request.Request(f"{url}/v1/chat/completions", data=chunks(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 413
    assert json.loads(info.value.read())["error"]["code"] == "payload_too_large"


def test_wrong_method_is_405_json(url: str) -> None:
    """GET on a POST endpoint is a JSON 405 with an Allow header."""
    status, headers, body = _post(f"{url}/v1/chat/completions", b"", method="GET")
    assert status == 405
    assert headers["Allow"] == "POST"
    assert body["error"]["code"] == "method_not_allowed"
    status, _, body = _post(f"{url}/v1/models", b"{}", method="POST")
    assert status == 405


def test_unknown_path_is_404_json(url: str) -> None:
    """An unknown path is a JSON 404, not aiohttp's text page."""
    status, _, body = _post(f"{url}/v1/assistants", b"{}")
    assert status == 404
    assert body["error"]["code"] == "not_found"


def test_incoming_request_id_is_honoured(url: str) -> None:
    """A caller's x-request-id comes back unchanged; an unsafe one is replaced."""
    _, headers, _ = _post(f"{url}/v1/chat/completions", b"[]", headers={"x-request-id": "abc-123"})
    assert headers["x-request-id"] == "abc-123"
    _, headers, _ = _post(
        f"{url}/v1/chat/completions", b"[]", headers={"x-request-id": "bad id\twith tab"}
    )
    assert headers["x-request-id"] != "bad id\twith tab"
    assert len(headers["x-request-id"]) == 24


def test_client_auth_rejects_missing_and_wrong_keys(gateway: Any) -> None:
    """With server.api_keys set, a missing or wrong bearer token is a 401; the right one passes."""
    server = gateway(CONFIG.replace("server:\n", "server:\n  api_keys: [k-one, k-two]\n"))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": "x"}]
        )
    status, _, body = _chat(server.url, {"model": "chat-model"})
    assert status == 401
    assert "k-one" not in json.dumps(body)
    ok = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k-two", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:  # past auth, the upstream is unreachable
        ok.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502
