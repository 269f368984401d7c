"""What the demo prints: the live fleet status line and the closing summary (pure formatting).

Inputs are the coordinator API's documents (``/v1/devices``, ``/v1/deployments/{id}``,
``/v1/telemetry``) and the simulated devices' ``status.json``; nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence


def local_accuracy(status: Mapping[str, Any] | None, version: str | None = None) -> float | None:
    """A device's accuracy on its clean (undrifted) sensor inputs, for one version or the active one."""
    if not status:
        return None
    v = version or status.get("active_version")
    c = (status.get("counts") or {}).get(v) if v else None
    if not c or not c.get("predictions"):
        return None
    return float(c["correct"]) / float(c["predictions"])


def predictions(statuses: Sequence[Mapping[str, Any]]) -> int:
    return sum(int(c.get("predictions", 0)) + int(c.get("drifted", 0))
               for s in statuses for c in (s.get("counts") or {}).values())


def bar(done: int, total: int, width: int = 12) -> str:
    total = max(1, total)
    filled = int(round(width * min(done, total) / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def rollout_text(dep: Mapping[str, Any] | None, stage_names: Sequence[str] = ()) -> str:
    if not dep:
        return "no rollout yet"
    stage = int(dep.get("stage", -1))
    if stage < 0:
        name = "starting"  # created, no stage dispatched yet
    else:
        name = stage_names[stage] if stage < len(stage_names) else f"stage {stage}"
    counts = dep.get("counts") or {}
    busy = {k: v for k, v in sorted(counts.items()) if k not in ("SUCCEEDED",)}
    extra = (" " + ",".join(f"{k.lower()}={v}" for k, v in busy.items())) if busy else ""
    if dep.get("state") != "running":
        return f"rollout v{dep.get('version')} {dep.get('state')} {dep.get('done', 0)}/{dep.get('targets', 0)}"
    return (f"rollout v{dep.get('version')} {name} "
            f"{bar(int(dep.get('done', 0)), int(dep.get('targets', 0)))} {dep.get('done', 0)}/{dep.get('targets', 0)}"
            f"{extra}")


def status_line(devices: Sequence[Mapping[str, Any]], dep: Mapping[str, Any] | None,
                telemetry: Mapping[str, Any] | None, statuses: Mapping[str, Mapping[str, Any]],
                stage_names: Sequence[str] = (), run: Mapping[str, Any] | None = None) -> str:
    """One line: devices online, versions, rollout progress, telemetry, drift alerts, the latest federated
    run, local accuracy."""
    online = sum(1 for d in devices if d.get("online"))
    versions = Counter(str(d.get("active_version") or "-") for d in devices)
    vtext = " ".join(f"v{v}x{n}" if v != "-" else f"none x{n}" for v, n in sorted(versions.items()))
    rows = (telemetry or {}).get("rows") or []
    ingested = sum(int(r.get("predictions", 0)) for r in rows)
    errors = sum(int(r.get("errors", 0)) for r in rows)
    alerts = [a for a in (telemetry or {}).get("alerts") or [] if a.get("kind") == "drift"]
    drift = sorted({str(a.get("device_id")) for a in alerts})
    acc = []
    for dev_id in sorted(statuses):
        a = local_accuracy(statuses[dev_id])
        mark = "~" if statuses[dev_id].get("drift") else ""
        acc.append(f"{dev_id} {'-' if a is None else f'{a:.2f}'}{mark}")
    parts = [f"devices {online}/{len(devices)} online", f"versions {vtext or '-'}", rollout_text(dep, stage_names),
             f"telemetry {ingested:,} predict calls {errors} errors",
             f"drift alerts {','.join(drift) if drift else 'none'}"]
    if run:
        parts.append(f"federated run {run.get('status')} {run.get('rounds_done', 0)}/{run.get('rounds')} rounds")
    if acc:
        parts.append("local acc " + " ".join(acc))
    return " | ".join(parts)


def stage_names(n_stages: int) -> list[str]:
    return ["canary"] + [f"wave {i}" for i in range(1, n_stages)]


def summary_rows(summary: Mapping[str, Any]) -> dict[str, list[list[str]]]:
    """Rows of the closing tables: results before/after, rollouts, time per stage, devices."""
    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * float(v):.1f}%"

    def mean(vals: Sequence[Any]) -> float | None:
        got = [float(v) for v in vals if v is not None]
        return sum(got) / len(got) if got else None

    devs = summary.get("device_results", [])
    head = [
        [f"accuracy on {summary.get('test_samples')} held-out digits", pct(summary.get("accuracy_before")),
         pct(summary.get("accuracy_after"))],
        ["mean accuracy on the devices' own sensor data", pct(mean([d.get("local_accuracy_before") for d in devs])),
         pct(mean([d.get("local_accuracy_after") for d in devs]))],
    ]
    rollouts = []
    for r in summary.get("rollouts", []):
        stages = ", ".join(f"{st['name']} ({st['devices']})" for st in r.get("stages", []))
        rollouts.append([f"v{r['version']}", stages, f"{r['seconds']:.1f}s", f"{r['bytes']:,}",
                         f"{'head-only update' if r.get('head_updates') else 'bsdiff delta' if r.get('deltas') else 'full'} "
                         f"(archive {r['archive_bytes']:,} B)"])
    timing = [[name.replace("_", " "), f"{sec:.1f}s"] for name, sec in summary.get("stages", {}).items()]
    devices = []
    for d in devs:
        version = f"v{d['version']}" + (" (own head)" if d.get("head") == "personal" else "") if d.get("version") else "-"
        devices.append([d["device_id"], version, ",".join(map(str, d["classes"])),
                        pct(d.get("local_accuracy_before")), pct(d.get("local_accuracy_after")),
                        f"{d.get('bytes_received', 0):,}", "yes" if d.get("drift_alert") else ""])
    return {"head": head, "rollouts": rollouts, "stages": timing, "devices": devices}


__all__ = ["status_line", "rollout_text", "local_accuracy", "predictions", "stage_names", "summary_rows", "bar"]
