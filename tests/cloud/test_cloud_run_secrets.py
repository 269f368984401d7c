"""Child processes get no secrets they do not need (issue 13): a federated run started on drift gets a token of its
own, of scope deploy, revoked when it ends - never the coordinator's admin token - and its environment is built
explicitly, so the coordinator's secrets (admin token, signing key, MQTT password) stay with the coordinator; the
SuperLink and ``flwr run`` get none either. The run is a probe standing in for ``edgefleet federated run``: it records
what it was given and makes the calls a run makes, and one it must not make, against the real API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers import serve_api

from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.rows import Principal
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport

BOOT = "admin-" + uuid.uuid4().hex
SECRETS = {"EDGEFLEET_TOKEN": BOOT, "EDGEFLEET_SIGNING_KEY": "/etc/edgefleet/operator.key",
           "EDGEFLEET_MQTT_PASSWORD": "mqtt-" + uuid.uuid4().hex, "EDGEFLEET_MQTT_USER": "coordinator"}

PROBE = """
import json, os, sys, time
a = sys.argv
get = lambda opt: a[a.index(opt) + 1] if opt in a else None
out, api, run_id = get("--out"), get("--api"), get("--record-id")
from edgefleet.cloud_sync.coordinator.client import api_call, read_token
res = {"argv": a, "env": dict(os.environ), "token": read_token()}

def call(method, path, **kw):
    try:
        api_call(api, None, method, path, **kw)
        return "ok"
    except Exception as exc:
        return str(exc)

# what a run does: its record and rounds (deploy scope) ...
res["record"] = call("PATCH", f"/v1/federated/runs/{run_id}", json={"status": "running"})
res["round"] = call("PUT", f"/v1/federated/runs/{run_id}/rounds/1", json={"participants": 2})
res["read"] = call("GET", "/v1/deployments")
# ... and what it must not: admin calls
res["mint"] = call("POST", "/v1/tokens", json={"name": "mine", "scope": "admin"})
res["assign"] = call("PATCH", "/v1/devices/d1", json={"group": "other"})
res["audit"] = call("GET", "/v1/audit")
json.dump(res, open(os.path.join(out, "probe.json"), "w"))
while os.path.exists(os.path.join(os.path.dirname(out), "hold")):  # the test keeps this run going
    time.sleep(0.05)
"""


@pytest.fixture()
def coord(tmp_path: Path) -> Iterator[Coordinator]:
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    c = Coordinator(reg, MemoryTransport(MemoryBroker(), "coord"), "f")
    reg.set_retrain("f", "g", True, {"min_devices": 1, "cooldown_s": 0, "rounds": 1})
    yield c
    reg.close()


@pytest.fixture()
def coordinator_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of ``cloud serve``: its admin token, the operator's signing key, its MQTT credentials."""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)


def _probe(tmp_path: Path) -> str:
    probe = tmp_path / "probe.py"
    probe.write_text(f"#!{sys.executable}\n{PROBE}")
    probe.chmod(0o755)
    return str(probe)


