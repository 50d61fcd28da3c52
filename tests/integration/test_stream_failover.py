"""Streams that break after the caller got chunks: continued on a fallback, or ended honestly.

The gateway runs on a real socket with simulated deployments (deterministic content, scheduled
stream faults); the caller is the official OpenAI SDK, or httpx where the raw events matter.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from gateway.app import GATEWAY_KEY
from gateway.providers.simulated import Fault, SimulatedSettings
from gateway.providers.simulated.server import build_app
from health.window import WindowStats

USER = [{"role": "user", "content": "hello"}]
TEXT = "one two three four five six seven eight"
OTHER = "uno dos tres cuatro cinco seis siete ocho"
CUT = "{kind: stream_cut, after_chunks: 3, count: 1}"


def _sim(name: str, content: str, *, faults: str = "[]", tags: str = "", extra: str = "") -> str:
    tag_line = f"\n    tags: [{tags}]" if tags else ""
    return f"""
  - name: {name}
    provider: simulated
    model: m
    aliases: [chat]{tag_line}
    timeouts: {{first_token: 2s, idle: 300ms}}
    simulated: {{content: "{content}", faults: {faults}{extra}}}"""


def _config(*deployments: str, head: str = "") -> str:
    return (
        """
server: {request_timeout: 10s}
health: {probes: {kind: none}}
"""
        + head
        + "deployments:"
        + "".join(deployments)
    )


EMPTY_BUDGET = "resilience: {retry_budget: {ratio: 0.0, min_per_second: 0.0}}\n"


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=20)


def _stream(gw: Any, **extra: Any) -> list[Any]:
    """Every chunk the SDK yields for a streamed chat request (raises on an in-band error)."""
    chunks = _client(gw.url).chat.completions.create(
        model="chat", messages=USER, stream=True, **extra
    )
    return list(chunks)


def _text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _finishes(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def _raw_events(gw: Any, **extra: Any) -> list[str]:
    """The ``data:`` payloads of a streamed chat request, as sent."""
    body = {"model": "chat", "messages": USER, "stream": True, **extra}
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=20) as resp:
        text = "".join(resp.iter_text())
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def _window(gw: Any, name: str) -> WindowStats:
    async def read() -> WindowStats:
        assert gw.app is not None
        return gw.app[GATEWAY_KEY].deployments[name].window.stats()

    stats: WindowStats = gw.call(read())
    return stats


def _budget(gw: Any) -> dict[str, Any]:
    """The retry budget's state (``RetryBudget.describe()``)."""

    async def read() -> dict[str, Any]:
        assert gw.app is not None
        budget = gw.app[GATEWAY_KEY].resilience.budget
        assert budget is not None
        return budget.describe()

    state: dict[str, Any] = gw.call(read())
    return state


def _requests(gw: Any, name: str) -> int:
    async def read() -> int:
        assert gw.app is not None
        provider = gw.app[GATEWAY_KEY].deployments[name].provider
        return int(provider.simulator.requests)

    count: int = gw.call(read())
    return count


def test_cut_stream_is_finished_by_prefill_on_a_prefill_fallback(gateway: Any) -> None:
    """Cut after 3 chunks, a `prefill` fallback continues the text: one whole answer, one stop."""
    gw = gateway(
        _config(
            _sim("primary", TEXT, faults=f"[{CUT}]"),
            _sim("fallback", TEXT, tags="chat, stream, prefill"),
        )
    )
    chunks = _stream(gw, stream_options={"include_usage": True})
    assert _text(chunks) == TEXT
    assert _finishes(chunks) == ["stop"]
    roles = [c for c in chunks if c.choices and c.choices[0].delta.role]
    assert len(roles) == 1  # the continuation's own role chunk is not relayed
    # the usage is the continuation's: the prompt holds the 3 words sent as the prefill and
    # only the 5 words after them were generated
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 5)
    primary, fallback = _window(gw, "primary"), _window(gw, "fallback")
    assert (primary.error_count("stream_broken"), primary.successes) == (1, 0)
    assert (fallback.successes, fallback.failures) == (1, 0)
    assert primary.inflight == fallback.inflight == 0


def test_cut_stream_is_restarted_on_a_fallback_that_reproduces_it(gateway: Any) -> None:
    """Without prefill, a restart whose text begins with what was sent yields only the rest,
    even when its chunks do not line up with the broken stream's."""
    gw = gateway(
        _config(
            _sim("primary", TEXT, faults=f"[{CUT}]", extra=", chunk_tokens: 2"),
            _sim("fallback", TEXT, extra=", chunk_tokens: 5"),
        )
    )
    chunks = _stream(gw, stream_options={"include_usage": True})
    assert _text(chunks) == TEXT
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    # sent: three chunks of two words; the fallback's second chunk of five words crosses the
    # sent text after "six ": only "seven eight" of it is relayed
    assert pieces == ["one two ", "three four ", "five six ", "seven eight"]
    assert _finishes(chunks) == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8  # all again
    assert _window(gw, "primary").error_count("stream_broken") == 1
    assert _window(gw, "fallback").successes == 1


