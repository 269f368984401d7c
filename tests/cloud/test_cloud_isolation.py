"""Telemetry isolation (issue 13, finding 1): one device's bad records never cost another device its batches.

A real mosquitto and coordinator: one device floods records whose counts overflow a BIGINT while
several honest devices send theirs; every honest batch is acknowledged and counted, and the bad
records are rejected and counted against the flooding device alone.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from helpers import coordinator, mqtt, pg_url

from edgefleet.cloud_sync import protocol as P
from edgefleet.cloud_sync.coordinator.registry import Registry


def _metrics(seq: int, predictions: Any = 10) -> P.TelemetryRecord:
    return P.TelemetryRecord(seq, time.time(), "metrics",
                             {"versions": {"1": {"predictions": predictions, "errors": 0, "invalid_inputs": 0}}})


def test_overflowing_device_does_not_stop_other_devices_telemetry(broker: Any, tmp_path: Path) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    honest = [f"ok-{i}" for i in range(5)]
    acks: dict[str, set[str]] = {d: set() for d in honest}
    clients = []
    stop = threading.Event()
    try:
        for d in honest:
            t = mqtt(broker.url, d)
            t.on_message(lambda topic, p, d=d: acks[d].add(P.TelemetryAck.parse(p).batch_id))
            t.subscribe(P.down_topic("f1", d, P.Down.ACK), qos=1)
            t.connect()
            assert t.wait_connected(10)
            clients.append(t)
        bad = mqtt(broker.url, "evil")
        bad.connect()
        assert bad.wait_connected(10)
        clients.append(bad)

        def flood() -> None:
            seq = 0
            while not stop.is_set():
                seq += 1
                recs = (_metrics(seq, 2**64), _metrics(seq + 1, 10**30 * 1.0), _metrics(seq + 2, -5))
                seq += 2
                bad.publish(P.up_topic("f1", "evil", P.Up.TELEMETRY),
                            P.TelemetryBatch("evil", f"b{seq}", recs).to_bytes())
                time.sleep(0.005)

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        time.sleep(0.3)
        sent: dict[str, list[str]] = {d: [] for d in honest}
        for n in range(10):
            for d, t in zip(honest, clients):
                bid = f"{d}-{n}"
                t.publish(P.up_topic("f1", d, P.Up.TELEMETRY),
                          P.TelemetryBatch(d, bid, (_metrics(2 * n + 1), _metrics(2 * n + 2))).to_bytes())
                sent[d].append(bid)
            time.sleep(0.05)
        wait_for(lambda: all(acks[d] >= set(sent[d]) for d in honest), timeout=10)
        stop.set()
        flooder.join(5)
        assert coord.wait_idle(10)
        reg: Registry = coord.registry
        rows = {(r["group_name"], r["version"], r["kind"]): r for r in reg.telemetry("f1")}
        ok = rows[("default", "1", "metrics")]
        assert ok["records"] == 5 * 20 and ok["predictions"] == 5 * 20 * 10  # every honest record, nothing else
        assert coord.counters["handler_errors"] == 0
        assert coord.rejected["evil"] >= 3 and not any(coord.rejected[d] for d in honest)
        assert coord.counters["telemetry_rejected"] == coord.rejected["evil"]
    finally:
        stop.set()
        for t in clients:
            t.close()
        coord.stop()
        coord.registry.close()


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_batch_the_database_refuses_is_rejected_alone(tmp_path: Path, db: str) -> None:
    """Values each within bounds whose sum in one statement is not: the shared transaction fails, each
    batch is retried alone and only the offending one is rejected."""
    url = f"sqlite:///{tmp_path / 'r.db'}" if db == "sqlite" else pg_url()
    if url is None:
        pytest.skip("PostgreSQL is not running")
    prefix = f"iso{uuid.uuid4().hex[:8]}_"
    reg = Registry(url, prefix=prefix)
    try:
        for d in ("a", "b", "c"):
            reg.upsert_device("f", d, group_name="g")
        big = 2**63 - 1
        rejected: list[int] = []
        news = reg.ingest_many("f", [("a", "g", [_metrics(1)]), ("b", "g", [_metrics(1, big), _metrics(2, big)]),
                                     ("c", "g", [_metrics(1), _metrics(2, 2**64), _metrics(3)])], rejected=rejected)
        assert news == [1, 0, 2] and rejected == [0, 2, 1]
        row = reg.telemetry("f", "g", "1")[0]
        assert row["records"] == 3 and row["predictions"] == 30
        assert reg.device("f", "c")["telemetry_seq"] == 3  # past the bad record: a re-send is not re-counted
    finally:
        if db != "sqlite":
            reg.drop_all()
        reg.close()
