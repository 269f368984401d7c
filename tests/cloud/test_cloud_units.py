"""Pure parts: protocol parsers (hypothesis), the transfer receiver, the rollout planner, the registry."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zlib
from typing import Any

import pytest
from helpers import pg_url
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan, View, evaluate, parse_percent
from edgefleet.cloud_sync.wire import protocol as P
from edgefleet.cloud_sync.wire.transfer import (
    Begin,
    CheckWhole,
    ChunkArrived,
    Complete,
    Receiver,
    Request,
    Stalled,
    Store,
    Verified,
    apply_delta,
    file_info,
    make_delta,
    serve_request,
)
from edgefleet.errors import ProtocolError, SyncError

PARSERS = [P.Status, P.Desired, P.JobUpdate, P.Reported, P.TelemetryAck, P.ChunkRequest]
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    for cls in [*PARSERS, P.TelemetryBatch, P.Chunk]:
        try:
            cls.parse(data)
        except ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "type", "device_id", "online", "session", "job_id", "status", "version",
                                        "action", "file", "seqs", "batch_id", "total", "bitmap", "file_id", "records"]),
                       json_values, max_size=8),
       st.sampled_from(PARSERS + [P.TelemetryBatch]))
def test_json_shapes_parse_or_raise_protocol_error(d: dict[str, Any], cls: Any) -> None:
    d = {"v": 1, "type": cls.TYPE, **d}
    raw = json.dumps(d).encode()
    if cls is P.TelemetryBatch:
        raw = zlib.compress(raw)
    try:
        cls.parse(raw)
    except ProtocolError:
        pass


def test_round_trips_and_topics() -> None:
    fi = P.FileInfo("a" * 64, 200_000, 65536)
    msgs = [P.Status("d1", True, 3, 1.0, "0.1", "2", "x", "b" * 64, ("arm",), "g"),
            P.Desired("j1", "install", "dep", "2", fi, None, ""), P.JobUpdate("j1", "SUCCEEDED", 4, 3),
            P.Reported("d1", "2"), P.TelemetryAck("b", (1, 2, 3)), P.ChunkRequest.make("j1", "a" * 64, 4, [0, 3])]
    for m in msgs:
        assert type(m).parse(m.to_bytes()) == m
    b = P.TelemetryBatch("d1", "b1", (P.TelemetryRecord(1, 1.0, "metrics", {"x": 1}),))
    assert P.TelemetryBatch.parse(b.to_bytes()) == b
    assert P.ChunkRequest.make("j", "a" * 64, 10, {1, 9}).wanted == [1, 9]
    c = P.Chunk("a" * 64, 2, b"hello")
    assert P.Chunk.parse(c.to_bytes()).data == b"hello"
    bad = bytearray(c.to_bytes())
    bad[-1] ^= 1
    with pytest.raises(ProtocolError):
        P.Chunk.parse(bytes(bad))
    t = P.parse_topic(P.up_topic("f", "d", P.Up.JOB))
    assert (t.fleet, t.device, t.direction, t.kind) == ("f", "d", "up", "job")
    for bad_topic in ["x/y", "edgefleet/v1/f/devices/d/up/nope", "edgefleet/v1/f/devices/+/up/job"]:
        with pytest.raises(ProtocolError):
            P.parse_topic(bad_topic)
    with pytest.raises(ProtocolError):
        P.up_topic("f", "a/b", P.Up.JOB)
    assert P.up_filter("f", "grp").startswith("$share/grp/")
    with pytest.raises(ProtocolError):  # a compression bomb
        P.TelemetryBatch.parse(zlib.compress(b" " * (P.MAX_MESSAGE_BYTES + 10)))


def _run(r: Receiver, data: bytes, drop: set[int] = frozenset()) -> tuple[list[int], bytearray, int]:  # type: ignore[assignment]
    """Drive a receiver; chunks in ``drop`` are lost once. Returns (requested order, assembled file, requests)."""
    out = bytearray(len(data))
    asked: list[int] = []
    queue = list(r.handle(Begin()))
    lost = set(drop)
    nreq = 0
    stalls = 0
    while queue or (not r.done and stalls < 10):
        if not queue:
            stalls += 1
            queue += r.handle(Stalled())
            continue
        a = queue.pop(0)
        if isinstance(a, Request):
            nreq += 1
            asked += a.indices
            req = P.ChunkRequest.make("j", r.info.file_id, r.info.chunks, list(a.indices))
            for c in serve_request(req, r.info, data):
                if c.index in lost:
                    lost.discard(c.index)
                    continue
                queue += r.handle(ChunkArrived(c))
        elif isinstance(a, Store):
            out[a.index * r.info.chunk_size : a.index * r.info.chunk_size + len(a.data)] = a.data
        elif isinstance(a, CheckWhole):
            queue += r.handle(Verified(hashlib.sha256(out).hexdigest() == r.info.file_id))
        elif isinstance(a, Complete):
            break
    return asked, out, nreq


def test_receiver_requests_only_missing_chunks() -> None:
    data = os.urandom(10_000)
    info = file_info(data, 1000)
    r = Receiver("j", info, window=4)
    asked, out, _ = _run(r, data, drop={3, 7})
    assert r.done and bytes(out) == data
    assert sorted(asked) == sorted(list(range(10)) + [3, 7])  # only the lost ones twice
    # resume: chunks already on disk are never asked for
    r2 = Receiver("j", info, window=4)
    acts = r2.handle(Begin(frozenset(range(8))))
    assert acts == [Request((8, 9))]


def test_receiver_enforces_declared_length_and_file() -> None:
    data = os.urandom(3000)
    info = file_info(data, 1000)
    r = Receiver("j", info)
    r.handle(Begin())
    assert r.handle(ChunkArrived(P.Chunk(info.file_id, 0, data[:999]))) == []  # short chunk
    assert r.handle(ChunkArrived(P.Chunk(info.file_id, 5, data[:1000]))) == []  # beyond the file
    assert r.handle(ChunkArrived(P.Chunk("b" * 64, 0, data[:1000]))) == []  # another file
    assert r.rejected == 3
    r.handle(ChunkArrived(P.Chunk(info.file_id, 0, data[:1000])))
    assert r.handle(ChunkArrived(P.Chunk(info.file_id, 0, data[:1000]))) == [] and r.duplicates == 1
    with pytest.raises(ProtocolError):
        P.FileInfo("a" * 64, 10**12, 1024)  # endless data is refused up front


def test_delta_smaller_and_verified() -> None:
    old = os.urandom(50_000)
    new = bytearray(old)
    new[100:110] = b"x" * 10
    patch = make_delta(old, bytes(new))
    assert patch is not None and len(patch) < len(new) * 0.1
    assert apply_delta(old, patch, file_info(bytes(new), 4096)) == bytes(new)
    with pytest.raises(SyncError):
        apply_delta(os.urandom(50_000), patch, file_info(bytes(new), 4096))
    assert make_delta(os.urandom(1000), os.urandom(1000)) is None  # not smaller: send the full file


def test_rollout_stages_gate_and_catch_up() -> None:
    plan = RolloutPlan(parse_percent("10%"), tuple(parse_percent(w) for w in "50%,100%".split(",")), 0.02)
    targets = tuple(f"d{i:02d}" for i in range(20))
    assert plan.stage_ends(20) == [2, 10, 20]
    online = frozenset(targets)
    d = evaluate(plan, View("running", -1, targets, {}, online))
    assert d.dispatch == targets[:2] and d.stage == 0
    assert evaluate(plan, View("running", 0, targets, {"d00": "SUCCEEDED", "d01": "IN_PROGRESS"}, online)).dispatch == ()
    # an offline device does not hold the rollout back
    d = evaluate(plan, View("running", 0, targets, {"d00": "SUCCEEDED", "d01": "QUEUED"}, online - {"d01"}))
    assert d.dispatch == targets[2:10] and d.stage == 1
    jobs = {t: "SUCCEEDED" for t in targets[:10]}
    jobs["d05"] = "REJECTED"
    d = evaluate(plan, View("running", 1, targets, jobs, online))
    assert d.halt and "d00" in d.rollback and "d05" not in d.rollback
    assert evaluate(plan, View("paused", 0, targets, {"d00": "SUCCEEDED", "d01": "SUCCEEDED"}, online)).dispatch == ()
    assert evaluate(plan, View("running", 2, targets, {t: "SUCCEEDED" for t in targets}, online)).complete


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_registry_backends(backend: str, tmp_path: Any) -> None:
    from edgefleet.cloud_sync.coordinator.registry import Registry

    if backend == "postgresql":
        url = pg_url()
        if url is None:
            pytest.skip("PostgreSQL is not reachable")
    else:
        url = f"sqlite:///{tmp_path / 'r.db'}"
    reg = Registry(url, prefix=f"t{uuid.uuid4().hex[:8]}_")
    try:
        reg.upsert_device("f", "d1", group_name="g", online=True)
        reg.upsert_device("f", "d1", group_name="other")  # a known device keeps its group
        assert reg.device("f", "d1").group == "g"
        recs = [{"seq": i, "ts": 1.0, "kind": "metrics", "data": {"versions": {"2": {"predictions": 5, "errors": 1}}}}
                for i in range(1, 4)]
        assert reg.ingest("f", "d1", "g", recs) == 3
        assert reg.ingest("f", "d1", "g", recs) == 0  # a re-sent batch is not counted twice
        rows = reg.telemetry("f", "g", "2")
        assert rows[0].predictions == 15 and rows[0].errors == 3
        dep = reg.create_deployment("f", "a" * 64, "m", "2", "g", 0.1, [1.0], 0.0, ["d1"])
        job = reg.add_job("f", dep, "d1", "install", 0)
        assert reg.update_job(job, 2, status="IN_PROGRESS")
        assert not reg.update_job(job, 1, status="QUEUED")  # stale
        assert not reg.update_job(job, 2, status="QUEUED")  # duplicate
        assert reg.job(job).status == "IN_PROGRESS"
    finally:
        reg.drop_all()
        reg.close()
