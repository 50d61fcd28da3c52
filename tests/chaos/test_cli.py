"""``gateway chaos run`` and ``gateway chaos report`` as a user runs them: exit statuses, files,
messages. Two short scenarios run for real in one invocation: one whose expectations hold, and
one with no fallback whose outage must show up as client failures and fail the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DEPLOYMENT = """
  - name: {name}
    aliases: [chat]
    tags: [chat, completions, stream]
    price: {{input: 1.0, output: 2.0}}
    simulated: {{latency: 10ms, tokens_per_second: 2000}}
"""

SCENARIO = """
name: {name}
seed: 3
deployments:
{deployments}
gateway:
  health: {{window: {{buckets: 10, bucket: 1s}}, probes: {{interval: 1s, timeout: 500ms}}}}
  resilience: {{breaker: {{open_for: 1s, open_max: 2s}}}}
traffic: {{model: chat, rate: 30, duration: 3s, stream_share: 0.3}}
faults:
  - {{at: 1s, for: 1s, target: primary, kind: outage}}
expect: {{max_client_failures: 0}}
"""


def _scenario(tmp: Path, name: str, deployments: list[str]) -> Path:
    text = SCENARIO.format(
        name=name, deployments="".join(DEPLOYMENT.format(name=d) for d in deployments)
    )
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def _gateway(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "chaos", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.mark.timeout(150)
def test_run_two_scenarios_then_rebuild_their_reports(tmp_path: Path) -> None:
    good = _scenario(tmp_path, "with-fallback", ["primary", "fallback"])
    bad = _scenario(tmp_path, "no-fallback", ["primary"])
    out = tmp_path / "results"

    # a relative --out, as a user types it
    done = _gateway("run", str(good), str(bad), "--out", "results", "--quiet", cwd=tmp_path)

    # one scenario's expectation failed: exit status 1, and the verdict lines say which and why
    assert done.returncode == 1, done.stderr
    assert "chaos: with-fallback: PASSED" in done.stderr
    assert "chaos: no-fallback: FAILED" in done.stderr
    assert "client_failures" in done.stderr
    passed = json.loads((out / "with-fallback" / "result.json").read_text())
    failed = json.loads((out / "no-fallback" / "result.json").read_text())
    assert passed["passed"] is True and passed["figures"]["client_failures"] == 0
    assert failed["passed"] is False
    # with nothing to fail over to, the outage reaches callers as errors, never as truncation
    assert failed["figures"]["client_failures"] > 0
    assert failed["figures"]["truncated_successes"] == 0
    assert all(r.startswith("http_") for r in failed["figures"]["failures_by_reason"])
    summary = (out / "summary.md").read_text()
    assert "[with-fallback](with-fallback/report.md) | PASSED" in summary
    assert "[no-fallback](no-fallback/report.md) | FAILED" in summary

    # `chaos report` rebuilds the report and the image from result.json alone
    directory = out / "no-fallback"
    report_before = (directory / "report.md").read_text()
    (directory / "report.md").unlink()
    (directory / "timeline.png").unlink()
    rebuilt = _gateway("report", str(directory))
    assert rebuilt.returncode == 1, rebuilt.stderr  # the verdict is the run's: failed
    assert (directory / "report.md").read_text() == report_before
    assert (directory / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((directory / "result.json").read_text())["figures"] == failed["figures"]
    assert _gateway("report", str(out / "with-fallback")).returncode == 0


def test_a_rejected_scenario_stops_before_anything_runs(tmp_path: Path) -> None:
    good = _scenario(tmp_path, "fine", ["primary", "fallback"])
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        _scenario(tmp_path, "broken", ["primary"])
        .read_text()
        .replace("target: primary", "target: nowhere")
    )
    out = tmp_path / "results"
    done = _gateway("run", str(good), str(broken), "--out", str(out))
    assert done.returncode == 2
    assert f"{broken}:" in done.stderr and "nowhere" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()  # nothing ran, not even the valid scenario


def test_report_of_a_directory_without_a_result_says_so(tmp_path: Path) -> None:
    done = _gateway("report", str(tmp_path))
    assert done.returncode == 2
    assert "result.json: no such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_scale_out_of_range_is_refused(tmp_path: Path) -> None:
    good = _scenario(tmp_path, "fine", ["primary", "fallback"])
    done = _gateway("run", str(good), "--scale", "0", "--out", str(tmp_path / "r"))
    assert done.returncode == 2
    assert "scale" in done.stderr and "Traceback" not in done.stderr
