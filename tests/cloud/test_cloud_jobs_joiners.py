"""Devices that join a group while its deployment runs or after it completed, through a real mosquitto."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conftest import wait_for
from helpers import coordinator, device
from jobs_fakes import FakeDevices

from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan, View, evaluate


def test_joiners_follow_the_stage() -> None:
    plan = RolloutPlan(0.25, (0.5, 1.0), 0.0)
    orig = ("a", "b", "c", "d")  # stages end at 1, 2, 4
    on = frozenset("abcdxy")
    # joined during the canary: not in the canary, due with the first wave
    v = View("running", 0, orig + ("x",), {"a": "IN_PROGRESS"}, on, planned=4)
    assert evaluate(plan, v).dispatch == ()
    d = evaluate(plan, View("running", 0, orig + ("x",), {"a": "SUCCEEDED"}, on, planned=4))
    assert d.dispatch == ("b", "x") and d.stage == 1
    # joined after the canary: dispatched at once with the current wave, the stage does not move
    d = evaluate(plan, View("running", 1, orig + ("x", "y"), {"a": "SUCCEEDED", "b": "IN_PROGRESS", "x": "QUEUED"}, on,
                            planned=4))
    assert d.dispatch == ("y",) and d.stage == 1
    # completed: right away; paused or halted: never
    assert evaluate(plan, View("completed", 2, orig + ("y",), dict.fromkeys(orig, "SUCCEEDED"), on, 4)).dispatch == ("y",)
    for state in ("paused", "halted", "rolled_back"):
        assert evaluate(plan, View(state, 1, orig + ("y",), {"a": "SUCCEEDED", "b": "SUCCEEDED"}, on, 4)).dispatch == ()
    # the joiners must end before the deployment completes
    jobs = dict.fromkeys(orig, "SUCCEEDED")
    assert not evaluate(plan, View("running", 2, orig + ("y",), {**jobs, "y": "IN_PROGRESS"}, on, 4)).complete
    assert evaluate(plan, View("running", 2, orig + ("y",), {**jobs, "y": "SUCCEEDED"}, on, 4)).complete


def test_devices_joining_mid_rollout_and_after(broker: Any, tmp_path: Path, make_agent: Any,
                                               archives: dict[str, Path], monkeypatch: Any, capsys: Any) -> None:
    from fastapi.testclient import TestClient

    from edgefleet.cloud_sync.coordinator.api import create_app

    coord = coordinator(broker.url, tmp_path / "reg.db")
    api = TestClient(create_app(coord, "t0k"), headers={"Authorization": "Bearer t0k"})
    agents = {d: make_agent(d, install=archives["1"]) for d in ("d0", "d1", "j2", "j3", "j4")}
    syncs = {d: device(broker.url, agents[d], tmp_path) for d in ("d0", "d1")}
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 2)
    syncs.pop("d1").stop()  # d1 stays away: the last wave waits for it
    wait_for(lambda: not coord.registry.device("f1", "d1").online)
    r = api.post("/v1/deployments", params={"group": "g", "canary": "50%", "waves": "100%", "job_timeout": "10m"},
                 content=archives["2"].read_bytes())
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["job_timeout"] == 600 and dep["targets"] == 2
    jobs = lambda: {j.device_id: j for j in coord.registry.jobs(dep["id"])}  # noqa: E731
    state = lambda: coord.registry.deployment(dep["id"])  # noqa: E731
    wait_for(lambda: state().stage == 1 and "d1" in jobs(), 30)  # past the canary, in the last wave
    # j2 connects now: it is a new member of the group and gets the job with the current wave
    syncs["j2"] = device(broker.url, agents["j2"], tmp_path)
    wait_for(lambda: getattr(jobs().get("j2"), "status", None) == "SUCCEEDED", 30)
    assert jobs()["j2"].stage == 1 and agents["j2"].active_version == "2"
    assert state().state == "running" and state().planned == 2 and state().targets == ["d0", "d1", "j2"]
    # paused: j3, registered in another group and then moved into g by the operator, waits
    assert api.post(f"/v1/deployments/{dep['id']}/pause").json()["state"] == "paused"
    syncs["j3"] = device(broker.url, agents["j3"], tmp_path, group="staging")
    wait_for(lambda: coord.registry.device("f1", "j3") is not None)
    assert api.patch("/v1/devices/j3", json={"group": "g"}).json()["group"] == "g"
    wait_for(lambda: "j3" in state().targets, 10)
    time.sleep(0.5)
    assert "j3" not in jobs() and syncs["j3"].stats["chunks_received"] == 0
    api.post(f"/v1/deployments/{dep['id']}/resume")
    wait_for(lambda: getattr(jobs().get("j3"), "status", None) == "SUCCEEDED", 30)
    # d1 returns, the deployment completes; j4 joins afterwards and gets the version right away
    syncs["d1"] = device(broker.url, agents["d1"], tmp_path)
    wait_for(lambda: state().state == "completed", 30)
    syncs["j4"] = device(broker.url, agents["j4"], tmp_path)
    wait_for(lambda: getattr(jobs().get("j4"), "status", None) == "SUCCEEDED", 30)
    assert agents["j4"].active_version == "2" and state().state == "completed"
    kinds = [e.kind for e in coord.registry.events(dep["id"])]
    assert kinds.count("stage") == 2 and kinds.count("joined") == 3 and kinds[-2:] == ["completed", "joined"]
    assert sorted(j.device_id for j in coord.registry.jobs(dep["id"])) == ["d0", "d1", "j2", "j3", "j4"]
    # the operator sees it: `fleet status DEPLOYMENT` lists the rollout events
    from edgefleet.cli import main as cli_main
    from edgefleet.cloud_sync import cli as cloud_cli

    monkeypatch.setattr(cloud_cli, "api_call", lambda url, tok, method, path, ca_cert=None, **kw: api.request(method, path, **kw).json())
    capsys.readouterr()
    assert cli_main(["fleet", "status", dep["id"], "--token", "t0k"]) == 0
    out = capsys.readouterr().out
    assert "5/5 done" in out and "job timeout 600s" in out and "joined (stage 1): j4" in out and "completed" in out
    # a halted deployment dispatches to nobody who joins its group
    fake = FakeDevices(broker.port, "f1", ["h0"], "h", answer=lambda dev, d: ["DOWNLOADING", "REJECTED"])
    wait_for(lambda: coord.registry.device("f1", "h0") is not None)
    bad = coord.create_deployment(archives["2"].read_bytes(), "h", RolloutPlan(0.0, (1.0,), 0.0))
    wait_for(lambda: coord.registry.deployment(bad.id).state == "halted", 20)
    late = FakeDevices(broker.port, "f1", ["h1"], "h", client_id="fake-late")
    wait_for(lambda: coord.registry.device("f1", "h1") is not None)
    time.sleep(0.5)
    assert [j.device_id for j in coord.registry.jobs(bad.id)] == ["h0"] and late.desired["h1"] == []
    for c in (fake, late):
        c.close()
    for s in syncs.values():
        s.stop()
    coord.stop()
