"""The chaos report: report.md states the verdict, checks and figures; timeline.png is a picture.

Rendered from a small synthetic result into tmp_path. matplotlib's absence is simulated by making
the report's lazy import raise ImportError.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.chaos import figures, report

COLUMNS = ["t", "latency", "duration", "stream", "status", "ok", "reason", "truncated"]
COLUMNS += ["deployment", "attempts", "replica", "prompt_tokens", "completion_tokens"]


def synthetic_result(*, failing: bool = False, with_figures: bool = True) -> dict[str, Any]:
    """A 20 s run: primary refuses connections over [5, 10) s; its traffic (3 of 5 attempts per
    bin) is on fallback over [5.25, 10.75) s, so it moved 250 ms after the fault began and came
    back 750 ms after it ended."""
    faults = [
        {
            "index": 0,
            "kind": "outage",
            "at": 5.0,
            "for": 5.0,
            "target": "primary",
            "params": {},
            "detect_within": 2.0,
            "recover_within": 3.0,
            "label": "outage of primary",
        },
        {
            "index": 1,
            "kind": "policy_reload",
            "at": 15.0,
            "for": None,
            "target": None,
            "params": {},
            "detect_within": None,
            "recover_within": None,
            "label": "policy reload",
        },
    ]
    scenario = {
        "name": "primary-outage",
        "description": "The primary refuses connections; traffic must move to the fallback.",
        "deployments": [{"name": "primary"}, {"name": "fallback"}],
        "traffic": {"duration": 20.0},
        "faults": faults,
        "expect": {
            "max_client_failures": 0,
            "allowed_failure_reasons": [],
            "max_retry_amplification": "budget",
            "max_p99": 1.0,
            "max_wasted_share": 0.5,
        },
    }
    rows = []
    for i in range(400):  # 20 requests/s
        t = i / 20
        slow = failing and 5.0 <= t < 10.0
        rows.append([t, 1.5 if slow else 0.1 + (i % 10) / 100, 0.3, False, 200, True, None, False])
    rows.append([6.0, None, 0.1, False, 502, False, "http_502:bad|gateway", False])
    samples = []
    totals = {"primary": 0, "fallback": 0}
    states = {"primary": "closed", "fallback": "closed"}
    for k in range(81):
        t = k * 0.25
        moved = 5.5 <= t < 11.0
        if k:
            totals["primary"] += 0 if moved else 3
            totals["fallback"] += 5 if moved else 2
        states["primary"] = "open" if moved else "closed"
        samples.append(
            {
                "t": t,
                "replica": 0,
                "attempts": {d: {"success": n, "error": 0} for d, n in totals.items()},
                "breaker": dict(states),
                "status": {},
            }
        )
    out: dict[str, Any] = {
        "version": 1,
        "scenario": scenario,
        "started_at": "2026-11-27T22:10:00Z",
        "duration": 20.0,
        "replicas": 1,
        "budget": {"ratio": 0.2, "min_per_second": 1.0},
        "requests": {"columns": COLUMNS, "rows": [[*r, "primary", 1, 0, 50, 8] for r in rows]},
        "samples": samples,
        "upstreams": {
            "primary": {
                "billed_prompt_tokens": 10_000,
                "billed_completion_tokens": 1_000,
                "wasted_prompt_tokens": 100,
                "wasted_completion_tokens": 10,
                "price": {"input": 2.5, "output": 10.0},
            }
        },
        "events": [
            {"t": 5.0, "fault": 0, "what": "primary: outage started"},
            {"t": 10.0, "fault": 0, "what": "primary: outage ended"},
            {"t": 15.0, "fault": 1, "what": "policy reloaded"},
        ],
    }
    if with_figures:
        out["figures"] = figures.compute(out)
        out["checks"] = figures.check(out["figures"], scenario)
        out["passed"] = all(c["passed"] for c in out["checks"])
    return out


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's signature and IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_report_states_verdict_checks_figures_and_picture(tmp_path: Path) -> None:
    """A run where one failure broke the zero-failure rule: FAILED, and every section present."""
    written = report.write_report(synthetic_result(), tmp_path)
    assert written == [tmp_path / "report.md", tmp_path / "timeline.png"]
    md = (tmp_path / "report.md").read_text("utf-8")
    assert md.startswith("# Chaos run: primary-outage\n")
    assert "The primary refuses connections" in md
    assert "**Verdict: FAILED** (9 of 10 checks held)" in md
    assert "| client_failures | 0 | 1 | **FAIL** | failures: 1 http_502:bad\\|gateway |" in md
    assert "| detect outage of primary | 2.00 s | 250 ms | pass |" in md
    assert "| recover outage of primary | 3.00 s | 750 ms | pass |" in md
    assert "- Requests: 401 sent, 400 succeeded, 1 client-visible failure(s), 0 truncated" in md
    assert "- Failures by reason: `http_502:bad|gateway` 1." in md
    assert (
        "- Retry amplification: 0.998 upstream attempts per request (400 in all); the retry"
        " budget's allowance is 1.250." in md
    )
    assert "| 1 | outage of primary | 5-10 s | 60% (before) | 250 ms | 750 ms |" in md
    assert "| during outage of primary | 5-10 s | 101 | 1 |" in md
    assert "| 15.00 s | policy reloaded |" in md
    assert md.rstrip().endswith("![timeline](timeline.png)")
    width, height = png_size(tmp_path / "timeline.png")
    assert abs(width - 1400) <= 20 and abs(height - 1000) <= 20


def test_share_panel_is_centred_and_marks_the_shift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The share panel says its window is centred, and the dotted markers stand where traffic
    moved (at + time_to_detect) and came back (end + time_to_recover)."""
    from matplotlib.figure import Figure

    drawn: list[Figure] = []
    save = Figure.savefig

    def keep(fig: Figure, *args: Any, **kwargs: Any) -> None:
        drawn.append(fig)
        save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    report.write_report(synthetic_result(), tmp_path)
    share_ax = drawn[0].axes[0]
    assert share_ax.get_ylabel() == "share of attempts\n(centred 1 s window)"
    markers = [line.get_xdata()[0] for line in share_ax.lines if line.get_linestyle() == ":"]
    assert markers == [5.25, 10.75]
    texts = sorted(
        t.get_text() for t in share_ax.texts if t.get_text().startswith(("moved", "back"))
    )
    assert texts == ["back +750 ms", "moved +250 ms"]


