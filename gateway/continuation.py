"""Finish a stream that broke after the caller already received part of it.

Before a stream's first event :func:`gateway.executor.execute` fails over invisibly. After it the
caller holds part of an answer, so :func:`continue_stream` tries to finish *that* answer on
another deployment of the plan. When it cannot do so exactly, the stream ends with an in-band
``error`` event for the original cause and no ``[DONE]``: a truncated answer is never presented
as complete, and the caller never sees a fallback's failure in place of the real cause.

The algorithm (one continuation per request):

1. Text alone must be able to continue the answer: one choice (``n`` ≤ 1 and one choice shown)
   and no delta that carried more than text (tool calls, a refusal, reasoning); and the attempt
   must carry its call (``attempt.call``). Otherwise go to step 6. If the broken stream had
   already finished its choice (only its usage or ``[DONE]`` were lost), end with ``[DONE]``:
   the answer is whole.
2. Candidates: ``attempt.rest`` (the plan's other deployments that did not fail in this
   request; the server picks them when the stream breaks) that serve the endpoint and stream,
   in order; one at its ``max_concurrency`` is skipped; nothing starts after
   ``attempt.deadline``, and a candidate's wait before it is relayed ends there too.
3. Prefill (chat, and some text was sent): on the first candidate tagged ``prefill``, the
   original body without ``n`` and with the sent text as a final assistant message (appended to
   the caller's own trailing assistant message, when there is one). Its events are relayed as
   they come: they continue the text.
4. Restart: on each candidate in order, the original body (the prefill candidate again only when
   it refused the prefill with a 4xx, and the retry budget grants that second leg a token). Its
   events are read, not relayed, until its text covers the sent text. If its text starts with
   the sent text, the event where it got past it is sent carrying only the text beyond (the
   fallback's own chunk: its ``id``, ``model``, shape), and every later event as it comes. If
   it diverges, or ends sooner, it is closed and the next candidate is tried.
5. A candidate that fails before anything of it was relayed (a refused prefill, a 503, a
   timeout, a stream cut early) is invisible to the caller: the next one is tried. Once a
   candidate's first event was relayed it *is* the continuation: if it breaks too, the stream
   ends with the in-band error of the original cause, its message naming the second failure.
6. Nothing continued the answer: the in-band ``error`` event of the original cause, no
   ``[DONE]``.

The retry budget (:class:`gateway.retrying.RetryBudget`) is not asked for a leg on a candidate:
none of them failed in this request (the deployment that broke is not among them), so a leg
moves the request and adds no load to a failing deployment. Only a second leg on the same
candidate (the restart after a refused prefill) is a re-send and spends a token; refused, that
candidate is passed over.

What the caller reads after the break: never a second ``role`` delta (removed from relayed
events); the continuation's own ``finish_reason`` (so ``"stop"`` only when it really finished);
its own usage, not a sum (for a prefill the prompt includes the prefix and the completion only
the new text; for a restart the whole answer again; the broken stream rarely sent usage); its
``id`` and ``model``.

Records: every candidate's outcome goes into its deployment's window, and its in-flight slot is
held while it runs and given back once. A failure counts by its class; a continuation that
finished, and a restart that only diverged (the deployment answered well, just differently),
count as successes with their time to first event; a wait cut by the request's deadline, or a
caller that left, counts nothing. The attempt's ``attempts`` and ``errors`` grow with every
candidate; when the answer was finished, ``attempt.deployment`` and ``attempt.result`` become the
continuing deployment and its stream (so the request log names who finished the answer and
lists who broke) and ``attempt.outcome`` is cleared; otherwise ``attempt.outcome`` stays the
original cause's label.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import orjson

from gateway.errors import (
    BadUpstreamResponse,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
)
from gateway.executor import Attempt, Deployment, first_event
from gateway.http import sse_error
from gateway.providers.base import DONE_EVENT, ProviderCall, ProviderResponse, ProviderStream
from gateway.retrying import RetryBudget

PREFILL_TAG = "prefill"
CHAT = "chat/completions"


async def continue_stream(
    attempt: Attempt, broken: ProviderError, *, budget: RetryBudget | None = None
) -> AsyncGenerator[bytes, None]:
    """The events that end a stream broken by ``broken`` (see the module docstring).

    The caller writes every event it yields; the last is ``[DONE]`` when the answer was
    finished, or an in-band ``error`` event. ``attempt`` has already been recorded as broken
    (:meth:`Attempt.finish`). ``budget``: the replica's retry budget, asked only for a second
    leg on the same deployment. Close the generator (``aclose``) if the caller leaves: the
    candidate in flight is closed and its slot given back, with nothing recorded.
    """
    attempt.errors.append(broken)
    attempt.outcome = broken.label
    stream = attempt.result
    assert not isinstance(stream, ProviderResponse)
    state = stream.state
    if state.complete:  # the answer is whole; only the upstream's tail was lost
        attempt.outcome = None
        yield DONE_EVENT
        return
    call = attempt.call
    failure: ProviderError | None = None
    if call is not None and _continuable(call, stream):
        run = _Run(attempt, call, state.content, budget)
        try:
            async with aclosing(run.events()) as events:
                async for event in events:
                    yield event
        finally:
            await run.close()
        if run.finished:
            return
        failure = run.failure
    if failure is None:
        yield sse_error(broken)
    else:
        error = broken.to_openai()
        error["message"] = (
            f"{broken.message}; continuing the answer on `{failure.deployment}` failed too: "
            f"{failure.message}"
        )
        yield b"data: " + orjson.dumps({"error": error}) + b"\n\n"


def _continuable(call: ProviderCall, stream: ProviderStream) -> bool:
    """Whether text alone can continue this stream (one choice, nothing but text)."""
    n = call.body.get("n")
    if isinstance(n, int) and n > 1:
        return False
    state = stream.state
    return state.n_choices <= 1 and not state.non_text


class _Diverged(Exception):
    """A restarted answer that does not begin with the text already sent."""


class _Run:
    """One continuation: its candidates in order, and the one being read (``leg``)."""

    def __init__(
        self, attempt: Attempt, call: ProviderCall, sent: str, budget: RetryBudget | None
    ) -> None:
        self.attempt = attempt
        self.call = call
        self.sent = sent
        self.budget = budget
        self.sent_to: set[str] = set()  # deployments a leg was sent to
        self.loop = asyncio.get_running_loop()
        self.deadline = attempt.deadline or self.loop.time() + call.timeout
        self.leg: Attempt | None = None
        self.finished = False  # the answer was finished by a continuation
        self.failure: ProviderError | None = None  # a continuation broke after it was relayed

    async def events(self) -> AsyncGenerator[bytes, None]:
        """Try prefill, then restarts (steps 3-5); yield what the caller should get."""
        endpoint = self.call.endpoint
        candidates = [d for d in self.attempt.rest if _streams(d, endpoint)]
        skip: set[str] = set()
        prefill = None
        if endpoint == CHAT and self.sent:
            prefill = next(
                (
                    d
                    for d in candidates
                    if PREFILL_TAG in d.provider.deployment.tags and _has_room(d)
                ),
                None,
            )
        if prefill is not None:
            body = _prefilled(self.call.body, self.sent)
            error = await self._open(prefill, body, orjson.dumps(body))
            if error is None:
                head = await self._first_relayable()
                if head is not None:
                    async with aclosing(self._relay(head)) as relayed:
                        async for event in relayed:
                            yield event
                    if self.finished or self.failure is not None:
                        return
                skip.add(prefill.name)  # it broke before anything of it was relayed
            elif not isinstance(error, ProviderRejected):
                skip.add(prefill.name)  # only a refused prefill leaves it fit to restart
        for dep in candidates:
            if dep.name in skip or not _has_room(dep):
                continue
            if self.loop.time() >= self.deadline:
                break
            if dep.name in self.sent_to and not self._may_resend():
                continue
            if await self._open(dep, self.call.body, self.call.raw) is not None:
                continue
            try:
                head = await self._verified()
            except _Diverged:
                await self._drop(None)  # it answered, only differently: a success
                continue
            if head is None:  # broke or ran out of time before it could be verified
                continue
            async with aclosing(self._relay(head)) as relayed:
                async for event in relayed:
                    yield event
            if self.finished or self.failure is not None:
                return

    def _may_resend(self) -> bool:
        """Whether the retry budget grants a second leg on a deployment (a re-send)."""
        return self.budget is None or self.budget.try_spend()

    async def _open(self, dep: Deployment, body: dict[str, Any], raw: bytes) -> Exception | None:
        """Send to ``dep`` and wait for its first event: ``self.leg`` on success, else the
        error (recorded, and listed in the attempt's errors)."""
        remaining = self.deadline - self.loop.time()
        if remaining <= 0:
            return ProviderTimeout("the request deadline passed", deployment=dep.name)
        call = ProviderCall(self.call.endpoint, body, raw, True, self.call.request_id, remaining)
        self.sent_to.add(dep.name)
        self.attempt.attempts += 1
        window = dep.window
        window.inflight += 1
        started = self.loop.time()
        try:
            async with asyncio.timeout_at(self.deadline):
                result = await dep.provider.send(call)
                if isinstance(result, ProviderResponse):
                    raise BadUpstreamResponse(
                        "answered a streaming request with a whole body", deployment=dep.name
                    )
                first = await first_event(result)
        except ProviderError as exc:
            window.inflight -= 1
            dep.failed(exc)
            self.attempt.errors.append(exc)
            return exc
        except TimeoutError:  # the request's deadline, not the deployment: nothing recorded
            window.inflight -= 1
            late = ProviderTimeout(
                "the request deadline passed while continuing the stream", deployment=dep.name
            )
            self.attempt.errors.append(late)
            return late
        except BaseException:
            window.inflight -= 1
            raise
        ttft = self.loop.time() - started
        self.leg = Attempt(dep, result, 1, first, started=started, ttft=ttft)
        return None

    async def _first_relayable(self) -> bytes | None:
        """The leg's first event worth relaying (role-only events are dropped), or ``None``
        when it failed first (recorded)."""
        leg = self.leg
        assert leg is not None and leg.first is not None
        event = without_role(leg.first)
        if event is not None:
            return event
        try:
            async with asyncio.timeout_at(self.deadline):
                async for more in _stream_of(leg):
                    event = without_role(more)
                    if event is not None:
                        return event
        except ProviderError as exc:
            await self._drop(exc)
            return None
        except TimeoutError:
            await self._timed_out()
            return None
        await self._drop(None)  # not reached: a valid stream ends with [DONE]
        return None

    async def _verified(self) -> bytes | None:
        """Read the restarted leg until its text covers the sent text; the event to send
        then (possibly ``b""``: nothing). ``None`` when it failed first (recorded); raises
        :class:`_Diverged` when it does not begin with the sent text."""
        leg = self.leg
        assert leg is not None and leg.first is not None
        state = _stream_of(leg).state
        sent = self.sent
        pos = 0  # characters of the leg's text matched against the sent text
        seen = 0  # pieces of state.text consumed
        event = leg.first
        events = aiter(_stream_of(leg))
        try:
            async with asyncio.timeout_at(self.deadline):
                while True:
                    extra: list[str] = []
                    pieces = state.text
                    while seen < len(pieces):
                        piece = pieces[seen]
                        seen += 1
                        if pos < len(sent):
                            n = min(len(piece), len(sent) - pos)
                            if piece[:n] != sent[pos : pos + n]:
                                raise _Diverged
                            pos += n
                            piece = piece[n:]
                        if piece:
                            extra.append(piece)
                    if pos >= len(sent):
                        return remainder_event(event, "".join(extra)) or b""
                    if state.done:
                        raise _Diverged  # it ended before it reached the sent text
                    event = await anext(events)
        except StopAsyncIteration:
            raise _Diverged from None
        except ProviderError as exc:
            await self._drop(exc)
            return None
        except TimeoutError:
            await self._timed_out()
            return None

    async def _relay(self, head: bytes) -> AsyncGenerator[bytes, None]:
        """The committed leg's events, ``head`` first; sets ``finished`` or ``failure``, or
        drops the leg when it broke before anything of it was relayed."""
        leg = self.leg
        assert leg is not None
        relayed = bool(head)
        if head:
            yield head
        try:
            async for event in _stream_of(leg):
                out = without_role(event)
                if out is not None:
                    relayed = True
                    yield out
        except ProviderError as exc:
            if not relayed:  # the caller saw nothing of it: the next candidate may serve
                await self._drop(exc)
                return
            self.leg = None
            self.attempt.errors.append(exc)
            leg.finish(exc)
            self.failure = exc
            return
        self.leg = None
        leg.finish()
        self.finished = True
        attempt = self.attempt
        attempt.deployment = leg.deployment
        attempt.result = leg.result
        attempt.outcome = None

    async def _drop(self, error: ProviderError | None) -> None:
        """Close the leg before anything of it was relayed; record ``error`` (or a success)."""
        leg = self.leg
        assert leg is not None
        self.leg = None
        try:
            await _stream_of(leg).aclose()
        finally:
            if error is not None:
                self.attempt.errors.append(error)
            leg.finish(error)

    async def _timed_out(self) -> None:
        """The request's deadline cut the leg's wait: close it, record nothing."""
        leg = self.leg
        assert leg is not None
        self.leg = None
        self.attempt.errors.append(
            ProviderTimeout(
                "the request deadline passed while continuing the stream",
                deployment=leg.deployment.name,
            )
        )
        try:
            await _stream_of(leg).aclose()
        finally:
            leg.finish(record=False)

    async def close(self) -> None:
        """Release a leg still open (the caller left): its slot back, nothing recorded."""
        leg = self.leg
        if leg is None:
            return
        self.leg = None
        try:
            await _stream_of(leg).aclose()
        finally:
            leg.finish(record=False)


def _stream_of(leg: Attempt) -> ProviderStream:
    result = leg.result
    assert not isinstance(result, ProviderResponse)
    return result


def _streams(dep: Deployment, endpoint: str) -> bool:
    config = dep.provider.deployment
    return config.supports(endpoint) and "stream" in config.tags


def _has_room(dep: Deployment) -> bool:
    return dep.max_concurrency is None or dep.inflight < dep.max_concurrency


def _prefilled(body: dict[str, Any], sent: str) -> dict[str, Any]:
    """The chat body without ``n``, the sent text as the assistant's last message."""
    messages = list(body["messages"])
    last = messages[-1] if messages else None
    if (
        isinstance(last, dict)
        and last.get("role") == "assistant"
        and isinstance(last.get("content"), str)
    ):
        messages[-1] = {**last, "content": last["content"] + sent}
    else:
        messages.append({"role": "assistant", "content": sent})
    prefilled = {k: v for k, v in body.items() if k != "n"}
    prefilled["messages"] = messages
    return prefilled


# --- event rewriting (only on the continuation's path) ---------------------------------------


def _payload(event: bytes) -> Any:
    """The JSON payload of one relayed event (``data: ...\\n\\n``, maybe several lines)."""
    return orjson.loads(event[6:-2].replace(b"\ndata: ", b"\n"))


def _event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _says_nothing(payload: dict[str, Any]) -> bool:
    """An event with no usage, no finish and no text or other delta field: nothing to relay."""
    if payload.get("usage"):
        return False
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("finish_reason"):
            return False
        delta = choice.get("delta")
        fields = delta.items() if isinstance(delta, dict) else [("text", choice.get("text"))]
        if any(value not in (None, "") for _, value in fields):
            return False
    return True


def without_role(event: bytes) -> bytes | None:
    """``event`` without ``role`` in its deltas; ``None`` when nothing else is left in it.

    The caller already got the assistant's role at the start of the answer; a continuation's
    own role chunk would be a second one.
    """
    if b'"role"' not in event:
        return event
    payload = _payload(event)
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list):
        return event
    changed = False
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and "role" in delta:
            del delta["role"]
            changed = True
    if not changed:
        return event
    return None if _says_nothing(payload) else _event(payload)


def remainder_event(event: bytes, text: str) -> bytes | None:
    """The restarted leg's ``event`` with choice 0 carrying only ``text`` (what lies beyond the
    sent text), without ``role``; ``None`` when it would say nothing."""
    if event == DONE_EVENT:
        return None
    payload = _payload(event)
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list):
        return event
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            delta.pop("role", None)
            delta["content"] = text
        else:
            choice["text"] = text
    return None if _says_nothing(payload) else _event(payload)
