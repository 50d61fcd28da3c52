"""The policy benchmark: what :func:`policies.engine.rank` costs per request.

One run (``.venv/bin/python bench/policy.py [--runs 11] [--run-ms 30] [--out FILE.json]``),
about 10 s with the defaults:

1. build a catalog of 5, 50 and 500 deployments (mixed tags, context windows, prices and
   concurrency caps) and, for each size, a health snapshot in which most deployments have live
   figures, some have none, about one in ten is degraded and one in twenty is ejected or has an
   open breaker (so the filter excludes some and the scorer sees every kind of view);
2. a policy snapshot with three routes for other models ahead of the measured one (so route
   selection is part of the figure), and a request for 600 prompt tokens with ``max_tokens``
   300, a ``tools`` requirement and a price cap;
3. for each size, each strategy of ``score``, ``p2c``, ``ordered``, ``cheapest``, and
   ``explain`` off and on: call ``rank`` in a loop for about ``--run-ms`` per run, ``--runs``
   times (after one untimed call and a calibration); µs per request = run time / calls;
   report the median run and the best one (the best is the code's cost with the least
   interference from other processes; the median is what to compare with the targets);
4. print a table with the targets (≤ 20 µs for 5 candidates, ≤ 200 µs for 50; 500 is shown
   for scale) and write every figure to a JSON file (default ``bench/results/policy.json``).

Figures are printed, never asserted: they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# bench/health.py would shadow the `health` package: put the repository first on the path.
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from health.snapshot import DeploymentView, HealthSnapshot  # noqa: E402
from policies.engine import prepare, rank  # noqa: E402
from policies.types import (  # noqa: E402
    Candidate,
    DeploymentInfo,
    Match,
    PolicySnapshot,
    RequestConstraints,
    RequestFeatures,
    Route,
    RouteConstraints,
    Strategy,
)

DEFAULT_OUT = BENCH / "results" / "policy.json"
SIZES = (5, 50, 500)
STRATEGIES: tuple[Strategy, ...] = ("score", "p2c", "ordered", "cheapest")
TARGET_US = {5: 20.0, 50: 200.0}  # µs per request; 500 has none
MODEL = "bench-model"


def catalog(size: int, rng: random.Random) -> tuple[tuple[Candidate, ...], HealthSnapshot]:
    """``size`` candidates and a health snapshot for them (deterministic for ``rng``)."""
    candidates = []
    views = {}
    for i in range(size):
        name = f"dep-{i:03d}"
        tags = {"tools", "stream", "json"}
        if i % 3 == 0:
            tags.add("vision")
        if i % 17 == 5:
            tags.discard("tools")  # excluded: needs tools
        info = DeploymentInfo(
            name=name,
            tags=frozenset(tags),
            context_window=(4096 if i % 23 == 7 else 128_000),  # 4096 < 900: still fits
            price_in=rng.choice((0.15, 0.5, 2.5, 5.0)),
            price_out=rng.choice((0.6, 1.5, 10.0, 15.0)),
            max_concurrency=(None if i % 2 else 64),
        )
        candidates.append(Candidate(info, weight=1 + i % 3, quality=rng.uniform(0.3, 0.95)))
        if i % 7 == 6:
            continue  # no data yet
        status = "healthy"
        if i % 10 == 3:
            status = "degraded"
        if i % 20 == 9:
            status = "ejected"
        views[name] = DeploymentView(
            name=name,
            status=status,
            reason="bench",
            requests=rng.randint(0, 400),
            error_rate=rng.uniform(0.0, 0.2),
            latency=rng.uniform(0.2, 3.0),
            latency_p95=rng.uniform(0.5, 6.0),
            ttft=rng.uniform(0.05, 0.8),
            ttft_p95=rng.uniform(0.1, 1.5),
            inflight=rng.randint(0, 30),
            breaker="open" if i % 20 == 14 else "closed",
        )
    return tuple(candidates), HealthSnapshot(views, taken_at=0.0)


def snapshot(candidates: tuple[Candidate, ...], strategy: Strategy) -> PolicySnapshot:
    """Three routes for other models, then the measured one."""
    other = Route("other", Match(models=frozenset({"other"})), candidates[:1])
    routes = (
        other,
        Route(
            "team",
            Match(models=frozenset({MODEL}), headers={"x-team": frozenset({"ml"})}),
            candidates[:1],
        ),
        Route("big", Match(models=frozenset({MODEL}), min_prompt_tokens=100_000), candidates[:1]),
        Route(
            "main",
            Match(models=frozenset({MODEL})),
            candidates,
            strategy=strategy,
            constraints=RouteConstraints(max_price=0.05, max_error_rate=0.5),
        ),
    )
    return PolicySnapshot(routes, default=None, version="bench", loaded_at=0.0)


REQUEST = RequestFeatures(
    model=MODEL,
    capabilities=frozenset({"tools"}),
    prompt_tokens=600,
    max_output_tokens=300,
    headers={"x-team": "web"},
    constraints=RequestConstraints(max_price=0.04),
)


def measure(
    policy: PolicySnapshot,
    health: HealthSnapshot,
    inflight: dict[str, int],
    *,
    explain: bool,
    runs: int,
    run_ms: float,
) -> list[float]:
    """µs per request of each timed run."""
    rng = random.Random(7)
    prepare(policy)
    plan = rank(policy, REQUEST, health, inflight=inflight, rng=rng, explain=explain)
    assert plan.order, "the bench request must be routable"
    # Calibrate: calls per run so that one run lasts about run_ms.
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            rank(policy, REQUEST, health, inflight=inflight, rng=rng, explain=explain)
        elapsed = time.perf_counter() - start
        if elapsed >= run_ms / 1000 / 4:
            calls = max(1, int(calls * (run_ms / 1000) / elapsed))
            break
        calls *= 4
    figures = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            rank(policy, REQUEST, health, inflight=inflight, rng=rng, explain=explain)
        figures.append((time.perf_counter() - start) / calls * 1e6)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=11, help="timed runs per cell (default 11)")
    parser.add_argument("--run-ms", type=float, default=30.0, help="ms per run (default 30)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)

    print(
        f"policy ranking: µs per request, median and best of {args.runs} runs of "
        f"~{args.run_ms:g} ms; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    header = f"{'candidates':>10}  {'strategy':<9}  {'explain off':>17}  {'explain on':>17}  target"
    print(header)
    print(f"{'':>10}  {'':<9}  {'median':>8} {'best':>8}  {'median':>8} {'best':>8}")
    print("-" * (len(header) + 18))
    cells: list[dict[str, Any]] = []
    for size in SIZES:
        candidates, health = catalog(size, random.Random(size))
        inflight = {c.info.name: i % 5 for i, c in enumerate(candidates)}
        for strategy in STRATEGIES:
            policy = snapshot(candidates, strategy)
            target = TARGET_US.get(size)
            row = f"{size:>10}  {strategy:<9}"
            medians = []
            for explain in (False, True):
                runs = measure(
                    policy, health, inflight, explain=explain, runs=args.runs, run_ms=args.run_ms
                )
                median = statistics.median(runs)
                medians.append(median)
                cells.append(
                    {
                        "candidates": size,
                        "strategy": strategy,
                        "explain": explain,
                        "us_per_request": median,
                        "best_us": min(runs),
                        "runs_us": runs,
                        "target_us": target,
                        "within_target": None if target is None else median <= target,
                    }
                )
                row += f"  {median:>8.1f} {min(runs):>8.1f}"
            if target is None:
                row += "  -"
            else:
                verdict = "ok" if max(medians) <= target else "OVER (median)"
                row += f"  ≤ {target:g} µs: {verdict}"
            print(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(),
                "runs": args.runs,
                "run_ms": args.run_ms,
                "cells": cells,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
