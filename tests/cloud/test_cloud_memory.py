"""End-to-end over the in-memory broker: coordinator + agents, no sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import wait_for

from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.device import DeviceSync
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport


def _fleet(tmp_path: Path, make_agent: Any, archives: dict[str, Path], n: int, broker: MemoryBroker,
           chunk_size: int = 4096) -> tuple[Coordinator, list[DeviceSync]]:
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    coord = Coordinator(reg, MemoryTransport(broker, "coord"), "f1", chunk_size=chunk_size, tick_seconds=0.05,
                        groups={f"d{i}": "g" for i in range(n)})  # the operator's assignment
    coord.start()
    syncs = []
    for i in range(n):
        dev = f"d{i}"
        agent = make_agent(dev, install=archives["1"])
        s = DeviceSync(agent, lambda will, dev=dev: MemoryTransport(broker, dev, will=will), "f1", dev,
                       tmp_path / "devices" / dev / "sync", group="g", telemetry_interval=0.1, stall_seconds=0.5)
        s.start()
        syncs.append(s)
    wait_for(lambda: len(reg.devices("f1")) == n)
    return coord, syncs


def test_memory_deploy_with_delta(tmp_path: Path, make_agent: Any, archives: dict[str, Path]) -> None:
    broker = MemoryBroker()
    coord, syncs = _fleet(tmp_path, make_agent, archives, 3, broker)
    coord.add_artifact(archives["1"].read_bytes())  # what the devices run: the delta base
    dep = coord.create_deployment(archives["2"].read_bytes(), "g", RolloutPlan(0.34, (1.0,), 0.0))
    wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 30)
    assert all(s.agent.active_version == "2" for s in syncs)
    assert sum(s.stats["delta_used"] for s in syncs) == 3
    for s in syncs:
        s.stop()
    coord.stop()
