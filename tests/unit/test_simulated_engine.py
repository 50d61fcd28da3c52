"""The simulator's answers: content, echo, usage, embeddings and stream events."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from typing import Any

import orjson
import pytest

from gateway.providers.simulated.engine import Simulator
from gateway.providers.simulated.render import make_completion
from gateway.providers.simulated.script import ScriptPlayer, StreamScript
from gateway.providers.simulated.settings import Fault, SimulatedSettings

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


def _sim(**settings: Any) -> Simulator:
    return Simulator(SimulatedSettings(**settings), name="sim-a", model="sim-model")


def _events(script: StreamScript) -> list[Any]:
    """Each line's JSON payload (or the raw text when it is not JSON)."""
    out: list[Any] = []
    for line in script.lines:
        assert line.startswith(b"data: ") and line.endswith(b"\n")
        payload = line[6:-1]
        try:
            out.append(orjson.loads(payload))
        except orjson.JSONDecodeError:
            out.append(payload.decode())
    return out


def test_default_content_names_deployment_and_model() -> None:
    """Without content or echo the answer is a sentence naming the deployment and its model."""
    body = orjson.loads(_sim().respond("chat/completions", CHAT, "sim-model").body)
    text = body["choices"][0]["message"]["content"]
    assert "sim-a" in text and "sim-model" in text


def test_chat_completion_has_the_openai_shape_and_word_usage() -> None:
    """chat.completion with one assistant choice, finish_reason stop, usage counted in words."""
    sim = _sim(content="one two three four")
    answer = sim.respond("chat/completions", CHAT, "m")
    body = orjson.loads(answer.body)
    assert body["object"] == "chat.completion"
    assert body["model"] == "m"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "one two three four", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert (answer.prompt_tokens, answer.completion_tokens) == (2, 4)


def test_echo_repeats_the_last_user_message_including_text_parts() -> None:
    """echo: the last user message (string or text parts) comes back as the answer."""
    sim = _sim(echo=True)
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url"}]},
    ]
    body = orjson.loads(
        sim.respond("chat/completions", {"model": "m", "messages": messages}, "m").body
    )
    assert body["choices"][0]["message"]["content"] == "second"
    assert body["usage"]["prompt_tokens"] == 5


def test_echo_for_completions_repeats_the_prompt() -> None:
    """echo on /completions returns the prompt as a text_completion."""
    body = orjson.loads(
        _sim(echo=True).respond("completions", {"model": "m", "prompt": "say it back"}, "m").body
    )
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "say it back"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_content_wins_over_echo() -> None:
    """Canned content is used even when echo is on."""
    body = orjson.loads(
        _sim(content="canned", echo=True).respond("chat/completions", CHAT, "m").body
    )
    assert body["choices"][0]["message"]["content"] == "canned"


def test_max_tokens_cuts_the_answer_with_finish_reason_length() -> None:
    """max_tokens below the answer's length truncates it and says so."""
    body = orjson.loads(
        _sim(content="a b c d e").respond("chat/completions", {**CHAT, "max_tokens": 2}, "m").body
    )
    assert body["choices"][0]["message"]["content"] == "a b"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_completion_chunks_concatenate_to_the_text() -> None:
    """Chunks of chunk_tokens words keep the original spacing."""
    completion = make_completion("  alpha beta\ngamma  delta ", 3)
    assert completion.chunks == ("  alpha beta\ngamma  ", "delta ")
    assert "".join(completion.chunks) == completion.text
    assert completion.tokens == 4


def test_embeddings_are_deterministic_unit_vectors_of_the_configured_size() -> None:
    """Same input, same vector; different inputs differ; each has norm 1 and N dimensions."""
    sim = _sim(embedding_dimensions=16)
    request = {"model": "e", "input": ["alpha beta", "gamma", "alpha beta"]}
    body = orjson.loads(sim.respond("embeddings", request, "e").body)
    assert body["object"] == "list"
    assert body["model"] == "e"
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    vectors = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in body["data"])
    assert all(len(v) == 16 for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0, rel_tol=1e-9)
    again = orjson.loads(_sim(embedding_dimensions=16).respond("embeddings", request, "e").body)
    assert again["data"][0]["embedding"] == vectors[0]


def test_base64_embeddings_decode_to_the_float_vector() -> None:
    """encoding_format=base64 (the openai SDK's default) packs little-endian float32."""
    sim = _sim(embedding_dimensions=4)
    floats = orjson.loads(sim.respond("embeddings", {"model": "e", "input": "x"}, "e").body)
    packed = orjson.loads(
        sim.respond(
            "embeddings", {"model": "e", "input": "x", "encoding_format": "base64"}, "e"
        ).body
    )
    decoded = struct.unpack("<4f", base64.b64decode(packed["data"][0]["embedding"]))
    assert decoded == pytest.approx(floats["data"][0]["embedding"], rel=1e-6)


