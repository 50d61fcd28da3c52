"""The simulated upstream's logic, shared by the in-process provider and the standalone server.

A :class:`Simulator` answers four questions for one request, without any I/O:

1. Is the body acceptable? (:meth:`Simulator.check`: the OpenAI-shaped 400 a real upstream gives)
2. Which fault applies? (:meth:`Simulator.choose_fault`, see :mod:`.schedule`; counted in stats)
3. How long before the first byte and how long to generate? (``latency``, a ``slow_first_token``
   ``delay``, ``tokens_per_second``)
4. What is the answer? A complete body (:meth:`Simulator.respond`) or a :class:`.StreamScript`
   (:meth:`Simulator.stream_script`): the SSE lines to send, with the stream fault already
   applied (cut, stall, malformed event, missing ``[DONE]``).

:class:`.script.ScriptPlayer` plays a script with its pacing; the provider feeds it to
:class:`gateway.providers.sse.SSEStream`, the server writes it to a socket.

Billing (:class:`Billing`, kept by the standalone server's handlers, which see what reaches the
wire): a request is *answered* (billed) once the upstream takes it up for generation, that is when
no error fault (``status``, ``reset``, ``refuse``, ``hang``, ``garbage``) stopped it; it is
*completed* when the whole answer was written (a non-streaming body sent; a stream played to its
end and its body finished) to a connection still open. A non-streaming answer bills its prompt and
its whole completion even when the client left before the body was written (the generation ran,
as a real provider charges for it); a stream bills its prompt and the completion tokens of the
content chunks actually written before a cut, a stall or a client that went away. Tokens of
answered requests that did not complete are counted again as *wasted*.

Content: ``content`` when set, else with ``echo`` the last user message (chat) or the prompt
(completions), else a sentence naming the deployment and model. Tokens are words.

Assistant prefill: when a chat request's last message is the assistant's and the content starts
with that message's text, the answer is the rest of the content after it (a continuation, as a
model that supports prefill gives); otherwise the whole content, as a model that ignores prefill
would answer. The content is deterministic, so a restarted request reproduces it exactly.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gateway.providers.simulated import render
from gateway.providers.simulated.render import Completion
from gateway.providers.simulated.schedule import Clock, FaultSchedule
from gateway.providers.simulated.script import StreamScript, apply_stream_fault
from gateway.providers.simulated.settings import Fault, SimulatedSettings

ENDPOINTS = ("chat/completions", "completions", "embeddings")


@dataclass(frozen=True, slots=True)
class BadRequest:
    """Why a request body is rejected (an upstream would answer 400)."""

    message: str
    param: str | None = None


@dataclass(slots=True)
class Billing:
    """Requests and tokens the upstream charged for, and the part of it that was wasted."""

    answered: int = 0
    completed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wasted_prompt_tokens: int = 0
    wasted_completion_tokens: int = 0

    def charge(self, prompt_tokens: int, completion_tokens: int, *, completed: bool) -> None:
        """Bill one answered request; its tokens are wasted unless it ``completed``."""
        self.answered += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if completed:
            self.completed += 1
        else:
            self.wasted_prompt_tokens += prompt_tokens
            self.wasted_completion_tokens += completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "answered": self.answered,
            "completed": self.completed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "wasted_prompt_tokens": self.wasted_prompt_tokens,
            "wasted_completion_tokens": self.wasted_completion_tokens,
        }


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete, non-streaming answer."""

    body: bytes
    prompt_tokens: int
    completion_tokens: int


def _max_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


