"""`gateway serve` as a real process: startup, one JSON log event per request, no secrets, exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from gatewayproc import start_gateway

UPSTREAM_KEY = "sk-upstream-very-secret-0123456789"
CALLER_KEY = "gw-caller-secret-abcdef"


def _start(config: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    return start_gateway(config, env)


def _request(url: str, body: Any, key: str | None = CALLER_KEY) -> int:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as err:
        err.read()
        return err.code


def test_serve_logs_one_json_event_per_request_and_never_a_secret(
    tmp_path: Path, scripted_upstream: Any
) -> None:
    """Each request gives exactly one JSON `request` event; keys never appear in any output."""
    up, server = scripted_upstream()
    up_url = server.url
    config = tmp_path / "gw.yaml"
    config.write_text(f"""
server:
  api_keys: ["${{GW_TEST_CALLER_KEY}}"]
logging:
  format: auto
deployments:
  - name: up
    provider: openai
    model: up-model
    aliases: [chat]
    base_url: {up_url}/v1
    api_key: ${{GW_TEST_UPSTREAM_KEY}}
  - name: dead
    provider: openai
    model: dead-model
    base_url: http://127.0.0.1:1/v1
    api_key: ${{GW_TEST_UPSTREAM_KEY}}
""")
    proc, url = _start(
        config, {"GW_TEST_UPSTREAM_KEY": UPSTREAM_KEY, "GW_TEST_CALLER_KEY": CALLER_KEY}
    )
    try:
        chat = f"{url}/v1/chat/completions"
        msgs = [{"role": "user", "content": "hi"}]
        statuses = [
            _request(chat, {"model": "chat", "messages": msgs}),
            _request(chat, {"model": "dead-model", "messages": msgs}),
            _request(chat, {"model": "chat"}),
            _request(chat, {"model": "chat", "messages": msgs}, key="wrong-key"),
            _request(f"{url}/v1/assistants", {}),
        ]
        assert statuses == [200, 502, 400, 401, 404]
        assert up.headers[0]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    requests = [e for e in events if e["event"] == "request"]
    assert [e["status"] for e in requests] == [200, 502, 400, 401, 404]
    assert requests[4]["endpoint"] == "/v1/assistants"
    ok = requests[0]
    assert ok["deployment"] == "up" and ok["attempts"] == 1 and ok["model"] == "chat"
    assert ok["prompt_tokens"] == 4 and ok["completion_tokens"] == 3
    assert ok["latency_ms"] > 0 and len(ok["request_id"]) == 24
    failed = requests[1]
    assert (failed["error"], failed["attempts"], failed["deployment"]) == ("exhausted", 1, "dead")
    assert failed["failed_attempts"] == ["dead:unreachable"]
    everything = out + err
    assert UPSTREAM_KEY.encode() not in everything
    assert CALLER_KEY.encode() not in everything
    assert b"wrong-key" not in everything


def test_serve_refuses_a_bad_config_with_file_line_and_path(tmp_path: Path) -> None:
    """A bad config stops `serve` before it binds, with file:line: path: reason and no traceback."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        "deployments:\n  - name: a\n    provider: openai\n    model: m\n"
        "    base_url: http://x/v1\n    api_key: ${GW_TEST_UNSET_VAR}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GW_TEST_UNSET_VAR"}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        capture_output=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert f"{config}:6: deployments[0].api_key: environment variable GW_TEST_UNSET_VAR" in err
    assert "Traceback" not in err
    assert proc.stdout == b""


@pytest.mark.parametrize("port_taken", [True])
def test_serve_on_a_taken_port_exits_with_a_clear_message(
    tmp_path: Path, port_taken: bool, scripted_upstream: Any
) -> None:
    """Binding a port already in use is a one-line error, not a traceback."""
    taken = scripted_upstream()[1].port
    config = tmp_path / "gw.yaml"
    config.write_text(
        "deployments:\n  - {name: a, provider: openai, model: m, "
        "base_url: 'http://127.0.0.1:1/v1'}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(taken)],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert b"cannot listen on 127.0.0.1:" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    """On SIGTERM the gateway stops accepting but the request in flight still gets its answer."""
    config = tmp_path / "gw.yaml"
    config.write_text(
        "server: {drain_timeout: 10s}\n"
        "deployments:\n"
        "  - {name: slow, provider: simulated, model: m, simulated: {latency: 1500ms}}\n"
    )
    proc, url = _start(config, {})
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            _request(
                f"{url}/v1/chat/completions",
                {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                key=None,
            )
        )
    )
    worker.start()
    time.sleep(0.5)  # the request is now waiting on the simulated latency
    proc.send_signal(signal.SIGTERM)
    worker.join(10)
    out, _ = proc.communicate(timeout=15)
    assert result == [200]
    assert proc.returncode == 0
    events = [json.loads(line)["event"] for line in out.decode().splitlines() if line.strip()]
    assert events.index("stopping") < events.index("request")
