"""Prometheus ``/metrics`` of the coordinator (prometheus-client).

A custom collector: at every scrape :func:`snapshot` reads the registry (a handful of GROUP BY queries: devices,
jobs, alerts, federated runs; the deployments and the telemetry aggregates) and the coordinator's own state
(its counters, its broker connection, its queue), and the pure :func:`families` turns that
:class:`Snapshot` into metric families. State-like values are gauges read from the registry, so every
coordinator sharing a registry reports the same ones; the ingest counters are this process's own (reset
when it restarts, as Prometheus counters may).

The route (``GET /metrics``, :func:`add_route`) sits behind the API's bearer tokens; a ``read`` token is enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from fastapi import Depends
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edgefleet._version import __version__

from ..wire.protocol import TERMINAL_STATES
from .rows import AlertTally, Deployment, DeploymentState, DeviceTally, FedRunTally, JobTally, TelemetryRow

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .service import Coordinator

#: the text exposition format every Prometheus reads (what ``generate_latest`` writes)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "edgefleet"
DEPLOYMENT_STATES = tuple(DeploymentState)
LIVE_STATES = frozenset(s for s in DeploymentState if s.live)
#: per-deployment series: every running or paused deployment, and the newest ones besides (others drop out)
RECENT_DEPLOYMENTS = 20
#: the coordinator's counters exported as ``edgefleet_<name>_total`` (name: help)
COUNTERS: Mapping[str, str] = {
    "telemetry_records": "telemetry records ingested (new ones, each counted once)",
    "telemetry_batches": "telemetry batches ingested and acknowledged",
    "telemetry_rejected": "telemetry records rejected (out of bounds, or refused by the database)",
    "telemetry_rate_limited": "telemetry batches dropped unacknowledged by the per-device rate limit",
    "telemetry_duplicates": "telemetry records received again (already ingested)",
    "malformed": "malformed messages dropped",
    "handler_errors": "messages the coordinator failed on",
    "dispatched": "install jobs dispatched",
    "rollbacks_ordered": "rollback orders sent",
    "jobs_timed_out": "jobs timed out",
    "chunks_served": "bundle chunks published",
    "refused_devices": "messages of devices outside the allow-list",
}


@dataclass(frozen=True)
class Broker:
    """The coordinator's own broker connection."""

    connected: bool
    since: float  # wall-clock time of the last change (0: never connected)
    connects: int
    disconnects: int


@dataclass(frozen=True)
class Snapshot:
    """What one scrape reports: registry rows and the coordinator's own state, read at one moment."""

    fleet: str
    node: str
    devices: Sequence[DeviceTally] = ()
    jobs: Sequence[JobTally] = ()
    deployments: Sequence[Deployment] = ()
    telemetry: Sequence[TelemetryRow] = ()
    alerts: Sequence[AlertTally] = ()
    fed_runs: Sequence[FedRunTally] = ()
    counters: Mapping[str, int] = field(default_factory=dict)
    broker: Broker = Broker(False, 0.0, 0, 0)
    queue_depth: int = 0
    ingest_lag: float | None = None  # seconds: how old the newest record of the latest ingest was then
    last_ingest: float = 0.0  # wall-clock time of the latest ingest (0: none yet)


def snapshot(coord: Coordinator) -> Snapshot:
    """Read the registry and ``coord`` (the I/O half of a scrape)."""
    reg, fleet = coord.registry, coord.fleet
    link = coord.broker
    return Snapshot(
        fleet=fleet, node=coord.node, devices=reg.device_tallies(fleet), jobs=reg.job_tallies(fleet),
        deployments=reg.deployments(fleet), telemetry=reg.telemetry(fleet), alerts=reg.alert_tallies(fleet),
        fed_runs=reg.fed_run_tallies(fleet), counters=dict(coord.counters),
        broker=Broker(coord.transport.connected, link.since, link.connects, link.disconnects),
        queue_depth=coord.queue_depth(), ingest_lag=coord.ingest_lag, last_ingest=coord.last_ingest)


def run_status(status: str) -> str:
    """A federated run's status as a label: the word before any detail (``failed: exit code 1`` -> ``failed``)."""
    word = status.split(":", 1)[0].strip().lower()
    return word or "unknown"


def shown_deployments(deployments: Sequence[Deployment]) -> list[Deployment]:
    """The deployments with series of their own: every running or paused one and the newest others."""
    newest = {d.id for d in sorted(deployments, key=lambda d: (d.created, d.id))[-RECENT_DEPLOYMENTS:]}
    return [d for d in deployments if d.state in LIVE_STATES or d.id in newest]


def _name(short: str) -> str:
    return f"{PREFIX}_{short}"