class Simulator:
    """One simulated upstream (see the module docstring). Not thread-safe; asyncio only."""

    def __init__(
        self,
        settings: SimulatedSettings,
        *,
        name: str,
        model: str,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.model = model
        self._clock = clock
        self._ids = 0
        self.requests = 0
        self.faults_applied: Counter[str] = Counter()
        self.billing = Billing()
        self.configure(settings)

    def configure(self, settings: SimulatedSettings) -> None:
        """Install new settings; the fault schedule restarts (clock origin, counters, dice)."""
        self.settings = settings
        self.schedule = FaultSchedule(settings.faults, seed=settings.seed, clock=self._clock)
        text = settings.content
        if text is None:
            who = self.model if self.name == self.model else f"{self.name} (model {self.model})"
            text = f"This is a simulated answer from {who}."
        self._canned = render.make_completion(text, settings.chunk_tokens)
        self._canned_chat_tails = render.chat_tails(self._canned.chunks)
        self._canned_text_tails = render.text_tails(self._canned.chunks)
        tps = settings.tokens_per_second
        self._seconds_per_token = 1.0 / tps if tps > 0 else 0.0

    # --- 1. validation ---------------------------------------------------------------------

    @staticmethod
    def check(endpoint: str, body: Any) -> BadRequest | None:
        """The reason a real upstream would answer 400 to this body, or ``None``."""
        if not isinstance(body, dict):
            return BadRequest("the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return BadRequest("you must provide a model parameter", "model")
        if endpoint == "chat/completions":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return BadRequest("'messages' must be a non-empty array", "messages")
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
                return BadRequest("each message must be an object with a 'role'", "messages")
        elif endpoint == "completions":
            if not isinstance(body.get("prompt"), str | list):
                return BadRequest("'prompt' is required (a string or an array)", "prompt")
        elif endpoint == "embeddings":
            value = body.get("input")
            if not isinstance(value, str | list) or value == [] or value == "":
                return BadRequest("'input' is required (a non-empty string or array)", "input")
        return None

    # --- 2. faults -------------------------------------------------------------------------

    def choose_fault(self, *, stream: bool) -> Fault | None:
        """Count the request and pick its fault (first match wins)."""
        self.requests += 1
        fault = self.schedule.select(stream=stream)
        if fault is not None:
            self.faults_applied[fault.kind] += 1
        return fault

    def stats(self) -> dict[str, Any]:
        """Requests that reached fault selection, faults applied by kind and billing, since
        creation (a request is billed when it ends, so one in flight is not counted yet)."""
        return {
            "requests": self.requests,
            "faults": dict(sorted(self.faults_applied.items())),
            "billing": self.billing.as_dict(),
            "schedule": {
                "faults": len(self.schedule.faults),
                "served": self.schedule.served,
                "elapsed": round(self.schedule.elapsed(), 6),
            },
        }

    # --- 3. timing -------------------------------------------------------------------------

    def first_byte_delay(self, fault: Fault | None) -> float:
        """``latency``, plus the ``delay`` of a ``slow_first_token`` fault."""
        delay = self.settings.latency
        if fault is not None and fault.kind == "slow_first_token" and fault.delay:
            delay += fault.delay
        return delay

    def generation_time(self, tokens: int) -> float:
        """Seconds to produce ``tokens`` at ``tokens_per_second`` (0 when unpaced)."""
        return tokens * self._seconds_per_token

    # --- 4. answers ------------------------------------------------------------------------

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _completion(self, endpoint: str, body: dict[str, Any]) -> tuple[Completion, int]:
        """The answer text and the prompt's token count."""
        if endpoint == "chat/completions":
            messages = body["messages"]
            prompt_tokens = render.chat_input_words(messages)
            echoed = render.last_user_text(messages) if self.settings.echo else None
        else:
            prompt = render.prompt_text(body.get("prompt"))
            prompt_tokens = render.count_words(prompt)
            echoed = prompt if self.settings.echo else None
        if self.settings.content is not None or not echoed:
            completion = self._canned
        else:
            completion = render.make_completion(echoed, self.settings.chunk_tokens)
        if endpoint == "chat/completions":
            prefix = render.assistant_prefill(body["messages"])
            if prefix and completion.text.startswith(prefix):
                rest = completion.text[len(prefix) :]
                completion = render.make_completion(rest, self.settings.chunk_tokens)
        limit = _max_tokens(body)
        if limit is not None and limit < completion.tokens:
            completion = render.make_completion(completion.text, self.settings.chunk_tokens, limit)
        return completion, prompt_tokens

    def token_counts(self, endpoint: str, body: dict[str, Any]) -> tuple[int, int]:
        """The prompt and completion tokens the answer to a checked request would report."""
        if endpoint == "embeddings":
            return render.embedding_input_words(body["input"]), 0
        completion, prompt_tokens = self._completion(endpoint, body)
        return prompt_tokens, completion.tokens

    def respond(self, endpoint: str, body: dict[str, Any], model: str) -> Answer:
        """The complete answer to a checked request."""
        if endpoint == "embeddings":
            value = body["input"]
            tokens = render.embedding_input_words(value)
            payload = render.embeddings_body(
                model,
                render.embedding_inputs(value),
                self.settings.embedding_dimensions,
                tokens,
                as_base64=body.get("encoding_format") == "base64",
            )
            return Answer(payload, tokens, 0)
        completion, prompt_tokens = self._completion(endpoint, body)
        created = int(time.time())
        if endpoint == "chat/completions":
            rid = f"chatcmpl-sim-{self._next_id()}"
            payload = render.chat_body(rid, created, model, completion, prompt_tokens)
        else:
            rid = f"cmpl-sim-{self._next_id()}"
            payload = render.text_body(rid, created, model, completion, prompt_tokens)
        return Answer(payload, prompt_tokens, completion.tokens)

    def stream_script(
        self, endpoint: str, body: dict[str, Any], model: str, fault: Fault | None
    ) -> StreamScript:
        """The SSE lines of a streamed answer, with a stream fault applied."""
        completion, prompt_tokens = self._completion(endpoint, body)
        created = int(time.time())
        chat = endpoint == "chat/completions"
        canned = completion is self._canned
        lines: list[bytes] = []
        if chat:
            head = render.stream_head(
                b"chat.completion.chunk", f"chatcmpl-sim-{self._next_id()}", created, model
            )
            tails = self._canned_chat_tails if canned else render.chat_tails(completion.chunks)
            finish = render.chat_finish_tail(completion.finish_reason)
            lines.append(head + render.ROLE_TAIL)
        else:
            head = render.stream_head(
                b"text_completion", f"cmpl-sim-{self._next_id()}", created, model
            )
            tails = self._canned_text_tails if canned else render.text_tails(completion.chunks)
            finish = render.text_finish_tail(completion.finish_reason)
        first = len(lines)
        lines.extend(head + tail for tail in tails)
        end = len(lines)
        lines.append(head + finish)
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            lines.append(head + render.usage_tail(prompt_tokens, completion.tokens))
        lines.append(render.DONE_LINE)
        tokens = [0] * len(lines)
        size = self.settings.chunk_tokens
        for i in range(first, end):
            tokens[i] = size
        if end > first:
            tokens[end - 1] = completion.tokens - size * (end - first - 1)
        script = StreamScript(
            lines, paced_from=first + 1, paced_to=end, tokens=tokens, prompt_tokens=prompt_tokens
        )
        if self._seconds_per_token:
            script.interval = self.settings.chunk_tokens * self._seconds_per_token
        if fault is not None:
            apply_stream_fault(script, fault, first + min(fault.after_chunks, end - first))
        return script
