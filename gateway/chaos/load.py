"""The chaos traffic driver: send a scenario's requests to the gateway and judge every answer.

The simulated upstreams echo the last user message, so each request carries its own expected
answer: a payload ``"r<n> w1 w2 …"`` of ``output_tokens`` words. The simulator splits text into
whitespace-separated words and keeps their spacing, so the chunks of its answer concatenate back
to the payload exactly; no ``max_tokens`` is sent, so it is never cut. An answer is *ok* only when
it is whole and equal to the payload. What the caller was told decides how a failure counts:

- an HTTP error status → ``http_<status>:<error.type or code>`` (just ``http_<status>`` when the
  body is not an OpenAI error);
- an in-band ``data: {"error": …}`` event in a stream → ``in_band_error:<type or code>``: the
  caller was told, a failure but not a truncation;
- no answer within ``traffic.timeout`` → ``client_timeout``; no response at all →
  ``connection_error``, or ``replica_killed`` when ``dead(i)`` says the replica that took the
  request was killed;
- a 200 whose body is not what the API promises (not JSON, a malformed event) → ``bad_body``;
- a 200 with no error signalled, but the content differs, ``finish_reason`` is missing (or not
  ``"stop"`` for an echoing deployment), or a stream lacks ``data: [DONE]`` → ``truncated`` with
  ``truncated=True``. The gateway ends every stream with ``[DONE]`` or an in-band error, so a
  200 answer that breaks off any other way, a dropped connection or a body short of its
  ``Content-Length`` included, is truncated unless its replica was killed. An echo is never
  cut, so ``"length"`` from one means the answer was cut on the way even if the text is whole.

Sending, step by step:

1. The plan is seeded: whether a request streams, its prompt and answer sizes and its words come
   from one RNG (:func:`plan`), Poisson arrival times (open loop, ``rate``) from another. t = 0
   is ``origin`` (event-loop time; the first open-loop request is due then).
2. Open loop: each request starts at its arrival time as its own task; beyond
   :data:`MAX_IN_FLIGHT` requests in flight it is not sent and counts as ``driver_overloaded``.
   Closed loop (``concurrency``): N workers send back to back until ``duration``.
3. Request n goes to replica ``n mod len(urls)`` (round robin). A refused connection moves it to
   the next replica, as a load balancer would; only a failure after the request was sent counts.
4. Every request is bounded by ``traffic.timeout`` (the session's total timeout and an outer
   one); the whole drive by ``duration + timeout +`` :data:`GRACE`, after which stragglers are
   cancelled and count as ``client_timeout``. :func:`drive` cannot hang.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from typing import Any, Protocol

import aiohttp
import orjson

MAX_IN_FLIGHT = 2000
GRACE = 1.0  # s the whole drive may run past duration + timeout before stragglers are cancelled
ROUND = 6  # decimals kept for times in result rows

_VOCABULARY = (
    "amber basil cedar delta ember fable garnet harbor iris jasper kettle lumen maple nectar "
    "onyx pebble quartz raven sable tundra umber velvet willow xenon yarrow zephyr anchor "
    "bramble canyon dune echo fjord glacier heather island juniper kelp lagoon meadow nimbus "
    "orchid prairie quill reef summit thistle upland valley wharf yonder zenith"
)
WORDS = tuple(_VOCABULARY.split())  # payload and filler words (one token each)


class TrafficLike(Protocol):
    """The fields of ``gateway.chaos.scenario.Traffic`` the driver reads (times in seconds)."""

    @property
    def model(self) -> str: ...
    @property
    def rate(self) -> float | None: ...
    @property
    def concurrency(self) -> int | None: ...
    @property
    def duration(self) -> float: ...
    @property
    def stream_share(self) -> float: ...
    @property
    def prompt_tokens(self) -> tuple[int, int]: ...
    @property
    def output_tokens(self) -> tuple[int, int]: ...
    @property
    def timeout(self) -> float: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


@dataclass(slots=True)
class Outcome:
    """How one request ended (see the module docstring for ``reason``)."""

    t: float  # send time, s since traffic start
    latency: float | None  # s until the answer began: full body / first content chunk
    duration: float  # s until the request ended
    stream: bool
    status: int  # HTTP status, 0 when no response
    ok: bool  # complete and verified
    reason: str | None  # why not ok
    truncated: bool  # looked like a success, but the answer is incomplete or wrong
    deployment: str | None  # x-gateway-deployment
    attempts: int  # x-gateway-attempts (0 if absent)
    replica: int  # index of the replica that took it (-1: never sent)
    prompt_tokens: int  # usage reported to the client (0 if none)
    completion_tokens: int


OUTCOME_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Outcome))


def outcome_row(o: Outcome) -> list[Any]:
    """``o`` as a result.json row (values in :data:`OUTCOME_COLUMNS` order, times rounded)."""
    row = list(astuple(o))
    for i in (0, 1, 2):
        if row[i] is not None:
            row[i] = round(row[i], ROUND)
    return row


def outcome_from_row(columns: Sequence[str], row: Sequence[Any]) -> Outcome:
    """The :class:`Outcome` of a result.json row whose values follow ``columns``."""
    values = dict(zip(columns, row, strict=True))
    missing = [c for c in OUTCOME_COLUMNS if c not in values]
    if missing:
        raise ValueError(f"request row lacks column(s) {', '.join(missing)}")
    return Outcome(**{c: values[c] for c in OUTCOME_COLUMNS})


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    """One request of the plan: ``t`` is its arrival time (``None`` in a closed loop)."""

    n: int
    t: float | None
    stream: bool
    prompt_words: int
    payload: str  # the user message, and the expected answer

    def body(self, model: str) -> bytes:
        messages = []
        if self.prompt_words:
            filler = " ".join(WORDS[(self.n + i) % len(WORDS)] for i in range(self.prompt_words))
            messages.append({"role": "system", "content": filler})
        messages.append({"role": "user", "content": self.payload})
        body: dict[str, Any] = {"model": model, "messages": messages}
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)


class _Planner:
    """The seeded sequence of requests, numbered from 0."""

    def __init__(self, traffic: TrafficLike, seed: int) -> None:
        self._traffic = traffic
        self._rng = random.Random(f"chaos-requests:{seed}")
        self._n = 0

    def next(self, t: float | None = None) -> Planned:
        rng, traffic = self._rng, self._traffic
        n, self._n = self._n, self._n + 1
        stream = rng.random() < traffic.stream_share
        prompt = rng.randint(*traffic.prompt_tokens)
        words = max(1, rng.randint(*traffic.output_tokens))
        payload = " ".join([f"r{n}", *(rng.choice(WORDS) for _ in range(words - 1))])
        return Planned(n, t, stream, prompt, payload)


def _arrivals(rate: float, duration: float, seed: int) -> list[float]:
    """Poisson arrival times in [0, duration), the first at 0."""
    rng = random.Random(f"chaos-arrivals:{seed}")
    times, t = [], 0.0
    while t < duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def _check(traffic: TrafficLike) -> None:
    if (traffic.rate is None) == (traffic.concurrency is None):
        raise ValueError("traffic needs exactly one of `rate` and `concurrency`")
    if traffic.rate is not None and traffic.rate <= 0:
        raise ValueError("traffic `rate` must be greater than zero")
    if traffic.concurrency is not None and traffic.concurrency < 1:
        raise ValueError("traffic `concurrency` must be at least 1")


def plan(traffic: TrafficLike, seed: int, count: int | None = None) -> list[Planned]:
    """The requests :func:`drive` sends for ``seed``: the whole open-loop plan with arrival
    times, or (closed loop) the first ``count`` requests, in the order workers take them."""
    _check(traffic)
    planner = _Planner(traffic, seed)
    if traffic.rate is None:
        if count is None:
            raise ValueError("a closed-loop plan needs a `count`")
        return [planner.next() for _ in range(count)]
    times = _arrivals(traffic.rate, traffic.duration, seed)
    return [planner.next(t) for t in times[:count]]


# --- judging one answer ------------------------------------------------------------------------


@dataclass(slots=True)
class _Record:
    """What is known of one request so far."""

    t: float
    stream: bool
    replica: int
    status: int = 0
    latency: float | None = None
    reason: str | None = None
    truncated: bool = False
    deployment: str | None = None
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def usage(self, value: Any) -> None:
        if isinstance(value, dict):
            prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
            self.prompt_tokens = prompt if isinstance(prompt, int) else 0
            self.completion_tokens = completion if isinstance(completion, int) else 0

    def verify(self, text: str | None, finish: Any, done: bool, payload: str, echo: bool) -> None:
        """Pass an answer whose shape was fine, or mark it truncated."""
        whole = done and isinstance(finish, str)
        if echo:
            whole = whole and finish == "stop" and text == payload
        if not whole:
            self.reason, self.truncated = "truncated", True

    def broken(self, killed: bool) -> None:
        """The connection failed after the request was sent."""
        if killed:
            self.reason, self.truncated = "replica_killed", False
        elif self.status == 200:
            self.reason, self.truncated = "truncated", True
        else:
            self.reason = "connection_error"

    def outcome(self, duration: float) -> Outcome:
        return Outcome(
            t=self.t,
            latency=self.latency,
            duration=duration,
            stream=self.stream,
            status=self.status,
            ok=self.reason is None,
            reason=self.reason,
            truncated=self.truncated,
            deployment=self.deployment,
            attempts=self.attempts,
            replica=self.replica,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )


def _error_kind(error: Any) -> str | None:
    if isinstance(error, dict):
        for key in ("type", "code"):
            value = error.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def _http_reason(status: int, raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    kind = _error_kind(body.get("error")) if isinstance(body, dict) else None
    return f"http_{status}:{kind}" if kind else f"http_{status}"


def _in_band(error: Any) -> str:
    kind = _error_kind(error)
    return f"in_band_error:{kind}" if kind else "in_band_error"


class _StreamCheck:
    """Reads one SSE answer event by event (``data:`` lines joined, a blank line ends one)."""

    def __init__(self, record: _Record, clock: Callable[[], float], started: float) -> None:
        self._record = record
        self._clock = clock
        self._started = started
        self.parts: list[str] = []
        self.finish: Any = None
        self.done = False

    def feed(self, event: bytes) -> bool:
        """Take one event; True when the stream is over for the caller."""
        record = self._record
        if event == b"[DONE]":
            self.done = True
            return True
        try:
            payload = orjson.loads(event)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            record.reason = "bad_body"
            return True
        if "error" in payload:
            record.reason = _in_band(payload["error"])
            return True
        record.usage(payload.get("usage"))
        choices = payload.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                if record.latency is None:
                    record.latency = self._clock() - self._started
                self.parts.append(content)
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
        return False


# --- the driver --------------------------------------------------------------------------------


def _never_killed(replica: int) -> bool:
    return False


def _always_echoes(deployment: str | None) -> bool:
    return True


class _Driver:
    def __init__(
        self,
        traffic: TrafficLike,
        urls: Sequence[str],
        session: aiohttp.ClientSession,
        dead: Callable[[int], bool],
        echo: Callable[[str | None], bool],
        origin: float,
    ) -> None:
        self.traffic = traffic
        self.urls = [f"{u.rstrip('/')}/chat/completions" for u in urls]
        self.session = session
        self.dead = dead
        self.echo = echo
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.started: dict[int, tuple[Planned, float, float]] = {}  # n -> (request, t, at)
        self.results: dict[int, Outcome] = {}

    async def open_loop(self, requests: list[Planned]) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            for planned in requests:
                assert planned.t is not None
                delay = self.origin + planned.t - self.loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= MAX_IN_FLIGHT:
                    self.results[planned.n] = _overloaded(planned)
                    continue
                task = asyncio.create_task(self.send(planned))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def closed_loop(self, planner: _Planner, workers: int) -> None:
        async def worker() -> None:
            while (now := self.loop.time()) - self.origin < self.traffic.duration:
                await self.send(planner.next(), started=now)  # sent at the time it was checked

        await asyncio.gather(*(worker() for _ in range(workers)))

    async def send(self, planned: Planned, started: float | None = None) -> None:
        if started is None:
            started = self.loop.time()
        t = started - self.origin
        self.started[planned.n] = (planned, t, started)
        record = _Record(t=t, stream=planned.stream, replica=planned.n % len(self.urls))
        try:
            async with asyncio.timeout(self.traffic.timeout):
                await self._exchange(planned, record, started)
        except TimeoutError:
            record.reason, record.truncated = "client_timeout", False
        self.results[planned.n] = record.outcome(self.loop.time() - started)

    async def _exchange(self, planned: Planned, record: _Record, started: float) -> None:
        body = planned.body(self.traffic.model)
        headers = {
            "Content-Type": "application/json",
            "x-request-id": f"chaos-{planned.n}",
            **self.traffic.headers,
        }
        count = len(self.urls)
        for k in range(count):
            i = (planned.n + k) % count
            record.replica = i
            try:
                async with self.session.post(self.urls[i], data=body, headers=headers) as resp:
                    await self._read(resp, planned, record, started)
                return
            except TimeoutError:
                raise
            except aiohttp.ClientConnectorError:  # nothing was sent: try the next replica
                if k + 1 == count:
                    record.reason = "replica_killed" if self.dead(i) else "connection_error"
            except (aiohttp.ClientError, OSError):
                record.broken(self.dead(i))
                return

    async def _read(
        self, resp: aiohttp.ClientResponse, planned: Planned, record: _Record, started: float
    ) -> None:
        record.status = resp.status
        record.deployment = resp.headers.get("x-gateway-deployment")
        attempts = resp.headers.get("x-gateway-attempts", "")
        record.attempts = int(attempts) if attempts.isdigit() else 0
        if resp.status != 200:
            record.reason = _http_reason(resp.status, await resp.read())
            return
        echo = self.echo(record.deployment)
        if planned.stream:
            await self._read_stream(resp, planned, record, started, echo)
            return
        raw = await resp.read()
        record.latency = self.loop.time() - started
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = None
        if isinstance(answer, dict) and "error" in answer:
            record.reason = _in_band(answer["error"])
            return
        choices = answer.get("choices") if isinstance(answer, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            record.reason = "bad_body"
            return
        assert isinstance(answer, dict) and isinstance(choice, dict)
        record.usage(answer.get("usage"))
        content = message.get("content")
        text = content if isinstance(content, str) else None
        record.verify(text, choice.get("finish_reason"), True, planned.payload, echo)

    async def _read_stream(
        self,
        resp: aiohttp.ClientResponse,
        planned: Planned,
        record: _Record,
        started: float,
        echo: bool,
    ) -> None:
        if resp.content_type != "text/event-stream":
            record.reason = "bad_body"
            return
        check = _StreamCheck(record, self.loop.time, started)
        data: list[bytes] = []
        over = False
        try:
            async for raw in resp.content:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b"data:"):
                    data.append(line[5:].removeprefix(b" "))
                elif not line and data:
                    over = check.feed(b"\n".join(data))
                    data = []
                    if over:
                        break
        except ValueError:  # a line longer than the reader's limit
            record.reason = "bad_body"
            return
        if data and not over:  # the body ended without the event's blank line
            check.feed(b"\n".join(data))
        if record.reason is None:
            record.verify("".join(check.parts), check.finish, check.done, planned.payload, echo)

    def outcomes(self) -> list[Outcome]:
        """Every request's outcome by request number; one still running counts as timed out."""
        now = self.loop.time()
        for n, (planned, t, at) in self.started.items():
            if n not in self.results:
                record = _Record(t=t, stream=planned.stream, replica=planned.n % len(self.urls))
                record.reason = "client_timeout"
                self.results[n] = record.outcome(now - at)
        return [self.results[n] for n in sorted(self.results)]


