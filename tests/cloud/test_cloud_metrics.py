"""Prometheus /metrics: a real coordinator, real agents over a real Mosquitto, scraped over HTTP with a read token,
parsed with prometheus_client's parser and checked against the registry."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from conftest import wait_for
from helpers import coordinator, device, serve_api
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.cloud_sync.coordinator.metrics import Snapshot, families, run_status, shown_deployments
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
from edgefleet.cloud_sync.coordinator.rows import FedRunTally

BOOT = "boot-token-metrics"


def scrape(url: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{url}/metrics", headers=headers, timeout=30)


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}, from the text exposition (prometheus_client's parser)."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(got: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    return got[name][tuple(sorted(labels.items()))]


def test_metrics_scraped_over_http_match_the_registry(broker: Any, tmp_path: Path, make_agent: Any,
                                                     archives: dict[str, Path]) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    reg = coord.registry
    agents = [make_agent(f"m{i}", install=archives["1"]) for i in range(3)]
    syncs = [device(broker.url, a, tmp_path, group="line" if i < 2 else "spare", telemetry_interval=3600)
             for i, a in enumerate(agents)]
    try:
        wait_for(lambda: sum(d.online for d in reg.devices("f1")) == 3)
        dep = coord.create_deployment(archives["2"].read_bytes(), "line", RolloutPlan(0.5, (1.0,), 0.0))
        wait_for(lambda: reg.deployment(dep.id).state == "completed", timeout=60)  # type: ignore[union-attr]
        x = np.zeros((1, 4), np.float32)
        for a in agents:
            for _ in range(5):
                a.predict(x)
        agents[0].telemetry.event("drift", {"version": agents[0].active_version, "score": 0.9})
        agents[2].telemetry.event("drift", {"version": agents[2].active_version, "score": 0.7})
        for a, s in zip(agents, syncs):
            a.flush_telemetry()
            s.drain_telemetry()
        wait_for(lambda: len(reg.alerts("f1")) == 2)
        run_ok = reg.create_fed_run("f1", "line", "fedavg", 2, status="running")
        for rnd in (1, 2):
            reg.put_fed_round(run_ok, rnd, participants=2)
        reg.set_fed_run(run_ok, status="finished")
        run_bad = reg.create_fed_run("f1", "line", "fedavg", 3, status="running")
        reg.put_fed_round(run_bad, 1, participants=1)
        reg.set_fed_run(run_bad, status="failed")
        assert coord.wait_idle(10)
        read = reg.create_token("f1", "prometheus", "read")

        with serve_api(coord, BOOT) as url:
            assert scrape(url, None).status_code == 401
            assert scrape(url, "eft_not-a-token").status_code == 401
            r = scrape(url, read)  # a read token is enough
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("text/plain")
            got = samples(r.text)

            # devices by state, group and version: as the registry has them
            rows = reg.devices("f1")
            expect = Counter(("online" if d.online else "offline", d.group, d.active_version) for d in rows)
            assert expect == Counter({("online", "line", "2"): 2, ("online", "spare", "1"): 1})
            assert {(dict(k)["state"], dict(k)["group"], dict(k)["version"]): v
                    for k, v in got["edgefleet_devices"].items()} == dict(expect)
            assert one(got, "edgefleet_devices_by_state", state="online") == 3
            assert one(got, "edgefleet_devices_by_state", state="offline") == 0

            # jobs and the rollout's progress
            jobs = Counter((j.action, j.status.value) for j in reg.jobs(dep.id))
            assert jobs == Counter({("install", "SUCCEEDED"): 2})
            assert {(dict(k)["action"], dict(k)["status"]): v for k, v in got["edgefleet_jobs"].items()} == dict(jobs)
            summary = coord.summary(reg.deployment(dep.id))  # type: ignore[arg-type]
            labels = {"deployment": dep.id, "model": dep.name, "version": "2", "group": "line"}
            assert one(got, "edgefleet_rollout_targets", **labels) == summary["targets"] == 2
            assert one(got, "edgefleet_rollout_done", **labels) == summary["done"] == 2
            assert one(got, "edgefleet_rollout_succeeded", **labels) == 2
            assert one(got, "edgefleet_rollout_progress_ratio", **labels) == 1.0
            assert one(got, "edgefleet_rollout_stage", **labels) == summary["stage"]
            assert one(got, "edgefleet_rollout_state", **labels, state="completed") == 1
            assert one(got, "edgefleet_rollout_state", **labels, state="running") == 0
            assert one(got, "edgefleet_deployments", state="completed") == 1

            # predictions and errors by version, per group: the registry's telemetry aggregates
            metrics_rows = [t for t in reg.telemetry("f1") if t.kind == "metrics" and t.version]
            assert metrics_rows and sum(t.predictions for t in metrics_rows) == 15
            for t in metrics_rows:
                assert one(got, "edgefleet_predictions_total", group=t.group_name, version=t.version) == t.predictions
                assert one(got, "edgefleet_prediction_errors_total", group=t.group_name, version=t.version) == t.errors
            assert one(got, "edgefleet_predictions_total", group="line", version="2") == 10

            # telemetry ingest counters: the coordinator's own
            for name in ("telemetry_records", "telemetry_batches", "telemetry_rejected", "telemetry_rate_limited"):
                assert one(got, f"edgefleet_{name}_total") == coord.counters[name], name
            assert coord.counters["telemetry_records"] >= 5  # 3 metrics records and 2 drift alerts, at least
            assert got["edgefleet_telemetry_ingest_lag_seconds"][()] >= 0
            assert got["edgefleet_telemetry_last_ingest_timestamp_seconds"][()] == coord.last_ingest > 0

            # drift alerts by version
            alerts = Counter(a.version for a in reg.alerts("f1") if a.kind == "drift")
            assert alerts == Counter({"2": 1, "1": 1})
            assert {dict(k)["version"]: v for k, v in got["edgefleet_drift_alerts_total"].items()} == dict(alerts)

            # federated runs by status, rounds by group
            assert one(got, "edgefleet_federated_runs", group="line", status="finished") == 1
            assert one(got, "edgefleet_federated_runs", group="line", status="failed") == 1
            assert one(got, "edgefleet_federated_rounds_total", group="line") == sum(
                r.rounds_done for r in reg.fed_runs("f1"))  # 3

            # the coordinator's own broker connection
            assert got["edgefleet_coordinator_broker_connected"][()] == 1
            assert got["edgefleet_coordinator_broker_connects_total"][()] == 1
            assert got["edgefleet_coordinator_broker_disconnects_total"][()] == 0

            broker.kill()  # the broker dies (no wills sent): the registry still says online, the coordinator knows
            wait_for(lambda: not coord.transport.connected)
            got = samples(scrape(url, read).text)
            assert got["edgefleet_coordinator_broker_connected"][()] == 0
            assert got["edgefleet_coordinator_broker_disconnects_total"][()] == 1
            assert one(got, "edgefleet_devices_by_state", state="online") == 3  # stale: nobody told it otherwise
            health = httpx.get(f"{url}/healthz", timeout=10).json()
            assert health["broker_connected"] is False and health["broker_since"] > 0
    finally:
        for s in syncs:
            s.stop(graceful=False)


def test_families_are_pure_and_bound_the_deployment_series() -> None:
    """families() of a snapshot: run statuses are their first word; live deployments and the newest others only."""
    import dataclasses

    from edgefleet.cloud_sync.coordinator.rows import Deployment

    blank = {"str": "", "int": 0, "float": 0.0, "list[str]": [], "list[float]": []}

    def dep(i: int, state: str) -> Deployment:
        given = {"id": f"d{i}", "name": "m", "version": str(i), "state": state, "targets": ["x"], "created": float(i),
                 "group": "g"}
        return Deployment(**{f.name: given.get(f.name, blank.get(str(f.type))) for f in dataclasses.fields(Deployment)})

    deps = [dep(0, "running"), *[dep(i, "completed") for i in range(1, 30)]]
    shown = {d.id for d in shown_deployments(deps)}
    assert "d0" in shown and "d1" not in shown and "d29" in shown and len(shown) == 21
    assert run_status("failed: exit code 1") == "failed" and run_status("") == "unknown"
    snap = Snapshot(fleet="f", node="n", deployments=deps,
                    fed_runs=[FedRunTally("g", "failed: a", 1, 2), FedRunTally("g", "failed: b", 2, 0)])
    names = {f.name: f for f in families(snap)}
    runs = names["edgefleet_federated_runs"]
    assert [(s.labels, s.value) for s in runs.samples] == [({"group": "g", "status": "failed"}, 3)]
    assert len({s.labels["deployment"] for s in names["edgefleet_rollout_targets"].samples}) == 21
