"""The report of a chaos run: ``report.md`` for reading, ``timeline.png`` for seeing.

``write_report(result, out)`` renders a result.json document (with its figures and checks, or
computes them when absent). The Markdown says the verdict first, then the checks, the headline
figures, latency per phase and the fault timeline as the runner applied it. The picture stacks
four panels on one time axis — traffic share per deployment, client error rate, breaker state
per deployment, latency p50/p95/p99 — with every fault window shaded and labelled. The share is
drawn over a centred 1 s window, each value at the start of its bin, so that it lines up in time
with the dotted "moved" / "back" markers (at ``at + time_to_detect`` and ``end + time_to_recover``):
a switch at a bin edge crosses half way exactly at its marker.

matplotlib is an optional extra (``resilient-llm-gateway[chaos]``), imported only here and only
when drawing, through the object API on the Agg canvas (no pyplot: no global figure state, no
GUI backend). Without it the report is written without the picture and says how to install it.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from gateway.chaos import figures as figs

__all__ = ["INSTALL_HINT", "write_report"]

INSTALL_HINT = "pip install 'resilient-llm-gateway[chaos]'"
FIGSIZE = (14.0, 10.0)  # inches at DPI: a 1400 x 1000 px picture
DPI = 100

STATE_COLOURS = {
    "closed": "#4caf50",
    "half-open": "#ffb300",
    "open": "#e53935",
    "forced-open": "#8e0000",
    "drained": "#9e9e9e",
    "forced-closed": "#1e88e5",
}
UNKNOWN_COLOUR = "#eeeeee"
DEPLOYMENT_COLOURS = ("#90caf9", "#ffcc80", "#a5d6a7", "#ce93d8", "#80deea", "#bcaaa4")
FAULT_COLOURS = ("#4a148c", "#b71c1c", "#004d40", "#e65100", "#263238", "#1a237e")


def write_report(result: Mapping[str, Any], out: Path) -> list[Path]:
    """Write ``out/report.md`` and, with matplotlib, ``out/timeline.png``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    figures = result.get("figures") or figs.compute(result)
    checks = result.get("checks")
    if checks is None:
        checks = figs.check(figures, result.get("scenario") or {})
    written: list[Path] = []
    matplotlib: ModuleType | None
    try:
        matplotlib = _load_matplotlib()
    except ImportError:
        matplotlib = None
    if matplotlib is not None:
        png = out / "timeline.png"
        _draw(result, figures, checks, png)
        written.append(png)
    md = out / "report.md"
    md.write_text(_markdown(result, figures, checks, image=matplotlib is not None), "utf-8")
    return [md, *written]


