"""Federated runs in the registry (SQLite and PostgreSQL) and through the coordinator's API and CLI; no Flower."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from edgefleet.cloud_sync.federated.records import round_metrics

from .conftest import free_port, load_cloud

TOKEN = "rec-s3cret"
ROUND = {"round": 2, "train_replies": 3, "train_failures": 1, "declined": 1, "examples": 480,
         "train": {"train-loss": 0.4, "train-accuracy": 0.9, "proximal-mu": 0.0},
         "evaluate": {"eval-loss": 0.5, "eval-accuracy": 0.85}, "central": {"loss": 0.3, "accuracy": 0.91},
         "seconds": 6.2, "dp_epsilon": 3.5}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_federated_registry_keeps_runs_rounds_and_retrain_settings(backend: str, tmp_path: Path) -> None:
    from edgefleet.cloud_sync.coordinator.registry import Registry

    url = f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite" else load_cloud("helpers").pg_url()
    if url is None:
        pytest.skip("PostgreSQL is not reachable")
    reg = Registry(url, prefix=f"t{uuid.uuid4().hex[:8]}_")
    try:
        # Act
        run = reg.create_fed_run("f", "g", "fedavg", 3, trigger="drift", reason="drift on 2 device(s)")
        reg.put_fed_round(run, 2, **round_metrics(ROUND, "fedavg"))
        reg.put_fed_round(run, 1, **round_metrics({"round": 1, "train_replies": 2}, "fedavg"))
        reg.put_fed_round(run, 2, **round_metrics(ROUND, "fedavg"))  # a re-sent round replaces, not duplicates
        reg.set_fed_run(run, status="promoted", result={"gate": {"promoted": True, "version": "2"}})
        reg.set_fed_run(run, result={"deployment": {"id": "d1"}})
        reg.set_retrain("f", "g", True, {"min_devices": 2, "args": ["--min-nodes", "1"]})
        other = reg.create_fed_run("f", "h", "krum", 1)

        # Assert
        doc = reg.fed_run(run)
        assert doc is not None and doc.status == "promoted" and doc.trigger == "drift"
        assert doc.result == {"gate": {"promoted": True, "version": "2"}, "deployment": {"id": "d1"}}
        assert [r.round for r in doc.round_metrics] == [1, 2]
        r2 = doc.round_metrics[1]
        assert (r2.participants, r2.failures, r2.declined, r2.examples) == (3, 1, 1, 480)
        assert r2.train_loss == pytest.approx(0.4) and r2.eval_accuracy == pytest.approx(0.85)
        assert r2.central_accuracy == pytest.approx(0.91) and r2.dp_epsilon == pytest.approx(3.5)
        assert doc.round_metrics[0].train_loss is None and doc.round_metrics[0].dp_epsilon is None
        assert [r.id for r in reg.fed_runs("f")] == [other, run]
        assert [r.id for r in reg.fed_runs("f", "g")] == [run]
        assert [r.to_dict() for r in reg.retrain("f")] == [
            {"group": "g", "on_drift": True, "updated": pytest.approx(time.time(), abs=60),
             "policy": {"min_devices": 2, "args": ["--min-nodes", "1"]}}]
    finally:
        reg.drop_all()
        reg.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A coordinator (in-memory transport) with its real HTTP API on a loopback port."""
    import uvicorn

    from edgefleet.cloud_sync.coordinator.api import create_app
    from edgefleet.cloud_sync.coordinator.registry import Registry
    from edgefleet.cloud_sync.coordinator.service import Coordinator
    from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport

    coord = Coordinator(Registry(f"sqlite:///{tmp_path / 'reg.db'}"), MemoryTransport(MemoryBroker(), "coord"), "f1")
    coord.start()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(coord, TOKEN), host="127.0.0.1", port=port, log_level="error",
                                           log_config=None))  # no dictConfig: it would close absl's handler stream
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", coord
    server.should_exit = True
    coord.stop()