def _overloaded(planned: Planned) -> Outcome:
    assert planned.t is not None
    record = _Record(t=planned.t, stream=planned.stream, replica=-1)
    record.reason = "driver_overloaded"
    return record.outcome(0.0)


async def drive(
    traffic: TrafficLike,
    urls: Sequence[str],
    seed: int,
    dead: Callable[[int], bool] = _never_killed,
    *,
    echo: Callable[[str | None], bool] = _always_echoes,
    origin: float | None = None,
) -> list[Outcome]:
    """Send ``traffic`` to the gateway replicas at ``urls`` (base URLs ending in ``/v1``) and
    return every request's :class:`Outcome`, in request order (see the module docstring).

    ``dead(i)``: whether replica ``i`` was killed (mark it before killing it), so that a
    connection lost on it counts as ``replica_killed``. ``echo(deployment)``: whether the
    deployment named by ``x-gateway-deployment`` (``None`` when absent) echoes the payload;
    when not, the content is not compared and any ``finish_reason`` will do. ``origin``: the
    event-loop time of t = 0 (default: now).
    """
    _check(traffic)
    if not urls:
        raise ValueError("drive needs at least one URL")
    loop = asyncio.get_running_loop()
    start = loop.time() if origin is None else origin
    workers = traffic.concurrency
    connector = aiohttp.TCPConnector(limit=workers or MAX_IN_FLIGHT, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=traffic.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        driver = _Driver(traffic, urls, session, dead, echo, start)
        deadline = start + traffic.duration + traffic.timeout + GRACE
        try:
            async with asyncio.timeout_at(deadline):
                if workers is None:
                    await driver.open_loop(plan(traffic, seed))
                else:
                    await driver.closed_loop(_Planner(traffic, seed), workers)
        except TimeoutError:
            pass  # stragglers were cancelled; they count as client timeouts
    return driver.outcomes()
