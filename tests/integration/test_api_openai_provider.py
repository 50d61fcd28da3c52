"""The API end to end with the official SDK, over an OpenAI-compatible upstream on a real socket."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from typing import Any

import openai
import pytest
from fakes.openai_upstream import Upstream

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
def upstream(scripted_upstream: Any) -> tuple[Upstream, str]:
    up, server = scripted_upstream()
    return up, server.url


def _config(primary: str, fallback: str | None = None, extra: str = "") -> str:
    text = f"""
server:
  request_timeout: 5s
deployments:
  - name: primary
    provider: openai
    model: up-model
    aliases: [chat]
    base_url: {primary}/v1
    api_key: sk-primary-secret
    timeouts: {{connect: 1s, first_token: 2s, idle: 1s}}
{extra}"""
    if fallback:
        text += f"""
  - name: fallback
    provider: openai
    model: fb-model
    aliases: [chat]
    base_url: {fallback}/v1
"""
    return text


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="caller-key", max_retries=0, timeout=20)


def test_non_streaming_completion_passes_body_through(gateway: Any, upstream: Any) -> None:
    """A chat completion is answered by the upstream; headers name the deployment and attempts."""
    up, up_url = upstream
    gw = gateway(_config(up_url))
    raw = _client(gw.url).chat.completions.with_raw_response.create(model="chat", messages=USER)
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello from upstream"
    assert completion.usage is not None and completion.usage.total_tokens == 7
    assert raw.headers["x-gateway-deployment"] == "primary"
    assert raw.headers["x-gateway-attempts"] == "1"
    assert raw.headers["x-request-id"]
    # the upstream saw its own model name and the deployment's key, never the caller's
    assert up.received[0]["model"] == "up-model"
    assert up.headers[0]["Authorization"] == "Bearer sk-primary-secret"
    assert up.headers[0]["x-request-id"] == raw.headers["x-request-id"]
    # identity encoding: the body is relayed as bytes, so it must not arrive compressed
    assert up.headers[0]["accept-encoding"] == "identity"


def test_body_is_forwarded_unchanged_when_model_names_match(gateway: Any, upstream: Any) -> None:
    """When the alias equals the upstream model name the exact bytes go upstream."""
    up, up_url = upstream
    gw = gateway(_config(up_url).replace("aliases: [chat]", "aliases: [up-model]"))
    raw = (
        b'{ "model" : "up-model",\n "messages": [{"role": "user", "content": "hi"}],'
        b' "custom_field": {"k": 1} }'
    )
    req = urllib.request.Request(f"{gw.url}/v1/chat/completions", data=raw, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    assert up.raw == [raw]


def test_body_is_rewritten_only_in_model_when_names_differ(gateway: Any, upstream: Any) -> None:
    """When the alias differs from the upstream model, only `model` changes."""
    up, up_url = upstream
    gw = gateway(_config(up_url))
    _client(gw.url).chat.completions.create(
        model="chat", messages=USER, temperature=0.25, extra_body={"custom_field": {"k": 1}}
    )
    assert up.received[0] == {
        "model": "up-model",
        "messages": USER,
        "temperature": 0.25,
        "custom_field": {"k": 1},
    }


def test_streaming_completion_relays_every_chunk(gateway: Any, upstream: Any) -> None:
    """A stream arrives chunk by chunk and ends properly."""
    _, up_url = upstream
    gw = gateway(_config(up_url))
    chunks = list(_client(gw.url).chat.completions.create(model="chat", messages=USER, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_embeddings_and_completions_endpoints(gateway: Any, upstream: Any) -> None:
    """/v1/embeddings and /v1/completions reach deployments tagged for them."""
    up, up_url = upstream
    gw = gateway(
        _config(up_url).replace(
            "aliases: [chat]", "aliases: [chat]\n    tags: [chat, completions, embeddings]"
        )
    )
    client = _client(gw.url)
    emb = client.embeddings.create(model="chat", input="hi")
    assert emb.data[0].embedding == [0.1, 0.2]
    client.completions.create(model="chat", prompt="hi")
    assert up.received[-1]["prompt"] == "hi"


def test_models_lists_client_facing_names(gateway: Any, upstream: Any) -> None:
    """/v1/models lists aliases, not upstream names."""
    _, up_url = upstream
    gw = gateway(_config(up_url))
    assert [m.id for m in _client(gw.url).models.list()] == ["chat"]


def test_5xx_then_fallback_is_invisible_to_the_caller(
    gateway: Any, upstream: Any, scripted_upstream: Any
) -> None:
    """A 503 from the primary fails over; the caller gets the fallback's answer."""
    up, up_url = upstream
    fb, fb_server = scripted_upstream()
    fb_url = fb_server.url
    up.script = [("status", 503, None)]
    gw = gateway(_config(up_url, fb_url))
    raw = _client(gw.url).chat.completions.with_raw_response.create(model="chat", messages=USER)
    assert raw.headers["x-gateway-deployment"] == "fallback"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert fb.received[0]["model"] == "fb-model"