def test_restart_that_diverges_ends_with_the_original_cause_and_no_stop(gateway: Any) -> None:
    """A fallback that answers differently is not spliced in: the in-band error names the
    primary's break, and nothing says the answer finished."""
    gw = gateway(_config(_sim("primary", TEXT, faults=f"[{CUT}]"), _sim("fallback", OTHER)))
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in _client(gw.url).chat.completions.create(
            model="chat", messages=USER, stream=True
        ):
            received.append(chunk)
    assert "unfinished" in info.value.message  # the primary's own cause
    assert _text(received) == "one two three "
    assert _finishes(received) == []
    assert _requests(gw, "fallback") == 1
    assert _window(gw, "fallback").inflight == 0


def test_refused_prefill_falls_through_to_a_verified_restart(gateway: Any) -> None:
    """A `prefill` fallback that answers the prefill with a 400 is restarted instead; the 400
    never reaches the caller."""
    refuse = "{kind: status, status: 400, message: 'prefill is not supported', count: 1}"
    gw = gateway(
        _config(
            _sim("primary", TEXT, faults=f"[{CUT}]"),
            _sim("fallback", TEXT, faults=f"[{refuse}]", tags="chat, stream, prefill"),
        )
    )
    events = _raw_events(gw)
    assert "prefill is not supported" not in "".join(events)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == TEXT
    assert _requests(gw, "fallback") == 2  # the refused prefill, then the restart
    assert _budget(gw)["retries"] == 1  # the restart is a second leg on `fallback`


def test_refused_prefill_then_divergence_shows_the_original_cause(gateway: Any) -> None:
    """When neither prefill nor restart works, the error is the primary's, not the fallback's
    400."""
    refuse = "{kind: status, status: 400, message: 'prefill is not supported', count: 1}"
    gw = gateway(
        _config(
            _sim("primary", TEXT, faults=f"[{CUT}]"),
            _sim("fallback", OTHER, faults=f"[{refuse}]", tags="chat, stream, prefill"),
        )
    )
    events = _raw_events(gw)
    assert "[DONE]" not in events
    error = orjson.loads(events[-1])["error"]
    assert "unfinished" in error["message"]
    assert "prefill is not supported" not in "".join(events)
    assert all('"finish_reason":"stop"' not in e for e in events)


def test_stream_stalled_past_the_idle_timeout_is_continued(gateway: Any) -> None:
    """A primary that stops sending for longer than `timeouts.idle` is continued on time."""
    stall = "{kind: stream_stall, after_chunks: 2, count: 1}"
    gw = gateway(
        _config(
            _sim("primary", TEXT, faults=f"[{stall}]"),
            _sim("fallback", TEXT, tags="chat, stream, prefill"),
        )
    )
    started = time.monotonic()
    chunks = _stream(gw)
    assert time.monotonic() - started < 5  # the idle limit is 300 ms
    assert _text(chunks) == TEXT
    assert _finishes(chunks) == ["stop"]
    assert _window(gw, "primary").error_count("stream_broken") == 1


def test_malformed_event_is_continued_by_restart(gateway: Any) -> None:
    """An event that is not JSON breaks the primary; a reproducing fallback finishes the text."""
    bad = "{kind: malformed_chunk, after_chunks: 4, count: 1}"
    gw = gateway(_config(_sim("primary", TEXT, faults=f"[{bad}]"), _sim("fallback", TEXT)))
    chunks = _stream(gw)
    assert _text(chunks) == TEXT
    assert _finishes(chunks) == ["stop"]


def test_several_choices_are_not_continued(gateway: Any) -> None:
    """With n > 1 text alone cannot continue every choice: in-band error, fallback untouched."""
    gw = gateway(_config(_sim("primary", TEXT, faults=f"[{CUT}]"), _sim("fallback", TEXT)))
    events = _raw_events(gw, n=2)
    assert "[DONE]" not in events
    assert "unfinished" in orjson.loads(events[-1])["error"]["message"]
    assert _requests(gw, "fallback") == 0


