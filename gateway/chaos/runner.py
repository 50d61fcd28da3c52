"""One chaos run: start what a scenario needs, drive its traffic, apply its timeline, keep it all.

In order:

1. The simulated upstreams (and fault proxies in front of real ones) start in this process,
   faults not yet armed; a private ``redis-server`` starts when the scenario needs one.
2. The gateway config is generated (``gateway.yaml`` in the run's directory, with the policy
   beside it) and validated by the gateway's own loader, then 1 or 2 replicas start and each
   answers one preflight request, so that a scenario that cannot work fails before any traffic,
   with the gateway's answer in the message.
3. t = 0: the upstreams' fault schedules are armed, the sampler takes its first reading of every
   replica's ``/metrics``, the timeline task starts (Redis outages, replica kills, policy
   rewrites, and an event for each deployment fault's start and end) and the driver sends the
   traffic. The run ends when the driver's last request ended (each one is bounded by the
   traffic's timeout, so a run cannot hang).
4. The final readings, the upstreams' own counts, the outcome of every request and the events
   become ``result.json``; :mod:`.figures` derives the figures and checks the scenario's
   expectations from that file alone, and :mod:`.report` writes ``report.md`` and
   ``timeline.png``. ``gateway chaos report DIR`` repeats step 4 from the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from gateway.chaos import figures, report
from gateway.chaos.fleet import GatewayReplica, RedisProcess, RunError, Sampler, wall_time
from gateway.chaos.load import OUTCOME_COLUMNS, drive, outcome_row
from gateway.chaos.scenario import FaultSpec, Scenario
from gateway.chaos.upstreams import Upstreams

RESULT_VERSION = 1
PREFLIGHT_TIMEOUT = 15.0

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def write_yaml(path: Path, data: Any, mode: int = 0o644) -> None:
    """Write ``data`` as YAML atomically (temp file + rename): a watcher never sees half."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(yaml.safe_dump(data, sort_keys=False))
    os.chmod(tmp, mode)  # whatever the umask or an earlier file left
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(tmp, path)


RESULT_KEYS = {"scenario": dict, "requests": dict, "samples": list, "upstreams": dict}


