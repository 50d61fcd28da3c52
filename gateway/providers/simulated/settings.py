"""Configuration of the simulated provider: its behaviour and its fault schedule.

A fault applies to a request when every condition it names holds: inside its time window
(``start`` inclusive / ``end`` exclusive, measured from the simulator's start or from the moment the
schedule was last replaced), within its request range (``after`` requests were already served, at
most ``count`` requests hit), and the dice roll under ``rate`` (seeded by ``seed``, so a run is
reproducible). Stream faults (``stream_cut``, ``stream_stall``, ``malformed_chunk``,
``missing_done``) only match streaming requests. The first matching fault in the list wins.

``refuse`` is an outage of the listener, so it is defined by time alone: it needs a window
(``start`` and/or ``end``) and may not use ``rate``, ``count`` or ``after``, and while its window
lasts it wins over every other fault. The standalone server closes its listening socket for the
window (new connections get ECONNREFUSED); the in-process provider raises
:class:`~gateway.errors.ProviderUnreachable` for requests inside the window. A closed port cannot
count requests or roll dice, and without a window there would be nothing for the server to
close, so both forms are refused here rather than meaning different things in process and over
HTTP.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from gateway.units import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]

DEFAULT_FAULT_STATUS = 500

FaultKind = Literal[
    "status",  # answer with `status` (default 500; `retry_after` when set), an OpenAI error body
    "hang",  # accept the request and never answer
    "reset",  # drop the connection before any byte
    "refuse",  # refuse connections for a time window (the server closes its listener)
    "slow_first_token",  # wait `delay` before the first byte / first chunk
    "stream_cut",  # stop the stream after `after_chunks` content chunks (connection closed)
    "stream_stall",  # stop sending after `after_chunks` chunks for `delay` (default: forever)
    "malformed_chunk",  # emit an unparseable SSE event after `after_chunks` chunks
    "missing_done",  # finish the stream without the final `data: [DONE]`
    "garbage",  # answer 200 with a body that is not JSON
]

STREAM_FAULTS: frozenset[str] = frozenset(
    {"stream_cut", "stream_stall", "malformed_chunk", "missing_done"}
)


class Fault(BaseModel):
    """One entry of the fault schedule (see the module docstring for when it applies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    status: int | None = Field(default=None, ge=400, le=599)
    retry_after: Duration | None = None
    delay: Duration | None = None
    after_chunks: int = Field(default=0, ge=0)
    message: str | None = None
    code: str | None = None
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    start: Duration | None = None
    end: Duration | None = None
    after: int = Field(default=0, ge=0)
    count: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _is_consistent(self) -> Fault:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end:g}s) must be after start ({self.start:g}s)")
        if self.kind == "refuse":
            self._check_refuse()
        return self

    def _check_refuse(self) -> None:
        """A refusal is a closed listener for a time window (see the module docstring)."""
        if not self.windowed:
            raise ValueError(
                "a `refuse` fault needs a time window: set `start` and/or `end` (the listener "
                "is closed for the window); to drop single requests use `reset`"
            )
        counted = [
            name
            for name, unset in (
                ("rate", self.rate == 1.0),
                ("count", self.count is None),
                ("after", self.after == 0),
            )
            if not unset
        ]
        if counted:
            names = ", ".join(f"`{n}`" for n in counted)
            raise ValueError(
                f"a `refuse` fault cannot use {names}: a closed listener refuses every "
                "connection in its window; use `reset` to drop some requests"
            )

    @property
    def windowed(self) -> bool:
        """True when the fault names a time window (``start`` and/or ``end``)."""
        return self.start is not None or self.end is not None


class SimulatedSettings(BaseModel):
    """Behaviour of a simulated upstream: pacing, content and the fault schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency: Duration = 0.0
    tokens_per_second: float = Field(default=0.0, ge=0.0)
    content: str | None = None
    echo: bool = False
    chunk_tokens: int = Field(default=1, ge=1)
    embedding_dimensions: int = Field(default=8, ge=1, le=8192)
    seed: int = 0
    faults: tuple[Fault, ...] = ()
