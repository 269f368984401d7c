"""The daemons log (issue 15: ``cloud serve`` and ``agent run`` printed one start line and nothing else).

The real ``edgefleet cloud serve`` and ``edgefleet agent run --broker`` as processes with ``--log-format json``
over a real Mosquitto: a device connects, a deployment installs on it, the broker is killed. Their stderr is JSON
lines naming each of those events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Callable

import httpx
from conftest import wait_for
from helpers import free_port

TOKEN = "admin-token-daemon-logs"


def _lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a daemon's stderr (every line must be one)."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))  # a line that is not JSON fails the test here
    return out


def _has(path: Path, pred: Callable[[dict[str, Any]], bool]) -> bool:
    try:
        return any(pred(x) for x in _lines(path))
    except json.JSONDecodeError:  # a line being written
        return False


def _stop(proc: subprocess.Popen[bytes], err: IO[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err.close()


def test_serve_and_agent_log_connect_install_and_broker_loss_as_json(broker: Any, tmp_path: Path,
                                                                     keys: dict[str, Any],
                                                                     archives: dict[str, Path]) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    (tmp_path / "admin.token").write_text(TOKEN + "\n")
    os.chmod(tmp_path / "admin.token", 0o600)
    (tmp_path / "allow.txt").write_text("press-7 line-1\n")
    (tmp_path / "agent.toml").write_text(
        f'[agent]\ntrusted_keys = ["{keys["pub"]}"]\nhardware_tags = ["test-board"]\n\n'
        "[update]\nprobation_seconds = 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env["EDGEFLEET_LOG_FORMAT"] = "json"  # the coordinator takes it from the environment, the device from its flag
    coord_err, dev_err = tmp_path / "serve.log", tmp_path / "agent.log"
    cf, df = coord_err.open("wb"), dev_err.open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "cloud", "serve", "--broker", broker.url, "--fleet", "f1",
         "--db", f"sqlite:///{tmp_path / 'reg.db'}", "--api-port", str(port), "--token-file",
         str(tmp_path / "admin.token"), "--trust", str(keys["pub"]), "--allow", str(tmp_path / "allow.txt")],
        env=env, stdout=subprocess.DEVNULL, stderr=cf)
    agent = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "--log-format", "json", "agent", "run", "--config",
         str(tmp_path / "agent.toml"), "--state-dir", str(tmp_path / "dev"), "--broker", broker.url, "--fleet", "f1",
         "--device-id", "press-7", "--telemetry-interval", "0.5", "--tick", "0.2"],
        env=env, stdout=subprocess.DEVNULL, stderr=df)
    try:
        def device_online() -> bool:
            try:
                r = httpx.get(f"{api}/v1/devices", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2)
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and any(d["device_id"] == "press-7" and d["online"] for d in r.json())

        wait_for(device_online, 60, 0.2)
        r = httpx.post(f"{api}/v1/deployments", params={"group": "line-1", "canary": "100%", "waves": "100%"},
                       content=archives["2"].read_bytes(), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert r.status_code == 201, r.text
        dep = r.json()["id"]

        def completed() -> bool:
            d = httpx.get(f"{api}/v1/deployments/{dep}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            return d.json()["state"] == "completed"

        wait_for(completed, 60, 0.2)
        broker.kill()
        wait_for(lambda: _has(coord_err, lambda x: x.get("event") == "broker_disconnected"), 30, 0.2)
        wait_for(lambda: _has(dev_err, lambda x: x.get("event") == "broker_disconnected"), 30, 0.2)
    finally:
        _stop(agent, df)
        _stop(serve, cf)

    coord, dev = _lines(coord_err), _lines(dev_err)
    for line in coord + dev:
        assert {"ts", "level", "logger", "msg"} <= set(line), line
        assert line["logger"].startswith(("edgefleet", "uvicorn")), line

    def first(lines: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        found = [x for x in lines if all(x.get(k) == v for k, v in fields.items())]
        assert found, f"no line with {fields}: {[x.get('event') or x['msg'] for x in lines]}"
        return found[0]

    # the coordinator: its own broker connection, the device's connect, the rollout, the install, the broker loss
    assert first(coord, event="broker_connected")["level"] == "info"
    assert first(coord, event="device_connected", device="press-7")["logger"].endswith("coordinator.service")
    assert first(coord, event="deployment_created", deployment=dep)["targets"] == 1
    assert first(coord, event="rollout_stage", deployment=dep)["stage"] == 0
    assert "press-7" in first(coord, event="install_succeeded", device="press-7", deployment=dep)["msg"]
    assert first(coord, event="rollout_completed", deployment=dep)["state"] == "completed"
    lost = first(coord, event="broker_disconnected")
    assert lost["level"] == "error" and "stale" in lost["msg"]
    # the device: its broker connection, the job, the install, the broker loss
    assert first(dev, event="broker_connected", device="press-7")["level"] == "info"
    assert first(dev, event="job_received")["version"] == "2"
    assert first(dev, event="activated")["version"] == "2"
    assert first(dev, event="install_succeeded")["version"] == "2"
    assert first(dev, event="broker_disconnected", device="press-7")["level"] == "warning"
    order = [x.get("event") for x in dev]
    assert order.index("broker_connected") < order.index("install_succeeded") < order.index("broker_disconnected")