def read_result(directory: Path) -> dict[str, Any]:
    """``DIR/result.json`` of an earlier run, checked for the parts the figures are made of."""
    path = directory / "result.json"
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise RunError(f"{path}: no such file; pass the directory a chaos run wrote") from None
    except OSError as exc:
        raise RunError(f"{path}: cannot be read ({exc.strerror})") from None
    except orjson.JSONDecodeError as exc:
        raise RunError(f"{path}: not a chaos result ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != RESULT_VERSION:
        raise RunError(f"{path}: not a chaos result of version {RESULT_VERSION}")
    wrong = [k for k, kind in RESULT_KEYS.items() if not isinstance(data.get(k), kind)]
    requests = data.get("requests")
    if isinstance(requests, dict) and not (
        isinstance(requests.get("columns"), list) and isinstance(requests.get("rows"), list)
    ):
        wrong.append("requests.columns/rows")
    if wrong:
        raise RunError(f"{path}: not a chaos result: missing or malformed {', '.join(wrong)}")
    return data


def finish(result: dict[str, Any], out: Path) -> list[Path]:
    """Figures, checks and verdict from the raw data; write result.json and the report."""
    result["figures"] = figures.compute(result)
    result["checks"] = figures.check(result["figures"], result["scenario"])
    result["passed"] = all(c["passed"] for c in result["checks"])
    write_json(out / "result.json", result)
    return [out / "result.json", *report.write_report(result, out)]


async def run(scenario: Scenario, out: Path, progress: Progress = _quiet) -> dict[str, Any]:
    """Carry out one run into ``out``; return the result (also written there).

    Raises :class:`RunError` when the run cannot be carried out and
    :class:`~gateway.yamlfile.ConfigError` when the gateway rejects the generated config (a
    problem of the scenario's ``gateway:`` or ``policy:`` part).
    """
    out = _prepare(out)
    async with contextlib.AsyncExitStack() as stack:
        upstreams = Upstreams(scenario.deployments, scenario.deployment_faults(), scenario.seed)
        stack.push_async_callback(upstreams.stop)
        await upstreams.start()
        redis: RedisProcess | None = None
        if scenario.uses_redis():
            redis = RedisProcess(out)
            stack.push_async_callback(redis.stop)
            await redis.start()
        policy_path = None
        if scenario.policy is not None:
            policy_path = out / "policy.yaml"
            write_yaml(policy_path, scenario.policy)
        config_path = out / "gateway.yaml"
        write_yaml(  # it holds the values of any ${VAR} the scenario used: owner-only
            config_path,
            scenario.gateway_config(
                upstreams.urls(),
                redis_url=redis.url if redis is not None else None,
                policy_path=str(policy_path) if policy_path is not None else None,
            ),
            mode=0o600,
        )
        budget = _budget(config_path)
        replicas = [
            GatewayReplica(i, config_path, out / f"gateway-{i}.log")
            for i in range(scenario.replicas)
        ]
        for replica in replicas:
            stack.push_async_callback(replica.stop)
        progress(
            f"starting {len(scenario.deployments)} upstream(s), {len(replicas)} gateway "
            f"replica(s){', redis' if redis else ''}"
        )
        for replica in replicas:  # one after the other: a failed start leaves nothing running
            await replica.start()
        await _preflight(replicas, scenario)

        loop = asyncio.get_running_loop()
        t0 = loop.time()

        def clock() -> float:
            return loop.time() - t0

        sampler = Sampler(replicas, clock, token=scenario.admin_token())
        stack.push_async_callback(sampler.stop)
        await sampler.start()  # the baseline reading, just before t = 0
        before = upstreams.stats()  # the preflight's requests are not the run's
        provisional, t0 = t0, loop.time()
        for sample in sampler.samples:  # taken before t = 0: negative times
            sample["t"] = round(sample["t"] - (t0 - provisional), 4)
        started_at = wall_time()
        upstreams.arm(origin=t0)
        events: list[dict[str, Any]] = []
        timeline = asyncio.create_task(
            _timeline(scenario, replicas, redis, policy_path, clock, events, progress)
        )
        progress(_traffic_line(scenario))
        simulated = {d.name for d in scenario.deployments if d.simulated is not None}
        everything_echoes = len(simulated) == len(scenario.deployments)
        driving = asyncio.create_task(
            drive(
                scenario.traffic,
                [f"{r.url}/v1" for r in replicas],
                scenario.seed,
                dead=lambda i: replicas[i].killed,
                # every answer is checked word for word when every deployment echoes (even one
                # without an x-gateway-deployment header); else those of simulated deployments
                echo=lambda name: everything_echoes or name in simulated,
                origin=t0,
            )
        )
        try:
            await asyncio.wait({timeline, driving}, return_when=asyncio.FIRST_EXCEPTION)
            if timeline.done() and not timeline.cancelled() and timeline.exception() is not None:
                failure = timeline.exception()
                raise RunError(f"the fault timeline failed at t = {clock():.2f} s: {failure}")
            outcomes = driving.result()
        finally:
            duration = clock()
            for task in (timeline, driving):
                task.cancel()
            await asyncio.gather(timeline, driving, return_exceptions=True)
            await sampler.stop()
        if redis is not None:
            redis.thaw()
        for replica in replicas:  # attempts still being abandoned end (and are billed) first
            await replica.stop()
        await upstreams.stop()
        stats = _since(upstreams.stats(), before)
    prices = {
        d.name: {"input": d.price_input, "output": d.price_output} for d in scenario.deployments
    }
    result: dict[str, Any] = {
        "version": RESULT_VERSION,
        "scenario": scenario.to_json(),
        "started_at": started_at,
        "duration": round(duration, 3),
        "replicas": scenario.replicas,
        "budget": budget,
        "requests": {
            "columns": list(OUTCOME_COLUMNS),
            "rows": [outcome_row(o) for o in outcomes],
        },
        "samples": sampler.samples,
        "sampler_failures": sampler.failures,
        "upstreams": {name: {**s, "price": prices[name]} for name, s in stats.items()},
        "events": sorted(events, key=lambda e: e["t"]),
    }
    finish(result, out)
    return result


def _prepare(out: Path) -> Path:
    """The run's directory, absolute (the generated config names files in it, whatever the
    working directory), without the files of an earlier run into it (logs included)."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for pattern in ("result.json", "report.md", "timeline.png", "*.yaml", "*.log"):
        for stale in out.glob(pattern):
            stale.unlink(missing_ok=True)
    return out


def _since(now: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each upstream's counters minus their values at ``before`` (numbers and count maps)."""
    out: dict[str, Any] = {}
    for name, stats in now.items():
        base = before.get(name, {})
        entry: dict[str, Any] = {}
        for key, value in stats.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                entry[key] = value - base.get(key, 0)
            elif isinstance(value, dict):
                old = base.get(key, {})
                entry[key] = {k: v - old.get(k, 0) for k, v in value.items() if v - old.get(k, 0)}
            else:
                entry[key] = value
        out[name] = entry
    return out


def _budget(config_path: Path) -> dict[str, float]:
    """The effective retry budget of the generated config (validated here: a scenario whose
    ``gateway:`` part the gateway rejects stops before anything starts)."""
    from gateway.config import load_config

    config = load_config(config_path)
    budget = config.resilience.retry_budget
    return {"ratio": budget.ratio, "min_per_second": budget.min_per_second}


async def _preflight(replicas: list[GatewayReplica], scenario: Scenario) -> None:
    """One small request per replica before t = 0: a scenario whose route cannot answer at
    all fails here with the gateway's own words, not as thousands of failed requests."""
    body = {
        "model": scenario.traffic.model,
        "messages": [{"role": "user", "content": "preflight"}],
    }
    timeout = aiohttp.ClientTimeout(total=PREFLIGHT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for replica in replicas:
            try:
                async with session.post(
                    f"{replica.url}/v1/chat/completions",
                    json=body,
                    headers=scenario.traffic.headers,
                ) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise RunError(
                            f"preflight request to replica {replica.index} failed with "
                            f"{resp.status}: {text[:500]} (log: {replica.log})"
                        )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise RunError(
                    f"preflight request to replica {replica.index} failed: {exc!r} "
                    f"(log: {replica.log})"
                ) from None


def _traffic_line(scenario: Scenario) -> str:
    t = scenario.traffic
    shape = f"{t.rate:g} req/s" if t.rate is not None else f"{t.concurrency} concurrent"
    faults = "; ".join(f"{f.label()} at {f.at:g}s" for f in scenario.faults) or "no faults"
    return f"traffic for {t.duration:g} s at {shape} ({t.stream_share:.0%} streams); {faults}"


async def _timeline(
    scenario: Scenario,
    replicas: list[GatewayReplica],
    redis: RedisProcess | None,
    policy_path: Path | None,
    clock: Callable[[], float],
    events: list[dict[str, Any]],
    progress: Progress,
) -> None:
    """Apply the run-wide faults at their times and note every fault's start and end.

    Each edge is noted when it is applied. Starting a killed replica again takes about a second,
    so it runs beside the timeline (a later edge is not held up) and notes a ``ready`` event of
    its own when the replica answers again."""
    steps: list[tuple[float, int, FaultSpec, str]] = []
    for fault in scenario.faults:
        steps.append((fault.at, 0, fault, "start"))
        if fault.end is not None:
            steps.append((fault.end, 1, fault, "end"))
    steps.sort(key=lambda s: (s[0], s[1], s[2].index))

    def note(fault: FaultSpec, edge: str, what: str) -> None:
        event = {"t": round(clock(), 3), "fault": fault.index, "edge": edge, "what": what}
        events.append(event)
        progress(f"[t={event['t']:6.2f}s] {what}")

    async def restart(fault: FaultSpec, replica: GatewayReplica) -> None:
        await replica.start()
        note(fault, "ready", f"{fault.label()}: replica {replica.index} answers again")

    restarts: list[asyncio.Task[None]] = []
    try:
        for at, _, fault, edge in steps:
            await asyncio.sleep(max(0.0, at - clock()))
            label = fault.label()
            what = f"{label} {'started' if edge == 'start' else 'ended'}"
            if fault.kind == "redis_outage":
                assert redis is not None
                await _redis_edge(redis, fault.params.get("mode") == "freeze", edge)
            elif fault.kind == "kill_replica":
                replica = replicas[int(fault.params.get("replica", 1))]
                if edge == "start":
                    await replica.kill()
                else:
                    restarts.append(asyncio.create_task(restart(fault, replica)))
                    what = f"{label} ended: replica {replica.index} starting again"
            elif fault.kind == "policy_reload":
                assert policy_path is not None
                write_yaml(policy_path, fault.params["policy"])
                what = f"{label}: policy file rewritten"
            note(fault, edge, what)
        if restarts:
            await asyncio.gather(*restarts)
    finally:
        for task in restarts:
            task.cancel()


async def _redis_edge(redis: RedisProcess, freeze: bool, edge: str) -> None:
    if edge == "start":
        if freeze:
            redis.freeze()
        else:
            await redis.kill()
    elif freeze:
        redis.thaw()
    else:
        await redis.start()
