"""Offline telemetry: durable across restarts and kill -9, drained in order, bounded with counted drops; drift."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.telemetry import MemorySink, Record, TelemetryQueue, drain

N = 5000


def test_thousands_of_events_survive_kill9_and_drain_in_order(tmp_path: Path) -> None:
    db = tmp_path / "telemetry.db"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from edgefleet.device_agent.telemetry import TelemetryQueue
        q = TelemetryQueue({str(db)!r}, max_events=100_000)
        for i in range({N}):
            q.put("event", {{"i": i}})
        print("done", flush=True)
        sys.stdin.readline()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "done"
    os.kill(p.pid, signal.SIGKILL)  # no clean shutdown
    p.wait()
    q = TelemetryQueue(db)
    assert len(q) == N

    class Offline:
        def send(self, records: Sequence[Record]) -> Iterable[int]:
            raise ConnectionError("broker away")

    try:
        drain(q, Offline())
    except ConnectionError:
        pass
    assert len(q) == N
    sink = MemorySink()
    assert drain(q, sink, batch=700) == N
    assert [r.data["i"] for r in sink.records] == list(range(N))
    assert [r.seq for r in sink.records] == sorted(r.seq for r in sink.records)
    assert len(q) == 0 and q.dropped == 0
    q.close()


def test_only_acknowledged_records_are_deleted(tmp_path: Path) -> None:
    q = TelemetryQueue(tmp_path / "t.db")
    q.put_many([("e", {"i": i}, None) for i in range(100)])
    odd = MemorySink(accept=lambda r: r.data["i"] % 2 == 1)
    drain(q, odd, batch=10)
    assert len(odd.records) == 50
    left = [r.data["i"] for r in q.peek(1000)]
    assert left == list(range(0, 100, 2))
    q.close()


def test_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    q = TelemetryQueue(tmp_path / "t.db", max_events=1000)
    for start in range(0, 1500, 250):
        q.put_many([("e", {"i": i}, None) for i in range(start, start + 250)])
    assert len(q) == 1000 and q.dropped == 500
    q.close()
    q = TelemetryQueue(tmp_path / "t.db", max_events=1000)  # restarted: count and drops persist
    assert len(q) == 1000 and q.dropped == 500
    sink = MemorySink()
    drain(q, sink)
    assert [r.data["i"] for r in sink.records] == list(range(500, 1500))
    q.close()


def test_agent_metrics_histogram_drift_and_install_events(agent_config: Any, bundles: dict[str, Path]) -> None:
    cfg = agent_config()
    cfg = cfg.with_overrides(telemetry=type(cfg.telemetry)(drift_threshold=0.25, drift_window=400))
    with Agent(cfg, monitor=False) as agent:
        agent.install(bundles["1"])
        rng = np.random.default_rng(5)
        for _ in range(5):
            agent.predict(rng.normal(size=(80, 4)).astype(np.float32))  # like the reference data
        try:
            agent.predict(np.ones((1, 5), np.float32))
        except Exception:
            pass
        sink = MemorySink()
        agent.drain(sink)
        kinds = [r.kind for r in sink.records]
        assert "drift" not in kinds
        assert "job" in kinds and "activated" in kinds
        metrics = [r for r in sink.records if r.kind == "metrics"][-1].data
        v1 = metrics["versions"]["1"]
        assert v1["predictions"] == 6 and v1["invalid_inputs"] == 1 and v1["errors"] == 0
        assert v1["latency"]["count"] == 5 and sum(v1["latency"]["counts"]) == 5
        assert metrics["resources"]["rss_bytes"] > 0
        for _ in range(20):
            agent.predict((rng.normal(size=(40, 4)) + 1.0).astype(np.float32))  # shifted inputs
        sink = MemorySink()
        agent.drain(sink)
        drift = [r for r in sink.records if r.kind == "drift"]
        assert len(drift) == 1, "one event per threshold crossing"
        assert drift[0].data["psi_max"] > 0.25 and drift[0].data["version"] == "1"
        assert drift[0].data["device_id"] == "dev-1"
        assert agent.status()["telemetry"]["queued"] == 0


def test_drift_statistics_survive_a_restart(agent_config: Any, bundles: dict[str, Path]) -> None:
    cfg = agent_config()
    cfg = cfg.with_overrides(telemetry=type(cfg.telemetry)(drift_threshold=0.25, drift_window=300))
    rng = np.random.default_rng(9)
    with Agent(cfg, monitor=False) as agent:
        agent.install(bundles["1"])
        agent.predict(rng.normal(size=(250, 4)).astype(np.float32))
    with Agent(cfg, monitor=False) as agent:
        assert agent.status()["telemetry"]["window"]["drift"]["count"] == 0  # the window is still open
        agent.predict((rng.normal(size=(60, 4)) + 2.0).astype(np.float32))  # completes the 300-input window
        summary = agent.status()["telemetry"]["window"]["drift"]
        assert summary["count"] == 310 and summary["last_window"]["count"] == 310
