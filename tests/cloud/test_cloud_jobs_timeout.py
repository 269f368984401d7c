"""Job TIMED_OUT (AWS IoT Jobs in-progress timer) through a real mosquitto: a started job that never ends
times out, counts as a failure, and its late update is ignored; an offline device that has not started is
never timed out and gets its job when it returns."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from helpers import coordinator, device
from jobs_fakes import FakeDevices

from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan, View, evaluate, parse_duration, timed_out
from edgefleet.errors import ConfigError


def test_timeout_rules_and_gate() -> None:
    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("2h") == 7200
    assert parse_duration(45) == 45
    for bad in ("ten minutes", "0s", "30d", ""):
        with pytest.raises(ConfigError):
            parse_duration(bad)
    # started jobs time out online or not; a queued one only while its device is online
    assert "starting" in timed_out("DOWNLOADING", started=100, delivered=0, online=False, now=161, timeout=60)
    assert timed_out("IN_PROGRESS", started=100, delivered=0, online=True, now=159, timeout=60) == ""
    assert timed_out("QUEUED", started=0, delivered=100, online=False, now=10_000, timeout=60) == ""
    assert timed_out("QUEUED", started=0, delivered=0, online=True, now=10_000, timeout=60) == ""
    assert "did not start" in timed_out("QUEUED", started=0, delivered=100, online=True, now=161, timeout=60)
    assert timed_out("SUCCEEDED", started=100, delivered=100, online=True, now=10_000, timeout=60) == ""
    # a timed-out job is a failure for the health gate
    d = evaluate(RolloutPlan(0.5, (1.0,), 0.0), View("running", 0, ("a", "b"), {"a": "TIMED_OUT"}, frozenset("ab")))
    assert d.halt and "1 of 1" in d.halt


def test_cli_passes_the_job_timeout(archives: dict[str, Path], monkeypatch: Any, capsys: Any) -> None:
    from edgefleet.cli import main as cli_main
    from edgefleet.cloud_sync.coordinator import client

    sent: dict[str, Any] = {}
    monkeypatch.setattr(client, "api_call", lambda api, token, method, path, **kw: sent.update(kw) or {"id": "x"})
    assert cli_main(["fleet", "deploy", str(archives["2"]), "--group", "g", "--job-timeout", "10m", "--token", "t",
                     "--json"]) == 0
    assert sent["params"]["job_timeout"] == "10m"
    capsys.readouterr()


def test_started_job_times_out_offline_device_does_not(broker: Any, tmp_path: Path, make_agent: Any,
                                                       archives: dict[str, Path]) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    a0 = device(broker.url, make_agent("a0", install=archives["1"]), tmp_path)
    b1_agent = make_agent("b1", install=archives["1"])
    b1 = device(broker.url, b1_agent, tmp_path)
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 2)
    b1.stop()  # away before the deployment: must not time out
    wait_for(lambda: not coord.registry.device("f1", "b1").online)
    # c2 starts its job and then goes silent (a device stuck mid-download)
    fake = FakeDevices(broker.port, "f1", ["c2"], "g", answer=lambda dev, d: ["DOWNLOADING"])
    wait_for(lambda: coord.registry.device("f1", "c2") is not None)
    timeout = 3.0
    dep = coord.create_deployment(archives["2"].read_bytes(), "g", RolloutPlan(0.0, (1.0,), 0.5), job_timeout=timeout)
    jobs = lambda: {j.device_id: j for j in coord.registry.jobs(dep.id)}  # noqa: E731
    wait_for(lambda: getattr(jobs().get("a0"), "status", None) == "SUCCEEDED", 20)
    c2 = wait_for(lambda: jobs()["c2"] if getattr(jobs().get("c2"), "status", None) == "TIMED_OUT" else None, 20)
    assert c2.reason == "timeout" and "3s of starting (last: DOWNLOADING)" in c2.message
    assert time.time() - c2.started >= timeout
    # the device is told to stop: its retained desired state no longer holds the job
    wait_for(lambda: any(d.action == "none" and d.job_id == c2.job_id for d in fake.desired["c2"]), 10)
    # the offline device that has not started keeps its queued job well past the timeout
    time.sleep(1.0)
    assert jobs()["b1"].status == "QUEUED" and time.time() - jobs()["b1"].created > timeout
    # a late update is ignored: the job stays TIMED_OUT, but what the device runs is recorded
    fake.report("c2", c2.job_id, "SUCCEEDED", 2, active_version="2")
    wait_for(lambda: coord.counters["late_job_updates"] == 1, 10)
    assert jobs()["c2"].status == "TIMED_OUT"
    assert coord.registry.device("f1", "c2").active_version == "2"
    assert coord.registry.deployment(dep.id).state == "running"  # 1 of 3 bad: within 50%
    # b1 returns: it gets its job (the clock starts now) and the deployment completes
    b1 = device(broker.url, b1_agent, tmp_path)
    wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 30)
    assert b1_agent.active_version == "2"
    summary = coord.summary(coord.registry.deployment(dep.id))
    assert summary["counts"] == {"SUCCEEDED": 2, "TIMED_OUT": 1} and summary["job_timeout"] == timeout
    assert [e["kind"] for e in summary["events"]] == ["stage", "timed_out", "completed"]
    fake.close()
    for s in (a0, b1):
        s.stop()
    coord.stop()


def test_lost_desired_is_redelivered_when_the_device_returns(broker: Any, tmp_path: Path, make_agent: Any,
                                                             archives: dict[str, Path], monkeypatch: Any) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    agent = make_agent("d0", install=archives["1"])
    s = device(broker.url, agent, tmp_path)
    wait_for(lambda: getattr(coord.registry.device("f1", "d0"), "online", False))
    publish, lost = coord._publish_desired, []
    # the coordinator recorded the job but the message never left (it died, or the broker lost it)
    monkeypatch.setattr(coord, "_publish_desired", lambda dev, d: lost.append(d) if not lost else publish(dev, d))
    dep = coord.create_deployment(archives["2"].read_bytes(), "g", RolloutPlan(0.0, (1.0,), 0.0))
    wait_for(lambda: len(lost) == 1, 10)
    time.sleep(0.5)
    assert [j.status for j in coord.registry.jobs(dep.id)] == ["QUEUED"] and agent.active_version == "1"
    s.stop()
    s = device(broker.url, agent, tmp_path)  # it reconnects: its newest queued job is published again
    wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 30)
    assert agent.active_version == "2" and coord.counters["desired_redelivered"] == 1
    s.stop()
    coord.stop()
