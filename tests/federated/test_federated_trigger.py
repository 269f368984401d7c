"""Drift alerts from telemetry start a federated run for a group whose operator enabled it, once per cool-down;
the run uses central differential privacy (clipping + noise) and records the budget it spent.

Real pieces: mosquitto, the coordinator and its HTTP API, agents whose drift events travel as telemetry,
``flower-superlink`` and supervised ``flower-supernode`` processes, and the run the trigger launches
(``edgefleet federated run`` in a child process, submitting with ``flwr run``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.cloud_sync.coordinator.rows import FedRun
from edgefleet.cloud_sync.federated.aggregate import gaussian_epsilon
from edgefleet.cloud_sync.federated.partition import non_iid_partitions
from edgefleet.cloud_sync.federated.trainer import MLPSpec

from .conftest import CloudFleet, Digits, Fleet

pytestmark = pytest.mark.slow


def _drift(agent: Any) -> None:
    agent.telemetry.event("drift", {"psi_max": 0.8, "psi_mean": 0.3, "count": 500, "worst_feature": 3,
                                    "threshold": 0.25, "version": "1"})


def test_federated_drift_alerts_start_one_recorded_run_per_cooldown(fleet: Fleet, cloud_fleet: CloudFleet,
                                                                    digits: Digits, tmp_path: Path) -> None:
    from edgefleet.cli import main as cli_main
    from edgefleet.cloud_sync.federated.autorun import AutoRetrain
    from edgefleet.device_agent import Agent
    from edgefleet.device_agent.config import AgentConfig, SamplesConfig, TelemetryConfig

    # Arrange: two agents of group g (and one of group h) report through the broker; their samples feed SuperNodes
    reg, fleet_id = cloud_fleet.coord.registry, cloud_fleet.fleet
    retrain = AutoRetrain(cloud_fleet.coord, cloud_fleet.api, CloudFleet.TOKEN, tmp_path / "runs").attach()
    parts = non_iid_partitions(digits.y_train, 2, seed=0)
    agents = []
    for i, (name, group) in enumerate((("a0", "g"), ("a1", "g"), ("b0", "h"))):
        cfg = AgentConfig(state_dir=str(tmp_path / name), device_id=name, samples=SamplesConfig(enabled=True),
                          telemetry=TelemetryConfig(flush_seconds=3600))
        agent = Agent(cfg, tick_seconds=0.05)
        agents.append(agent)
        cloud_fleet.connect(agent, tmp_path, group=group)
        if group == "g":
            for xi, yi in zip(digits.x_train[parts[i]][:150], digits.y_train[parts[i]][:150]):
                agent.feedback(xi, int(yi))
            fleet.add_node_for(name, agent.root / "samples.db")
    cloud_fleet.wait_for(lambda: sum(d.online for d in reg.devices(fleet_id)) == 3)
    clip, noise = 0.01, 0.5  # central DP: each update clipped to norm 0.01, Gaussian noise std 0.5 * 0.01 / 2
    run_options = ["--superlink", fleet.link.address, "--min-nodes", "2", "--local-epochs", "1",
                   "--round-timeout", "60", "--timeout", "150", "--layers", "64,10", "--dp-noise", str(noise),
                   "--dp-clip", str(clip), "--preprocessing", digits.preprocessing]
    common = ["--api", cloud_fleet.api, "--token", CloudFleet.TOKEN]
    assert cli_main(["fleet", "retrain", *common, "--group", "g", "--on-drift", "on", "--min-devices", "2",
                     "--cooldown", "3600", "--rounds", "1", "--", *run_options]) == 0

    def drift_runs() -> list[FedRun]:
        return [r for r in reg.fed_runs(fleet_id, limit=50) if r.trigger == "drift"]

    # Act 1: one device of g drifts (below min-devices), and the group h without auto-retraining drifts
    _drift(agents[0])
    _drift(agents[2])
    cloud_fleet.wait_for(lambda: len(reg.alerts(fleet_id)) == 2)
    time.sleep(0.5)
    assert drift_runs() == []

    # Act 2: the second device of g drifts -> one run starts; more alerts while it runs start nothing
    _drift(agents[1])
    cloud_fleet.wait_for(lambda: len(drift_runs()) == 1)
    for a in agents[:2]:
        _drift(a)
    cloud_fleet.wait_for(lambda: len(reg.alerts(fleet_id)) == 5)
    run = cloud_fleet.wait_for(lambda: (r := reg.fed_run(drift_runs()[0].id)) and r.status not in
                               ("starting", "running", "aggregated") and r, 180)

    # Act 3: after the run, new alerts within the cool-down start nothing
    for a in agents[:2]:
        _drift(a)
    cloud_fleet.wait_for(lambda: len(reg.alerts(fleet_id)) == 7)
    time.sleep(0.5)

    # Assert: exactly one run, for g, recorded by the run itself with its round; the token is not on its command line
    log = (tmp_path / "runs" / run.id / "run.log")
    assert run.status == "finished", (run, log.read_text()[-3000:] if log.exists() else "no log")
    assert len(drift_runs()) == 1 and run.group == "g" and run.trigger == "drift"
    assert run.reason == "drift on 2 device(s) of g: a0, a1"
    assert run.rounds == 1 and run.flower_run_id and run.config["min-nodes"] == 2
    assert [r.participants for r in run.round_metrics] == [2]
    assert run.round_metrics[0].train_accuracy is not None
    # central DP: the budget spent is recorded per round and for the run ...
    eps = gaussian_epsilon(noise, 1, 1e-5)
    assert run.round_metrics[0].dp_epsilon == pytest.approx(eps)
    assert run.result["privacy"]["epsilon"] == pytest.approx(eps)
    # ... and the aggregate moved by the clipped mean (<= 0.01) plus noise of about 0.0025 * sqrt(650) = 0.064,
    # far less than an unclipped local update
    with np.load(tmp_path / "runs" / run.id / "out" / "aggregate.npz") as z:
        w = [z[f"arr_{i}"] for i in range(len(z.files))]
    moved = float(np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(w, MLPSpec.parse("64,10").init(0)))))
    assert 0.04 < moved < 0.1, moved
    command = run.result["command"]
    assert f"--record-id {run.id}" in command and "--group g" in command and "--rounds 1" in command
    assert CloudFleet.TOKEN not in command
    # the run recorded its end just before its process exits: the launcher reaps it (a loaded machine: seconds)
    cloud_fleet.wait_for(lambda: not retrain.children, 60)
    assert json.loads((tmp_path / "runs" / run.id / "summary.json").read_text())["record_id"] == run.id
    for a in agents:
        a.close()
