"""Seeing and steering federated runs (issue 15): what a waiting run says, run status and events in the registry,
stopping a run through the coordinator's API - a run started by hand polls its stop flag and stops its Flower run.

Real pieces: SQLite (and PostgreSQL when it runs), mosquitto, the coordinator and its HTTP API, a
``flower-superlink`` with no SuperNode connected, runs submitted with ``flwr run``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edgefleet.cloud_sync.coordinator.rows import RunStatus
from edgefleet.cloud_sync.federated.progress import Observation, Progress

from .conftest import CloudFleet, Fleet, load_cloud


def test_federated_progress_says_when_no_node_is_connected_every_few_seconds() -> None:
    # Arrange: a run of 3 rounds needing 2 nodes; polls every second
    p = Progress(rounds=3, min_nodes=2, superlink="127.0.0.1:9092", every=5.0, heartbeat=30.0)

    def lines(t: float, nodes: int | None, done: int = 0, status: str | None = "running") -> list[str]:
        return p.observe(Observation(t, nodes, done, status))

    # Act / Assert: nobody there - said at once, then every 5 s (not every poll), and at once when it changes
    assert lines(0.0, 0) == ["waiting: 0 of 2 nodes connected (round 1 of 3, Flower run running; 0s)"]
    assert [x for t in range(1, 5) for x in lines(float(t), 0)] == []
    assert lines(5.0, 0) == ["waiting: 0 of 2 nodes connected (round 1 of 3, Flower run running; 5s)"]
    assert lines(6.0, 1) == ["waiting: 1 of 2 nodes connected (round 1 of 3, Flower run running; 6s)"]
    assert lines(7.0, None) == ["waiting: SuperLink 127.0.0.1:9092 not answering (7s)"]
    # enough nodes: the round in progress, then quiet until something changes or the heartbeat is due
    assert lines(8.0, 2) == ["round 1 of 3 in progress: 2 nodes connected, Flower run running, 8s"]
    assert [x for t in range(9, 38) for x in lines(float(t), 2)] == []
    assert lines(38.0, 2) == ["round 1 of 3 in progress: 2 nodes connected, Flower run running, 38s"]
    assert lines(39.0, 2, done=1) == ["round 2 of 3 in progress: 2 nodes connected, Flower run running, 0s"]
    assert lines(40.0, 0, done=1) == ["waiting: 0 of 2 nodes connected (round 2 of 3, Flower run running; 40s)"]
    assert lines(41.0, 3, done=3, status="finished:completed") == [
        "3 of 3 rounds done: 3 nodes connected, Flower run finished:completed, 0s"]


def test_federated_run_status_ends_are_kept_and_old_failures_are_read() -> None:
    assert [s.value for s in RunStatus if s.active] == ["starting", "running", "aggregated"]
    assert RunStatus.RUNNING.may_become(RunStatus.STOPPED) and RunStatus.AGGREGATED.may_become(RunStatus.DEPLOYED)
    assert not RunStatus.STOPPED.may_become(RunStatus.FAILED) and not RunStatus.FINISHED.may_become(RunStatus.RUNNING)
    assert RunStatus.STOPPED.may_become(RunStatus.STOPPED)
    assert RunStatus.parse("failed: exit code 3; see run.log") == (RunStatus.FAILED, "exit code 3; see run.log")
    assert RunStatus.parse("promoted") == (RunStatus.PROMOTED, "")
    with pytest.raises(ValueError):
        RunStatus.parse("succeeded")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_federated_registry_records_status_events_and_one_stop_request(backend: str, tmp_path: Path) -> None:
    from edgefleet.cloud_sync.coordinator.registry import Registry

    url = f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite" else load_cloud("helpers").pg_url()
    if url is None:
        pytest.skip("PostgreSQL is not reachable")
    reg = Registry(url, prefix=f"t{uuid.uuid4().hex[:8]}_")
    try:
        # Act: a drift run starts, runs, is asked twice to stop, stops; its process then reports a failure
        run = reg.create_fed_run("f", "g", "fedavg", 2, trigger="drift", reason="drift on 2 device(s) of g: a, b")
        reg.set_fed_run(run, status=RunStatus.RUNNING, flower_run_id="77")
        first = reg.request_fed_stop(run, "ops")
        again = reg.request_fed_stop(run, "someone-else")
        reg.set_fed_run(run, status=RunStatus.STOPPED, error="terminated by SIGTERM")
        late = reg.set_fed_run(run, status="failed: exit code -15")
        ended = reg.request_fed_stop(run, "late")

        # Assert: the end is kept; one stop request; events in order
        doc = reg.fed_run(run)
        assert first is not None and first.stop_requested > 0 and again is not None
        assert again.stop_requested == first.stop_requested
        assert late is True and ended is not None and ended.stop_requested == first.stop_requested
        assert doc is not None and doc.status is RunStatus.STOPPED and doc.error == "terminated by SIGTERM"
        assert doc.to_dict()["status"] == "stopped" and doc.to_dict()["stop_requested"] == first.stop_requested
        events = [(e.kind, e.status, e.message) for e in reg.fed_run_events(run)]
        assert events == [("status", "starting", "drift run: drift on 2 device(s) of g: a, b"),
                          ("status", "running", ""), ("stop", "", "stop requested by ops"),
                          ("status", "stopped", "terminated by SIGTERM")]
        assert reg.fed_run_events("no-such-run") == []
    finally:
        reg.drop_all()
        reg.close()


def test_federated_registry_reads_the_failures_an_older_registry_wrote(tmp_path: Path) -> None:
    """A registry from before RunStatus: no error/stop_requested columns, a failure spelt ``failed: REASON``."""
    import sqlite3

    from edgefleet.cloud_sync.coordinator.registry import Registry

    db = tmp_path / "old.db"
    Registry(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as c:  # back to the older schema, with a run it wrote
        c.execute("ALTER TABLE ef_fed_runs DROP COLUMN error")
        c.execute("ALTER TABLE ef_fed_runs DROP COLUMN stop_requested")
        c.execute("INSERT INTO ef_fed_runs (id, fleet, group_name, status, strategy, rounds, trigger, reason, "
                  "flower_run_id, config, result, created, updated) VALUES ('r1', 'f', 'g', "
                  "'failed: exit code 3; see runs/r1/run.log', 'fedavg', 1, 'drift', '', '', '{}', '{}', 1.0, 1.0)")

    reg = Registry(f"sqlite:///{db}")
    try:
        run = reg.fed_run("r1")
        assert run is not None and run.status is RunStatus.FAILED and run.error == "exit code 3; see runs/r1/run.log"
        assert run.stop_requested == 0.0
    finally:
        reg.close()


def _call(cf: CloudFleet, method: str, path: str, **kw: Any) -> Any:
    import httpx

    return httpx.request(method, cf.api + path, headers={"Authorization": f"Bearer {CloudFleet.TOKEN}"}, timeout=30,
                         **kw)


def test_federated_stop_route_sets_the_flag_once_refuses_ended_runs_and_forces(cloud_fleet: CloudFleet) -> None:
    # Arrange: two runs recorded through the API, as `federated run --api` records them
    new = {"group": "g", "strategy": "fedavg", "rounds": 2}
    a = _call(cloud_fleet, "POST", "/v1/federated/runs", json=new).json()["id"]
    b = _call(cloud_fleet, "POST", "/v1/federated/runs", json=new).json()["id"]

    # Act
    stop_a = _call(cloud_fleet, "POST", f"/v1/federated/runs/{a}/stop")
    finish_a = _call(cloud_fleet, "PATCH", f"/v1/federated/runs/{a}", json={"status": "finished"})
    stop_ended = _call(cloud_fleet, "POST", f"/v1/federated/runs/{a}/stop")
    forced = _call(cloud_fleet, "POST", f"/v1/federated/runs/{b}/stop", params={"force": "true"})
    revived = _call(cloud_fleet, "PATCH", f"/v1/federated/runs/{b}", json={"status": "running"})
    failed_late = _call(cloud_fleet, "PATCH", f"/v1/federated/runs/{b}", json={"status": "failed", "error": "x"})
    events = _call(cloud_fleet, "GET", f"/v1/federated/runs/{b}/events").json()
    missing = _call(cloud_fleet, "POST", "/v1/federated/runs/nosuchrun/stop")

    # Assert: the flag is set (no coordinator supervises these runs: their processes poll it)
    assert stop_a.status_code == 202, stop_a.text
    assert stop_a.json()["supervised"] is False and stop_a.json()["run"]["stop_requested"] > 0
    assert stop_a.json()["run"]["status"] == "running"
    assert finish_a.status_code == 200 and finish_a.json()["status"] == "finished"
    assert stop_ended.status_code == 409 and "has already ended: finished" in stop_ended.json()["detail"]
    assert forced.status_code == 202 and forced.json()["run"]["status"] == "stopped"
    assert "stopped by bootstrap with force" in forced.json()["run"]["error"]
    assert revived.status_code == 409 and failed_late.status_code == 409
    assert [(e["kind"], e["status"]) for e in events] == [("status", "running"), ("stop", ""),
                                                          ("status", "stopped")]
    assert events[1]["message"] == "stop requested by bootstrap"
    assert missing.status_code == 404


@pytest.mark.slow
def test_federated_run_by_hand_shows_waiting_and_honours_a_stop_asked_through_the_api(
        fleet: Fleet, cloud_fleet: CloudFleet, tmp_path: Path) -> None:
    """No SuperNode is connected: the run says so every few seconds instead of nothing; a stop asked for through
    the API (as from another host) reaches it through its record, and its Flower run is stopped on the SuperLink."""
    from edgefleet.cloud_sync.federated.config import FederatedConfig
    from edgefleet.cloud_sync.federated.records import RunRecord
    from edgefleet.cloud_sync.federated.runner import ControlClient, RunStopped, run_federated

    # Arrange: a run record, as `federated run --api` opens it; a thread asks to stop once the run said it waits
    cfg = FederatedConfig(rounds=2, min_nodes=2, layers="64,10", round_timeout=120)
    record = RunRecord.open(cloud_fleet.api, CloudFleet.TOKEN, group="g", strategy="fedavg", rounds=2)
    said: list[str] = []
    asked: dict[str, Any] = {}

    def operator() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum("waiting: 0 of 2 nodes connected" in s for s in said) < 2:
            time.sleep(0.1)
        asked["answer"] = _call(cloud_fleet, "POST", f"/v1/federated/runs/{record.run_id}/stop")

    threading.Thread(target=operator, daemon=True).start()

    # Act
    t0 = time.monotonic()
    with pytest.raises(RunStopped) as stopped:
        run_federated(cfg, fleet.link.address, work_dir=tmp_path / "run", timeout=90, progress=said.append,
                      should_stop=record.stop_requested, progress_every=1.0, poll=0.5)
    record.ended(stopped.value)
    seconds = time.monotonic() - t0

    # Assert: it said what it waits for, repeatedly, before any round; the stop came through its record
    waiting = [s for s in said if s.startswith("waiting: 0 of 2 nodes connected (round 1 of 2")]
    assert len(waiting) >= 2, said
    assert asked["answer"].status_code == 202 and asked["answer"].json()["supervised"] is False
    assert "stop requested through the coordinator API" in str(stopped.value)
    assert any(s.startswith("stopped Flower run ") for s in said), said
    run = cloud_fleet.coord.registry.fed_run(record.run_id)
    assert run is not None and run.status is RunStatus.STOPPED and "stop requested" in run.error
    # the Flower run is stopped on the SuperLink too, not left waiting for nodes
    flower_id = int(said[-1].split()[3])
    control = ControlClient(fleet.link.address)
    try:
        deadline = time.monotonic() + 20
        while control.run_status(flower_id) != "finished:stopped" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert control.run_status(flower_id) == "finished:stopped"
    finally:
        control.close()
    assert seconds < 60


def test_federated_ls_log_and_stop_commands(cloud_fleet: CloudFleet, capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main as cli_main
    from edgefleet.cloud_sync.federated.records import round_metrics

    # Arrange: a drift run that trained a round and failed, and a run started by hand that is running
    reg = cloud_fleet.coord.registry
    failed = reg.create_fed_run("f1", "g", "fedprox", 2, trigger="drift", reason="drift on 2 device(s) of g: a, b")
    reg.set_fed_run(failed, status=RunStatus.RUNNING, flower_run_id="4242")
    reg.put_fed_round(failed, 1, **round_metrics({"round": 1, "train_replies": 2, "examples": 300, "seconds": 4.5,
                                                  "train": {"train-loss": 0.7, "train-accuracy": 0.81},
                                                  "central": {"loss": 0.6, "accuracy": 0.83}}, "fedprox"))
    reg.set_fed_run(failed, status=RunStatus.FAILED, error="the federated run failed: ValueError: bad weights")
    running = reg.create_fed_run("f1", "h", "fedavg", 3, status=RunStatus.RUNNING)
    api = ["--api", cloud_fleet.api, "--token", CloudFleet.TOKEN]

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli_main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    # Act
    ls = run("federated", "ls", *api)
    ls_h = run("federated", "ls", "--group", "h", "--json", *api)
    log = run("federated", "log", failed, *api)
    stop_ended = run("federated", "stop", failed, *api)
    stop = run("federated", "stop", running, "--no-wait", *api)
    flag = reg.fed_run(running)
    forced = run("federated", "stop", running, "--force", *api)
    unknown = run("federated", "log", "nosuchrun", *api)

    # Assert: ls has status, group, rounds done and start time of each run, newest first
    assert ls[0] == 0
    lines = [line for line in ls[1].splitlines() if running in line or failed in line]
    assert running in lines[0] and "running" in lines[0] and " h " in lines[0] and "0/3" in lines[0]
    assert failed in lines[1] and "failed" in lines[1] and "drift" in lines[1] and "1/2" in lines[1]
    assert time.strftime("%Y-%m-%d") in lines[1]
    assert ls_h[0] == 0 and [r["id"] for r in json.loads(ls_h[1])] == [running]
    # log: the rounds, the status changes in time order and the failure reason
    assert log[0] == 0, log
    text = log[1]
    assert "started for: drift on 2 device(s) of g: a, b" in text
    assert text.index("status starting") < text.index("status running") < text.index("round 1: 2 device(s)")
    assert text.index("round 1: 2 device(s)") < text.index("status failed: the federated run failed")
    assert "train acc 0.810" in text and "holdout acc 0.830" in text
    assert "failure: the federated run failed: ValueError: bad weights" in text
    # stop: an ended run is refused (nothing stopped); a running one gets its flag; --force records it stopped
    assert stop_ended[0] != 0 and "has already ended: failed" in stop_ended[2]
    assert stop[0] == 0 and "its `federated run` process stops when it next polls its record" in stop[1]
    assert flag is not None and flag.stop_requested > 0 and flag.status is RunStatus.RUNNING
    assert forced[0] == 0 and f"federated run {running} stopped: stopped by bootstrap with force" in forced[1]
    assert unknown[0] != 0 and "no federated run 'nosuchrun'" in unknown[2]


@pytest.mark.slow
def test_federated_drift_started_run_is_stopped_through_the_api(fleet: Fleet, cloud_fleet: CloudFleet, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A run drift started, supervised by the coordinator (a real ``edgefleet federated run`` process on a real
    SuperLink with no node connected), stopped with ``federated stop`` through the API."""
    from edgefleet.cli import main as cli_main
    from edgefleet.cloud_sync.federated.autorun import RUN_TOKEN_PREFIX, AutoRetrain
    from edgefleet.cloud_sync.federated.runner import ControlClient

    # Arrange: auto-retraining for g; a drift alert starts the run, which waits for 2 nodes
    reg, fleet_id = cloud_fleet.coord.registry, cloud_fleet.fleet
    auto = AutoRetrain(cloud_fleet.coord, cloud_fleet.api, None, tmp_path / "runs").attach()
    reg.set_retrain(fleet_id, "g", True, {"min_devices": 1, "cooldown_s": 0.0, "rounds": 1,
                                          "args": ["--superlink", fleet.link.address, "--min-nodes", "2",
                                                   "--layers", "64,10"]})
    run_id = auto.on_drift("d1", "g", {"psi_max": 0.9, "version": "1"})
    assert run_id is not None
    log = tmp_path / "runs" / run_id / "run.log"
    cloud_fleet.wait_for(lambda: log.exists() and "waiting: 0 of 2 nodes connected" in log.read_text(), 90)
    running = reg.fed_run(run_id)
    assert running is not None and running.status is RunStatus.RUNNING and running.flower_run_id

    # Act
    code = cli_main(["federated", "stop", run_id, "--api", cloud_fleet.api, "--token", CloudFleet.TOKEN])
    out = capsys.readouterr()
    assert cli_main(["federated", "log", run_id, "--api", cloud_fleet.api, "--token", CloudFleet.TOKEN]) == 0
    shown = capsys.readouterr().out

    # Assert: stopped by the coordinator, which supervised it; its process is gone, its token revoked
    assert code == 0, out
    assert "stop requested; the coordinator supervising it stops its process" in out.out
    assert f"federated run {run_id} stopped" in out.out
    run = reg.fed_run(run_id)
    assert run is not None and run.status is RunStatus.STOPPED and run.error, run
    cloud_fleet.wait_for(lambda: not auto.children, 30)
    assert RUN_TOKEN_PREFIX + run_id not in [t.name for t in reg.tokens(fleet_id)]
    assert "stop requested by bootstrap" in shown and "status stopped" in shown
    # the run said what it waited for, and stopped its Flower run on the SuperLink
    text = log.read_text()
    assert f"submitted as Flower run {running.flower_run_id}" in text
    control = ControlClient(fleet.link.address)
    try:
        cloud_fleet.wait_for(lambda: control.run_status(int(running.flower_run_id)) == "finished:stopped", 20)
    finally:
        control.close()
