"""The provider protocol: one small surface that every upstream kind implements.

A provider turns a :class:`ProviderCall` into either a :class:`ProviderResponse` (a complete JSON
body, passed to the caller as it is) or a :class:`ProviderStream` (complete SSE events, relayed one
by one). Every failure leaves a provider as a :class:`gateway.errors.ProviderError`: foreign
exceptions are translated here, at the boundary, and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config import LiteLLMDeployment, OpenAIDeployment, SimulatedDeployment

DeploymentConfig = OpenAIDeployment | LiteLLMDeployment | SimulatedDeployment

DONE_EVENT = b"data: [DONE]\n\n"


@dataclass(slots=True)
class ProviderCall:
    """One attempt's input. ``body`` and ``raw`` are shared with the caller's request: read only."""

    endpoint: str  # "chat/completions" | "completions" | "embeddings"
    body: dict[str, Any]
    raw: bytes
    stream: bool
    request_id: str
    timeout: float  # seconds left for this attempt (the overall deadline already applied)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        return cls(
            prompt if isinstance(prompt, int) else 0,
            completion if isinstance(completion, int) else 0,
        )


@dataclass(slots=True)
class ProviderResponse:
    """A complete, successful, non-streaming answer."""

    body: bytes
    usage: Usage | None = None
    content_type: str = "application/json"


@dataclass(slots=True)
class StreamState:
    """What a stream has shown so far (kept up to date while events are relayed).

    ``text`` holds the pieces of choice 0's text in order (chat ``delta.content``, completions
    ``text``): what a continuation must reproduce or extend if the stream breaks. ``non_text``
    says a delta carried something else (tool calls, a refusal, reasoning): text alone cannot
    continue such a stream. ``open_choices`` / ``finished_choices`` are the choice indexes
    shown so far, without and with a ``finish_reason``.
    """

    chunks: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)
    non_text: bool = False
    open_choices: set[Any] = field(default_factory=set)
    finished_choices: set[Any] = field(default_factory=set)

    @property
    def n_choices(self) -> int:
        """How many distinct choices the stream has shown."""
        return len(self.open_choices) + len(self.finished_choices)

    @property
    def complete(self) -> bool:
        """Every choice shown has finished (so the answer itself is whole)."""
        return self.finish_reason is not None and not self.open_choices

    @property
    def content(self) -> str:
        """Choice 0's text so far."""
        return "".join(self.text)


class ProviderStream(Protocol):
    """Complete SSE events (``b"data: ...\\n\\n"``), validated, ending with ``DONE_EVENT``.

    Iteration raises :class:`gateway.errors.StreamBroken` (cut, stall, malformed event) or
    :class:`gateway.errors.ProviderTimeout`; ``aclose`` releases the upstream connection and is
    safe to call more than once.
    """

    state: StreamState

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    """An upstream deployment."""

    @property
    def deployment(self) -> DeploymentConfig: ...

    async def send(self, call: ProviderCall) -> ProviderResponse | ProviderStream: ...

    async def probe(self, kind: str, timeout: float) -> float:  # noqa: ASYNC109
        """An active health check; the latency in seconds when it passes.

        ``kind`` is ``"models"`` (list the models) or ``"completion"`` (a one-token answer, or
        a one-word embedding for a deployment that serves only embeddings); the whole probe is
        bounded by ``timeout`` seconds. A failure raises the same
        :class:`gateway.errors.ProviderError` subclass the request path would raise for it.
        (``timeout`` is a parameter, not the caller's ``asyncio.timeout``, because the provider
        also caps its connect phase with it and reports its expiry as ``ProviderTimeout``.)
        """
        ...

    async def close(self) -> None: ...
