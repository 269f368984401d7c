"""Two coordinators sharing one registry (PostgreSQL and SQLite) tick the same rollout in parallel threads:
every device gets exactly one job, every stage starts once (real mosquitto, simulated devices)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from helpers import OPERATED, mqtt, pg_url
from jobs_fakes import FakeDevices

from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
from edgefleet.cloud_sync.coordinator.service import Coordinator


def test_lease_is_compare_and_set(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    dep = reg.create_deployment("f", "a" * 64, "m", "2", "g", 0.1, [1.0], 0.0, ["d1"])
    assert reg.acquire_lease(dep, "A", 30) and reg.acquire_lease(dep, "A", 30)  # held and renewed
    assert not reg.acquire_lease(dep, "B", 30)
    reg.release_lease(dep, "B")  # only the holder can release
    assert not reg.acquire_lease(dep, "B", 30)
    reg.release_lease(dep, "A")
    assert reg.acquire_lease(dep, "B", 0.05)
    time.sleep(0.1)
    assert reg.acquire_lease(dep, "A", 30)  # an expired lease (its holder died) is taken over
    assert reg.add_job("f", dep, "d1", "install", 0) and reg.add_job("f", dep, "d1", "install", 0) == ""
    first = reg.next_seq("orders")
    assert reg.next_seq("orders") == first + 1 and first > 1_700_000_000_000  # starts at the time in ms
    reg.close()


def test_operator_action_waits_for_the_lease(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from edgefleet.cloud_sync.coordinator.api import create_app
    from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport

    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    coord = Coordinator(reg, MemoryTransport(MemoryBroker(), "coord"), "f", lease_seconds=0.2)
    dep = reg.create_deployment("f", "a" * 64, "m", "2", "g", 0.1, [1.0], 0.0, ["d1"])
    api = TestClient(create_app(coord, "t"), headers={"Authorization": "Bearer t"})
    assert reg.acquire_lease(dep, "other-coordinator", 60)  # busy in a long tick elsewhere
    r = api.post(f"/v1/deployments/{dep}/pause")
    assert r.status_code == 409 and "another coordinator" in r.json()["detail"]
    assert reg.deployment(dep).state == "running"
    reg.release_lease(dep, "other-coordinator")
    assert api.post(f"/v1/deployments/{dep}/pause").json()["state"] == "paused"
    assert [e.kind for e in reg.events(dep)] == ["paused"]
    assert api.post("/v1/deployments/nope/pause").status_code == 404
    reg.close()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_older_registry_gets_the_new_columns(backend: str, tmp_path: Path) -> None:
    from sqlalchemy import text

    url = pg_url() if backend == "postgresql" else f"sqlite:///{tmp_path / 'old.db'}"
    if url is None:
        pytest.skip("PostgreSQL is not reachable")
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    reg = Registry(url, prefix=prefix)
    dep = reg.create_deployment("f", "a" * 64, "m", "2", "g", 0.1, [1.0], 0.0, ["d1"])
    with reg.engine.begin() as c:  # as a registry written before timeouts, joiners and leases existed
        for col in ("job_timeout", "planned", "lease_owner", "lease_until"):
            c.execute(text(f"ALTER TABLE {prefix}deployments DROP COLUMN {col}"))
    reg.close()
    reg = Registry(url, prefix=prefix)
    try:
        row = reg.deployment(dep)
        assert row is not None and (row.job_timeout, row.planned, row.lease_owner) == (3600.0, -1, "")
        assert reg.acquire_lease(dep, "A", 30)
    finally:
        reg.drop_all()
        reg.close()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_coordinators_tick_one_rollout(backend: str, broker: Any, archives: dict[str, Path],
                                           tmp_path: Path) -> None:
    url = pg_url() if backend == "postgresql" else f"sqlite:///{tmp_path / 'shared.db'}"
    if url is None:
        pytest.skip("PostgreSQL is not reachable")
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    regs = [Registry(url, prefix=prefix) for _ in range(2)]  # two processes' worth: own engines and pools
    coords = [Coordinator(r, mqtt(broker.url, f"coord-{i}"), "f1", tick_seconds=0.05) for i, r in enumerate(regs)]
    for c in coords:
        c.start()
        assert c.transport.wait_connected(10)  # type: ignore[attr-defined]
    OPERATED.extend(coords)  # they play the operator for the fake devices' groups
    devices = [f"s{i:02d}" for i in range(12)]
    fake = FakeDevices(broker.port, "f1", devices, "g", answer=lambda dev, d: ["DOWNLOADING", "SUCCEEDED"])
    try:
        wait_for(lambda: len(regs[0].devices("f1", "g")) == 12, 20)
        dep = coords[0].create_deployment(archives["2"].read_bytes(), "g", RolloutPlan(0.1, (0.3, 0.6, 1.0), 0.0))
        done = threading.Event()
        ticks = Counter[int]()

        def hammer(i: int) -> None:
            while not done.is_set():
                coords[i].tick()
                ticks[i] += 1

        threads = [threading.Thread(target=hammer, args=(i % 2,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: regs[1].deployment(dep.id).state == "completed", 60)
        finally:
            done.set()
            for t in threads:
                t.join(10)
        time.sleep(0.3)  # late duplicates would show now
        jobs = regs[0].jobs(dep.id)
        assert sorted(j.device_id for j in jobs) == devices and {j.status for j in jobs} == {"SUCCEEDED"}
        installs = {d: [x.job_id for x in fake.desired[d] if x.action == "install"] for d in devices}
        assert all(len(v) == 1 for v in installs.values()), installs  # one dispatch per device, ever
        assert sum(c.counters["dispatched"] for c in coords) == 12
        events = [(e.kind, e.stage) for e in regs[0].events(dep.id)]
        assert events == [("stage", 0), ("stage", 1), ("stage", 2), ("stage", 3), ("completed", 3)], events
        assert min(ticks.values()) >= 20  # both really ticked it, many times
        assert {j.stage for j in jobs} == {0, 1, 2, 3}
    finally:
        fake.close()
        for c in coords:
            c.stop()
        regs[0].drop_all()
        for r in regs:
            r.close()