def _load_matplotlib() -> ModuleType:
    """Import matplotlib for drawing off-screen; raises ImportError when it is not installed.

    Without a writable config directory matplotlib would make a throw-away one (and rebuild its
    font cache) on every run; point it at a stable one under the temp dir instead.
    """
    if "MPLCONFIGDIR" not in os.environ and not _writable_config_dir():
        path = Path(tempfile.gettempdir()) / f"gateway-chaos-matplotlib-{os.getuid()}"
        path.mkdir(mode=0o700, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(path)
    import matplotlib

    return matplotlib


def _writable_config_dir() -> bool:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    target = base / "matplotlib"
    probe = target if target.exists() else base
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


# --- Markdown -----------------------------------------------------------------------------------


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if abs(x) < 1 else f"{x:.2f} s"


def _value(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit == "s":
        return _secs(x)
    if unit == "share":
        return f"{x:.1%}"
    if unit == "ratio":
        return f"{x:.3f}"
    return f"{x:g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str) -> list[str]:
    """A Markdown table; ``align`` has one letter per column: ``l`` (left) or ``r`` (right)."""
    rule = "|".join("--:" if a == "r" else "---" for a in align)
    lines = ["| " + " | ".join(header) + " |", f"|{rule}|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _markdown(
    result: Mapping[str, Any],
    figures: Mapping[str, Any],
    checks: Sequence[Mapping[str, Any]],
    *,
    image: bool,
) -> str:
    scenario = result.get("scenario") or {}
    failed = [c for c in checks if not c["passed"]]
    passed = result.get("passed", not failed)
    lines = [f"# Chaos run: {scenario.get('name', 'unnamed')}", ""]
    if scenario.get("description"):
        lines += [str(scenario["description"]), ""]
    verdict = "PASSED" if passed else "FAILED"
    held = f"{len(checks) - len(failed)} of {len(checks)} checks held"
    lines += [f"**Verdict: {verdict}** ({held})", ""]
    run = [
        f"{figures['duration']:g} s of traffic",
        f"{figures['replicas']} gateway replica(s)",
        f"deployments: {', '.join(figures['deployments'])}",
    ]
    if result.get("started_at"):
        run.insert(0, f"started {result['started_at']}")
    if scenario.get("scale") not in (None, 1, 1.0):
        run.append(f"time scale {scenario['scale']:g}")
    lines += ["Run: " + "; ".join(run) + ".", ""]

    lines += ["## Checks", ""]
    rows = [
        (
            c["name"],
            _value(c["limit"], c.get("unit", "")),
            _value(c["value"], c.get("unit", "")),
            "pass" if c["passed"] else "**FAIL**",
            c["detail"],
        )
        for c in checks
    ]
    lines += [*_table(("check", "limit", "value", "result", "detail"), rows, "lrrll")]
    lines += ["", *_headline(figures), "", *_faults_section(figures), ""]
    lines += ["## Latency by phase", ""]
    phase_rows = [
        (
            p["name"],
            f"{p['start']:g}-{p['end']:g} s",
            p["requests"],
            p["failures"],
            _secs(p["p50"]),
            _secs(p["p95"]),
            _secs(p["p99"]),
        )
        for p in figures["phases"]
    ]
    header = ("phase", "sent in", "requests", "failures", "p50", "p95", "p99")
    lines += [*_table(header, phase_rows, "llrrrrr"), ""]
    lines += ["## Fault timeline", ""]
    events = result.get("events") or []
    if events:
        event_rows = [(f"{e['t']:.2f} s", e.get("what", "")) for e in events]
        lines += _table(("t", "what the runner did"), event_rows, "rl")
    else:
        lines.append("No fault was applied.")
    lines += ["", "## Timeline", ""]
    if image:
        lines.append("![timeline](timeline.png)")
    else:
        lines.append(f"No picture: matplotlib is not installed (`{INSTALL_HINT}`).")
    return "\n".join(lines) + "\n"


def _headline(figures: Mapping[str, Any]) -> list[str]:
    amp, bound = figures["retry_amplification"], figures["amplification_bound"]
    wasted_share = figures["wasted_share"]
    lines = [
        "## Figures",
        "",
        f"- Requests: {figures['requests']} sent, {figures['succeeded']} succeeded, "
        f"{figures['client_failures']} client-visible failure(s), "
        f"{figures['truncated_successes']} truncated success(es).",
    ]
    by_reason = figures["failures_by_reason"]
    if by_reason:
        reasons = ", ".join(f"`{r}` {n}" for r, n in by_reason.items())
        lines.append(f"- Failures by reason: {reasons}.")
    lines.append(
        f"- Retry amplification: {_value(amp, 'ratio')} upstream attempts per request "
        f"({figures['upstream_attempts']} in all); the retry budget's allowance is "
        f"{_value(bound, 'ratio')}."
    )
    share = "-" if wasted_share is None else f"{wasted_share:.1%}"
    lines.append(
        f"- Upstream spend: ${figures['total_spend_usd']:.6f}; wasted (billed, never completed): "
        f"${figures['wasted_spend_usd']:.6f} = {share}, {figures['wasted_tokens']} tokens."
    )
    return lines


def _faults_section(figures: Mapping[str, Any]) -> list[str]:
    faults = figures.get("faults") or []
    if not faults:
        return ["No faults in this scenario."]
    rows = []
    for f in faults:
        window = f"{f['at']:g} s" if f["end"] is None else f"{f['at']:g}-{f['end']:g} s"
        if f["target"] is None:
            rows.append((f["index"] + 1, f["label"], window, "-", "-", "-"))
            continue
        baseline = "-" if f["baseline"] is None else f"{f['baseline']:.0%} ({f['baseline_from']})"
        detect = _secs(f["time_to_detect"]) if f["time_to_detect"] is not None else "never"
        if f["time_to_detect"] is None:
            recover = "no shift to recover from"
        elif f["time_to_recover"] is None:
            recover = "not restored"
        else:
            recover = _secs(f["time_to_recover"])
        rows.append((f["index"] + 1, f["label"], window, baseline, detect, recover))
    header = ("#", "fault", "window", "target's baseline share", "traffic moved off", "came back")
    return ["### Faults", "", *_table(header, rows, "rllrrr")]


# --- the picture --------------------------------------------------------------------------------


def _edges(values: Sequence[float | None], scale: float = 1.0) -> list[float]:
    """Bin values for a step plot over bin edges [0, *bin ends] (a gap where None)."""
    scaled = [math.nan if v is None else v * scale for v in values]
    return (scaled[:1] or [math.nan]) + scaled


def _draw(
    result: Mapping[str, Any],
    figures: Mapping[str, Any],
    checks: Sequence[Mapping[str, Any]],
    path: Path,
) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    series = figures["series"]
    deployments: list[str] = list(figures["deployments"])
    t = [0.0, *series["t"]]  # bin edges: the share of a bin is drawn over its whole width
    duration = float(figures["duration"]) or 1.0
    scenario = result.get("scenario") or {}
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    share_ax, error_ax, breaker_ax, latency_ax = fig.subplots(
        4, 1, sharex=True, height_ratios=(3, 1.6, 1.1 + 0.35 * len(deployments), 2.4)
    )
    failed = sum(not c["passed"] for c in checks)
    verdict = "PASSED" if result.get("passed", not failed) else "FAILED"
    fig.suptitle(
        f"{scenario.get('name', 'chaos run')}: {verdict}"
        f" ({len(checks) - failed} of {len(checks)} checks held)",
        fontsize=15,
        fontweight="bold",
        color="#2e7d32" if verdict == "PASSED" else "#c62828",
    )

    # 1. Traffic share, stacked: where the gateway sent its upstream attempts, each value at the
    #    centre of its window (the start of its bin) so that it lines up with the shift markers.
    share_t = list(series.get("share_t") or [k * figs.BIN for k in range(len(series["t"]))])
    stacks = [[0.0 if v is None else v for v in series["share"][d]] for d in deployments]
    if share_t and share_t[-1] < duration:  # hold the last value to the run's end
        share_t.append(duration)
        stacks = [[*stack, stack[-1]] for stack in stacks]
    if share_t and deployments:
        colours = [DEPLOYMENT_COLOURS[i % len(DEPLOYMENT_COLOURS)] for i in range(len(stacks))]
        share_ax.stackplot(share_t, stacks, labels=deployments, colors=colours)
        share_ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1), title="deployment")
    share_ax.set_ylim(0, 1)
    share_ax.set_ylabel("share of attempts\n(centred 1 s window)")
    share_ax.set_title("Traffic share per deployment", loc="left", fontsize=11)
    share_ax.yaxis.set_major_formatter(_percent())

    # 2. Client error rate by send time.
    error_ax.step(t, _edges(series["client_error_rate"], 100), where="pre", color="#c62828")
    error_ax.set_ylim(0, 105)
    error_ax.set_ylabel("failed\n(% of sent)")
    error_ax.set_title("Client-visible failures", loc="left", fontsize=11)

    # 3. Breaker state per deployment (replica 0).
    for row, dep in enumerate(deployments):
        for start, width, state in _runs(series["breaker"][dep]):
            colour = STATE_COLOURS.get(state or "", UNKNOWN_COLOUR)
            breaker_ax.broken_barh(
                [(start, width)], (row - 0.35, 0.7), facecolors=colour, edgecolor="none"
            )
    breaker_ax.set_yticks(range(len(deployments)), deployments)
    breaker_ax.set_ylim(max(len(deployments), 1) - 0.5, -0.5)
    breaker_ax.set_title("Breaker state (replica 0)", loc="left", fontsize=11)
    seen = {s for d in deployments for s in series["breaker"][d]}
    states = [s for s in STATE_COLOURS if s in seen] or ["closed", "half-open", "open"]
    handles = [Patch(facecolor=STATE_COLOURS[s], label=s) for s in states]
    if None in seen:
        handles.append(Patch(facecolor=UNKNOWN_COLOUR, label="no sample"))
    breaker_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1), title="state")

    # 4. Latency of ok requests by send time.
    lat_t = [0.0, *series["latency_t"]]
    for key, colour in (("p50", "#1565c0"), ("p95", "#ef6c00"), ("p99", "#c62828")):
        latency_ax.step(lat_t, _edges(series[key]), where="pre", color=colour, label=key)
    max_p99 = (scenario.get("expect") or {}).get("max_p99")
    if isinstance(max_p99, int | float):
        latency_ax.axhline(max_p99, color="#c62828", linestyle=":", label="max p99")
    drawn = [v for key in ("p50", "p95", "p99") for v in series[key] if v is not None]
    if isinstance(max_p99, int | float):
        drawn.append(max_p99)
    latency_ax.set_ylim(0, 1.3 * max(drawn, default=1.0) or 1.0)  # head room for fault labels
    latency_ax.set_ylabel("seconds until\nthe answer began")
    latency_ax.set_title("Latency of successful requests (1 s bins)", loc="left", fontsize=11)
    latency_ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1), title="latency")
    latency_ax.set_xlabel("seconds since traffic start (by send time)")
    latency_ax.set_xlim(0, duration)

    _mark_shifts(share_ax, figures.get("faults") or [])
    axes = (share_ax, error_ax, breaker_ax, latency_ax)
    for ax in axes:
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    _shade_faults(axes, figures.get("faults") or [])
    fig.savefig(path, format="png", dpi=DPI)


