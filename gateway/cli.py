"""The ``gateway`` command line.

::

    gateway serve --config FILE [--host H] [--port P]    serve the OpenAI-compatible API
    gateway config check FILE                            validate a config file, serve nothing
    gateway policy check FILE_OR_DIR [--config FILE]     validate a policy (against a config's
                                                         deployments when one is given)
    gateway simulate [--host H] [--port P] [--faults FILE] [--model NAME]
                                                         a standalone simulated OpenAI upstream
    gateway chaos run FILE... [--out DIR] [--scale X] [--quiet]
                                                         run chaos scenarios against the gateway
    gateway chaos report DIR                             rebuild a chaos run's report

Exit status: 0 on success, 2 for a bad command line or a rejected config or policy file
(``gateway chaos`` adds 1 for a failed expectation and 3 for a run that could not be carried out;
see :mod:`gateway.chaos.cli`).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.yamlfile import ConfigError

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="Resilient OpenAI-compatible LLM gateway (sidecar)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the OpenAI-compatible API")
    serve.add_argument("--config", required=True, metavar="FILE", help="gateway config (YAML)")
    serve.add_argument("--host", help="address to bind (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to bind (overrides server.port)")

    config = sub.add_parser("config", help="work with config files")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config file without serving")
    check.add_argument("file", metavar="FILE")

    policy = sub.add_parser("policy", help="work with policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    policy_check = policy_sub.add_parser(
        "check", help="validate a policy file or directory without serving"
    )
    policy_check.add_argument("path", metavar="FILE_OR_DIR")
    policy_check.add_argument(
        "--config",
        metavar="FILE",
        help="gateway config whose deployments the policy must name (without it, deployment "
        "names and tag selectors are not checked)",
    )

    simulate = sub.add_parser(
        "simulate", help="run a standalone simulated OpenAI-compatible upstream"
    )
    simulate.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    simulate.add_argument("--port", type=int, default=9000, help="port to bind (default 9000)")
    simulate.add_argument("--faults", metavar="FILE", help="YAML behaviour and fault schedule")
    simulate.add_argument("--model", default="sim-model", help="model name it reports")

    chaos = sub.add_parser("chaos", help="run fault-injection scenarios and report on them")
    chaos_sub = chaos.add_subparsers(dest="chaos_command", required=True, metavar="ACTION")
    chaos_run = chaos_sub.add_parser(
        "run",
        help="run scenarios (configs/chaos/*.yaml); exit 1 when an expectation fails",
    )
    chaos_run.add_argument("files", nargs="+", metavar="FILE", help="scenario file(s) (YAML)")
    chaos_run.add_argument(
        "--out",
        metavar="DIR",
        help="results go to DIR/<scenario name>/ (default: chaos-results)",
    )
    chaos_run.add_argument(
        "--scale",
        type=float,
        metavar="X",
        help="multiply the traffic duration and every fault time by X (0 < X <= 10); "
        "e.g. 0.3 for a quick run",
    )
    chaos_run.add_argument("--quiet", action="store_true", help="only the verdict lines")
    chaos_report = chaos_sub.add_parser(
        "report", help="recompute figures and rewrite report.md and timeline.png from result.json"
    )
    chaos_report.add_argument("directory", metavar="DIR", help="a directory a chaos run wrote")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from gateway.app import serve

        return serve(args.config, host=args.host, port=args.port)
    if args.command == "config":
        from gateway.config import ConfigError, load_config

        try:
            config = load_config(args.file)
        except ConfigError as exc:
            return _rejected("config", exc)
        names = ", ".join(sorted(config.route_table()))
        print(f"{args.file}: OK ({len(config.deployments)} deployments; models: {names})")
        return 0
    if args.command == "policy":
        return _policy_check(args.path, args.config)
    if args.command == "simulate":
        from gateway.providers.simulated.server import run_standalone

        return run_standalone(host=args.host, port=args.port, faults=args.faults, model=args.model)
    if args.command == "chaos":
        from gateway.chaos.cli import report_command, run_command

        if args.chaos_command == "run":
            return run_command(args.files, args.out, args.scale, args.quiet)
        return report_command(args.directory)
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects unknown commands


def _rejected(what: str, exc: ConfigError) -> int:
    """Print every issue of a rejected file to stderr; the exit status for it."""
    print(f"{what} check failed: {len(exc.issues)} problem(s)", file=sys.stderr)
    print(exc, file=sys.stderr)
    return EXIT_CONFIG


def _policy_check(path: str, config_file: str | None) -> int:
    """``gateway policy check``: the documents, and with a config their deployments too."""
    from gateway.config import ConfigError, load_config
    from gateway.policy_loader import deployment_infos, read_policy
    from policies.compile import compile_policy

    infos = None
    if config_file is not None:
        try:
            infos = deployment_infos(load_config(config_file))
        except ConfigError as exc:
            return _rejected("config", exc)
    try:
        source = read_policy(path, infos)
    except ConfigError as exc:
        return _rejected("policy", exc)
    if infos is not None:  # compiles whenever it checks clean; a failure here is a bug to see
        compile_policy(source.documents, infos, time.time(), source.version)
    routes = [r.name for _, doc in source.documents for r in doc.routes]
    default = next((d.default_route for _, d in source.documents if d.default_route), None)
    count = f"{len(routes)} route{'' if len(routes) == 1 else 's'}"
    print(
        f"{path}: OK ({count}: {', '.join(routes)}; default: {default or 'none'}; "
        f"version: {source.version})"
    )
    if infos is None:
        print(
            f"{path}: deployment names and tag selectors were not checked; pass --config with "
            "the gateway config to check them too",
            file=sys.stderr,
        )
    return 0
