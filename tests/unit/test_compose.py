"""docker-compose.yml and the Dockerfile agree with the repo, the CLI and each other.

No Docker engine runs where the tests run, so the files are checked statically: every path they
name exists (and survives .dockerignore), every ``gateway ...`` command parses with the real CLI
parser, every config file passes the real loader, listen addresses and ports line up across
services, and health checks hit routes the servers serve.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.cli import _parser
from gateway.config import GatewayConfig, OpenAIDeployment, load_config
from gateway.providers.simulated.server import load_settings_file

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
GATEWAY_SERVICE = "gateway"
ANY_ADDRESS = {"0.0.0.0", "::"}
# Sources that serve each command's routes; a health check path must be registered in one.
ROUTE_SOURCES = {
    "serve": REPO / "gateway" / "server.py",
    "simulate": REPO / "gateway" / "providers" / "simulated" / "server.py",
}


# --- parsing ---------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile that these checks need."""

    base: str = ""
    workdir: str = "/"
    user: str = "root"
    copies: list[tuple[str, str]] = field(default_factory=list)  # (repo source, image target)
    runs: list[str] = field(default_factory=list)
    exposed: list[int] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _parse_dockerfile(text: str) -> Dockerfile:
    df = Dockerfile()
    for word, args in _instructions(text):
        if word == "FROM":
            df.base = args.split()[0]
        elif word == "WORKDIR":
            df.workdir = str(PurePosixPath(df.workdir) / args)
        elif word == "USER":
            df.user = args
        elif word == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            *sources, target = parts
            dest = PurePosixPath(df.workdir) / target
            for source in sources:
                df.copies.append((source, str(dest)))
        elif word == "RUN":
            df.runs.append(args)
        elif word == "EXPOSE":
            df.exposed += [int(p.split("/")[0]) for p in args.split()]
        elif word == "HEALTHCHECK":
            _, _, command = args.partition(" CMD ")
            df.healthcheck = _exec_form(command.strip())
        elif word == "CMD":
            df.cmd = _exec_form(args)
    return df


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parents, decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negated
    return excluded


@dataclass(frozen=True)
class Command:
    """A `gateway ...` command a container runs, parsed by the real CLI parser."""

    service: str
    args: argparse.Namespace


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, Any]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _dockerfile() -> Dockerfile:
    return _parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def _argv(command: Any) -> list[str]:
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list) and all(isinstance(c, str) for c in command), command
    return command


def _parse_gateway_command(service: str, argv: list[str]) -> Command:
    assert argv[0] == "gateway", f"{service}: runs {argv[0]!r}, expected the gateway command"
    try:
        args = _parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse reports to stderr and exits 2
        pytest.fail(f"{service}: `{shlex.join(argv)}` is rejected by the CLI parser ({exc})")
    return Command(service, args)


def _commands() -> dict[str, Command]:
    """Each service built from this repo -> the gateway command its container runs."""
    default = _dockerfile().cmd
    out = {}
    for name, spec in _services().items():
        if "build" in spec:
            argv = _argv(spec.get("command", default))
            out[name] = _parse_gateway_command(name, argv)
    return out


def _repo_path(container_path: str) -> Path:
    """The repo file that the Dockerfile copies to ``container_path`` in the image."""
    best: tuple[int, Path] | None = None
    for source, dest in _dockerfile().copies:
        dest_path = PurePosixPath(dest)
        target = PurePosixPath(container_path)
        if target == dest_path or dest_path in target.parents:
            rel = target.relative_to(dest_path)
            depth = len(dest_path.parts)
            if best is None or depth > best[0]:
                best = (depth, REPO / source / rel)
    assert best is not None, f"{container_path} is not copied into the image by the Dockerfile"
    return best[1]


def _gateway_config() -> GatewayConfig:
    command = _commands()[GATEWAY_SERVICE]
    return load_config(_repo_path(command.args.config))


