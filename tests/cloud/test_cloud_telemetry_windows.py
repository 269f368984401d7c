"""Issue 15: "Telemetry is all-time counts only: no time windows, no latency percentiles per version."

Devices report per version the predictions, errors, invalid inputs and a latency histogram in each metrics record
(device_agent/telemetry.py). The registry now also keeps them per minute; ``GET /v1/telemetry?window=1h`` (``fleet
telemetry --window 1h``) sums the minutes of the window per group and version and reads p50/p95 from the summed
histogram. A histogram that does not fit is refused with its record, as out-of-bounds counts are.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for
from helpers import coordinator, device, serve_api

from edgefleet.cli import main as cli_main
from edgefleet.cloud_sync.coordinator import windows as W
from edgefleet.cloud_sync.wire.protocol import TelemetryBatch, TelemetryRecord
from edgefleet.device_agent.health import LatencyHistogram

TOKEN = "windows-" + uuid.uuid4().hex
H = {"Authorization": f"Bearer {TOKEN}"}


def _metrics(seq: int, ts: float, per_version: dict[str, list[float]], errors: int = 0) -> TelemetryRecord:
    """A metrics record as a device's agent flushes it: per version, predictions and a latency histogram."""
    versions = {}
    for v, latencies in per_version.items():
        h = LatencyHistogram()
        for ms in latencies:
            h.add(ms)
        versions[v] = {"predictions": len(latencies) + errors, "errors": errors, "invalid_inputs": 0,
                       "latency": h.to_dict()}
    return TelemetryRecord(seq, ts, "metrics", {"window_start": ts - 60, "window_end": ts, "versions": versions})


def _rows(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["group"], r["version"]): r for r in doc["window"]["rows"]}


