"""The fault schedule: which fault, if any, applies to the next request.

Selection for one request, in order:

1. Count the request: ``index`` is the number of requests already served by this schedule.
2. A ``refuse`` fault whose window covers ``elapsed`` (clock now minus the schedule's origin)
   wins, wherever it is listed: the standalone server has closed its port, so no other fault
   could reach the request (this keeps the in-process provider in step with the server).
3. Otherwise walk the faults in list order and skip one when
   a. it is a stream fault and the request does not stream,
   b. ``elapsed`` is before ``start`` or at/after ``end``,
   c. ``index < after``,
   d. it already hit ``count`` times,
   e. ``rate < 1`` and the seeded dice roll is not under ``rate`` (the dice is only rolled for a
      fault that passed a-d, so a run with the same seed and the same traffic is reproducible).
4. The first fault not skipped wins; its hit count goes up.

The clock is injected (``time.monotonic`` by default) so tests can cross window boundaries.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from gateway.providers.simulated.settings import STREAM_FAULTS, Fault

Clock = Callable[[], float]


class FaultSchedule:
    """A list of faults with its own clock origin, request counter, hit counts and dice."""

    __slots__ = (
        "_clock",
        "_faults",
        "_hits",
        "_refusals",
        "_rng",
        "_served",
        "_stream_only",
        "origin",
    )

    def __init__(
        self, faults: tuple[Fault, ...], *, seed: int = 0, clock: Clock = time.monotonic
    ) -> None:
        self._faults = faults
        self._stream_only = tuple(f.kind in STREAM_FAULTS for f in faults)
        self._refusals = tuple(i for i, f in enumerate(faults) if f.kind == "refuse")
        self._hits = [0] * len(faults)
        self._rng = random.Random(seed)
        self._served = 0
        self._clock = clock
        self.origin = clock()

    @property
    def faults(self) -> tuple[Fault, ...]:
        return self._faults

    @property
    def served(self) -> int:
        """Requests that went through :meth:`select` so far."""
        return self._served

    def elapsed(self) -> float:
        """Seconds since the schedule started."""
        return self._clock() - self.origin

    def select(self, *, stream: bool) -> Fault | None:
        """The fault for the next request, or ``None`` (see the module docstring)."""
        index = self._served
        self._served = index + 1
        if not self._faults:
            return None
        elapsed = self._clock() - self.origin
        hits = self._hits
        for i in self._refusals:
            fault = self._faults[i]
            if _covers(fault, elapsed):
                hits[i] += 1
                return fault
        for i, fault in enumerate(self._faults):
            if self._stream_only[i] and not stream:
                continue
            if not _covers(fault, elapsed) or index < fault.after:
                continue
            if fault.count is not None and hits[i] >= fault.count:
                continue
            if fault.rate < 1.0 and self._rng.random() >= fault.rate:
                continue
            hits[i] += 1
            return fault
        return None

    def refusal(self) -> tuple[bool, float | None]:
        """Whether a ``refuse`` window covers now, and when that may next change.

        Returns ``(refusing, next_boundary)`` with ``next_boundary`` as a clock reading (``None``
        when no later window edge exists). The schema gives every ``refuse`` fault a window and
        no ``after``, ``count`` or ``rate``, so this agrees with :meth:`select`: a request is
        refused exactly when the listener is closed.
        """
        elapsed = self._clock() - self.origin
        refusing = False
        upcoming: float | None = None
        for fault in self._faults:
            if fault.kind != "refuse":
                continue
            if _covers(fault, elapsed):
                refusing = True
            for edge in (fault.start, fault.end):
                if edge is not None and edge > elapsed and (upcoming is None or edge < upcoming):
                    upcoming = edge
        return refusing, (None if upcoming is None else self.origin + upcoming)


def _covers(fault: Fault, elapsed: float) -> bool:
    """Whether ``elapsed`` is inside the fault's window (``start`` inclusive, ``end`` exclusive;
    a missing edge is open)."""
    return (fault.start is None or elapsed >= fault.start) and (
        fault.end is None or elapsed < fault.end
    )
