"""The registry's ingest files each metrics record under the minute ``windows.slot`` gives it and keeps the newest as
the device's recent telemetry, whatever the clocks say (issue 16: the ingest computes the minute inline, per
record, for speed; hypothesis checks it against ``windows.slot`` on real SQLite)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from edgefleet.cloud_sync.coordinator import windows as W
from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.wire.protocol import TelemetryRecord

OFFSETS = st.one_of(
    st.floats(-W.RETENTION - 3600, 3600, allow_nan=False),  # past, present, near future
    st.sampled_from([-W.RETENTION - 1, -W.RETENTION + 1, W.MAX_FUTURE - 1, W.MAX_FUTURE + 1, 86400.0, 0.0]),
)  # (finite: the wire refuses anything else)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(OFFSETS, min_size=1, max_size=12))
def test_each_record_counts_in_its_minute_and_the_newest_is_recent(tmp_path: Path, offsets: list[float]) -> None:
    reg = Registry(f"sqlite:///{tmp_path / f'r{time.monotonic_ns()}.db'}")
    try:
        reg.upsert_device("f", "d1", group_name="g")
        base = time.time()
        records = [TelemetryRecord(i + 1, base + off, "metrics", {"versions": {"2": {"predictions": 1}}})
                   for i, off in enumerate(offsets)]
        before = time.time()
        reg.ingest_many("f", [("d1", "g", records[: len(records) // 2]), ("d1", "g", records[len(records) // 2:])])
        after = time.time()
        tw = reg.t["telemetry_windows"]
        with reg.engine.connect() as c:
            got = {int(m): int(n) for m, n in c.execute(select(tw.c.minute, tw.c.records))}
        expected = [Counter(m for r in records if (m := W.slot(r.ts, now)) is not None) for now in (before, after)]
        assert got in [dict(e) for e in expected]
        recent: dict[str, Any] = reg.device("f", "d1").recent  # type: ignore[union-attr]
        assert recent["ts"] == max(r.ts for r in records)
        assert sum(r.records for r in reg.telemetry("f")) == len(records)
    finally:
        reg.close()