def test_windows_per_group_and_version_with_percentiles(broker: Any, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db", groups={"d1": "g", "d2": "h"})
    now = time.time()
    coord.handle("d1", TelemetryBatch("d1", "b1", (
        _metrics(1, now - 10, {"1": [1.0] * 90 + [50.0] * 10}, errors=5),  # this minute: p50 1 ms, p95 50 ms
        _metrics(2, now - 2 * 3600, {"1": [2000.0] * 100}),  # two hours ago: in the day, not in the hour
        _metrics(3, now - 3 * 86400, {"1": [10.0] * 10}),  # three days ago: in the all-time totals only
        _metrics(4, now + 3600, {"1": [1.0] * 10}),  # a clock an hour ahead: counted as now
    )))
    coord.handle("d2", TelemetryBatch("d2", "b2", (_metrics(1, now - 1800, {"2": [5.0] * 10}),)))
    with serve_api(coord, TOKEN) as base:
        hour = httpx.get(f"{base}/v1/telemetry", headers=H, params={"window": "1h"}).json()
        rows = _rows(hour)
        assert set(rows) == {("g", "1"), ("h", "2")}
        g1 = rows[("g", "1")]
        assert (g1["records"], g1["predictions"], g1["errors"], g1["latency_samples"]) == (2, 115, 5, 110)
        assert g1["p50_ms"] == 1.0 and g1["p95_ms"] == 50.0 and g1["error_rate"] == pytest.approx(5 / 115)
        assert (rows[("h", "2")]["predictions"], rows[("h", "2")]["p50_ms"], rows[("h", "2")]["p95_ms"]) == (10, 5, 5)
        assert hour["window"]["seconds"] == 3600 and hour["window"]["since"] <= now - 3600

        day = _rows(httpx.get(f"{base}/v1/telemetry", headers=H, params={"window": "1d", "group": "g"}).json())
        assert set(day) == {("g", "1")}
        assert day[("g", "1")]["predictions"] == 215 and day[("g", "1")]["p50_ms"] == 50.0
        assert day[("g", "1")]["p95_ms"] == 2000.0

        # the all-time rows are what they were: every record, no window asked, no window answered
        plain = httpx.get(f"{base}/v1/telemetry", headers=H, params={"group": "g"}).json()
        assert "window" not in plain and sum(r["predictions"] for r in plain["rows"]) == 225

        # a window the registry cannot answer: one line, 422 (schema or range)
        for bad in ("0", "30s", "8d", "1y", "-1h", "abc"):
            r = httpx.get(f"{base}/v1/telemetry", headers=H, params={"window": bad})
            assert r.status_code == 422, (bad, r.text)
        r = httpx.get(f"{base}/v1/telemetry", headers=H, params={"window": "8d"})
        assert "between 60s and 604800s" in r.json()["detail"]

        monkeypatch.setenv("EDGEFLEET_TOKEN", TOKEN)
        monkeypatch.setenv("COLUMNS", "200")
        capsys.readouterr()
        assert cli_main(["fleet", "telemetry", "--window", "1h", "--api", base]) == 0
        out = capsys.readouterr().out
        assert "the last 1h" in out and "p95 ms" in out
        line = next(x for x in out.splitlines() if " g " in f" {x} " and "115" in x)
        assert "50" in line and "4.35%" in line
        assert cli_main(["fleet", "telemetry", "--window", "1h", "--group", "h", "--api", base, "--json"]) == 0
        assert _rows(json.loads(capsys.readouterr().out)) == {("h", "2"): rows[("h", "2")]}
        assert cli_main(["fleet", "telemetry", "--window", "0", "--api", base]) == 2
        assert "--window" in capsys.readouterr().err


def test_histograms_that_do_not_fit_are_refused_with_their_record(broker: Any, tmp_path: Path) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db", groups={"d1": "g"})
    now = time.time()
    good = _metrics(1, now, {"1": [1.0] * 4})
    lat = good.data["versions"]["1"]["latency"]

    def spoiled(seq: int, **change: Any) -> TelemetryRecord:
        data = json.loads(json.dumps(good.data))
        data["versions"]["1"]["latency"] = {**lat, **change}
        return TelemetryRecord(seq, now, "metrics", data)

    coord.handle("d1", TelemetryBatch("d1", "b1", (
        good,
        spoiled(2, counts=lat["counts"][:-1]),  # a bucket short
        spoiled(3, counts=[-1] + lat["counts"][1:]),  # a negative count
        spoiled(4, counts=[True] + lat["counts"][1:]),  # a boolean
        spoiled(5, counts=[2**63] + lat["counts"][1:]),  # beyond a BIGINT
        spoiled(6, counts="17 buckets"),
        TelemetryRecord(7, now, "metrics", {"versions": {"1": {"predictions": 3, "latency": [1, 2]}}}),
        spoiled(8, buckets_ms=[1, 2, 3], counts=[3, 0, 0, 0]),  # other bounds: counted, no percentiles from it
        _metrics(9, now - 8 * 86400, {"1": [1.0] * 7}),  # older than the retention: all-time totals only
    )))
    assert coord.rejected["d1"] == 6
    (row,) = coord.registry.telemetry_window("f1", W.window_since(now, 3600))
    assert (row.records, row.predictions, sum(row.latency)) == (2, 8, 4)
    assert W.WindowStats("g", "1", 2, 8, 0, 0, tuple(row.latency)).to_dict()["p50_ms"] == 1.0
    assert sum(r.predictions for r in coord.registry.telemetry("f1")) == 15


def test_real_agents_latency_reaches_the_window(broker: Any, tmp_path: Path, make_agent: Any,
                                                archives: dict[str, Path]) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    syncs = [device(broker.url, make_agent(f"d{i}", install=archives["1"]), tmp_path) for i in range(2)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 2)
    for s in syncs:
        for _ in range(10):
            s.agent.predict([[0.1, 0.2, 0.3, 0.4]])
        s.agent.flush_telemetry()
    since = W.window_since(time.time(), 3600)
    rows = wait_for(lambda: [r for r in coord.registry.telemetry_window("f1", since) if r.predictions >= 20], 20)
    stats = W.WindowStats(rows[0].group, rows[0].version, rows[0].records, rows[0].predictions, rows[0].errors,
                          rows[0].invalid, tuple(rows[0].latency)).to_dict()
    assert (stats["group"], stats["version"], stats["latency_samples"]) == ("g", "1", 20)
    assert 0 < stats["p50_ms"] <= stats["p95_ms"]
    for s in syncs:
        s.stop()


def test_quantiles_and_slots_are_pure() -> None:
    counts = [0] * W.NB
    assert W.quantile(counts, 0.5) is None
    counts[4] = 9  # the 1 ms bucket
    counts[-1] = 1  # the open-ended bucket: beyond 5 s
    assert W.quantile(counts, 0.5) == 1.0 and W.quantile(counts, 0.95) == 5000.0
    now = 1_000_000.0
    assert W.slot(now - 61, now) == 999_900 and W.slot(now + 10_000, now) == 999_960
    assert W.slot(now - 8 * 86400, now) is None and W.slot(float("nan"), now) is None
    assert W.window_since(now, 3600) == 996_360
    assert W.latency_counts({"latency": {"buckets_ms": [0.05], "counts": [1]}}) is None
    assert W.latency_counts({"latency": {"buckets_ms": "x", "counts": [1]}}) is False
