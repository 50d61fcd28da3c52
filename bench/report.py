"""Summaries of the benchmark's figures: rounds combined, ratios to the floor, the printed table."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

TARGET_CPU_RATIO = 2.0
LABELS = {
    "passthrough": "passthrough (floor)",
    "gateway": "gateway",
    "gateway_log_warning": "gateway, logs at warning",
}


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the rounds: rates from sums; p50 the mean, p99 the worst of the rounds."""
    requests = sum(r["requests"] for r in rounds)
    duration = sum(r["duration_s"] for r in rounds)
    cpu = sum(r["cpu_s"] for r in rounds)
    upstream_cpu = sum(r["upstream_cpu_s"] for r in rounds)
    out: dict[str, Any] = {
        "requests": requests,
        "duration_s": round(duration, 3),
        "requests_per_s": round(requests / duration, 1) if duration else 0.0,
        "p50_ms": round(statistics.mean(r["p50_ms"] for r in rounds), 3),
        "p99_ms": max(r["p99_ms"] for r in rounds),
        "non2xx": sum(r["non2xx"] for r in rounds),
        "socket_errors": sum(r["socket_errors"] for r in rounds),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_request": round(cpu * 1000 / max(requests, 1), 4),
        "upstream_cpu_ms_per_request": round(upstream_cpu * 1000 / max(requests, 1), 4),
        "rounds": rounds,
    }
    if all("log_lines" in r for r in rounds):
        out["log_lines"] = sum(r["log_lines"] for r in rounds)
    return out


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"target": TARGET_CPU_RATIO}
    for section in ("json", "stream"):
        block = results.get(section)
        if not block:
            continue
        floor = block["passthrough"]["cpu_ms_per_request"]
        for name, figures in block.items():
            if name != "passthrough" and floor > 0:
                ratio = round(figures["cpu_ms_per_request"] / floor, 2)
                out[f"{section}.{name}"] = ratio
                out[f"{section}.{name}.per_round"] = [
                    round(r["cpu_ms_per_request"] / p["cpu_ms_per_request"], 2)
                    for r, p in zip(figures["rounds"], block["passthrough"]["rounds"], strict=True)
                    if p["cpu_ms_per_request"] > 0
                ]
                figures["cpu_ratio_vs_passthrough"] = ratio
                figures["cpu_ms_overhead_per_request"] = round(
                    figures["cpu_ms_per_request"] - floor, 4
                )
    main = out.get("json.gateway")
    out["ok"] = main is not None and main <= TARGET_CPU_RATIO
    return out


def report(results: dict[str, Any], out_path: Path) -> str:
    meta = results["meta"]
    lines = [
        "",
        f"Foundation benchmark  ({meta['load_generator']}, {meta['connections']} connections, "
        f"{meta['duration_s']:g} s measured per target after {meta['warmup_s']:g} s warm-up)",
        "",
        f"{'target':<28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}{'x floor':>9}"
        f"{'non-2xx':>9}{'errors':>8}",
    ]
    for section, suffix in (("json", ""), ("stream", " stream")):
        for name, f in results.get(section, {}).items():
            ratio = f.get("cpu_ratio_vs_passthrough")
            lines.append(
                f"{LABELS[name] + suffix:<28}{f['requests_per_s']:>9.0f}{f['p50_ms']:>9.2f}"
                f"{f['p99_ms']:>9.2f}{f['cpu_ms_per_request']:>12.3f}"
                f"{(f'{ratio:.2f}' if ratio is not None else '1.00'):>9}"
                f"{f['non2xx']:>9}{f['socket_errors']:>8}"
            )
    r = results["ratios"]
    main = r.get("json.gateway")
    verdict = "OK" if r["ok"] else "ABOVE TARGET"
    lines += [
        "",
        f"gateway / passthrough CPU per request: {main} (target <= {r['target']:g}) {verdict}; "
        f"per round {r.get('json.gateway.per_round')}",
    ]
    if "stream.gateway" in r:
        lines.append(
            f"  streaming: {r['stream.gateway']}; per round {r['stream.gateway.per_round']}"
        )
    if "json.gateway_log_warning" in r:
        lines.append(
            f"  with logs at level warning: {r['json.gateway_log_warning']}; "
            f"per round {r['json.gateway_log_warning.per_round']}"
        )
    gw = results["json"]["gateway"]
    lines.append(
        f"  gateway log lines written in the window: {gw.get('log_lines')} "
        f"(requests: {gw['requests']})"
    )
    upstream = max(f["upstream_cpu_ms_per_request"] for f in results["json"].values())
    lines.append(f"  upstream CPU ms/req (not the bottleneck): <= {upstream:.3f}")
    m = results["memory"]
    lines.append(
        f"gateway RSS: {m['rss_mib_after_start']} MiB after start, {m['rss_mib_after_load']} MiB "
        f"after load, peak {m['peak_rss_mib']} MiB (target <= {m['target_mib']:g} after start) "
        f"{'OK' if m['ok'] else 'ABOVE TARGET'}"
    )
    s = results["startup"]
    ref = s["references"]
    bare, deps = ref["python"], ref["python_with_dependencies"]
    env = s["as_environment"]
    lines += [
        f"gateway serve -> ready: median {s['median_ms']:.0f} ms wall, {s['median_cpu_ms']:.0f} ms "
        f"CPU over {len(s['samples_ms'])} starts with cached bytecode (target < "
        f"{s['target_ms']:g} wall) {'OK' if s['ok'] else 'SLOW'}",
        f"  wall {s['samples_ms']}, CPU {s['cpu_samples_ms']}",
        f"  this environment as it is (bytecode cached: {'yes' if env['bytecode_cached'] else 'no'}"
        f"): median {env['median_ms']:.0f} ms wall, {env['median_cpu_ms']:.0f} ms CPU",
        f"  for reference (wall / CPU ms): bare python "
        f"{bare['wall_ms']:.0f} / {bare['cpu_ms']:.0f}; "
        f"python importing aiohttp.web, pydantic, yaml, structlog, orjson "
        f"{deps['wall_ms']:.0f} / {deps['cpu_ms']:.0f}",
    ]
    imp = results["imports"]
    if "error" in imp:
        lines.append(f"import check failed: {imp['error']}")
    else:
        lines.append(
            f"litellm imported: {'YES' if imp['litellm_imported'] else 'no'} "
            f"(build_app in a child: {imp['modules']} modules, {imp['build_app_ms']} ms; "
            f"openai SDK imported: {'yes' if imp['openai_sdk_imported'] else 'no'})"
        )
    lines.append(
        f"load average: {meta['loadavg_start']} at start, {meta['loadavg_end']} at end "
        f"on {meta['cpus']} CPUs (throughput depends on it; CPU per request much less)"
    )
    lines.append(f"figures written to {out_path}")
    return "\n".join(lines)
