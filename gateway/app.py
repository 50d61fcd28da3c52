"""Build a running gateway from a config file: providers, the HTTP app, the process lifecycle."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.breakers import Breakers, BreakerSettings, BreakerTransition
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.executor import Deployment, Resilience
from gateway.logs import configure, get_logger
from gateway.policy_loader import deployment_infos, load_configured_policy, load_policy
from gateway.policy_manager import PolicyManager
from gateway.providers.base import DeploymentConfig, Provider
from gateway.retrying import RetryBudget, RetrySettings
from gateway.server import Gateway, served_models
from health.monitor import HealthMonitor, status_settings
from health.probes import ProbeFn, Prober, ProbeSettings
from health.status import StatusSettings
from health.store import MemoryStore, MetricsStore, WindowSettings

EXIT_CONFIG = 2
_SESSION_KEY = web.AppKey("upstream_session", aiohttp.ClientSession)
GATEWAY_KEY = web.AppKey("gateway", Gateway)


def make_provider(deployment: DeploymentConfig, session: aiohttp.ClientSession) -> Provider:
    """The provider for one configured deployment (litellm is imported only if one needs it)."""
    if deployment.provider == "openai":
        from gateway.providers.openai import OpenAIProvider

        return OpenAIProvider(deployment, session)
    if deployment.provider == "simulated":
        from gateway.providers.simulated.provider import SimulatedProvider

        return SimulatedProvider(deployment)
    from gateway.providers.litellm import LiteLLMProvider

    return LiteLLMProvider(deployment)


def _session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector,
        read_bufsize=2**20,
        max_line_size=2**20,
        skip_auto_headers=("User-Agent",),
    )


def make_store(config: GatewayConfig) -> MetricsStore:
    """The metrics store ``health.store`` names (the Redis client is imported only if used)."""
    h = config.health
    window = WindowSettings(h.window.buckets, h.window.bucket, h.window.ewma_alpha)
    if h.store == "memory":
        return MemoryStore(window)
    from health.redis_store import RedisStore

    return RedisStore(
        h.redis.url.get_secret_value(),
        window,
        namespace=h.redis.namespace,
        flush_interval=h.redis.flush_interval,
        timeout=h.redis.timeout,
    )


def _probe_fn(provider: Provider, kind: str, timeout: float) -> ProbeFn:
    async def probe() -> float:
        return await provider.probe(kind, timeout)

    return probe


def build_monitor(config: GatewayConfig, providers: list[Provider]) -> HealthMonitor:
    """Store, probes and status rules for every configured deployment."""
    store = make_store(config)
    prober = Prober(store)
    s = config.health.status
    defaults = StatusSettings(
        min_requests=s.min_requests,
        degraded_error_rate=s.degraded_error_rate,
        unhealthy_error_rate=s.unhealthy_error_rate,
        degraded_latency=s.degraded_latency,
    )
    rules: dict[str, StatusSettings] = {}
    for provider in providers:
        name = provider.deployment.name
        kind, p = config.probe(name)
        settings = ProbeSettings(
            kind, p.interval, p.timeout, p.jitter, p.healthy_threshold, p.unhealthy_threshold
        )
        prober.add(name, settings, _probe_fn(provider, kind, p.timeout))
        rules[name] = status_settings(settings, defaults=defaults)
    return HealthMonitor(store, prober, rules)


def build_policies(config: GatewayConfig) -> PolicyManager:
    """The active policy (``policy.path``, or the config's routes) and how it reloads.

    Raises :class:`ConfigError` when the policy file is invalid at start: nothing starts
    half-configured. Later reloads keep the last good policy instead.
    """
    initial = load_configured_policy(config)
    settings = config.policy
    if settings is None:
        return PolicyManager(initial)
    infos = deployment_infos(config)
    path = settings.path
    return PolicyManager(
        initial,
        lambda: load_policy(path, infos),
        watch=[Path(path)] if settings.watch else [],
        poll_interval=settings.poll_interval,
    )


def build_resilience(config: GatewayConfig, monitor: HealthMonitor) -> Resilience:
    """Breakers (fed by probes, shown in the health view and /admin/deployments, their trips
    published to the fleet), the retry budget and the retry defaults."""
    r = config.resilience
    breakers = Breakers(BreakerSettings.from_mapping(r.breaker))
    for name in monitor.names:
        breakers.get(name)
    monitor.breaker_state = breakers.state
    monitor.extra.append(breakers.admin)
    monitor.prober.on_result = breakers.on_probe
    store = monitor.store

    def publish(t: BreakerTransition) -> None:
        if t.new == "open" and not t.remote and t.open_until is not None:
            store.publish_trip(t.name, time.time() + (t.open_until - t.at), t.reason)

    breakers.on_change.append(publish)
    breakers.on_change.append(lambda _: monitor.invalidate())
    b = r.retry_budget
    return Resilience(
        breakers=breakers,
        budget=RetryBudget(ratio=b.ratio, min_per_second=b.min_per_second, window=b.window),
        retry=RetrySettings.from_mapping(r.retry),
    )


async def _follow_trips(monitor: HealthMonitor, resilience: Resilience, interval: float) -> None:
    """Open this replica's breakers for trips other replicas published (Redis mode)."""
    assert resilience.breakers is not None
    breakers = resilience.breakers
    log = get_logger("gateway.breaker")
    applied: dict[str, tuple[float, str]] = {}  # each trip once: a later local decision stands
    while True:
        await asyncio.sleep(interval)
        try:
            now, wall = time.monotonic(), time.time()
            for name, (until, reason, replica) in monitor.store.remote_trips().items():
                if until <= wall or name not in monitor.names:
                    continue
                if applied.get(name) == (until, replica):
                    continue
                applied[name] = (until, replica)
                breaker = breakers.get(name)
                breaker.remote_open(now + (until - wall), f"{reason} (replica {replica})", now)
        except Exception:  # never let the follower die
            log.exception("breaker trip follower error")


async def build_app(
    config: GatewayConfig, policies: PolicyManager | None = None
) -> web.Application:
    """The aiohttp application for ``config``; upstream resources, health and policy tasks live
    with it."""
    policies = policies if policies is not None else build_policies(config)
    session = _session()
    providers = [make_provider(d, session) for d in config.deployments]
    monitor = build_monitor(config, providers)
    deployments = {
        p.deployment.name: Deployment(p, monitor.window(p.deployment.name)) for p in providers
    }
    resilience = build_resilience(config, monitor)
    gateway = Gateway(config, deployments, monitor, policies, resilience)
    app = gateway.app()
    app[_SESSION_KEY] = session
    app[GATEWAY_KEY] = gateway
    trips: list[asyncio.Task[None]] = []

    async def start(_: web.Application) -> None:
        await monitor.start()
        await policies.start()
        if config.health.store == "redis" and resilience.breakers is not None:
            interval = config.health.redis.flush_interval
            trips.append(asyncio.create_task(_follow_trips(monitor, resilience, interval)))

    async def close(_: web.Application) -> None:
        for task in trips:
            task.cancel()
        await asyncio.gather(*trips, return_exceptions=True)
        await policies.close()
        await monitor.close()
        for provider in providers:
            await provider.close()
        await session.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    return app


def _banner(url: str, model: str) -> str:
    return f"""gateway listening on {url}

  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  python - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="unused")
reply = client.chat.completions.create(
    model="{model}", messages=[{{"role": "user", "content": "Hello"}}]
)
print(reply.choices[0].message.content)
EOF
"""


async def _run(
    config: GatewayConfig, policies: PolicyManager, host: str, port: int, started: float
) -> None:
    app = await build_app(config, policies)
    # handler_cancellation: a caller that hangs up cancels its request, which frees the
    # deployment's concurrency slot and abandons the upstream call.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=config.server.drain_timeout,
        handler_cancellation=True,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"gateway: cannot listen on {host}:{port}: {exc.strerror}") from None
    bound: Any = runner.addresses[0]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
    # a name the active policy routes, so that the banner's example works as printed
    model = (served_models(policies.current) or sorted(config.route_table()))[0]
    print(_banner(url, model), file=sys.stderr, flush=True)
    get_logger("gateway").info(
        "started",
        url=url,
        deployments=len(config.deployments),
        ready_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, policies.trigger, "SIGHUP")
    await stop.wait()
    get_logger("gateway").info("stopping", drain_timeout_s=config.server.drain_timeout)
    await runner.cleanup()


def serve(path: str, *, host: str | None = None, port: int | None = None) -> int:
    """``gateway serve``: load and validate the config, then serve until SIGINT/SIGTERM."""
    started = time.perf_counter()
    what = "config"
    try:
        config = load_config(path)
        what = "policy"
        policies = build_policies(config)
    except ConfigError as exc:
        print(f"gateway: refusing to start: {len(exc.issues)} {what} problem(s)", file=sys.stderr)
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    configure(config.logging)
    asyncio.run(
        _run(
            config,
            policies,
            host if host is not None else config.server.host,
            port if port is not None else config.server.port,
            started,
        )
    )
    return 0
