"""The closed loop end to end: ``edgefleet demo`` runs, their summaries collected.

    python -m benchmarks.demo_loop [--devices 3] [--rounds 2] [--seeds 0,1,2] [--quick] [--out FILE]

Each run is the real command in a subprocess (its own Mosquitto, coordinator, device
processes, Flower SuperLink/SuperNodes, the drift-triggered federated run and both staged
rollouts) on a fresh work directory. Records per run: held-out accuracy of v1 (before) and of
the version the fleet ends on (after), whether every device ended on it, bytes shipped per
rollout (full v1, bsdiff delta v2), time per stage and in all; plus mean/min/max over the runs.
Writes benchmarks/results/demo_loop.json (``--quick``: one run, 2 devices, 1 round,
demo_loop_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def run_once(devices: int, rounds: int, seed: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-demo-bench-") as tmp:
        wd = Path(tmp) / "demo"
        env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", TF_CPP_MIN_LOG_LEVEL="3")
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "edgefleet.cli", "demo", "--devices", str(devices), "--rounds",
                               str(rounds), "--seed", str(seed), "--workdir", str(wd)], capture_output=True, text=True,
                              timeout=timeout, env=env)
        wall = time.monotonic() - t0
        if proc.returncode != 0 or not (wd / "summary.json").exists():
            return {"seed": seed, "ok": False, "returncode": proc.returncode, "wall_seconds": round(wall, 1),
                    "error": (proc.stderr or proc.stdout)[-2000:]}
        s = json.loads((wd / "summary.json").read_text())
    return {
        "seed": seed, "ok": True, "wall_seconds": round(wall, 1), "demo_seconds": s["total_seconds"],
        "accuracy_before": s["accuracy_before"], "accuracy_after": s["accuracy_after"],
        "final_version": s["final_version"], "all_on_final": s["all_on_final"], "bytes_shipped": s["bytes_shipped"],
        "rollouts": [{k: r.get(k) for k in ("version", "seconds", "bytes", "deltas", "head_updates", "archive_bytes",
                                            "stages")}
                     for r in s["rollouts"]],
        "bad_candidate": ({k: s["bad_candidate"].get(k) for k in ("version", "state", "test_accuracy", "sent_to",
                                                                  "rolled_back", "targets")}
                          if s.get("bad_candidate") else None),
        "stages": s["stages"], "drift_alerts": len(s["drift_alerts"]),
        "federated_rounds": [{k: r.get(k) for k in ("round", "participants", "central_accuracy", "seconds")}
                             for r in s["federated"]["rounds"]],
        "local_accuracy": {d["device_id"]: [d["local_accuracy_before"], d["local_accuracy_after"]]
                           for d in s["device_results"]},
    }


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": round(sum(values) / len(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2", help="one demo run per seed (data split and training)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: one run, 2 devices, 1 round")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for one demo run")
    ap.add_argument("--out", help="JSON file (default benchmarks/results/demo_loop[_quick].json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.devices, args.rounds, args.seeds = 2, 1, "0"
    out = Path(args.out or RESULTS / f"demo_loop{'_quick' if args.quick else ''}.json")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    from .schema import envelope
    from .schema import machine as machine_now

    machine = machine_now(("flwr", "paho-mqtt", "tensorflow"))
    runs = []
    for seed in seeds:
        r = run_once(args.devices, args.rounds, seed, args.timeout)
        runs.append(r)
        if r["ok"]:
            print(f"seed {seed}: accuracy {100 * r['accuracy_before']:.1f}% -> {100 * r['accuracy_after']:.1f}%, "
                  f"every device on v{r['final_version']}: {r['all_on_final']}, {r['bytes_shipped']:,} bytes shipped, "
                  f"{r['demo_seconds']:.0f}s", flush=True)
        else:
            print(f"seed {seed}: FAILED (exit {r['returncode']}): {r['error'][-500:]}", flush=True)
    ok = [r for r in runs if r["ok"]]
    doc = {
        **envelope("demo_loop", args.quick, machine_doc=machine), "devices": args.devices, "rounds": args.rounds,
        "runs": runs,
        "summary": {
            "runs": len(runs), "ok": len(ok),
            "all_devices_on_final": all(r["all_on_final"] for r in ok) and len(ok) == len(runs),
            "accuracy_before": _stats([r["accuracy_before"] for r in ok]),
            "accuracy_after": _stats([r["accuracy_after"] for r in ok]),
            "after_ge_before": all(r["accuracy_after"] >= r["accuracy_before"] for r in ok),
            "demo_seconds": _stats([r["demo_seconds"] for r in ok]),
            "v1_bytes": _stats([r["rollouts"][0]["bytes"] for r in ok]),
            "v2_bytes": _stats([r["rollouts"][1]["bytes"] for r in ok if len(r["rollouts"]) > 1]),
            "bad_candidates_halted_on_quality": sum(
                1 for r in ok if r.get("bad_candidate") and r["bad_candidate"]["state"] == "halted"
                and [b["reason"] for b in r["bad_candidate"]["rolled_back"]] == ["quality"]),
            "stage_seconds": {k: _stats([r["stages"][k] for r in ok if k in r["stages"]])
                              for k in (ok[0]["stages"] if ok else {})},
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if ok and len(ok) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