def test_rate_limit_maps_to_sdk_rate_limit_error_with_retry_after(
    gateway: Any, upstream: Any
) -> None:
    """A 429 with nowhere else to go reaches the SDK as RateLimitError with Retry-After."""
    up, up_url = upstream
    up.script = [("status", 429, 7)]
    gw = gateway(_config(up_url))
    with pytest.raises(openai.RateLimitError) as info:
        _client(gw.url).chat.completions.create(model="chat", messages=USER)
    assert info.value.response.headers["retry-after"] == "7"
    assert "upstream says 429" in info.value.message


def test_provider_rejection_propagates_status_and_reason(
    gateway: Any, upstream: Any, scripted_upstream: Any
) -> None:
    """A 400 from the provider is not retried elsewhere: the caller sees the provider's reason."""
    up, up_url = upstream
    fb, fb_server = scripted_upstream()
    up.script = [("status", 400, None)]
    gw = gateway(_config(up_url, fb_server.url))
    with pytest.raises(openai.BadRequestError) as info:
        _client(gw.url).chat.completions.create(model="chat", messages=USER)
    assert "upstream says 400" in info.value.message
    assert fb.received == []


@pytest.mark.parametrize("step", ["garbage", "close_early", "not_json_object", "empty_object"])
def test_garbage_or_truncated_upstream_body_is_a_clear_502(
    gateway: Any, upstream: Any, step: str
) -> None:
    """Garbage or an early close from the upstream becomes a 502 that says what happened."""
    up, up_url = upstream
    up.script = [step]
    gw = gateway(_config(up_url))
    with pytest.raises(openai.InternalServerError) as info:
        _client(gw.url).chat.completions.create(model="chat", messages=USER)
    assert info.value.status_code == 502
    assert info.value.body["code"] == "bad_upstream_response"  # type: ignore[index]


def test_reset_before_any_byte_is_retried_once_on_the_same_deployment(
    gateway: Any, upstream: Any
) -> None:
    """A connection reset before any byte is retried on the same deployment once."""
    up, up_url = upstream
    up.script = ["reset"]
    gw = gateway(_config(up_url))
    raw = _client(gw.url).chat.completions.with_raw_response.create(model="chat", messages=USER)
    assert raw.headers["x-gateway-attempts"] == "2"
    assert len(up.received) == 2


def test_hanging_upstream_times_out_and_never_hangs_the_caller(gateway: Any, upstream: Any) -> None:
    """An upstream that never answers costs the overall deadline at most, then a 504."""
    up, up_url = upstream
    up.script = ["hang"]
    gw = gateway(_config(up_url).replace("request_timeout: 5s", "request_timeout: 1s"))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        _client(gw.url).chat.completions.create(model="chat", messages=USER)
    assert info.value.status_code == 504
    assert time.monotonic() - started < 4


def test_stream_cut_after_first_chunk_ends_with_in_band_error(gateway: Any, upstream: Any) -> None:
    """A stream cut mid-answer ends with an error event and no [DONE]: never a fake success."""
    up, up_url = upstream
    up.script = [("stream_cut", 2)]
    gw = gateway(_config(up_url))
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in _client(gw.url).chat.completions.create(
            model="chat", messages=USER, stream=True
        ):
            received.append(chunk)
    assert "stream" in info.value.message
    assert [c.choices[0].delta.content for c in received] == ["one ", "two "]
    assert all(c.choices[0].finish_reason is None for c in received)


def test_stream_cut_before_first_chunk_fails_over_invisibly(
    gateway: Any, upstream: Any, scripted_upstream: Any
) -> None:
    """A stream that breaks before its first chunk fails over without the caller knowing."""
    up, up_url = upstream
    fb, fb_server = scripted_upstream()
    up.script = [("stream_cut", 0)]
    gw = gateway(_config(up_url, fb_server.url))
    raw = _client(gw.url).chat.completions.with_raw_response.create(
        model="chat", messages=USER, stream=True
    )
    assert raw.headers["x-gateway-deployment"] == "fallback"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "one two three four"
    assert len(up.received) == 1 and fb.received[0]["stream"] is True


def test_unreachable_upstream_is_502_naming_the_deployment(gateway: Any) -> None:
    """Connection refused everywhere is a 502 whose message names the deployment."""
    gw = gateway(_config("http://127.0.0.1:1"))
    with pytest.raises(openai.InternalServerError) as info:
        _client(gw.url).chat.completions.create(model="chat", messages=USER)
    assert "`primary`" in info.value.message
    assert "sk-primary-secret" not in json.dumps(info.value.body)


