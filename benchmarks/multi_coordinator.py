"""Two coordinator processes, one PostgreSQL registry, one MQTT 5 shared subscription: each stage and each job once.

    python -m benchmarks.multi_coordinator [--devices 10000] [--workers 4] [--coordinators 2] [--db URL]
                                           [--no-kill] [--bundle-kib 16] [--quick] [--out PATH]

A Mosquitto of its own on a free loopback port; ``--coordinators`` ``edgefleet cloud serve`` processes (supervised
by ``edgefleet.supervisor``) on one fresh database of the PostgreSQL server ``--db`` (default the test server,
127.0.0.1:``EDGEFLEET_PG_PORT`` or 5432, trust auth), sharing the fleet's up topics through the MQTT 5 shared
subscription; ``--devices`` simulated devices (``benchmarks.cluster.SimFleet``: each its own MQTT session and
the real device machine) that record every install job they are sent and install.

One staged rollout (canary 5%, waves 25/50/100%) deployed through the first coordinator's API. Once the canary
is dispatched, the coordinator that dispatched it (the lease holder) is killed with SIGKILL (``--no-kill``: not)
and its supervisor starts it again, so the later stages are dispatched by whichever coordinator takes the
lease over. Checked, from the registry and from the devices:

- each stage started once (the registry's stage events), by which coordinator;
- each device has one install job in the registry, was sent one install job id, and installed it once;
- every job SUCCEEDED and the deployment completed; the time from deploy to completion.

Writes benchmarks/results/multi_coordinator.json (``--quick``: multi_coordinator_quick.json, 300 devices).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from benchmarks import schema

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PLAN = ("5%", "25%,50%,100%", "2%", "1h")  # canary, waves, max failure, job timeout


def owner_pid(owner: str) -> int | None:
    """The process id in a coordinator's node name (``HOST-PID-RANDOM``, service.Coordinator.node)."""
    parts = owner.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def verdict(devices: list[dict[str, Any]], jobs: list[tuple[str, str, str]], targets: int) -> dict[str, Any]:
    """Each job once (pure): ``devices`` as the simulated devices report them (``desired``: install job id ->
    messages received, ``installed``: job ids installed), ``jobs`` the registry's (device, job id, status) of
    the deployment's install jobs."""
    per_device = Counter(d for d, _, _ in jobs)
    sent_ids = {d["id"]: set(d["desired"]) for d in devices}
    installs = {d["id"]: Counter(d["installed"]) for d in devices}
    return {
        "targets": targets,
        "registry_jobs": len(jobs),
        "devices_with_more_than_one_registry_job": sum(n > 1 for n in per_device.values()),
        "devices_without_a_registry_job": targets - len(per_device),
        "succeeded": sum(s == "SUCCEEDED" for _, _, s in jobs),
        "devices_sent_more_than_one_install_job": sum(len(v) > 1 for v in sent_ids.values()),
        "devices_sent_no_install_job": sum(not v for v in sent_ids.values()),
        "devices_installed_more_than_once": sum(any(n > 1 for n in c.values()) for c in installs.values()),
        "devices_installed_once": sum(sum(c.values()) == 1 for c in installs.values()),
        "desired_messages": sum(sum(d["desired"].values()) for d in devices),
        "desired_redeliveries": sum(sum(d["desired"].values()) - len(d["desired"]) for d in devices),
    }


