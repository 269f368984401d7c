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

from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.wire import protocol as P


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
        rows = {(r.group_name, r.version, r.kind): r for r in reg.telemetry("f1")}
        ok = rows[("default", "1", "metrics")]
        assert ok.records == 5 * 20 and ok.predictions == 5 * 20 * 10  # every honest record, nothing else
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
        assert row.records == 3 and row.predictions == 30
        assert reg.device("f", "c").telemetry_seq == 3  # past the bad record: a re-send is not re-counted
    finally:
        if db != "sqlite":
            reg.drop_all()
        reg.close()


def test_a_flooding_device_is_rate_limited_and_every_other_batch_is_ingested(broker: Any, tmp_path: Path) -> None:
    """Per-device rate limits: one device floods valid records at ~200 batches/s (4,000 records/s) against a limit
    of 100 records/s; five others send theirs. Every honest batch is acknowledged and counted; the flooder gets
    no more than its burst plus its rate ingested, and its excess batches are dropped unacknowledged (its agent
    would send them again later) and counted against it alone."""
    from fastapi.testclient import TestClient

    from edgefleet.cloud_sync.coordinator.api import create_app

    honest = [f"ok-{i}" for i in range(5)]
    rate, burst = 100.0, 200.0
    coord = coordinator(broker.url, tmp_path / "reg.db", telemetry_rate=rate, telemetry_burst=burst,
                        groups={**{d: "line" for d in honest}, "flood": "noisy"})
    acks: dict[str, set[str]] = {d: set() for d in [*honest, "flood"]}
    clients = []
    stop = threading.Event()
    flood_sent: list[str] = []
    try:
        for d in [*honest, "flood"]:
            t = mqtt(broker.url, d)
            t.on_message(lambda topic, p, d=d: acks[d].add(P.TelemetryAck.parse(p).batch_id))
            t.subscribe(P.down_topic("f1", d, P.Down.ACK), qos=1)
            t.connect()
            assert t.wait_connected(10)
            clients.append(t)
        flood_client = clients[-1]
        t0 = time.monotonic()

        def flood() -> None:
            seq = 0
            while not stop.is_set():
                recs = tuple(_metrics(seq + i + 1) for i in range(20))
                seq += 20
                bid = f"f{seq}"
                flood_client.publish(P.up_topic("f1", "flood", P.Up.TELEMETRY),
                                     P.TelemetryBatch("flood", bid, recs).to_bytes())
                flood_sent.append(bid)
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
        wait_for(lambda: len(flood_sent) >= 150, timeout=20)  # ~200 batches/s, slower on a loaded machine
        stop.set()
        flooder.join(5)
        # every flood batch has reached the coordinator (ingested or limited), every admitted one is acknowledged
        wait_for(lambda: coord.counters["telemetry_batches"] - 50 + coord.rate_limited["flood"] == len(flood_sent),
                 timeout=20)
        wait_for(lambda: len(acks["flood"]) == coord.counters["telemetry_batches"] - 50, timeout=10)
        elapsed = time.monotonic() - t0

        rows = {(r.group_name, r.kind): r.records for r in coord.registry.telemetry("f1")}
        assert rows[("line", "metrics")] == 5 * 20  # every honest record
        ingested = rows.get(("noisy", "metrics"), 0)
        limited = coord.rate_limited["flood"]
        assert limited > 0
        assert ingested <= burst + rate * elapsed + 20, (ingested, elapsed)
        assert ingested == 20 * (len(flood_sent) - limited)  # every batch either ingested or limited
        assert len(acks["flood"]) == len(flood_sent) - limited  # limited batches are not acknowledged
        assert not any(coord.rate_limited[d] for d in honest) and not any(coord.rejected[d] for d in honest)
        assert coord.counters["telemetry_rate_limited"] == limited and coord.counters["handler_errors"] == 0
        api = TestClient(create_app(coord, "t"))
        tel = api.get("/v1/telemetry", headers={"Authorization": "Bearer t"}).json()
        assert tel["rate_limited"] == {"flood": limited}
        assert api.get("/v1/devices/flood", headers={"Authorization": "Bearer t"}).json()[
            "telemetry_rate_limited"] == limited
    finally:
        stop.set()
        for t in clients:
            t.close()
        coord.stop()
        coord.registry.close()


def test_token_buckets_and_the_rate_option() -> None:
    from edgefleet.cloud_sync.cli import Burst, Rate
    from edgefleet.cloud_sync.coordinator.rollout import parse_rate
    from edgefleet.cloud_sync.coordinator.service import TokenBuckets
    from edgefleet.errors import ConfigError

    b = TokenBuckets(10.0, 30.0, max_keys=3)
    assert [b.take("a", 10, 0.0) for _ in range(4)] == [True, True, True, False]  # the burst, then nothing
    assert not b.take("a", 10, 0.5) and b.take("a", 10, 1.6)  # refilled at 10 a second
    assert b.take("big", 500, 0.0)  # a batch above the burst passes when the bucket is full ...
    assert not b.take("big", 1, 10.0) and b.take("big", 1, 50.0)  # ... and its debt is repaid at the rate
    assert b.take("empty", 0, 0.0)  # an empty batch costs one record
    for i in range(10):  # memory stays bounded whatever keys arrive
        b.take(f"k{i}", 1, 100.0 + i)
    assert len(b) <= 3
    assert parse_rate("1000/s") == 1000.0 and parse_rate("6000/min") == 100.0 and parse_rate("7200/h") == 2.0
    assert parse_rate("250") == 250.0 and parse_rate("off") is None and parse_rate("0") is None
    for bad in ("fast", "-5/s", "1e10/s", "nan", "inf", "10/day", "/s"):
        with pytest.raises(ConfigError, match="not a rate"):
            parse_rate(bad)
    assert Rate().convert("60/min", None, None) == 1.0
    for opt, bad in ((Rate(), "lots"), (Burst(), "0"), (Burst(), "nan"), (Burst(), "x")):
        with pytest.raises(ConfigError):
            opt.convert(bad, None, None)
    with pytest.raises(ConfigError):
        TokenBuckets(float("nan"))