def families(s: Snapshot) -> list[Metric]:  # noqa: C901 - one block per metric
    """The metric families of a snapshot (pure)."""
    out: list[Metric] = []
    info = InfoMetricFamily(_name("coordinator"), "this coordinator", labels=["fleet", "node", "edgefleet_version"])
    info.add_metric([s.fleet, s.node, __version__], {})
    out.append(info)

    # devices: by state, version and group; the sums by state alone for simple dashboards
    devices = GaugeMetricFamily(_name("devices"), "devices by state (online/offline), group and active version",
                                labels=["state", "group", "version"])
    by_state = {"online": 0, "offline": 0}
    for t in s.devices:
        state = "online" if t.online else "offline"
        devices.add_metric([state, t.group, t.version], t.devices)
        by_state[state] += t.devices
    out.append(devices)
    states = GaugeMetricFamily(_name("devices_by_state"), "devices online and offline", labels=["state"])
    for state, n in by_state.items():
        states.add_metric([state], n)
    out.append(states)

    # jobs: by action and status over the fleet
    jobs = GaugeMetricFamily(_name("jobs"), "device jobs by action (install, rollback) and status",
                             labels=["action", "status"])
    fleet_jobs: dict[tuple[str, str], int] = {}
    per_dep: dict[str, dict[tuple[str, str], int]] = {}
    for j in s.jobs:
        fleet_jobs[(j.action, j.status)] = fleet_jobs.get((j.action, j.status), 0) + j.jobs
        dep = per_dep.setdefault(j.deployment_id, {})
        dep[(j.action, j.status)] = dep.get((j.action, j.status), 0) + j.jobs
    for (action, status), n in sorted(fleet_jobs.items()):
        jobs.add_metric([action, status], n)
    out.append(jobs)

    # deployments: how many in each state; rollout progress of the live and recent ones
    dep_states = GaugeMetricFamily(_name("deployments"), "deployments by state", labels=["state"])
    counted = {st: 0 for st in DEPLOYMENT_STATES}
    for d in s.deployments:
        counted[d.state] = counted.get(d.state, 0) + 1
    for st, n in counted.items():
        dep_states.add_metric([st], n)
    out.append(dep_states)
    labels = ["deployment", "model", "version", "group"]
    targets = GaugeMetricFamily(_name("rollout_targets"), "devices a deployment targets", labels=labels)
    done = GaugeMetricFamily(_name("rollout_done"), "a deployment's install jobs that ended (any outcome)",
                             labels=labels)
    succeeded = GaugeMetricFamily(_name("rollout_succeeded"), "a deployment's install jobs that succeeded",
                                  labels=labels)
    progress = GaugeMetricFamily(_name("rollout_progress_ratio"), "ended install jobs over targets (0..1)",
                                 labels=labels)
    stage = GaugeMetricFamily(_name("rollout_stage"), "a deployment's current stage (0: canary; -1: none yet)",
                              labels=labels)
    rstate = GaugeMetricFamily(_name("rollout_state"), "1 for a deployment's current state, 0 for the others",
                               labels=[*labels, "state"])
    rjobs = GaugeMetricFamily(_name("rollout_jobs"), "a deployment's jobs by action and status",
                              labels=[*labels, "action", "status"])
    for d in shown_deployments(s.deployments):
        values = [d.id, d.name, d.version, d.group]
        counts = per_dep.get(d.id, {})
        ended = sum(n for (a, st), n in counts.items() if a == "install" and st in TERMINAL_STATES)
        n_targets = len(d.targets)
        targets.add_metric(values, n_targets)
        done.add_metric(values, ended)
        succeeded.add_metric(values, counts.get(("install", "SUCCEEDED"), 0))
        progress.add_metric(values, ended / n_targets if n_targets else 1.0)
        stage.add_metric(values, d.stage)
        for st in (*DEPLOYMENT_STATES, *([d.state] if d.state not in DEPLOYMENT_STATES else [])):
            rstate.add_metric([*values, st], 1.0 if st == d.state else 0.0)
        for (action, status), n in sorted(counts.items()):
            rjobs.add_metric([*values, action, status], n)
    out += [targets, done, succeeded, progress, stage, rstate, rjobs]

    # telemetry: the coordinator's ingest counters, its lag and queue
    for counter, help_text in COUNTERS.items():
        out.append(CounterMetricFamily(_name(counter), help_text, value=s.counters.get(counter, 0)))
    lag = GaugeMetricFamily(_name("telemetry_ingest_lag_seconds"), "how old the newest record of the latest "
                            "ingested batch was when it was ingested (device clock to coordinator clock)")
    if s.ingest_lag is not None:
        lag.add_metric([], s.ingest_lag)
    out.append(lag)
    out.append(GaugeMetricFamily(_name("telemetry_last_ingest_timestamp_seconds"),
                                 "wall-clock time of the latest telemetry ingest (0: none yet)", value=s.last_ingest))
    out.append(GaugeMetricFamily(_name("coordinator_queue_depth"), "inbound messages waiting for the coordinator",
                                 value=s.queue_depth))

    # predictions and errors by model version (and group), from the devices' metrics records
    pred = CounterMetricFamily(_name("predictions"), "predictions devices reported", labels=["group", "version"])
    errs = CounterMetricFamily(_name("prediction_errors"), "failed predictions devices reported",
                               labels=["group", "version"])
    inval = CounterMetricFamily(_name("invalid_inputs"), "predictions refused for invalid input",
                                labels=["group", "version"])
    records = CounterMetricFamily(_name("telemetry_records_stored"), "telemetry records in the registry",
                                  labels=["group", "version", "kind"])
    for r in s.telemetry:
        records.add_metric([r.group_name, r.version, r.kind], r.records)
        if r.kind == "metrics" and r.version:
            pred.add_metric([r.group_name, r.version], r.predictions)
            errs.add_metric([r.group_name, r.version], r.errors)
            inval.add_metric([r.group_name, r.version], r.invalid)
    out += [pred, errs, inval, records]

    # drift (and any other) alerts by model version
    alerts = CounterMetricFamily(_name("alerts"), "alerts devices raised, by kind (drift) and model version",
                                 labels=["kind", "version"])
    drift = CounterMetricFamily(_name("drift_alerts"), "drift alerts devices raised, by model version",
                                labels=["version"])
    for a in s.alerts:
        alerts.add_metric([a.kind, a.version], a.alerts)
        if a.kind == "drift":
            drift.add_metric([a.version], a.alerts)
    out += [alerts, drift]

    # the coordinator's own broker connection
    out.append(GaugeMetricFamily(_name("coordinator_broker_connected"), "1 while this coordinator is connected to "
                                 "the broker (device states are stale while it is 0)",
                                 value=1.0 if s.broker.connected else 0.0))
    out.append(GaugeMetricFamily(_name("coordinator_broker_state_change_timestamp_seconds"),
                                 "wall-clock time the broker connection last went up or down", value=s.broker.since))
    out.append(CounterMetricFamily(_name("coordinator_broker_connects"), "connections to the broker made",
                                   value=s.broker.connects))
    out.append(CounterMetricFamily(_name("coordinator_broker_disconnects"), "broker connections lost or closed",
                                   value=s.broker.disconnects))

    # federated retraining: runs by group and status, the rounds they recorded
    runs = GaugeMetricFamily(_name("federated_runs"), "federated runs by group and status", labels=["group", "status"])
    rounds = CounterMetricFamily(_name("federated_rounds"), "federated rounds recorded, by group",
                                 labels=["group"])
    by_status: dict[tuple[str, str], int] = {}
    by_group: dict[str, int] = {}
    for f in s.fed_runs:
        key = (f.group, run_status(f.status))
        by_status[key] = by_status.get(key, 0) + f.runs
        by_group[f.group] = by_group.get(f.group, 0) + f.rounds
    for (group, status), n in sorted(by_status.items()):
        runs.add_metric([group, status], n)
    for group, n in sorted(by_group.items()):
        rounds.add_metric([group], n)
    out += [runs, rounds]
    return out


