"""Rollouts through a real mosquitto: end-to-end deploy (API + CLI), a bad canary halts, offline catch-up."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from helpers import coordinator, device, serve_api

from edgefleet.cli import main as cli_main
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan


@pytest.fixture()
def api(tmp_path: Path) -> Any:
    """Start the HTTP API of a coordinator in a thread; yields a function (coord) -> base URL."""
    with ExitStack() as stack:

        def start(coord: Any, token: str = "s3cret") -> str:
            return stack.enter_context(serve_api(coord, token))

        yield start


def test_end_to_end_deploy_via_cli(broker: Any, tmp_path: Path, make_agent: Any, archives: dict[str, Path],
                                   api: Any, capsys: Any, monkeypatch: Any) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    syncs = [device(broker.url, make_agent(f"d{i}", install=archives["1"]), tmp_path) for i in range(4)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 4)
    base = api(coord)
    monkeypatch.setenv("EDGEFLEET_TOKEN", "s3cret")

    def cli(*argv: str) -> Any:
        capsys.readouterr()
        assert cli_main(list(argv)) == 0
        return json.loads(capsys.readouterr().out)

    devices = cli("fleet", "devices", "--api", base, "--json")
    assert {d["device_id"] for d in devices} == {"d0", "d1", "d2", "d3"}
    dep = cli("fleet", "deploy", str(archives["2"]), "--group", "g", "--canary", "25%", "--waves", "50%,100%",
              "--max-failure", "0%", "--api", base, "--json")
    wait_for(lambda: coord.registry.deployment(dep["id"]).state == "completed", 60)
    st = cli("fleet", "status", dep["id"], "--api", base, "--json")
    assert st["counts"] == {"SUCCEEDED": 4}
    assert sorted({j["stage"] for j in st["jobs"]}) == [0, 1, 2]  # canary, then two waves
    assert all(s.agent.active_version == "2" for s in syncs)
    # telemetry reaches the registry, aggregated per version and group
    for s in syncs:
        s.agent.predict([[0.1, 0.2, 0.3, 0.4]])
        s.agent.flush_telemetry()
    wait_for(lambda: any(r.predictions >= 4 for r in coord.registry.telemetry("f1", "g", "2")), 20)
    tel = cli("fleet", "telemetry", "--group", "g", "--version", "2", "--api", base, "--json")
    assert sum(r["predictions"] for r in tel["rows"]) == 4
    # the API refuses a wrong token; OpenAPI is served
    assert cli_main(["fleet", "devices", "--api", base, "--token", "wrong", "--json"]) != 0
    import httpx

    assert "/v1/deployments" in httpx.get(base + "/openapi.json").json()["paths"]
    for s in syncs:
        s.stop()
    coord.stop()


def test_bad_canary_halts_rollout(broker: Any, tmp_path: Path, make_agent: Any, archives: dict[str, Path]) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    syncs = [device(broker.url, make_agent(f"d{i}", install=archives["1"]), tmp_path) for i in range(4)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 4)
    dep = coord.create_deployment(archives["3bad"].read_bytes(), "g", RolloutPlan(0.25, (0.5, 1.0), 0.02))
    wait_for(lambda: coord.registry.deployment(dep.id).state == "halted", 30)
    time.sleep(1.0)  # give a wrong dispatch the time to show
    jobs = coord.registry.jobs(dep.id)
    assert len(jobs) == 1 and jobs[0].status == "REJECTED"  # only the canary ever got it
    canary = jobs[0].device_id
    for s in syncs:
        assert s.agent.active_version == "1"
        if s.device_id != canary:
            assert s.stats["chunks_received"] == 0
    assert "failed" in coord.registry.deployment(dep.id).reason
    for s in syncs:
        s.stop()
    coord.stop()


def test_offline_device_catches_up(broker: Any, tmp_path: Path, make_agent: Any, archives: dict[str, Path]) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    agents = {f"d{i}": make_agent(f"d{i}", install=archives["1"]) for i in range(3)}
    syncs = {d: device(broker.url, a, tmp_path) for d, a in agents.items()}
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 3)
    syncs["d2"].stop()  # d2 goes away (graceful: it says so)
    wait_for(lambda: not coord.registry.device("f1", "d2").online)
    dep = coord.create_deployment(archives["2"].read_bytes(), "g", RolloutPlan(0.34, (1.0,), 0.0))
    wait_for(lambda: "d2" in {j.device_id for j in coord.registry.jobs(dep.id)}, 30)
    time.sleep(0.5)
    status = {j.device_id: j.status for j in coord.registry.jobs(dep.id)}
    assert status == {"d0": "SUCCEEDED", "d1": "SUCCEEDED", "d2": "QUEUED"} and coord.registry.deployment(dep.id).state == "running"
    syncs["d2"] = device(broker.url, agents["d2"], tmp_path)  # back online: the retained desired state waits
    wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 30)
    assert agents["d2"].active_version == "2"
    for s in syncs.values():
        s.stop()
    coord.stop()