def _wait_done(auto: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while auto.children and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not auto.children, "the run did not end"


def test_a_drift_started_run_gets_a_deploy_token_of_its_own_and_no_coordinator_secret(
        coord: Coordinator, coordinator_secrets: None, tmp_path: Path) -> None:
    from edgefleet.cloud_sync.federated.autorun import AutoRetrain

    reg = coord.registry
    with serve_api(coord, BOOT) as api:
        # Arrange: the launcher as cloud serve makes it (callers still pass the admin token: it must not reach the run)
        auto = AutoRetrain(coord, api, BOOT, tmp_path / "runs", python=_probe(tmp_path)).attach()

        # Act: a drift alert starts the run
        run_id = auto.on_drift("d1", "g", {"psi_max": 0.9, "version": "1"})
        assert run_id is not None
        _wait_done(auto)

    res = json.loads((tmp_path / "runs" / run_id / "probe.json").read_text())
    env, argv = res["env"], res["argv"]

    # Assert 1: nothing of the coordinator's secrets on the run's command line or in its environment
    assert not any(BOOT in a for a in argv)
    assert BOOT not in json.dumps(env)
    leaked = {k for k, v in SECRETS.items() if k != "EDGEFLEET_TOKEN" and (k in env or v in json.dumps(env))}
    assert leaked == set()
    assert "EDGEFLEET_TOKEN_FILE" not in env
    # Assert 2: it got a token of its own (environment only), of scope deploy, for what a run does
    token = res["token"]
    assert token and env["EDGEFLEET_TOKEN"] == token and not any(token in a for a in argv)
    assert (res["record"], res["round"], res["read"]) == ("ok", "ok", "ok")
    # Assert 3: ... and nothing an admin does (real API: 403 naming the scope)
    for call in ("mint", "assign", "audit"):
        assert "403" in res[call] and "has scope deploy" in res[call], (call, res[call])
    assert [t.name for t in reg.tokens("f")] == []  # the admin call created nothing; the run's token is gone
    # Assert 4: its calls are audited under the run's token name; the token was revoked when the run ended
    who = {(e.who, e.method, e.status) for e in reg.audit("f")}
    assert (f"fedrun-{run_id}", "PATCH", 200) in who and (f"fedrun-{run_id}", "POST", 403) in who
    assert reg.check_token("f", token) is None


def test_a_run_token_is_revoked_when_the_coordinator_stops_the_run(coord: Coordinator, coordinator_secrets: None,
                                                                   tmp_path: Path) -> None:
    from edgefleet.cloud_sync.federated.autorun import AutoRetrain

    reg = coord.registry
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "hold").touch()  # the probe keeps running until the coordinator stops it
    with serve_api(coord, BOOT) as api:
        auto = AutoRetrain(coord, api, None, tmp_path / "runs", python=_probe(tmp_path)).attach()
        run_id = auto.on_drift("d1", "g", {"psi_max": 0.9, "version": "1"})
        probe_out = tmp_path / "runs" / str(run_id) / "probe.json"
        deadline = time.monotonic() + 60
        while not probe_out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        token = json.loads(probe_out.read_text())["token"]
        assert reg.check_token("f", token) == Principal(f"fedrun-{run_id}", "deploy")  # valid while it runs

        auto.stop(timeout=10)

    assert reg.check_token("f", token) is None
    assert not auto.children or all(p.poll() is not None for p in auto.children.values())


def test_tokens_of_runs_that_ended_unwatched_are_revoked_at_start(coord: Coordinator, tmp_path: Path) -> None:
    from edgefleet.cloud_sync.federated.autorun import AutoRetrain

    reg = coord.registry
    ended = reg.create_fed_run("f", "g", "fedavg", 1, trigger="drift", status="finished")
    running = reg.create_fed_run("f", "g", "fedavg", 1, trigger="drift", status="running")
    for name in (f"fedrun-{ended}", f"fedrun-{running}", "fedrun-unknown", "ci"):
        reg.create_token("f", name, "deploy")

    AutoRetrain(coord, "http://127.0.0.1:9", None, tmp_path).attach()  # a coordinator (re)starts

    assert sorted(t.name for t in reg.tokens("f")) == ["ci", f"fedrun-{running}"]


def test_the_superlink_and_flwr_run_get_none_of_the_coordinators_secrets(coordinator_secrets: None, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.cloud_sync.federated import runner

    link = runner.SuperLink(runner.SuperLinkConfig(port=9))  # configured, not started
    seen: dict[str, Any] = {}

    def fake_run(cmd: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.update(env=env, cmd=cmd)
        return subprocess.CompletedProcess(cmd, 0, '{"success": true, "run-id": 7}', "")

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    assert runner.submit_run(tmp_path / "app", tmp_path / "home").run_id == 7

    for env in (link.env, seen["env"]):
        assert not set(SECRETS) & set(env) and not any(v in env.values() for v in SECRETS.values())
        assert env["FLWR_TELEMETRY_ENABLED"] == "0" and "PATH" in env
    assert seen["env"]["FLWR_HOME"] == str(tmp_path / "home")