def _published_container_ports(spec: dict[str, Any]) -> list[int]:
    ports = []
    for entry in spec.get("ports", []):
        if isinstance(entry, dict):
            ports.append(int(entry["target"]))
        else:
            ports.append(int(str(entry).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def _depends_on(spec: dict[str, Any]) -> set[str]:
    deps = spec.get("depends_on", [])
    return set(deps) if isinstance(deps, list) else set(deps.keys())


def _has_healthcheck(spec: dict[str, Any]) -> bool:
    """Whether the service's container reports health (its own check or the image's)."""
    check = spec.get("healthcheck")
    if check is not None:
        return not check.get("disable", False) and _argv(check.get("test", ["NONE"])) != ["NONE"]
    return "build" in spec and bool(_dockerfile().healthcheck)


def _healthcheck_url(argv: list[str]) -> tuple[int, str]:
    text = " ".join(argv)
    match = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[^'\" ]*)", text)
    assert match is not None, f"health check does not hit a local URL: {text}"
    return int(match[1]), match[2]


def _listen(command: Command) -> tuple[str, int]:
    """Address and port the command's server binds inside the container."""
    if command.args.command == "serve":
        server = load_config(_repo_path(command.args.config)).server
        return command.args.host or server.host, command.args.port or server.port
    return command.args.host, command.args.port


# --- the files exist and parse -----------------------------------------------------------------


def test_compose_builds_from_a_context_with_a_dockerfile() -> None:
    """Every `build:` context exists and holds a Dockerfile."""
    built = [spec["build"] for spec in _services().values() if "build" in spec]
    assert built, "no service is built from this repo"
    for context in built:
        path = REPO / (context if isinstance(context, str) else context["context"])
        assert path.is_dir() and (path / "Dockerfile").is_file(), context


def test_every_path_the_dockerfile_copies_exists_and_is_not_dockerignored() -> None:
    """COPY sources exist in the repo and .dockerignore lets them into the build context."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    copies = _dockerfile().copies
    assert copies
    for source, _ in copies:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repo"
        assert not _dockerignore_excludes(patterns, source), f".dockerignore drops {source}"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    """The virtualenv, git history and tests are not sent to the Docker build."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for path in (".venv/bin/python", ".git/config", "tests/conftest.py", "gateway/__pycache__/x"):
        assert _dockerignore_excludes(patterns, path), path


def test_image_copies_every_package_the_project_installs() -> None:
    """The non-editable install in the image needs every package pyproject.toml includes."""
    copied = {source.strip("/") for source, _ in _dockerfile().copies}
    for package in ("gateway", "policies", "health"):
        assert package in copied, f"the image does not copy {package}/"
    assert "pyproject.toml" in copied


def test_image_installs_the_hashed_runtime_lock_as_a_non_root_user() -> None:
    """Dependencies come from the runtime lock with --require-hashes; the server is not root."""
    df = _dockerfile()
    assert df.base == "python:3.11-slim"
    assert any(
        "--require-hashes" in run and "requirements/runtime.lock" in run for run in df.runs
    ), df.runs
    assert ("requirements/runtime.lock", "/app/requirements/runtime.lock") in df.copies
    assert df.user not in {"root", "0", ""}


def test_every_gateway_command_parses_with_the_real_cli() -> None:
    """The image's CMD and each service's command are accepted by `gateway`'s own parser."""
    commands = _commands()
    assert commands[GATEWAY_SERVICE].args.command == "serve"
    simulators = [c for c in commands.values() if c.args.command == "simulate"]
    assert len(simulators) >= 2, commands


def test_every_config_file_named_loads() -> None:
    """Config and fault files named on a command line are in the image and pass their loaders."""
    checked = 0
    for command in _commands().values():
        if command.args.command == "serve":
            assert load_config(_repo_path(command.args.config)).deployments
            checked += 1
        elif command.args.faults is not None:
            assert load_settings_file(str(_repo_path(command.args.faults))) is not None
            checked += 1
    assert checked >= 1


# --- ports and addresses line up --------------------------------------------------------------


def test_servers_listen_on_all_interfaces_inside_their_containers() -> None:
    """A server bound to 127.0.0.1 in a container is unreachable from the other containers."""
    for command in _commands().values():
        host, _ = _listen(command)
        assert host in ANY_ADDRESS, f"{command.service} binds {host}"


def test_gateway_port_is_the_one_exposed_and_published() -> None:
    """The port the gateway binds is EXPOSEd in the image and published by compose."""
    _, port = _listen(_commands()[GATEWAY_SERVICE])
    assert port in _dockerfile().exposed
    spec = _services()[GATEWAY_SERVICE]
    assert _published_container_ports(spec) == [port]
    assert all(str(p).startswith("127.0.0.1:") for p in spec["ports"]), "publish on loopback only"


def test_gateway_deployments_point_at_the_simulator_services_and_ports() -> None:
    """Every upstream base_url names a compose service, on the port that service listens on."""
    commands = _commands()
    config = _gateway_config()
    upstreams = [d for d in config.deployments if isinstance(d, OpenAIDeployment)]
    assert len(upstreams) >= 2
    gateway_deps = _depends_on(_services()[GATEWAY_SERVICE])
    for deployment in upstreams:
        url = urlsplit(deployment.base_url)
        host = url.hostname
        assert host in commands, f"{deployment.name}: {host} is not a service built here"
        sim = commands[host]
        assert sim.args.command == "simulate"
        assert url.port == _listen(sim)[1], f"{deployment.name}: {url.port} != {host}'s port"
        assert url.path.rstrip("/") == "/v1"
        assert deployment.model == sim.args.model, f"{deployment.name} asks for another model"
        assert host in gateway_deps, f"gateway does not depend on {host}"


def test_compose_route_spreads_one_alias_over_both_simulators() -> None:
    """Clients ask for one model name; the gateway can send it to either simulator."""
    table = _gateway_config().route_table()
    assert set(table["gpt-4o-mini"]) == {"sim-a", "sim-b"}


def test_redis_keeps_nothing_on_disk_and_the_gateway_waits_for_it() -> None:
    """Redis is a cache here: no RDB snapshots, no AOF; the gateway starts after it."""
    services = _services()
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    argv = _argv(redis["command"])
    assert argv[argv.index("--save") + 1] == ""
    assert argv[argv.index("--appendonly") + 1] == "no"
    assert "redis" in _depends_on(services[GATEWAY_SERVICE])


# --- health checks ----------------------------------------------------------------------------


def test_gateway_waits_until_every_dependency_with_a_health_check_is_healthy() -> None:
    """The gateway starts once Redis and the simulators answer their checks, not merely started."""
    services = _services()
    depends_on = services[GATEWAY_SERVICE]["depends_on"]
    assert isinstance(depends_on, dict), "use the long form of depends_on to state conditions"
    checked = set()
    for name, spec in depends_on.items():
        if _has_healthcheck(services[name]):
            assert spec.get("condition") == "service_healthy", f"gateway: {name} {spec}"
            checked.add(name)
    simulators = {c.service for c in _commands().values() if c.args.command == "simulate"}
    assert checked >= {"redis", *simulators}


def test_image_healthcheck_hits_healthz_on_the_gateway_port() -> None:
    """The image's HEALTHCHECK asks the gateway's own port for /healthz, which it serves."""
    port, path = _healthcheck_url(_dockerfile().healthcheck)
    assert (port, path) == (_listen(_commands()[GATEWAY_SERVICE])[1], "/healthz")
    assert f'"{path}"' in ROUTE_SOURCES["serve"].read_text(encoding="utf-8")


def test_service_healthchecks_hit_a_served_path_on_their_own_port() -> None:
    """A service that overrides the health check asks its own port for a route it serves."""
    commands = _commands()
    overridden = 0
    for name, spec in _services().items():
        if name not in commands or "healthcheck" not in spec:
            continue
        port, path = _healthcheck_url(_argv(spec["healthcheck"]["test"]))
        command = commands[name]
        assert port == _listen(command)[1], f"{name} checks port {port}"
        source = ROUTE_SOURCES[command.args.command].read_text(encoding="utf-8")
        assert f'"{path}"' in source, f"{name} checks {path}, which is not a route"
        overridden += 1
    # Simulators listen on another port than the image's HEALTHCHECK, so they must override it.
    simulators = sum(c.args.command == "simulate" for c in commands.values())
    assert overridden >= simulators