def test_cut_stream_is_continued_with_an_empty_retry_budget(gateway: Any) -> None:
    """A continuation moves the answer to a fallback that did not fail: with no retry budget
    left it still finishes the answer, spending and refusing nothing."""
    gw = gateway(
        _config(
            _sim("primary", TEXT, faults=f"[{CUT}]"),
            _sim("fallback", TEXT, tags="chat, stream, prefill"),
            head=EMPTY_BUDGET,
        )
    )
    chunks = _stream(gw)
    assert _text(chunks) == TEXT
    assert _finishes(chunks) == ["stop"]
    assert _requests(gw, "fallback") == 1
    budget = _budget(gw)
    assert (budget["available"], budget["retries"], budget["exhausted"]) == (0, 0, 0)


def test_second_leg_on_the_same_fallback_needs_a_budget_token(gateway: Any) -> None:
    """After a refused prefill, restarting on that same fallback is a re-send: with an empty
    budget it is refused (and counted), and the stream ends with the original cause."""
    refuse = "{kind: status, status: 400, message: 'prefill is not supported', count: 1}"
    gw = gateway(
        _config(
            _sim("primary", TEXT, faults=f"[{CUT}]"),
            _sim("fallback", TEXT, faults=f"[{refuse}]", tags="chat, stream, prefill"),
            head=EMPTY_BUDGET,
        )
    )
    events = _raw_events(gw)
    assert "[DONE]" not in events
    assert "unfinished" in orjson.loads(events[-1])["error"]["message"]
    assert _requests(gw, "fallback") == 1  # the refused prefill only
    assert _budget(gw)["exhausted"] == 1


def test_without_a_fallback_a_cut_stream_ends_with_an_in_band_error(gateway: Any) -> None:
    """Nothing to continue on: the error event, no [DONE], no finish_reason."""
    gw = gateway(_config(_sim("primary", TEXT, faults=f"[{CUT}]")))
    events = _raw_events(gw)
    assert "[DONE]" not in events
    assert "error" in orjson.loads(events[-1])
    assert all('"finish_reason":"stop"' not in e for e in events)


def test_a_continuation_that_breaks_too_ends_with_both_causes(gateway: Any) -> None:
    """One continuation per request: when it breaks after it was relayed, the stream ends with
    the original cause (naming the second break) and never says stop."""
    gw = gateway(
        _config(
            _sim("primary", TEXT, faults=f"[{CUT}]"),
            _sim("fallback", TEXT, faults=f"[{CUT}]", tags="chat, stream, prefill"),
            _sim("spare", TEXT),
        )
    )
    events = _raw_events(gw)
    assert "[DONE]" not in events
    message = orjson.loads(events[-1])["error"]["message"]
    assert "unfinished" in message and "`fallback` failed too" in message
    assert all('"finish_reason":"stop"' not in e for e in events)
    assert _requests(gw, "spare") == 0
    assert _window(gw, "fallback").error_count("stream_broken") == 1


def test_caller_leaving_during_a_continuation_gives_the_fallback_slot_back(gateway: Any) -> None:
    """The fallback's in-flight count comes back to zero when the caller hangs up mid-way."""
    gw = gateway(
        _config(
            _sim("primary", TEXT, faults=f"[{CUT}]"),
            _sim("fallback", TEXT, tags="chat, stream, prefill", extra=", tokens_per_second: 5"),
        )
    )
    stream = _client(gw.url).chat.completions.create(model="chat", messages=USER, stream=True)
    for i, _ in enumerate(stream):
        if i == 5:  # role, three primary chunks, then the fallback's first
            break
    stream.close()
    deadline = time.monotonic() + 5
    while _window(gw, "fallback").inflight and time.monotonic() < deadline:
        time.sleep(0.02)
    fallback = _window(gw, "fallback")
    assert fallback.inflight == 0
    assert fallback.requests == 0  # a caller that left says nothing about the deployment


def test_stream_without_done_is_finalised_promptly_with_usage(gateway: Any, serve_app: Any) -> None:
    """An upstream (over HTTP) that ends a complete stream without [DONE]: the caller gets the
    usage and a [DONE] at once, and the deployment a success."""

    async def upstream() -> web.Application:
        settings = SimulatedSettings(content=TEXT, faults=(Fault(kind="missing_done"),))
        return build_app(settings, "m")

    up = serve_app(upstream)
    gw = gateway(
        f"""
server: {{request_timeout: 10s}}
health: {{probes: {{kind: none}}}}
deployments:
  - name: primary
    provider: openai
    model: m
    aliases: [chat]
    base_url: {up.url}/v1
    timeouts: {{idle: 10s}}
"""
    )
    started = time.monotonic()
    events = _raw_events(gw, stream_options={"include_usage": True})
    assert time.monotonic() - started < 5  # not the 10 s idle limit
    assert events[-1] == "[DONE]"
    usage = orjson.loads(events[-2])["usage"]
    assert usage["completion_tokens"] == 8
    assert _window(gw, "primary").successes == 1
