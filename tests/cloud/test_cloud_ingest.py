"""Batched telemetry ingest, the coordinator's limit on concurrent transfers and its chunk re-send rule
(SQLite, in-memory broker)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport
from edgefleet.cloud_sync.wire import protocol as P


def _rec(seq: int, kind: str = "metrics", **data: Any) -> P.TelemetryRecord:
    if kind == "metrics" and not data:
        data = {"versions": {"2": {"predictions": 10, "errors": 1, "invalid_inputs": 2}}}
    return P.TelemetryRecord(seq, 1.0, kind, data)


def test_ingest_many_sums_batches_of_one_call_like_separate_calls(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        for d, g in (("d1", "g"), ("d2", "h")):
            reg.upsert_device("f", d, group_name=g)
        news = reg.ingest_many("f", [
            ("d1", "g", [_rec(1), _rec(2)]),
            ("d2", "h", [_rec(1), _rec(2, "drift", version="2", psi=0.4)]),
            ("d1", "g", [_rec(2), _rec(3), _rec(4, "health", version="2")]),  # overlaps the first batch
            ("d1", "g", [_rec(1), _rec(2)]),  # re-sent in the same call: counted once
            ("d3", "g", [_rec(1, versions={})]),  # not registered: counted, no mark kept
        ])
        assert news == [2, 2, 2, 0, 1]
        assert reg.device("f", "d1").telemetry_seq == 4 and reg.device("f", "d2").telemetry_seq == 2
        rows = {(r.group_name, r.version, r.kind): r for r in reg.telemetry("f")}
        assert rows[("g", "2", "metrics")].records == 3
        assert (rows[("g", "2", "metrics")].predictions, rows[("g", "2", "metrics")].errors,
                rows[("g", "2", "metrics")].invalid) == (30, 3, 6)
        assert rows[("g", "2", "health")].records == 1 and rows[("g", "", "metrics")].records == 1
        assert rows[("h", "2", "metrics")].records == 1 and rows[("h", "2", "drift")].records == 1
        assert [a.data["psi"] for a in reg.alerts("f")] == [0.4]
        assert reg.ingest_many("f", [("d1", "g", [_rec(4), _rec(5)])]) == [1]  # the mark persisted
        assert [r.records for r in reg.telemetry("f", "g", "2") if r.kind == "metrics"] == [4]
    finally:
        reg.close()


def test_transfers_beyond_the_limit_wait_their_turn(tmp_path: Path) -> None:
    broker = MemoryBroker()
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    coord = Coordinator(reg, MemoryTransport(broker, "coord"), "f", max_transfers=1, chunk_size=1024)
    coord.transport.connect()
    data = os.urandom(3 * 1024 + 100)
    fid = hashlib.sha256(data).hexdigest()
    reg.add_artifact(fid, "m", "2", data)
    dep = reg.create_deployment("f", fid, "m", "2", "g", 0.0, [1.0], 0.0, ["d1", "d2"])
    got: dict[str, list[int]] = {"d1": [], "d2": []}
    jobs = {}
    for d in got:
        reg.upsert_device("f", d, group_name="g")
        jobs[d] = reg.add_job("f", dep, d, "install", 0)
        t = MemoryTransport(broker, d)
        t.on_message(lambda topic, p, d=d: got[d].append(P.Chunk.parse(p).index))
        t.subscribe(P.down_topic("f", d, P.Down.CHUNK))
        t.connect()

    def ask(d: str, wanted: list[int]) -> None:
        coord.handle(d, P.ChunkRequest.make(jobs[d], fid, 4, wanted))

    try:
        ask("d1", [0, 1])
        ask("d2", [0, 1])  # d1 holds the only slot: d2 waits
        ask("d2", [0, 1])  # its stall re-request replaces the waiting one (nothing sent twice)
        assert got == {"d1": [0, 1], "d2": []}
        assert coord.counters["chunk_requests_deferred"] == 2
        ask("d1", [2, 3])  # d1 has now been sent every chunk: the slot goes to d2, which is served at once
        assert got == {"d1": [0, 1, 2, 3], "d2": [0, 1]}
        ask("d2", [2, 3])
        assert got["d2"] == [0, 1, 2, 3]
        ask("d1", [3])  # admitted again (no transfer waits), but the chunk left moments ago: not sent twice
        assert got["d1"] == [0, 1, 2, 3] and coord.counters["duplicate_requests_skipped"] == 1
        coord.handle("d1", P.Status("d1", True, 2))  # d1 reconnected: its session may be gone
        ask("d1", [3])
        assert got["d1"] == [0, 1, 2, 3, 3]
    finally:
        coord.transport.close()
        reg.close()


def test_two_registries_sharing_a_sqlite_file_count_a_redelivered_batch_once(tmp_path: Path) -> None:
    """Two coordinator processes on one SQLite file (each Registry its own engine and lock, as separate
    processes have) ingest the same batch at the same moment, as after a shared-subscription redelivery:
    exactly one of them counts it."""
    import threading

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = Registry(url), Registry(url)
    try:
        a.upsert_device("f", "d1", group_name="g")
        counted = []
        for round_ in range(40):
            batch = [("d1", "g", [_rec(round_ * 10 + i + 1) for i in range(10)])]
            start = threading.Barrier(2)

            def ingest(reg: Registry, batch: Any = batch, start: threading.Barrier = start) -> None:
                start.wait()
                counted.append(reg.ingest_many("f", batch)[0])

            threads = [threading.Thread(target=ingest, args=(r,)) for r in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        assert sum(counted) == 400
        assert sum(r.records for r in a.telemetry("f")) == 400
    finally:
        a.close()
        b.close()
