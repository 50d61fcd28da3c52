"""The ``gateway`` command line.

::

    gateway serve --config FILE [--host H] [--port P]    serve the OpenAI-compatible API
    gateway config check FILE                            validate a config file, serve nothing
    gateway simulate [--host H] [--port P] [--faults FILE] [--model NAME]
                                                         a standalone simulated OpenAI upstream

Exit status: 0 on success, 2 for a bad command line or a rejected config file.
"""

from __future__ import annotations

import argparse
import sys

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

    simulate = sub.add_parser(
        "simulate", help="run a standalone simulated OpenAI-compatible upstream"
    )
    simulate.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    simulate.add_argument("--port", type=int, default=9000, help="port to bind (default 9000)")
    simulate.add_argument("--faults", metavar="FILE", help="YAML behaviour and fault schedule")
    simulate.add_argument("--model", default="sim-model", help="model name it reports")
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
            print(f"config check failed: {len(exc.issues)} problem(s)", file=sys.stderr)
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
        names = ", ".join(sorted(config.route_table()))
        print(f"{args.file}: OK ({len(config.deployments)} deployments; models: {names})")
        return 0
    if args.command == "simulate":
        from gateway.providers.simulated.server import run_standalone

        return run_standalone(host=args.host, port=args.port, faults=args.faults, model=args.model)
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects unknown commands