def test_report_of_a_passing_run_says_passed(tmp_path: Path) -> None:
    """All checks held: the verdict says PASSED and no row says FAIL."""
    result = synthetic_result()
    result["scenario"]["expect"]["max_client_failures"] = 1
    result["checks"] = figures.check(result["figures"], result["scenario"])
    result["passed"] = all(c["passed"] for c in result["checks"])
    report.write_report(result, tmp_path)
    md = (tmp_path / "report.md").read_text("utf-8")
    assert "**Verdict: PASSED** (10 of 10 checks held)" in md
    assert "**FAIL**" not in md


def test_slow_phase_fails_its_p99_row(tmp_path: Path) -> None:
    """A phase over max_p99 shows its value and fails in the table."""
    report.write_report(synthetic_result(failing=True), tmp_path)
    md = (tmp_path / "report.md").read_text("utf-8")
    assert "| p99 during outage of primary | 1.00 s | 1.50 s | **FAIL** |" in md
    assert "| p99 before | 1.00 s | 190 ms | pass |" in md


def test_figures_and_checks_are_computed_when_absent(tmp_path: Path) -> None:
    """A bare result (no figures, no checks) is reported like a finished one."""
    bare, finished = tmp_path / "bare", tmp_path / "finished"
    report.write_report(synthetic_result(with_figures=False), bare)
    report.write_report(synthetic_result(), finished)
    assert (bare / "report.md").read_text("utf-8") == (finished / "report.md").read_text("utf-8")


def test_without_matplotlib_the_report_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No matplotlib: report.md alone, with the install hint instead of the image."""

    def missing() -> None:
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(report, "_load_matplotlib", missing)
    written = report.write_report(synthetic_result(), tmp_path)
    assert written == [tmp_path / "report.md"]
    assert not (tmp_path / "timeline.png").exists()
    md = (tmp_path / "report.md").read_text("utf-8")
    assert "pip install 'resilient-llm-gateway[chaos]'" in md
    assert "![timeline]" not in md
    assert "**Verdict: FAILED**" in md


def test_importing_the_report_does_not_import_matplotlib() -> None:
    """matplotlib is loaded only when a picture is drawn."""
    code = "import sys, gateway.chaos.report; print('matplotlib' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "False"


def test_unwritable_config_dir_moves_matplotlib_config_to_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When ~/.config cannot hold matplotlib's cache, a stable temp dir is used instead."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("", "utf-8")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(blocker / "config"))
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    report._load_matplotlib()
    chosen = Path(os.environ["MPLCONFIGDIR"])
    assert chosen.is_dir() and chosen.name.startswith("gateway-chaos-matplotlib-")


def test_an_empty_run_still_renders(tmp_path: Path) -> None:
    """No deployments, no requests, no samples: a report and a picture, no warning, no error."""
    empty = {
        "version": 1,
        "scenario": {"name": "empty", "deployments": [], "faults": [], "expect": {}},
        "duration": 0.0,
        "replicas": 1,
        "budget": {},
        "requests": {"columns": COLUMNS, "rows": []},
        "samples": [],
        "upstreams": {},
        "events": [],
    }
    written = report.write_report(empty, tmp_path)
    assert written == [tmp_path / "report.md", tmp_path / "timeline.png"]
    md = (tmp_path / "report.md").read_text("utf-8")
    assert "**Verdict: FAILED** (2 of 3 checks held)" in md  # nothing was sent
    assert "| retry_amplification | - | - | **FAIL** | no request was sent |" in md
    assert png_size(tmp_path / "timeline.png") == (1400, 1000)
