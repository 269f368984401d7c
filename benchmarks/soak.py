"""Soak: a fleet left running for an hour through a broker restart and a coordinator crash.

    python -m benchmarks.soak [--minutes 60] [--devices 1000] [--workers 4] [--interval 10] [--rollout-every 10]
                              [--coordinators 2] [--db URL] [--bundle-kib 128] [--quick] [--out PATH]

Everything real but the devices' installs: a Mosquitto of its own on a free loopback port (persistence on, as
a production broker keeps its sessions), ``--coordinators`` ``edgefleet cloud serve`` processes sharing the
MQTT 5 shared subscription and one registry (SQLite file by default; ``--db`` a PostgreSQL server URL gets a
fresh database of its own), supervised by ``edgefleet.supervisor`` as a service manager would, and
``--devices`` simulated devices in ``--workers`` processes (``benchmarks.cluster.SimFleet``: each its own MQTT
session and the real device machine; a telemetry queue that keeps records until acknowledged, as the agent's).

The schedule (:func:`schedule`, scaled from the hour by ``--minutes``):

- a telemetry record from every device every ``--interval`` seconds (not scaled: the load stays the load);
- a staged rollout (canary 5%, waves 25/50/100%) of a new signed bundle every ``--rollout-every`` minutes,
  deployed through the first coordinator's HTTP API;
- the broker stopped and started again (same port, same persistence) at the half-way point;
- the second coordinator killed with SIGKILL at three quarters, and started again by its supervisor.

Measured:

- coordinator resident memory every few seconds; growth after warm-up (the first rollout interval) of the
  coordinator that was never killed, from the first sample after warm-up to the last before the drain
  (target <= 5%); CPU seconds per device-hour;
- acknowledged telemetry lost: after the run the devices stop producing and drain their queues; every record a
  device saw acknowledged must be in the registry (its aggregate counts the records, each device's high-water
  mark covers its acknowledged seqs). Target 0;
- every rollout completes (each deployment ``completed``, every job SUCCEEDED), with its time to complete;
- broker resident memory, reconnects, telemetry batches that timed out and were sent again.

Writes benchmarks/results/soak.json (``--quick``: soak_quick.json: 3 minutes, 300 devices), then regenerate
BENCHMARKS.md with ``python -m benchmarks report``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks import schema

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COUNTERS = ("telemetry_records", "telemetry_batches", "telemetry_duplicates", "telemetry_rate_limited", "dispatched",
            "chunks_served", "handler_errors", "malformed")
PLAN = {"canary": "5%", "waves": "25%,50%,100%", "max_failure": "2%", "job_timeout": "1h"}


@dataclass(frozen=True)
class Schedule:
    """When things happen, in seconds from the start of the soak."""

    duration: float
    rollouts: tuple[float, ...]
    broker_restart: float
    coordinator_kill: float
    warm_up: float


def schedule(minutes: float, rollout_every: float = 10.0) -> Schedule:
    """The hour's schedule scaled to ``minutes``: a rollout every ``rollout_every`` minutes of the hour (the first
    a twentieth of an interval in, so it starts on a connected fleet), the broker restarted at half-way, a
    coordinator killed at three quarters; warm-up is the first rollout interval."""
    duration = minutes * 60.0
    every = rollout_every * 60.0 * minutes / 60.0
    count = max(1, int(duration // every + 1e-9))
    return Schedule(duration, tuple(round(every * k + every / 20, 3) for k in range(count)), duration / 2,
                    duration * 0.75, every)


def loss(devices: list[dict[str, Any]], registry_records: int, marks: dict[str, int]) -> dict[str, Any]:
    """Acknowledged telemetry lost: what the devices saw acknowledged against what the registry holds (pure).

    Each device numbers its records 1, 2, ... and they are acknowledged only once stored, so the registry's
    count of records must be at least the acknowledged ones, and each device's high-water mark at least the
    highest seq it saw acknowledged."""
    acked = sum(d["acked"] for d in devices)
    behind = sorted(d["id"] for d in devices if d["max_acked"] > marks.get(d["id"], 0))
    return {"generated": sum(d["generated"] for d in devices), "acknowledged": acked,
            "registry_records": registry_records, "not_acknowledged_at_end": sum(d["pending"] for d in devices),
            "acknowledged_lost": max(0, acked - registry_records),
            "devices_with_acknowledged_seq_beyond_registry_mark": len(behind), "examples": behind[:5],
            "stored_but_unacknowledged": max(0, registry_records - acked)}


def verdicts(out: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for a soak's figures (``schema.target`` rows, met or not, with the reason)."""
    p, rss, tel = out["parameters"], out["rss"], out["telemetry"]
    growth = rss.get("growth")
    short = p["minutes"] < 60
    base = f"{p['devices']:,} devices, {p['minutes']:g} min, {out['rollouts_started']} rollouts"
    return [
        schema.target("coordinator RSS growth after warm-up (the coordinator never killed)", growth, "≤ 5%",
                      None if growth is None else growth <= 0.05,
                      f"{base}; {rss.get('baseline_bytes', 0) / 2**20:.1f} MB at {rss.get('baseline_at_s')} s -> "
                      f"{rss.get('final_bytes', 0) / 2**20:.1f} MB at {rss.get('final_at_s')} s"
                      + ("; a shortened soak: warm-up is one rollout interval" if short else "")
                      if growth is not None else "not enough samples after warm-up"),
        schema.target("acknowledged telemetry lost", tel["acknowledged_lost"]
                      + tel["devices_with_acknowledged_seq_beyond_registry_mark"], "0",
                      tel["acknowledged_lost"] == 0 and tel["devices_with_acknowledged_seq_beyond_registry_mark"] == 0,
                      f"{tel['acknowledged']:,} records acknowledged, {tel['registry_records']:,} in the registry, "
                      f"{tel['not_acknowledged_at_end']:,} still unacknowledged after the drain; through a broker "
                      "restart and a coordinator SIGKILL"),
        schema.target("rollouts completed (every job SUCCEEDED)", f"{out['rollouts_completed']} of "
                      f"{out['rollouts_started']}", "all", out["rollouts_completed"] == out["rollouts_started"] > 0,
                      "longest " + f"{max((d.get('seconds_to_complete') or 0 for d in out['rollouts']), default=0):g}"
                      " s from deploy to completed"),
    ]


