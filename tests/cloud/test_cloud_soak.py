"""The soak (benchmarks/soak.py) at CI size, and what it found.

- ``test_soak_three_minutes``: 300 simulated devices, two ``cloud serve`` coordinators sharing the subscription
  and a SQLite registry, a real Mosquitto restarted half-way, one coordinator killed with SIGKILL at three
  quarters and restarted by its supervisor, a rollout every 30 s, telemetry every 10 s: no acknowledged
  telemetry lost, every rollout completed with every job SUCCEEDED and each device's job installed once.
- ``test_coordinator_keeps_a_bounded_file_cache``: the leak the soak measured (the coordinator kept every bundle
  it had served, their chunk frames, and chunk timestamps for every (device, file) pair ever: its resident
  memory rose about a megabyte with each rollout of a 128 KiB bundle to 300 devices).
- the pure bookkeeping of the soak and the multi-coordinator benchmark.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import cluster, soak  # noqa: E402
from benchmarks.multi_coordinator import owner_pid, verdict  # noqa: E402

# -- pure ------------------------------------------------------------------------------------------------------


def test_telemetry_queue_keeps_records_until_acknowledged() -> None:
    q = cluster.TelemetryQueue()
    for t in range(3):
        q.add(float(t))
    first = q.batch(0.0, "b1")
    assert first == [(1, 0.0), (2, 1.0), (3, 2.0)] and q.batch(1.0, "b2") is None  # one batch in flight
    q.add(3.0)
    assert q.acked("b1", [1, 2, 3]) is True  # more pending: the drain goes on at once
    assert (q.acked_seqs, q.max_acked, list(q.pending)) == (3, 3, [4])
    assert q.batch(1.0, "b3") == [(4, 3.0)]
    assert q.batch(1.0 + cluster.ACK_TIMEOUT, "b4") == [(4, 3.0)] and q.timeouts == 1  # given up, sent again
    assert q.acked("b3", [4]) is False and q.unknown_acks == 1  # the late ack still counts its records
    assert (q.acked_seqs, q.pending) == (4, {})
    assert q.acked("b4", [4]) is False and q.acked_seqs == 4  # a duplicate ack counts nothing twice
    for t in range(cluster.MAX_BATCH + 1):
        q.add(float(t))
    assert len(q.batch(10.0, "b5") or []) == cluster.MAX_BATCH


def test_soak_schedule_scales_from_the_hour() -> None:
    hour = soak.schedule(60)
    assert hour.duration == 3600 and hour.rollouts == (30.0, 630.0, 1230.0, 1830.0, 2430.0, 3030.0)
    assert (hour.broker_restart, hour.coordinator_kill, hour.warm_up) == (1800, 2700, 600)
    three = soak.schedule(3)
    assert three.duration == 180 and len(three.rollouts) == 6 and three.rollouts[0] == 1.5 and three.warm_up == 30
    assert soak.schedule(30, rollout_every=45).rollouts == (67.5,)  # 45 min of the hour: one rollout in the half


def test_soak_loss_counts_acknowledged_records_missing_from_the_registry() -> None:
    devs = [{"id": "a", "generated": 5, "acked": 5, "max_acked": 5, "pending": 0},
            {"id": "b", "generated": 4, "acked": 3, "max_acked": 3, "pending": 1}]
    ok = soak.loss(devs, 8, {"a": 5, "b": 3})
    assert (ok["acknowledged_lost"], ok["devices_with_acknowledged_seq_beyond_registry_mark"]) == (0, 0)
    assert ok["not_acknowledged_at_end"] == 1 and ok["stored_but_unacknowledged"] == 0
    bad = soak.loss(devs, 6, {"a": 5, "b": 2})
    assert bad["acknowledged_lost"] == 2 and bad["examples"] == ["b"]


def test_rss_growth_cpu_and_stage_events() -> None:
    samples = [(0.0, 50), (10.0, 100), (20.0, 104), (30.0, 120), (40.0, 103)]
    g = cluster.rss_growth(samples, warm_until=10.0, end=40.0)
    assert (g["baseline_bytes"], g["final_bytes"], g["peak_bytes"], g["growth"]) == (100, 103, 120, 0.03)
    assert cluster.rss_growth(samples, 50.0, 60.0)["growth"] is None
    assert cluster.cpu_used([(0, 1, 1.0), (1, 1, 3.0), (2, 2, 0.5), (3, 2, 1.5)]) == 3.5  # a restart: new pid
    ev = cluster.stage_events([("stage", 0), ("stage", 1), ("joined", 1), ("stage", 1), ("completed", 1)])
    assert ev == {"stages": {"0": 1, "1": 2}, "stage_started_more_than_once": [1], "ends": ["completed"]}


def test_multi_coordinator_verdict_and_owner() -> None:
    assert owner_pid("my-host-1234-abcd1234") == 1234 and owner_pid("nodash") is None
    devs = [{"id": "a", "desired": {"j1": 2}, "installed": ["j1"]},
            {"id": "b", "desired": {"j2": 1, "j3": 1}, "installed": ["j2", "j2"]}]
    v = verdict(devs, [("a", "j1", "SUCCEEDED"), ("b", "j2", "SUCCEEDED"), ("b", "j3", "FAILED")], 2)
    assert (v["devices_with_more_than_one_registry_job"], v["devices_sent_more_than_one_install_job"],
            v["devices_installed_more_than_once"], v["devices_installed_once"], v["desired_redeliveries"]) == \
        (1, 1, 1, 1, 1)


# -- real -------------------------------------------------------------------------------------------------------


def test_coordinator_keeps_a_bounded_file_cache(broker: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    """Four rollouts of four bundles over MQTT chunks to 12 simulated devices (real Mosquitto, the real device
    machine): the coordinator keeps the bytes and chunk frames of the last ``file_cache`` files only, and one
    chunk-timestamp table per device (before: every file ever served, and a table per (device, file))."""
    from edgefleet.cloud_sync.coordinator.registry import Registry
    from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
    from edgefleet.cloud_sync.coordinator.service import Coordinator
    from edgefleet.cloud_sync.transport import MqttConfig, MqttTransport

    ids = [f"fc{i:02d}" for i in range(12)]
    archives = cluster.bundles(tmp_path / "b", keys["priv"], 4, kib=96)  # two chunks of 64 KiB each
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    coord = Coordinator(reg, MqttTransport(MqttConfig(url=broker.url, client_id="fc-coord")), cluster.FLEET,
                        tick_seconds=0.1, deltas=False, groups=dict.fromkeys(ids, cluster.GROUP), file_cache=2)
    coord.start()
    fleet = cluster.SimFleet(broker.port, ids, 1, 0.0)
    try:
        fleet.wait_ready(120)
        wait_for(lambda: sum(d.online for d in reg.devices(cluster.FLEET)) == len(ids), 30)
        for a in archives:
            dep = coord.create_deployment(a.read_bytes(), cluster.GROUP, RolloutPlan(0.0, (1.0,), 0.0))
            wait_for(lambda dep=dep: reg.deployment(dep.id).state == "completed", 60, 0.1)
        served = coord.counters["chunks_served"]
        assert served >= 4 * len(ids) * 2  # every device got every bundle over MQTT
        assert len(coord._files) == 2 and set(coord._frames) <= set(coord._files)
        assert len(coord._recent) == len(ids)
        assert sum(len(f) for f in coord._frames.values()) <= 2 * 2
    finally:
        results = fleet.stop()
        coord.stop()
        reg.close()
    assert all(len(r["installed"]) == 4 for r in results)


def test_soak_three_minutes(tmp_path: Path) -> None:
    """The soak at CI size. Resident memory: in three minutes warm-up is the first 30 s and the five rollouts
    after it each leave their allocations in a heap that has not reached its steady size (SQLAlchemy's statement
    caches, pymalloc arenas, the bounded file cache filling up), so the bound here only catches a gross leak
    (25%); the hour-long run (python -m benchmarks.soak) is where the 5% target is measured."""
    t0 = time.monotonic()
    r = soak.run(minutes=3, devices=300, workers=2, interval=10, root=tmp_path, say=print)
    took = time.monotonic() - t0
    print(f"soak: {took:.0f} s; rss {r['rss']['growth']}; telemetry {r['telemetry']}")
    tel = r["telemetry"]
    assert tel["acknowledged"] > 300 * 12  # every device, every 10 s
    assert tel["acknowledged_lost"] == 0 and tel["devices_with_acknowledged_seq_beyond_registry_mark"] == 0, tel
    assert tel["not_acknowledged_at_end"] == 0, tel
    assert r["rollouts_started"] == 6 and r["rollouts_completed"] == 6, r["rollouts"]
    for d in r["rollouts"]:
        assert d["state"] == "completed" and d["succeeded"] == d["jobs"] == d["targets"] == 300, d
        assert d["devices_installed_once"] == 300 and not d["stage_started_more_than_once"], d
    kinds = [e["event"] for e in r["events"]]
    assert kinds == ["broker_restarted", "coordinator_killed"]
    assert r["devices_summary"]["reconnects"] >= 300  # the broker restart reached every device
    assert r["rss"]["growth"] is not None and r["rss"]["growth"] <= 0.25, r["rss"]