def verdicts(out: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for a run's figures (``schema.target`` rows, met or not, with the reason)."""
    p, e = out["parameters"], out["each_job"]
    killed = out.get("killed")
    how = (f"{p['coordinators']} cloud serve processes, one PostgreSQL registry, the MQTT 5 shared subscription; "
           + (f"{killed['coordinator']}, the canary's dispatcher, killed with SIGKILL {killed['at_s']} s after deploy"
              if killed else "no coordinator killed"))
    return [
        schema.target("devices in the run", p["devices"], "10,000 (issue 16)", p["devices"] >= 10_000,
                      "" if p["devices"] >= 10_000 else "a smaller run (see parameters)"),
        schema.target("each stage started once", ", ".join(f"stage {k}: {v}" for k, v in out["stages"].items()),
                      "once each", out["each_stage_once"] and out["deployment_state"] == "completed",
                      f"deployment {out['deployment_state']}"
                      + (f" in {out['seconds_to_complete']} s" if out.get("seconds_to_complete") else "") + f"; {how}"),
        schema.target("each job once (registry jobs, install jobs sent, installs per device)",
                      f"{e['registry_jobs']:,} jobs for {e['targets']:,} devices, {e['devices_installed_once']:,} "
                      "installed once", "one each", bool(out["each_job_once"]),
                      f"{e['devices_sent_more_than_one_install_job']} devices sent two job ids, "
                      f"{e['devices_installed_more_than_once']} installed twice, {e['succeeded']:,} SUCCEEDED, "
                      f"{e['desired_redeliveries']} desired messages delivered again"),
    ]


def run(devices: int = 10_000, workers: int = 4, coordinators: int = 2, db: str | None = None, kill: bool = True,
        bundle_kib: int = 16, timeout: float = 1800.0, root: Path | None = None,
        say: Callable[[str], None] = print) -> dict[str, Any]:
    """One run; returns its figures (the JSON's body)."""
    if root is None:
        with tempfile.TemporaryDirectory(prefix="edgefleet-multi-") as tmp:
            return run(devices, workers, coordinators, db, kill, bundle_kib, timeout, Path(tmp), say)
    from edgefleet.cloud_sync.broker import LocalBroker
    from edgefleet.cloud_sync.coordinator.client import deploy_bundle
    from edgefleet.cloud_sync.coordinator.registry import Registry
    from edgefleet.errors import ConfigError, SyncError

    from . import cluster

    server = db or cluster.default_pg_server()
    if not server.startswith("postgresql"):
        raise ConfigError(f"--db {server}: give a PostgreSQL server URL (postgresql+psycopg://USER@HOST:PORT/DB)")
    ids = [f"mc{i:05d}" for i in range(devices)]
    priv, pub, key = cluster.keys(root)
    archive = cluster.bundles(root / "bundles", key, 1, bundle_kib)[0]
    allow = cluster.provision(root, ids)
    db_url, drop_db = cluster.fresh_database(server)
    reg: Any = None
    fleet: Any = None
    broker: Any = None
    coords: list[cluster.CoordinatorProcess] = []
    try:
        Registry(db_url).close()  # the tables exist before the coordinators race to create them
        broker = LocalBroker(root / "broker", persistence=True, queue_limit=0, port=cluster.quiet_port()).start()
        token = secrets.token_hex(16)
        coords = [cluster.CoordinatorProcess(root / "coordinators", f"mc-coord-{i}", broker_url=broker.url,
                                             db_url=db_url, allow_file=allow, trust=pub, signing_key=priv,
                                             token=token) for i in range(coordinators)]
        for c in coords:
            c.start()
        for c in coords:
            c.wait_healthy()
        say(f"multi_coordinator: {coordinators} coordinators up; connecting {devices} devices")
        fleet = cluster.SimFleet(broker.port, ids, workers, 0.0)
        connect_s = fleet.wait_ready(timeout=max(600.0, devices / 10))
        reg = Registry(db_url)
        online = cluster.wait_online(reg, devices, max(120.0, devices / 50), 1.0)
        say(f"multi_coordinator: {online} of {devices} devices online ({connect_s:.1f} s to connect)")
        t0 = time.monotonic()
        dep = deploy_bundle(coords[0].api, token, archive, cluster.GROUP, *PLAN)["id"]
        deploy_s = time.monotonic() - t0
        killed: dict[str, Any] = {}
        state = "running"
        while time.monotonic() - t0 < timeout:
            row = reg.deployment(dep)
            state = row.state if row is not None else "?"
            if state != "running":
                break
            if kill and not killed:
                canary = [e for e in reg.events(dep) if e.kind == "stage" and e.stage == 0]
                holder = next((c for c in coords if canary and c.pid == owner_pid(canary[0].owner)), None)
                if holder is not None:
                    pid = holder.pid
                    at = time.monotonic() - t0
                    holder.kill()  # SIGKILL; its supervisor starts it again
                    back = holder.wait_healthy()
                    killed = {"coordinator": holder.name, "pid": pid, "at_s": round(at, 2), "new_pid": holder.pid,
                              "seconds_until_healthy": round(back, 2)}
                    say(f"multi_coordinator: killed {holder.name} (pid {pid}), the canary's dispatcher, at "
                        f"{at:.1f} s; back in {back:.1f} s")
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        say(f"multi_coordinator: deployment {dep} {state} after {elapsed:.1f} s")
        counters: dict[str, dict[str, Any]] = {}
        for c in coords:
            try:
                counters[c.name] = {k: int(v) for k, v in c.counters().items()
                                    if k in ("dispatched", "chunks_served", "handler_errors", "malformed")}
            except Exception as exc:  # noqa: BLE001 - a counter scrape is informative only
                counters[c.name] = {"error": str(exc)[:200]}
        time.sleep(2.0)  # late duplicates would arrive now
        results = fleet.stop()
        fleet = None
        jobs = [(j.device_id, j.job_id, j.status.value) for j in reg.jobs(dep) if j.action == "install"]
        evs = reg.events(dep)
        stages = cluster.stage_events((e.kind, e.stage) for e in evs)
        pids = {c.last_pid: c.name for c in coords}
        if killed:
            pids[killed["pid"]] = f"{killed['coordinator']} (killed)"
        dispatchers = [{"stage": e.stage, "by": pids.get(owner_pid(e.owner) or -1, e.owner),
                        "at_s": round(e.ts - evs[0].ts, 2), "detail": e.detail} for e in evs if e.kind == "stage"]
        row = reg.deployment(dep)
        if row is None:
            raise SyncError(f"deployment {dep} is not in the registry")
        out = {
            "parameters": {"devices": devices, "workers": workers, "coordinators": coordinators,
                           "registry": "postgresql", "kill_canary_dispatcher": kill,
                           "bundle_bytes": archive.stat().st_size,
                           "plan": dict(zip(("canary", "waves", "max_failure", "job_timeout"), PLAN))},
            "devices_online_before_deploy": online, "devices_connect_seconds": round(connect_s, 2),
            "deploy_call_seconds": round(deploy_s, 2), "deployment_state": row.state,
            "seconds_to_complete": round(elapsed, 2) if row.state == "completed" else None,
            **stages, "stage_dispatchers": dispatchers, "killed": killed or None,
            "each_job": verdict(results, jobs, len(row.targets)),
            "coordinator_counters_since_latest_start": counters,
            "jobs_by_stage_and_status": {f"{stage} {status}": n for (stage, status), n in sorted(Counter(
                (j.stage, j.status.value) for j in reg.jobs(dep) if j.action == "install").items())},
            "events": [{"kind": e.kind, "stage": e.stage, "detail": e.detail[:200], "at_s": round(e.ts - evs[0].ts, 2)}
                       for e in evs],
        }
        out["each_stage_once"] = not stages["stage_started_more_than_once"] and bool(stages["stages"])
        e = out["each_job"]
        out["each_job_once"] = (e["registry_jobs"] == e["targets"] == devices
                                and e["devices_with_more_than_one_registry_job"] == 0
                                and e["devices_sent_more_than_one_install_job"] == 0
                                and e["devices_installed_more_than_once"] == 0
                                and e["devices_installed_once"] == devices)
        return out
    finally:
        cluster.shut_down(fleet, reg, coords, broker, drop_db)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=None, help="simulated devices (default 10000; --quick 300)")
    ap.add_argument("--workers", type=int, default=4, help="device worker processes")
    ap.add_argument("--coordinators", type=int, default=2, help="coordinator processes")
    ap.add_argument("--db", default=None, help="PostgreSQL server (a SQLAlchemy URL; a fresh database is created "
                                               "there and dropped after; default the test server)")
    ap.add_argument("--no-kill", action="store_true", help="do not kill the canary's dispatcher")
    ap.add_argument("--bundle-kib", type=int, default=16, help="bundle size")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds the rollout may take")
    ap.add_argument("--quick", action="store_true", help="300 devices")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/multi_coordinator.json, "
                                                "with --quick multi_coordinator_quick.json)")
    args = ap.parse_args(argv)
    devices = args.devices or (300 if args.quick else 10_000)
    if devices <= 0 or args.workers <= 0 or args.coordinators <= 0:
        print("error: --devices, --workers and --coordinators must be positive", file=sys.stderr)
        return 2

    from . import cluster

    if args.db is None and not cluster.pg_reachable():
        print(f"multi_coordinator: ConfigError: no PostgreSQL at {cluster.default_pg_server()} (bash "
              "scripts/postgres.sh starts one) and no --db given", file=sys.stderr)
        return 2
    out = Path(args.out or RESULTS / ("multi_coordinator_quick.json" if args.quick else "multi_coordinator.json"))
    return schema.record("multi_coordinator", args.quick, ("paho-mqtt", "SQLAlchemy", "psycopg"),
                         lambda: run(devices, args.workers, args.coordinators, args.db, not args.no_kill,
                                     args.bundle_kib, args.timeout, say=lambda m: print(m, file=sys.stderr, flush=True)),
                         verdicts, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