def run(minutes: float = 60.0, devices: int = 1000, workers: int = 4, interval: float = 10.0,
        rollout_every: float = 10.0, coordinators: int = 2, db: str | None = None, bundle_kib: int = 128,
        root: Path | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """One soak; returns its figures (the JSON's body)."""
    if root is None:
        with tempfile.TemporaryDirectory(prefix="edgefleet-soak-") as tmp:
            return run(minutes, devices, workers, interval, rollout_every, coordinators, db, bundle_kib, Path(tmp),
                       say)
    from edgefleet.cloud_sync.broker import LocalBroker
    from edgefleet.cloud_sync.coordinator.client import deploy_bundle
    from edgefleet.cloud_sync.coordinator.registry import Registry

    from . import cluster

    plan = schedule(minutes, rollout_every)
    ids = [f"soak{i:05d}" for i in range(devices)]
    priv, pub, key = cluster.keys(root)
    archives = cluster.bundles(root / "bundles", key, len(plan.rollouts), bundle_kib)
    allow = cluster.provision(root, ids)
    drop_db: Callable[[], None] | None = None
    if db and db.startswith("postgresql"):
        db_url, drop_db = cluster.fresh_database(db)
    else:
        db_url = db or f"sqlite:///{root / 'registry.db'}"
    Registry(db_url).close()  # the tables exist before the coordinators race to create them
    broker = LocalBroker(root / "broker", persistence=True, queue_limit=0, port=cluster.quiet_port()).start()
    token = secrets.token_hex(16)
    coords = [cluster.CoordinatorProcess(root / "coordinators", f"soak-coord-{i}", broker_url=broker.url,
                                         db_url=db_url, allow_file=allow, trust=pub, signing_key=priv, token=token)
              for i in range(coordinators)]
    fleet: Any = None
    reg: Any = None
    try:
        for c in coords:
            c.start()
        start_s = [round(c.wait_healthy(), 2) for c in coords]
        say(f"soak: {coordinators} coordinators up ({start_s} s); connecting {devices} devices")
        fleet = cluster.SimFleet(broker.port, ids, workers, interval)
        connect_s = fleet.wait_ready()
        reg = Registry(db_url)
        cluster.wait_online(reg, devices, 120, 0.5)
        say(f"soak: {devices} devices connected in {connect_s:.1f} s; running {minutes:g} min")
        t0 = time.monotonic()
        now = lambda: time.monotonic() - t0  # noqa: E731
        sample_every = max(1.0, min(5.0, plan.duration / 120))
        samples: dict[str, list[tuple[float, int]]] = {c.name: [] for c in coords}
        samples["broker"] = []
        cpu: dict[str, list[tuple[float, int, float]]] = {c.name: [] for c in coords}
        deps: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        todo = list(enumerate(plan.rollouts))
        restarted = killed = False
        next_sample = 0.0

        def sample() -> None:
            t = round(now(), 1)
            for c in coords:
                pid = c.pid
                r, s = cluster.rss_bytes(pid), cluster.cpu_seconds(pid)
                if r is not None:
                    samples[c.name].append((t, r))
                if pid is not None and s is not None:
                    cpu[c.name].append((t, pid, s))
            b = cluster.rss_bytes(broker.proc.pid if broker.proc is not None else None)
            if b is not None:
                samples["broker"].append((t, b))

        def check_deployments() -> None:
            for d in deps:
                if d["state"] in ("completed", "halted", "rolled_back", "canceled"):
                    continue
                row = reg.deployment(d["id"])
                if row is not None and row.state != d["state"]:
                    d["state"] = row.state
                    if row.state != "running":
                        d["ended_at_s"] = round(now(), 1)
                        d["seconds_to_complete"] = round(now() - d["deployed_at_s"], 1)
                        say(f"soak: t={now():.0f}s deployment {d['id']} (v{d['version']}) {row.state} in "
                            f"{d['seconds_to_complete']} s")

        while now() < plan.duration:
            if now() >= next_sample:
                next_sample = now() + sample_every
                sample()
            if todo and now() >= todo[0][1]:
                k, _ = todo.pop(0)
                t = now()
                s = deploy_bundle(coords[0].api, token, archives[k], cluster.GROUP, PLAN["canary"], PLAN["waves"],
                                  PLAN["max_failure"], PLAN["job_timeout"])
                deps.append({"id": s["id"], "version": str(k + 1), "deployed_at_s": round(t, 1), "state": "running",
                             "deploy_call_seconds": round(now() - t, 2)})
                say(f"soak: t={t:.0f}s deployed v{k + 1} as {s['id']}")
            if not restarted and now() >= plan.broker_restart:
                restarted = True
                t = now()
                broker.stop()
                broker.start()
                events.append({"event": "broker_restarted", "at_s": round(t, 1), "seconds_down": round(now() - t, 2)})
                say(f"soak: t={t:.0f}s broker restarted ({now() - t:.1f} s down)")
            if not killed and coordinators > 1 and now() >= plan.coordinator_kill:
                killed = True
                victim = coords[-1]
                t = now()
                pid = victim.pid
                victim.kill()  # SIGKILL; the supervisor starts it again
                back = victim.wait_healthy()
                events.append({"event": "coordinator_killed", "coordinator": victim.name, "at_s": round(t, 1),
                               "pid": pid, "new_pid": victim.pid, "seconds_until_healthy": round(back, 2),
                               "restarts": victim.restarts})
                say(f"soak: t={t:.0f}s killed {victim.name} (pid {pid}); back as pid {victim.pid} in {back:.1f} s")
            check_deployments()
            time.sleep(0.5)
        sample()
        end_s = now()
        say(f"soak: t={end_s:.0f}s end of the schedule; draining telemetry and waiting for the rollouts")
        fleet.generate(False)
        drain_deadline = time.monotonic() + 3 * interval + 60
        pending = (-1, 0)
        while time.monotonic() < drain_deadline:
            check_deployments()
            pending = fleet.pending()
            if pending[0] == 0 and all(d["state"] != "running" for d in deps):
                break
            time.sleep(1.0)
        check_deployments()
        drained_s = round(now() - end_s, 1)
        counters = {c.name: c.counters() for c in coords}  # since each one's latest start
        results = fleet.stop()
        fleet = None
        time.sleep(1.0)  # the last acknowledgements' transactions are long committed; the registry as it is
        tel = reg.telemetry(cluster.FLEET, cluster.GROUP, cluster.VERSION_TAG)
        marks = {d.device_id: d.telemetry_seq for d in reg.devices(cluster.FLEET)}
        lost = loss(results, sum(r.records for r in tel if r.kind == "metrics"), marks)
        by_id = {r["id"]: r for r in results}
        for d in deps:
            jobs = [j for j in reg.jobs(d["id"]) if j.action == "install"]
            d["jobs"] = len(jobs)
            d["succeeded"] = sum(j.status.value == "SUCCEEDED" for j in jobs)
            d["targets"] = len(reg.deployment(d["id"]).targets)
            d.update(cluster.stage_events((e.kind, e.stage) for e in reg.events(d["id"])))
            ids_by_device = {j.device_id: j.job_id for j in jobs}
            d["devices_installed_once"] = sum(by_id[dev]["installed"].count(job) == 1
                                              for dev, job in ids_by_device.items() if dev in by_id)
        survivor = coords[0].name
        growth = cluster.rss_growth(samples[survivor], plan.warm_up, end_s)
        cpu_used = {n: cluster.cpu_used(v) for n, v in cpu.items()}
        hours = end_s / 3600.0
        out = {
            "parameters": {"minutes": minutes, "devices": devices, "workers": workers,
                           "telemetry_interval_s": interval, "rollout_every_minutes_of_the_hour": rollout_every,
                           "coordinators": coordinators, "registry": db_url.split(":", 1)[0].split("+")[0],
                           "bundle_bytes": archives[0].stat().st_size,
                           "plan": PLAN, "schedule": {"rollouts_at_s": list(plan.rollouts),
                                                      "broker_restart_at_s": plan.broker_restart,
                                                      "coordinator_kill_at_s": plan.coordinator_kill,
                                                      "warm_up_s": plan.warm_up}},
            "coordinators_start_seconds": start_s, "devices_connect_seconds": round(connect_s, 2),
            "seconds": round(end_s, 1), "drain_seconds": drained_s,
            "events": events,
            "rollouts": deps,
            "rollouts_completed": sum(d["state"] == "completed" and d["succeeded"] == devices for d in deps),
            "rollouts_started": len(deps),
            "telemetry": lost,
            "rss": {"coordinator_never_killed": survivor, "warm_up_s": plan.warm_up, **growth,
                    "samples": {n: v for n, v in samples.items()}},
            "cpu_seconds": cpu_used,
            "coordinator_counters": {n: {k: int(v) for k, v in c.items() if k in COUNTERS} for n, c in counters.items()},
            "coordinator_cpu_seconds_per_device_hour": {n: round(v / devices / hours, 4)
                                                        for n, v in cpu_used.items()} if hours else {},
            "devices_summary": {
                "reconnects": sum(max(0, r["connects"] - 1) for r in results),
                "telemetry_batches": sum(r["batches"] for r in results),
                "telemetry_batches_timed_out": sum(r["ack_timeouts"] for r in results),
                "late_acks": sum(r["late_acks"] for r in results),
                "malformed": sum(r["malformed"] for r in results),
                "wire_bytes_in_per_device_hour": round(sum(r["wire_in"] for r in results) / devices / hours)
                if hours else None,
                "wire_bytes_out_per_device_hour": round(sum(r["wire_out"] for r in results) / devices / hours)
                if hours else None,
            },
            "broker_rss_bytes_max": max((r for _, r in samples["broker"]), default=None),
            "pending_at_end": pending[0],
        }
        return out
    finally:
        cluster.shut_down(fleet, reg, coords, broker, drop_db)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=None, help="length of the soak (default 60; --quick 3)")
    ap.add_argument("--devices", type=int, default=None, help="simulated devices (default 1000; --quick 300)")
    ap.add_argument("--workers", type=int, default=4, help="device worker processes")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between a device's telemetry records")
    ap.add_argument("--rollout-every", type=float, default=10.0,
                    help="minutes between rollouts in the hour (scaled with --minutes)")
    ap.add_argument("--coordinators", type=int, default=2, help="coordinator processes sharing the subscription")
    ap.add_argument("--db", default=None, help="registry: a SQLAlchemy URL (a postgresql+psycopg:// server gets a "
                                               "fresh database of its own; default a SQLite file)")
    ap.add_argument("--bundle-kib", type=int, default=128, help="size of each rollout's bundle")
    ap.add_argument("--quick", action="store_true", help="3 minutes, 300 devices (the CI test's size)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/soak.json, "
                                                "with --quick soak_quick.json)")
    args = ap.parse_args(argv)
    minutes = args.minutes or (3.0 if args.quick else 60.0)
    devices = args.devices or (300 if args.quick else 1000)
    if minutes <= 0 or devices <= 0 or args.workers <= 0 or args.interval <= 0 or args.coordinators <= 0:
        print("error: --minutes, --devices, --workers, --interval and --coordinators must be positive",
              file=sys.stderr)
        return 2
    out = Path(args.out or RESULTS / ("soak_quick.json" if args.quick else "soak.json"))
    return schema.record("soak", args.quick, ("paho-mqtt", "SQLAlchemy", "psycopg"),
                         lambda: run(minutes, devices, args.workers, args.interval, args.rollout_every,
                                     args.coordinators, args.db, args.bundle_kib,
                                     say=lambda m: print(m, file=sys.stderr, flush=True)),
                         verdicts, out, hide=("machine", "rss"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