def test_caller_disconnect_mid_stream_closes_the_upstream_stream(
    gateway: Any, upstream: Any
) -> None:
    """When the caller leaves mid-stream the upstream request is abandoned too, not drained."""
    up, up_url = upstream
    up.script = ["stream_slow"]
    gw = gateway(_config(up_url))
    stream = _client(gw.url).chat.completions.create(model="chat", messages=USER, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content == "w0 "
    stream.close()
    # the upstream runs on the fixture's loop; wait for it to notice, bounded
    deadline = time.monotonic() + 5
    while not up.abandoned.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert up.abandoned.is_set()


def test_first_token_limit_counts_from_the_request_not_from_the_headers(
    gateway: Any, upstream: Any
) -> None:
    """Headers after 0.6 s and a first event 0.6 s later break a 1 s first-token limit."""
    up, up_url = upstream
    up.script = [("stream_delayed", 0.6, 0.6)]
    gw = gateway(_config(up_url).replace("first_token: 2s", "first_token: 1s"))
    client = _client(gw.url)
    client.models.list()  # the SDK's first request pays its own set-up; keep it out of the timing
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="chat", messages=USER, stream=True)
    assert info.value.status_code == 504
    assert "first token" in info.value.message
    assert time.monotonic() - started < 1.5


def test_compressed_upstream_body_reaches_the_caller_decoded(gateway: Any, upstream: Any) -> None:
    """An upstream that compresses although asked not to still yields a readable answer."""
    up, up_url = upstream
    up.script = ["gzip"]
    gw = gateway(_config(up_url))
    completion = _client(gw.url).chat.completions.create(model="chat", messages=USER)
    assert completion.choices[0].message.content == "zipped"


def test_hung_non_streaming_attempt_fails_over_after_the_response_timeout(
    gateway: Any, upstream: Any, scripted_upstream: Any
) -> None:
    """A primary that accepts and never answers costs timeouts.response; the fallback answers."""
    up, up_url = upstream
    fb, fb_server = scripted_upstream()
    up.script = ["hang"]
    gw = gateway(
        _config(up_url, fb_server.url).replace("first_token: 2s", "first_token: 2s, response: 1s")
    )
    client = _client(gw.url)
    client.models.list()  # keep the SDK's own set-up out of the timing
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=USER)
    assert raw.headers["x-gateway-deployment"] == "fallback"
    assert 1.0 <= time.monotonic() - started < 2.5
    assert len(fb.received) == 1


def test_upstream_echoing_the_key_never_shows_it_to_the_caller(gateway: Any, upstream: Any) -> None:
    """A provider message that quotes the deployment's key reaches the caller redacted."""
    up, up_url = upstream
    up.script = ["echo_key"]
    gw = gateway(_config(up_url))
    with pytest.raises(openai.BadRequestError) as info:
        _client(gw.url).chat.completions.create(model="chat", messages=USER)
    assert "sk-primary-secret" not in json.dumps(info.value.body)
    assert "[redacted]" in info.value.message


def test_upstream_refusing_the_deployment_key_fails_over(
    gateway: Any, upstream: Any, scripted_upstream: Any
) -> None:
    """A 401 for the deployment's own key is that deployment's fault: the fallback answers."""
    up, up_url = upstream
    fb, fb_server = scripted_upstream()
    up.script = [("status", 401, None)]
    gw = gateway(_config(up_url, fb_server.url))
    raw = _client(gw.url).chat.completions.with_raw_response.create(model="chat", messages=USER)
    assert raw.headers["x-gateway-deployment"] == "fallback"
    assert len(fb.received) == 1


def test_malformed_http_from_upstream_is_a_bad_response_not_a_connection_error(
    gateway: Any,
) -> None:
    """Bytes that are not HTTP are a bad upstream response (fail over), with no URL quoted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        gw = gateway(_config(f"http://127.0.0.1:{port}"))
        with pytest.raises(openai.InternalServerError) as info:
            _client(gw.url).chat.completions.create(model="chat", messages=USER)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "bad_upstream_response"
    assert info.value.response.headers["x-gateway-attempts"] == "1"
    assert f"127.0.0.1:{port}" not in body["message"]


def test_streaming_request_skips_deployments_not_tagged_stream(
    gateway: Any, upstream: Any, scripted_upstream: Any
) -> None:
    """A deployment without the `stream` tag never gets a streaming request."""
    up, up_url = upstream
    fb, fb_server = scripted_upstream()
    text = _config(up_url, fb_server.url).replace(
        "aliases: [chat]\n    base_url: " + up_url,
        "aliases: [chat]\n    tags: [chat]\n    base_url: " + up_url,
    )
    gw = gateway(text)
    raw = _client(gw.url).chat.completions.with_raw_response.create(
        model="chat", messages=USER, stream=True
    )
    assert raw.headers["x-gateway-deployment"] == "fallback"
    assert up.received == [] and fb.received[0]["stream"] is True