class FleetCollector(Collector):
    """Collects :func:`families` of a fresh :func:`snapshot` at every scrape."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        return families(self.read())

    def describe(self) -> Iterable[Metric]:
        return []  # no registry read at registration


def collector_registry(coord: Coordinator) -> CollectorRegistry:
    """A Prometheus registry of ``coord``'s metrics (and this process's: CPU, memory, file descriptors)."""
    from prometheus_client import ProcessCollector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector(lambda: snapshot(coord)))
    ProcessCollector(registry=reg)
    return reg


def render(reg: CollectorRegistry) -> bytes:
    """The text exposition of ``reg`` (:data:`CONTENT_TYPE`)."""
    return generate_latest(reg)


def add_route(app: FastAPI, coord: Coordinator, auth: Any) -> None:
    """``GET /metrics`` on the API (any token; ``read`` scope is enough)."""
    reg = collector_registry(coord)
    doc: dict[int | str, dict[str, Any]] = {200: {"description": "the Prometheus text exposition format (0.0.4)",
                 "content": {"text/plain": {"schema": {"type": "string"}}}}}

    @app.get("/metrics", dependencies=[Depends(auth)], response_class=Response, responses=doc)
    def metrics() -> Response:
        """Prometheus metrics: devices by state, group and version; jobs; rollout progress; telemetry ingest
        counters and lag; predictions and errors by version; drift alerts; the coordinator's broker connection;
        federated runs and rounds. Scrape with a ``read`` token (``authorization`` in the scrape config)."""
        return Response(render(reg), media_type=CONTENT_TYPE)


__all__ = ["CONTENT_TYPE", "Broker", "FleetCollector", "Snapshot", "add_route", "collector_registry", "families",
           "render", "run_status", "shown_deployments", "snapshot"]