def _runs(states: Sequence[str | None]) -> list[tuple[float, float, str | None]]:
    """Contiguous bins of one state as (start, width, state)."""
    runs: list[tuple[float, float, str | None]] = []
    start = 0
    for k in range(1, len(states) + 1):
        if k == len(states) or states[k] != states[start]:
            runs.append((start * figs.BIN, (k - start) * figs.BIN, states[start]))
            start = k
    return runs


def _shade_faults(axes: Sequence[Any], faults: Sequence[Mapping[str, Any]]) -> None:
    from matplotlib.colors import to_rgba

    for i, f in enumerate(faults):
        colour = FAULT_COLOURS[i % len(FAULT_COLOURS)]
        label = f"#{f['index'] + 1} {f['label']}"
        for ax in axes:
            if f["end"] is None:
                ax.axvline(f["at"], color=colour, linestyle="--", linewidth=1.5)
            else:
                ax.axvspan(
                    f["at"],
                    f["end"],
                    facecolor=to_rgba(colour, 0.08),
                    edgecolor=to_rgba(colour, 0.25),
                    hatch="//",
                    linewidth=0,
                )
                ax.axvline(f["at"], color=colour, linewidth=0.8, alpha=0.7)
                ax.axvline(f["end"], color=colour, linewidth=0.8, alpha=0.7)
            ax.text(
                f["at"],
                1.0 - 0.12 * (i % 3),
                f" {label}",
                transform=ax.get_xaxis_transform(),
                va="top",
                ha="left",
                fontsize=8,
                color=colour,
                fontweight="bold",
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1},
                clip_on=True,
            )


def _mark_shifts(ax: Any, faults: Sequence[Mapping[str, Any]]) -> None:
    """Mark on the share panel when traffic moved off each target and when it came back."""
    for f in faults:
        marks = []
        if f.get("time_to_detect") is not None:
            marks.append((f["at"] + f["time_to_detect"], f"moved +{_secs(f['time_to_detect'])}"))
        if f.get("time_to_recover") is not None:
            marks.append((f["end"] + f["time_to_recover"], f"back +{_secs(f['time_to_recover'])}"))
        for x, text in marks:
            ax.axvline(x, color="#212121", linestyle=":", linewidth=1.2)
            ax.annotate(
                text,
                (x, 0.0),
                xycoords=ax.get_xaxis_transform(),
                xytext=(3, 4),
                textcoords="offset points",
                fontsize=8,
                color="#212121",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
            )


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0)