def test_federated_run_record_through_the_api_and_fleet_cli(api: tuple[str, Any], capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.cli import main as cli_main
    from edgefleet.cloud_sync.federated.records import RunRecord
    from edgefleet.errors import ConfigError

    base, coord = api
    monkeypatch.setenv("EDGEFLEET_TOKEN", TOKEN)

    # Act: what `federated run --api` does, then the operator's views
    rec = RunRecord.open(base, None, group="g", strategy="fedprox", rounds=2, config={"min-nodes": 3})
    rec.round(ROUND, "fedprox")
    rec.update(status="promoted", flower_run_id=123, result={"gate": {"promoted": True, "version": "7"}})
    capsys.readouterr()
    assert cli_main(["fleet", "status", "--api", base, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert cli_main(["fleet", "status", "--api", base]) == 0
    table = capsys.readouterr().out
    bad_round = cli_main(["fleet", "status", "--api", base, "--token", "wrong"])
    with pytest.raises(ConfigError, match="no federated run"):
        RunRecord.open(base, None, group="g", strategy="fedavg", rounds=1, run_id="nosuchrun")

    # Assert
    assert doc["deployments"] == [] and len(doc["federated_runs"]) == 1
    run = doc["federated_runs"][0]
    assert run["id"] == rec.run_id and run["status"] == "promoted" and run["flower_run_id"] == "123"
    assert run["config"] == {"min-nodes": 3} and run["rounds_done"] == 1
    assert run["round_metrics"][0]["round"] == 2 and run["round_metrics"][0]["central_accuracy"] == pytest.approx(0.91)
    assert f"federated run {rec.run_id} (group g, fedprox, trigger manual): promoted, 1/2 round(s); gate: promoted v7" \
        in table
    assert "0.910" in table and "3.50" in table  # holdout accuracy and DP epsilon of round 2
    assert bad_round != 0 and not rec.warnings
    # a round the API refuses (negative count) is a warning, never an abort of the run
    rec.round({**ROUND, "train_replies": -1}, "fedprox")
    assert len(rec.warnings) == 1 and "could not record" in rec.warnings[0]


def test_federated_fleet_retrain_settings_are_validated(api: tuple[str, Any], capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.cli import main as cli_main
    from edgefleet.cloud_sync.coordinator.client import api_call
    from edgefleet.errors import ConfigError

    base, coord = api
    monkeypatch.setenv("EDGEFLEET_TOKEN", TOKEN)
    ok = ["fleet", "retrain", "--api", base, "--group", "g", "--on-drift", "on", "--min-devices", "2",
          "--cooldown", "60", "--rounds", "2", "--", "--superlink", "127.0.0.1:9999", "--min-nodes", "1"]

    # Act
    codes = [cli_main(ok),
             cli_main(["fleet", "retrain", "--api", base, "--group", "g", "--on-drift", "on", "--", "--no-such-flag"]),
             cli_main(["fleet", "retrain", "--api", base, "--group", "g", "--on-drift", "on", "--", "--rounds", "9"]),
             cli_main(["fleet", "retrain", "--api", base, "--group", "g", "--on-drift", "off", "--min-devices", "0"])]
    err = capsys.readouterr().err
    with pytest.raises(ConfigError, match="strategy must be one of"):  # the API checks what the CLI's choices do
        api_call(base, TOKEN, "PUT", "/v1/retrain/g", json={"on_drift": True, "strategy": "bogus"})
    assert cli_main(["fleet", "retrain", "--api", base, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)

    # Assert: only the valid settings were stored; the refusals name the problem
    assert codes[0] == 0 and all(c != 0 for c in codes[1:]), codes
    assert "unrecognized arguments: --no-such-flag" in err
    assert "--rounds is set by the trigger itself" in err
    assert "422" in err and "min_devices" in err
    assert shown == [{"group": "g", "on_drift": True, "updated": shown[0]["updated"],
                      "policy": {"min_devices": 2, "window_s": 3600.0, "cooldown_s": 60.0, "rounds": 2,
                                 "strategy": "fedavg", "args": ["--superlink", "127.0.0.1:9999", "--min-nodes", "1"]}}]


def test_federated_autoretrain_respects_recorded_runs_and_records_a_run_that_dies(api: tuple[str, Any],
                                                                                 tmp_path: Path) -> None:
    from edgefleet.cloud_sync.federated.autorun import AutoRetrain

    # Arrange: group g had a drift run 10 s ago (a restarted coordinator, or another one of the fleet, started it);
    # group h has none. The launcher's "interpreter" is a script: the launched run dies after 1 s without a word.
    _, coord = api
    dies = tmp_path / "dies.sh"
    dies.write_text("#!/bin/sh\nsleep 1\nexit 3\n")
    dies.chmod(0o755)
    reg = coord.registry
    for group, cooldown in (("g", 3600.0), ("h", 0.0)):
        reg.set_retrain("f1", group, True, {"min_devices": 1, "cooldown_s": cooldown, "rounds": 1})
    earlier = reg.create_fed_run("f1", "g", "fedavg", 1, trigger="drift", status="finished")
    reg.set_fed_run(earlier, created=time.time() - 10)
    auto = AutoRetrain(coord, "http://127.0.0.1:9", TOKEN, tmp_path / "runs", python=str(dies))
    drift = {"psi_max": 0.9, "version": "1"}

    # Act
    in_cooldown = auto.on_drift("d1", "g", drift)
    started = auto.on_drift("d2", "h", drift)
    while_running = auto.on_drift("d3", "h", drift)
    deadline = time.monotonic() + 10
    while auto.children and time.monotonic() < deadline:
        time.sleep(0.05)
    after = auto.on_drift("d2", "h", drift)  # cool-down 0: the next alert may start the next run
    while auto.children and time.monotonic() < deadline:
        time.sleep(0.05)

    # Assert
    assert in_cooldown is None and started is not None and after is not None and after != started
    assert while_running is None
    run = reg.fed_run(started)
    assert run.trigger == "drift" and run.reason == "drift on 1 device(s) of h: d2"
    assert run.status == "failed" and run.error.startswith("exit code 3; see ") and str(tmp_path / "runs" / started) in run.error
    assert "--record-id " + started in run.result["command"] and TOKEN not in run.result["command"]
    assert [r.id for r in reg.fed_runs("f1", "g")] == [earlier]


def test_federated_drift_runs_use_the_coordinators_superlink_unless_told_otherwise(api: tuple[str, Any],
                                                                                  tmp_path: Path) -> None:
    from edgefleet.cloud_sync.federated.autorun import AutoRetrain, RetrainSettings
    from edgefleet.cloud_sync.federated.runner import SuperLink, SuperLinkConfig

    _, coord = api
    tls = SuperLink(SuperLinkConfig(host="10.0.0.2", port=9092, insecure=False, ssl_certfile="c.pem",
                                    ssl_keyfile="k.pem", ssl_ca_certfile="/etc/ca.pem"))  # configured, not started
    auto = AutoRetrain(coord, "http://127.0.0.1:8080", TOKEN, tmp_path, superlink=tls)

    default = auto.command(RetrainSettings("g", args=("--min-nodes", "3")), "r1")
    explicit = auto.command(RetrainSettings("g", args=("--superlink=127.0.0.1:9", "--min-nodes", "3")), "r2")

    assert default[default.index("--superlink") + 1] == "10.0.0.2:9092"
    assert default[default.index("--root-certificates") + 1] == "/etc/ca.pem"
    assert "--root-certificates" not in explicit and explicit.count("--superlink") == 0
    assert "--superlink=127.0.0.1:9" in explicit


@pytest.mark.slow
def test_federated_cloud_serve_supervises_a_superlink_and_stops_it(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from edgefleet.cloud_sync.federated.runner import write_flwr_home
    from edgefleet.device_agent.flower_node import find_tool, flower_env

    # Arrange: a real broker; `edgefleet cloud serve` with --superlink-port
    broker = load_cloud("conftest").Broker(tmp_path / "broker")
    broker.start()
    api_port, link_port = free_port(), free_port()
    serve = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "cloud", "serve", "--broker", broker.url,
                              "--db", f"sqlite:///{tmp_path / 'reg.db'}", "--fleet", "f1", "--api-port", str(api_port),
                              "--token", TOKEN, "--federated-dir", str(tmp_path / "fed"),
                              "--superlink-port", str(link_port)],
                             env=flower_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        # Act 1: the coordinator's API answers and its SuperLink serves Flower's own CLI
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        home = write_flwr_home(tmp_path / "home", f"127.0.0.1:{link_port}")
        listed = subprocess.run([find_tool("flwr"), "supernode", "list", "edgefleet", "--format", "json"],
                                env=flower_env({"FLWR_HOME": str(home)}), capture_output=True, text=True, timeout=60)
        links = subprocess.run(["pgrep", "-f", f"flower-superlink .*--port {link_port}"], capture_output=True,
                               text=True).stdout.split()

        # Act 2: SIGTERM ends the coordinator, which stops its SuperLink
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=30)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        broker.stop()
    stderr = serve.stderr.read().decode() if serve.stderr else ""

    # Assert
    assert json.loads(listed.stdout)["success"] is True, listed.stdout + listed.stderr
    assert len(links) == 1 and f"flower-superlink supervised on 127.0.0.1:{link_port}" in stderr, stderr
    assert code == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(int(links[0]), 0)  # the SuperLink leads its own process group
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the SuperLink outlived the coordinator")
