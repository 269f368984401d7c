"""A stage is dispatched in bulk (issue 16): dispatching a 1,000-device stage took about 2 s because every job was
its own statements (a SELECT and an INSERT in a transaction each). Now a stage's jobs are recorded in a few
statements whatever its size (one executemany on SQLite, one COPY on PostgreSQL) and every device still gets its own
desired message. Real mosquitto, real SQLite and PostgreSQL (skipped when it is not running)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import wait_for
from helpers import mqtt, pg_url
from sqlalchemy import event, insert

from edgefleet.cloud_sync.coordinator.registry import NewJob, Registry, job_key
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.wire import protocol as P

DATA = b"bundle" * 1000
FID = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: Any, tmp_path: Path) -> Iterator[Registry]:
    url = f"sqlite:///{tmp_path / 'r.db'}" if request.param == "sqlite" else pg_url()
    if url is None:
        pytest.skip("PostgreSQL is not running")
    reg = Registry(url, prefix=f"d{uuid.uuid4().hex[:8]}_")
    yield reg
    if not reg.sqlite:
        reg.drop_all()
    reg.close()


def _devices(reg: Registry, n: int, fleet: str = "f1") -> list[str]:
    """``n`` provisioned devices in group g, half of them online and running version 1."""
    ids = [f"dev{i:05d}" for i in range(n)]
    now = time.time()
    with reg.engine.begin() as c:  # set-up only: the rows as upsert_device writes them, in one statement
        c.execute(insert(reg.t["devices"]), [
            {"fleet": fleet, "device_id": d, "group_name": "g", "tags": "[]", "claimed_tags": "[]",
             "online": i % 2 == 0, "session": 1, "first_seen": now, "last_seen": now,
             "active_version": "1" if i % 2 == 0 else "", "archive_sha256": "", "agent_version": "",
             "telemetry_seq": 0} for i, d in enumerate(ids)])
    return ids


def _statements(reg: Registry) -> list[str]:
    seen: list[str] = []
    event.listen(reg.engine, "before_cursor_execute", lambda conn, cur, stmt, *a: seen.append(stmt))
    return seen


def test_a_stage_of_2000_devices_takes_a_few_statements_and_each_device_gets_its_job(
        registry: Registry, broker: Any, tmp_path: Path) -> None:
    ids = _devices(registry, 2000)
    registry.add_artifact(FID, "m", "2", DATA)
    dep = registry.create_deployment("f1", FID, "m", "2", "g", 0.0, [1.0], 0.0, ids)
    got: dict[str, P.Desired] = {}
    spy = mqtt(broker.url, "spy")
    spy.on_message(lambda topic, p: got.__setitem__(P.parse_topic(topic).device, P.Desired.parse(p)))
    spy.subscribe("edgefleet/v1/f1/devices/+/down/desired", qos=1)
    spy.connect()
    assert spy.wait_connected(10)
    coord = Coordinator(registry, mqtt(broker.url, "coord"), "f1")  # ticked here, not by its own thread
    coord.transport.connect()
    assert coord.transport.wait_connected(10)  # type: ignore[attr-defined]
    try:
        seen = _statements(registry)
        t0 = time.perf_counter()
        coord.tick()
        took = time.perf_counter() - t0
        jobs = {j.device_id: j for j in registry.jobs(dep)}
        assert len(jobs) == 2000 and coord.counters["dispatched"] == 2000
        # before: a SELECT and an INSERT per device (4,000 and more); now a handful per stage
        assert len(seen) <= 40, (len(seen), took)
        for d in ids[:50] + ids[-50:]:
            j = jobs[d]
            assert (j.job_id, j.status.value, j.stage, j.action) == (job_key(dep, d, "install"), "QUEUED", 0, "install")
            assert j.from_version == ("1" if ids.index(d) % 2 == 0 else "")
            assert (j.delivered > 0) == (ids.index(d) % 2 == 0)  # online: delivered now
            assert P.Desired.parse(j.desired.encode()) == P.Desired(j.job_id, "install", dep, "2", P.FileInfo(
                FID, len(DATA), coord.chunk_size), ts=P.Desired.parse(j.desired.encode()).ts, model="m")
        wait_for(lambda: len(got) == 2000, 30)
        assert all(got[d].job_id == jobs[d].job_id and got[d].file is not None and got[d].file.file_id == FID
                   for d in ids)
        assert registry.deployment(dep).stage == 0
    finally:
        spy.close()
        coord.transport.close()


def test_add_jobs_makes_each_job_once(registry: Registry) -> None:
    assert registry.add_job("f1", "dep", "d1", "install", 0, desired="old")  # another coordinator made it first
    made = registry.add_jobs("f1", "dep", "install", 1, [NewJob("d1", desired="new"), NewJob("d2", "1", True, "x"),
                                                         NewJob("d3"), NewJob("d3")])
    assert made == {job_key("dep", d, "install") for d in ("d2", "d3")}
    jobs = {j.device_id: j for j in registry.jobs("dep")}
    assert jobs["d1"].desired == "old" and jobs["d1"].stage == 0  # left as it was
    assert (jobs["d2"].from_version, jobs["d2"].desired, jobs["d2"].stage) == ("1", "x", 1) and jobs["d2"].delivered
    assert not jobs["d3"].delivered and len(jobs) == 3
    assert registry.add_jobs("f1", "dep", "install", 1, []) == set()
    assert registry.add_jobs("f1", "dep", "install", 1, [NewJob("d2")]) == set()


def test_a_job_another_coordinator_inserts_meanwhile_is_left_to_it(tmp_path: Path) -> None:
    """PostgreSQL: another coordinator inserts one of the jobs between this one's SELECT and its COPY; the COPY is
    refused by the key and the stage is recorded again with ON CONFLICT DO NOTHING: every other job is made here,
    that one is not made twice."""
    url = pg_url()
    if url is None:
        pytest.skip("PostgreSQL is not running")
    prefix = f"r{uuid.uuid4().hex[:8]}_"
    reg, other = Registry(url, prefix=prefix), Registry(url, prefix=prefix)
    try:
        bulk = reg._bulk_insert

        def racing(c: Any, table: Any, columns: Any, rows: Any) -> None:
            assert other.add_job("f1", "dep", "d7", "install", 0, desired="theirs")
            bulk(c, table, columns, rows)

        reg._bulk_insert = racing  # type: ignore[method-assign]
        made = reg.add_jobs("f1", "dep", "install", 0, [NewJob(f"d{i}", desired="ours") for i in range(10)])
        assert made == {job_key("dep", f"d{i}", "install") for i in range(10) if i != 7}
        desired = {j.device_id: j.desired for j in reg.jobs("dep")}
        assert len(desired) == 10 and desired["d7"] == "theirs" and desired["d3"] == "ours"
    finally:
        reg.drop_all()
        reg.close()
        other.close()


def test_two_registries_on_one_sqlite_file_dispatching_the_same_stage_make_each_job_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = Registry(url), Registry(url)
    try:
        made: list[set[str]] = []
        for n in range(10):
            start = threading.Barrier(2)
            jobs = [NewJob(f"d{k}") for k in range(200)]

            def run(reg: Registry, dep: str = f"dep{n}", jobs: list[NewJob] = jobs,
                    start: threading.Barrier = start) -> None:
                start.wait()
                made.append(reg.add_jobs("f1", dep, "install", 0, jobs))

            threads = [threading.Thread(target=run, args=(r,)) for r in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            first, second = made[-2:]
            assert not first & second and len(first | second) == 200
            assert len(a.jobs(f"dep{n}")) == 200
    finally:
        a.close()
        b.close()


def test_desired_for_many_jobs_is_each_jobs_own_message() -> None:
    d = P.Desired("", "install", "dep", "2", P.FileInfo("a" * 64, 10, 4), ts=1.5, model="m")
    out = list(d.for_jobs(["j1", "j2"]))
    assert [P.Desired.parse(b) for b in out] == [P.Desired("j1", "install", "dep", "2", d.file, ts=1.5, model="m"),
                                                 P.Desired("j2", "install", "dep", "2", d.file, ts=1.5, model="m")]
    assert [json.loads(b) for b in out] == [json.loads(P.Desired(j, "install", "dep", "2", d.file, ts=1.5,
                                                                 model="m").to_bytes()) for j in ("j1", "j2")]
