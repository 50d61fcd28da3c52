"""Strategies: how the eligible candidates of one request are put in order.

The engine (:mod:`policies.engine`) filters a route's candidates, scores the survivors and hands
them here as :class:`Columns`: parallel lists, one entry per eligible candidate, in document
order. A strategy returns a permutation of ``range(len(columns))``: the order in which to try
them. Strategies never drop a candidate (filtering is the engine's job), never look at health
views or requests directly, and draw randomness only from the ``rng`` they are given, so the same
columns and the same seeded ``random.Random`` always give the same order.

Every sort here is stable, so "tie → document order" costs nothing: candidates arrive in
document order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from policies.types import Strategy

NO_DATA = math.inf  # the latency of a candidate without a sample in the window


class Columns:
    """The eligible candidates of one request, column by column (index = document position).

    - ``scores``: the weighted score in [0, 1] (1 = best);
    - ``latency``: EWMA latency in seconds (TTFT for streams), :data:`NO_DATA` when unknown;
    - ``busy``: in-flight / max_concurrency, or the in-flight count when there is no cap;
    - ``price``: estimated US dollars for this request;
    - ``weight``: the candidate's share for ``weighted``.
    """

    __slots__ = ("busy", "latency", "price", "scores", "weight")

    def __init__(
        self,
        scores: list[float],
        latency: list[float],
        busy: list[float],
        price: list[float],
        weight: list[float],
    ) -> None:
        self.scores = scores
        self.latency = latency
        self.busy = busy
        self.price = price
        self.weight = weight

    def __len__(self) -> int:
        return len(self.scores)


StrategyFn = Callable[[Columns, random.Random], list[int]]


def by_score(columns: Columns, rng: random.Random) -> list[int]:
    """``score``: best weighted score first.

    1. Sort the candidates by score, highest first.
    2. Equal scores keep document order (stable sort).
    """
    scores = columns.scores
    return sorted(range(len(scores)), key=scores.__getitem__, reverse=True)


def ordered(columns: Columns, rng: random.Random) -> list[int]:
    """``ordered``: the order the policy document gives (a fallback chain).

    1. Keep the eligible candidates in document order (excluded ones are already gone).
    """
    return list(range(len(columns.scores)))


def lowest_latency(columns: Columns, rng: random.Random) -> list[int]:
    """``lowest-latency``: fastest first on live figures.

    1. Key each candidate by its EWMA latency (time to first token for streams).
    2. A candidate without a sample in the window (new, or idle since its figures aged out)
       is keyed by the fastest measured latency: optimism under uncertainty, so that it is
       tried and measured again. Were it sorted last, a deployment passed over once (say
       during a latency spike) would never get the traffic that shows it recovered.
    3. Sort ascending; ties keep document order.
    """
    latency = columns.latency
    measured = [x for x in latency if x != NO_DATA]
    optimistic = min(measured) if measured else 0.0
    return sorted(
        range(len(latency)), key=lambda i: optimistic if latency[i] == NO_DATA else latency[i]
    )


def least_busy(columns: Columns, rng: random.Random) -> list[int]:
    """``least-busy``: the most spare capacity first.

    1. Key each candidate by in-flight / max_concurrency, or by the in-flight count when the
       deployment has no concurrency cap.
    2. Sort ascending; ties keep document order.
    """
    busy = columns.busy
    return sorted(range(len(busy)), key=busy.__getitem__)


def power_of_two(columns: Columns, rng: random.Random) -> list[int]:
    """``p2c``: power of two choices, which spreads load better than always taking the best.

    1. With fewer than two candidates, return them as they are.
    2. Pick two distinct candidates uniformly at random with ``rng``.
    3. The one with the higher score goes first (equal scores: the earlier in the document).
    4. Every other candidate follows, sorted by score, highest first (ties: document order).
    """
    scores = columns.scores
    n = len(scores)
    if n < 2:
        return list(range(n))
    a = min(int(rng.random() * n), n - 1)
    b = min(int(rng.random() * (n - 1)), n - 2)
    if b >= a:
        b += 1
    if scores[b] > scores[a] or (scores[b] == scores[a] and b < a):
        a = b
    rest = sorted(range(n), key=scores.__getitem__, reverse=True)
    rest.remove(a)
    rest.insert(0, a)
    return rest


def cheapest(columns: Columns, rng: random.Random) -> list[int]:
    """``cheapest``: the lowest estimated price for this request first.

    1. Sort by score, highest first (ties: document order).
    2. Sort that again by estimated price, lowest first; the sort is stable, so equal prices
       stay in score order.
    """
    scores = columns.scores
    price = columns.price
    by_score_first = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
    by_score_first.sort(key=price.__getitem__)
    return by_score_first


def weighted(columns: Columns, rng: random.Random) -> list[int]:
    """``weighted``: a random order in which each candidate leads in proportion to its weight.

    Weighted sampling without replacement (Efraimidis-Spirakis), in one pass:

    1. Draw ``u`` uniform in (0, 1] from ``rng`` for each candidate, in document order.
    2. Key the candidate by ``log(u) / weight`` (the same order as ``u ** (1 / weight)``
       without underflow); a weight ≤ 0 gets ``-inf`` and goes last.
    3. Sort by key, highest first. The first position goes to candidate ``i`` with probability
       ``weight_i / Σ weights``, the next among the rest likewise, and so on.
    """
    weight = columns.weight
    rand = rng.random
    log = math.log
    keys = [log(1.0 - rand()) / w if w > 0 else -math.inf for w in weight]
    return sorted(range(len(keys)), key=keys.__getitem__, reverse=True)


def panic(severity: Sequence[int], error_rate: Sequence[float]) -> list[int]:
    """Panic order: every candidate was excluded for health only, so try the least bad first.

    1. Sort by status severity: healthy, degraded, unhealthy, ejected (unknown statuses last).
    2. Within a status, by error rate, lowest first.
    3. Ties keep document order.
    """
    return sorted(range(len(severity)), key=lambda i: (severity[i], error_rate[i]))


STRATEGY_FUNCTIONS: Mapping[Strategy, StrategyFn] = MappingProxyType(
    {
        "score": by_score,
        "ordered": ordered,
        "lowest-latency": lowest_latency,
        "least-busy": least_busy,
        "p2c": power_of_two,
        "cheapest": cheapest,
        "weighted": weighted,
    }
)