def test_chat_stream_has_role_content_finish_usage_and_done() -> None:
    """Role chunk, content chunks of chunk_tokens words, a stop chunk, usage when asked, [DONE]."""
    sim = _sim(content="a b c d e", chunk_tokens=2)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    events = _events(sim.stream_script("chat/completions", body, "m", None))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == "m" for e in chunks)
    assert len({e["id"] for e in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [e["choices"][0]["delta"]["content"] for e in chunks[1:4]]
    assert contents == ["a b ", "c d ", "e"]
    assert chunks[4]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert len(events) == 7


def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    """The usage chunk is only sent when stream_options.include_usage is true."""
    events = _events(_sim(content="a b").stream_script("chat/completions", CHAT, "m", None))
    assert not any(isinstance(e, dict) and "usage" in e for e in events)
    assert len(events) == 1 + 2 + 1 + 1


def test_completions_stream_uses_text_completion_chunks() -> None:
    """/completions streams text_completion chunks with `text`, then a stop chunk and [DONE]."""
    events = _events(
        _sim(content="x y").stream_script("completions", {"model": "m", "prompt": "p"}, "m", None)
    )
    assert [e["choices"][0]["text"] for e in events[:2]] == ["x ", "y"]
    assert all(e["object"] == "text_completion" for e in events[:3])
    assert events[2]["choices"][0]["finish_reason"] == "stop"
    assert events[3] == "[DONE]"


@pytest.mark.parametrize(
    ("fault", "expected_tail"),
    [
        (Fault(kind="stream_cut", after_chunks=2), ["c-0", "c-1"]),
        (
            Fault(kind="malformed_chunk", after_chunks=1),
            ["c-0", "{not json", "c-1", "c-2", "stop", "[DONE]"],
        ),
        (Fault(kind="missing_done"), ["c-0", "c-1", "c-2", "stop"]),
    ],
    ids=["cut", "malformed", "missing_done"],
)
def test_stream_faults_rewrite_the_script(fault: Fault, expected_tail: list[str]) -> None:
    """Cut drops everything after N content chunks; malformed inserts a bad event; missing_done
    drops [DONE]."""
    sim = _sim(content="c-0 c-1 c-2")
    events = _events(sim.stream_script("chat/completions", CHAT, "m", fault))

    def label(event: Any) -> str:
        if isinstance(event, str):
            return event
        choice = event["choices"][0]
        return choice["finish_reason"] or choice["delta"]["content"].strip()

    assert [label(e) for e in events[1:]] == expected_tail


def test_stream_cut_after_more_chunks_than_exist_still_drops_the_finish() -> None:
    """after_chunks past the end cuts before the finish chunk, so the stream never finishes."""
    script = _sim(content="a b").stream_script(
        "chat/completions", CHAT, "m", Fault(kind="stream_cut", after_chunks=99)
    )
    assert script.cut
    assert not any(b'"finish_reason":"stop"' in line for line in script.lines)


def test_player_paces_content_chunks_and_stalls_once() -> None:
    """interval applies between content chunks; a stall waits its delay once, then goes on."""
    sim = _sim(content="a b c", tokens_per_second=1000)  # 1 ms per word
    fault = Fault(kind="stream_stall", after_chunks=1, delay=0.02)
    script = sim.stream_script("chat/completions", CHAT, "m", fault)
    assert script.interval == pytest.approx(0.001)
    assert (script.pause_at, script.pause) == (2, 0.02)

    async def play() -> tuple[int, float]:
        player = ScriptPlayer(script)
        loop = asyncio.get_running_loop()
        started = loop.time()
        count = 0
        while await player.next_line() is not None:
            count += 1
        return count, loop.time() - started

    count, elapsed = asyncio.run(play())
    assert count == len(script.lines)
    assert elapsed >= 0.02 + 2 * 0.001


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("chat/completions", [], None),
        ("chat/completions", {"messages": [{"role": "user"}]}, "model"),
        ("chat/completions", {"model": "m"}, "messages"),
        ("chat/completions", {"model": "m", "messages": []}, "messages"),
        ("chat/completions", {"model": "m", "messages": ["hi"]}, "messages"),
        ("completions", {"model": "m"}, "prompt"),
        ("embeddings", {"model": "m", "input": ""}, "input"),
    ],
)
def test_bad_bodies_are_rejected_with_the_offending_param(
    endpoint: str, body: Any, param: str | None
) -> None:
    """check() names the field a real upstream would complain about."""
    problem = Simulator.check(endpoint, body)
    assert problem is not None
    assert problem.param == param


def test_good_bodies_pass_the_check() -> None:
    """Minimal valid bodies for each endpoint are accepted."""
    assert Simulator.check("chat/completions", CHAT) is None
    assert Simulator.check("completions", {"model": "m", "prompt": ["a"]}) is None
    assert Simulator.check("embeddings", {"model": "m", "input": [1, 2, 3]}) is None


def test_stats_count_requests_and_faults_by_kind() -> None:
    """choose_fault() counts every request and each applied fault by kind."""
    sim = _sim(faults=[{"kind": "reset", "count": 2}])
    for _ in range(3):
        sim.choose_fault(stream=False)
    stats = sim.stats()
    assert stats["requests"] == 3
    assert stats["faults"] == {"reset": 2}


def test_configure_restarts_the_schedule_but_keeps_totals() -> None:
    """New settings restart counters for `after`/`count`; cumulative stats continue."""
    sim = _sim(faults=[{"kind": "reset", "count": 1}])
    assert sim.choose_fault(stream=False) is not None
    assert sim.choose_fault(stream=False) is None
    sim.configure(SimulatedSettings(faults=(Fault(kind="reset", count=1),)))
    assert sim.choose_fault(stream=False) is not None
    assert sim.stats()["requests"] == 3
    assert sim.stats()["faults"] == {"reset": 2}
