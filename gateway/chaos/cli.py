"""``gateway chaos run`` and ``gateway chaos report``.

``run FILE... [--out DIR] [--scale X] [--quiet]``: every file is checked before anything runs;
then each scenario runs in turn into ``DIR/<scenario name>/`` (default ``DIR``:
``chaos-results``) and a line per scenario says whether its expectations held. With several
files, ``DIR/summary.md`` compares them. ``report DIR``: figures, checks and report again from
``DIR/result.json`` (e.g. after changing the report code, or to read a result from elsewhere).

Exit status: 0 every expectation held, 1 an expectation failed, 2 a file or the command line was
rejected (every problem as ``FILE:LINE: path: reason``), 3 a run could not be carried out (a
gateway that did not start, a missing redis-server; the message says which), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REJECTED = 2
EXIT_RUN = 3
EXIT_INTERRUPTED = 130
DEFAULT_OUT = "chaos-results"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_command(files: list[str], out: str | None, scale: float | None, quiet: bool) -> int:
    from gateway.chaos.fleet import RunError
    from gateway.chaos.runner import run
    from gateway.chaos.scenario import load_scenario
    from gateway.chaos.upstreams import UpstreamError
    from gateway.yamlfile import ConfigError

    scenarios = []
    rejected = False
    for file in files:
        try:
            scenarios.append(load_scenario(file, scale=scale))
        except ConfigError as exc:
            rejected = True
            _say(f"chaos: {file}: rejected, {len(exc.issues)} problem(s)")
            _say(str(exc))
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        _say(f"chaos: two scenarios share a name ({', '.join(names)}); their results would clash")
        rejected = True
    if rejected:
        return EXIT_REJECTED
    root = Path(out or DEFAULT_OUT)
    if root.exists() and not root.is_dir():
        _say(f"chaos: --out {root}: exists and is not a directory")
        return EXIT_REJECTED
    rows: list[dict[str, Any]] = []
    worst = EXIT_OK
    for scenario in scenarios:
        directory = root / scenario.name
        progress = _progress(scenario.name, quiet)
        _say(f"chaos: {scenario.name}: {scenario.file} (scale {scenario.scale:g}) -> {directory}")
        try:
            result = asyncio.run(run(scenario, directory, progress))
        except KeyboardInterrupt:
            _say("chaos: interrupted; every child process was stopped")
            return EXIT_INTERRUPTED
        except ConfigError as exc:
            _say(f"chaos: {scenario.name}: the gateway rejected the generated config:\n{exc}")
            worst = max(worst, EXIT_REJECTED)
            continue
        except (RunError, UpstreamError) as exc:
            _say(f"chaos: {scenario.name}: the run could not be carried out: {exc}")
            worst = max(worst, EXIT_RUN)
            continue
        except OSError as exc:
            _say(f"chaos: {scenario.name}: the run could not be carried out: {exc}")
            worst = max(worst, EXIT_RUN)
            continue
        except Exception as exc:  # a bug in the runner: say where the details are
            where = _write_traceback(directory)
            _say(f"chaos: {scenario.name}: the run failed ({type(exc).__name__}: {exc}); {where}")
            worst = max(worst, EXIT_RUN)
            continue
        _say(verdict_line(result, directory))
        rows.append(result)
        if not result["passed"]:
            worst = max(worst, EXIT_FAILED)
    if len(scenarios) > 1 and rows:
        summary = root / "summary.md"
        summary.write_text(summary_markdown(rows))
        _say(f"chaos: summary of {len(rows)} scenario(s): {summary}")
    return worst


def _write_traceback(directory: Path) -> str:
    """The current exception's traceback in ``directory/error.txt``; where it went, in words."""
    import traceback

    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "error.txt").write_text(traceback.format_exc())
    except OSError:
        return "no traceback could be written"
    return f"the traceback is in {directory / 'error.txt'}"


def _progress(name: str, quiet: bool) -> Callable[[str], None]:
    def say(line: str) -> None:
        if not quiet:
            _say(f"chaos: {name}: {line}")

    return say


def report_command(directory: str) -> int:
    from gateway.chaos.fleet import RunError
    from gateway.chaos.runner import finish, read_result

    path = Path(directory)
    try:
        result = read_result(path)
    except RunError as exc:
        _say(f"chaos: {exc}")
        return EXIT_REJECTED
    try:
        finish(result, path)
    except OSError as exc:
        _say(f"chaos: {path}: cannot write the report: {exc}")
        return EXIT_RUN
    except (KeyError, TypeError, ValueError) as exc:
        _say(f"chaos: {path / 'result.json'}: not a chaos result ({type(exc).__name__}: {exc})")
        return EXIT_REJECTED
    _say(verdict_line(result, path))
    return EXIT_OK if result["passed"] else EXIT_FAILED


def verdict_line(result: dict[str, Any], directory: Path) -> str:
    name = result["scenario"]["name"]
    failed = [c for c in result["checks"] if not c["passed"]]
    f = result["figures"]
    head = (
        f"{f['requests']} requests, {f['client_failures']} client-visible failure(s), "
        f"{f['truncated_successes']} truncated, amplification {_ratio(f['retry_amplification'])}"
    )
    if not failed:
        return f"chaos: {name}: PASSED ({head}); report: {directory / 'report.md'}"
    why = "; ".join(f"{c['name']}: {c['detail']}" for c in failed)
    return f"chaos: {name}: FAILED ({head}): {why}; report: {directory / 'report.md'}"


def summary_markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "# Chaos runs",
        "",
        "| scenario | verdict | requests | client failures | truncated | amplification | "
        "detect (s) | recover (s) | wasted spend |",
        "|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in results:
        f = r["figures"]
        faults = f.get("faults", [])
        detect = ", ".join(_seconds(x.get("time_to_detect")) for x in faults if x.get("target"))
        recover = ", ".join(_seconds(x.get("time_to_recover")) for x in faults if x.get("target"))
        name = r["scenario"]["name"]
        lines.append(
            f"| [{name}]({name}/report.md) | {'PASSED' if r['passed'] else 'FAILED'} | "
            f"{f['requests']} | {f['client_failures']} | {f['truncated_successes']} | "
            f"{_ratio(f['retry_amplification'])} | {detect or '-'} | {recover or '-'} | "
            f"{_share(f.get('wasted_share'))} |"
        )
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"
