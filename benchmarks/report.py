"""Generate BENCHMARKS.md (tables, targets met or missed, machine and versions, plots) from the suites' JSON.

Nothing here measures anything: every figure is read from a JSON file a script
in ``benchmarks/`` wrote. A target is "met" or "missed" by comparing the
recorded value with the limit from the issue; a suite whose JSON is missing or
unreadable says so in its section instead of stopping the report.
"""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import plots, schema
from .suite import REPO, RESULTS, SUITES, Suite, load_runs, package_versions, utc_now


@dataclass
class Check:
    what: str
    measured: str
    limit: str
    met: bool | None  # None: shown for information, no target
    note: str = ""


@dataclass
class Section:
    suite: Suite
    path: Path
    doc: dict[str, Any] | None = None
    problem: str = ""
    checks: list[Check] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    plots: list[tuple[str, Path, str | None]] = field(default_factory=list)


def verdict(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "**missed**")


def meets(value: float, op: str, limit: float) -> bool:
    return value >= limit if op in (">=", "≥") else value <= limit


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *["| " + " | ".join(cell(v) for v in row) + " |" for row in rows], ""]


def _n(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{float(v):,.{digits}f}"


def recorded_targets(doc: dict[str, Any]) -> list[Check]:
    """The targets a suite recorded itself (``verdicts``: :func:`benchmarks.schema.target`), met or not, with the
    reason it gave."""
    out = []
    for t in doc.get("verdicts", []):
        m = t["measured"]
        shown = "not measured" if m is None else _n(m, 3) if isinstance(m, (int, float)) and not isinstance(m, bool) \
            else str(m)
        out.append(Check(t["what"], shown, t["limit"], t["met"], t["reason"]))
    return out


def check_rows(checks: list[Check]) -> list[list[Any]]:
    return [[c.what, c.measured, c.limit or "—", verdict(c.met), c.note] for c in checks]


# -------------------------------------------------------------------------------------------- suites
def sdk_overhead(s: Section, plots_dir: Path) -> None:
    doc = s.doc or {}
    details = {d.get("target"): d for d in doc.get("details", [])}
    rows = []
    for r in doc["summary"]:
        d = details.get(r["model"], {})
        backend = d.get("backend", "")
        if "limit" in r:  # a row that records its own target (issue 11: multi-input, stateful session)
            limit = float(r["limit"])
            if r.get("limit_metric") == "ratio":
                c = Check(f"{r['model']}: predict()/raw p50 ratio (model of {r['raw_p50_us'] / 1000:.2f} ms)",
                          f"{r['ratio']:.4f}", f"≤ {limit:g}", r["ratio"] <= limit, d.get("what", ""))
            else:
                who = "Session.predict()" if "Session" in d.get("what", "") else "predict()"
                c = Check(f"{r['model']}: {who} overhead over the raw call, median", f"{r['overhead_us']:.2f} us",
                          f"≤ {limit:g} us", r["overhead_us"] <= limit, d.get("what", ""))
        elif backend != "litert":
            c = Check(f"{r['model']}: predict() overhead", f"{r['overhead_us']:.2f} us", "", None,
                      "no target: the issue's targets are over the raw LiteRT call")
        elif r["raw_p50_us"] >= 1000:
            c = Check(f"{r['model']}: predict()/raw p50 ratio (model of {r['raw_p50_us'] / 1000:.2f} ms)",
                      f"{r['ratio']:.4f}", "≤ 1.02", r["ratio"] <= 1.02)
        else:
            note = ("includes quantizing the input and dequantizing the output (real-valued I/O), which the raw "
                    "call does not do") if "int8" in r["model"] else ""
            c = Check(f"{r['model']}: predict() overhead over raw LiteRT, median", f"{r['overhead_us']:.2f} us",
                      "≤ 5 us", r["overhead_us"] <= 5.0, note)
        s.checks.append(c)
        p99 = d.get("predict", {}).get("p99_us")
        rows.append([r["model"], d.get("runtime_version", backend), _n(r["raw_p50_us"]), _n(r["predict_p50_us"]),
                     _n(p99), _n(r["overhead_us"]), _n(r["ratio"], 3), c.limit or "—", verdict(c.met)])
    s.body += [f"Batch 1, no preprocessing, {doc.get('runs', '?'):,} calls of each kind per model, `predict()` and the "
               "bare runtime call (set input, invoke, read output) interleaved in blocks of 50. Overhead is the median "
               "over blocks of (predict p50 - raw p50); the ratio is of the two p50s.", "",
               *table(["model", "runtime", "raw p50 us", "predict p50 us", "predict p99 us", "overhead us", "ratio",
                       "target", "result"], rows),
               "Targets (issue 2): `predict()` adds at most 5 us over the raw LiteRT call, and the ratio is at most "
               "1.02 for a model of 1 ms or more. The report applies the 5 us limit to LiteRT models under 1 ms and "
               "the ratio to LiteRT models of 1 ms or more (for those the ratio is the looser of the two); ONNX Runtime "
               "rows are shown without a target unless the row records its own (issue 11: the two-input models, and "
               "`Session.predict` on a stateful GRU step against the raw call fed its state by hand).", ""]
    png = plots_dir / "sdk_latency.png"
    s.plots.append(("Latency distribution per model (predict() vs the raw call)", png, plots.sdk_latency(doc, png)))


def compiler_digits(s: Section, plots_dir: Path) -> None:
    doc = s.doc or {}
    trows = []
    for t in doc["targets"]:
        limit = None if t.get("op") == "info" or t.get("limit") is None else float(t["limit"])
        met = None if limit is None else meets(float(t["value"]), t["op"], limit)
        c = Check(t["target"], _n(t["value"], 3), "" if limit is None else f"{'≥' if t['op'] == '>=' else '≤'} {limit:g}",
                  met)
        if met is not None:
            s.checks.append(c)
        trows.append([c.what, c.measured, c.limit or "—", verdict(met)])
    m = doc.get("model", {})
    if doc.get("quick"):
        s.body += [f"**Quick mode** (epochs {doc.get('epochs')}): CI-sized, not comparable with the targets.", ""]
    s.body += [f"Source: the example digits CNN ({_n(m.get('params'))} parameters, {_n(m.get('test_accuracy'))}% on the "
               "held-out digits). Every variant is compiled by `compile_model` and evaluated through `edgefleet.load` "
               "on the held-out digits; accuracy drop in points against the source.", "",
               *table(["target (issue 3)", "measured", "limit", "result"], trows)]
    vrows = [[k, r["variant"], _n(r["params"]), _n(r["size_bytes"]), _n(r["gzip_bytes"]), _n(r.get("sparsity"), 2),
              _n(r["accuracy"]), _n(r["drop"]), _n(r["p50_ms"], 4), _n(r.get("p50_invoke_ms"), 4), _n(r.get("compile_s"), 1)]
             for k, r in doc["runs"].items()]
    s.body += ["Variants:", "", *table(["variant", "kind", "params", "size bytes", "gzip bytes", "sparsity", "accuracy %",
                                        "drop (points)", "predict p50 ms", "invoke p50 ms", "compile s"], vrows)]
    png = plots_dir / "compiler_accuracy_vs_size.png"
    s.plots.append(("Accuracy vs size", png, plots.compiler_accuracy_size(doc, png)))
    png = plots_dir / "compiler_latency.png"
    s.plots.append(("Latency distribution per variant", png, plots.compiler_latency(doc, png)))


def agent_footprint(s: Section, plots_dir: Path) -> None:
    doc = s.doc or {}
    res = doc["results"]
    lit = res["litert"]["summary"]
    n = len(res["litert"].get("runs", []))
    s.checks += [
        Check(f"idle RSS with LiteRT (median of {n} fresh processes)", f"{lit['idle_rss_mb']['median']:.1f} MB",
              "≤ 60 MB", lit["idle_rss_mb"]["median"] <= 60),
        Check(f"cold start to first prediction (median of {n}; wall clock)", f"{lit['cold_start_ms']['median']:.0f} ms",
              "≤ 300 ms", lit["cold_start_ms"]["median"] <= 300,
              f"best run {lit['cold_start_ms']['min']:.0f} ms; CPU time to first prediction "
              f"{lit['cold_start_cpu_ms']['median']:.0f} ms (median)"),
    ]
    rows = []
    for runtime, r in res.items():
        sm = r["summary"]

        def med(k: str, d: int = 0, sm: dict[str, Any] = sm) -> str:
            return _n(sm[k]["median"], d) if k in sm else "n/a"

        rows.append([runtime, f"{r['model']} ({_n(r.get('model_bytes'))} B)", len(r.get("runs", [])),
                     f"{med('idle_rss_mb', 1)} (max {_n(sm['idle_rss_mb']['max'], 1)})",
                     f"{med('cold_start_ms')} ({_n(sm['cold_start_ms']['min'], 0)}–{_n(sm['cold_start_ms']['max'], 0)})",
                     med("cold_start_cpu_ms"), med("process_to_first_prediction_ms"), med("idle_cpu_percent", 3),
                     med("agent_predict_us", 1), med("model_predict_us", 1),
                     ", ".join(sm.get("forbidden_modules", [])) or "none"])
    if doc.get("quick"):
        s.body += ["**Quick mode**: fewer runs, shorter idle; CI-sized.", ""]
    s.body += ["Each run is a fresh process that opens the agent's state directory, serves one prediction and idles.", "",
               *table(["runtime", "model", "runs", "idle RSS MB, median", "cold start ms, median (min–max)",
                       "cold start CPU ms", "spawn to first prediction ms", "idle CPU %", "Agent.predict us",
                       "Model.predict us", "TF/flwr/paho imported"], rows)]
    defs = doc.get("definitions", {})
    if defs:
        s.body += ["Definitions:", "", *[f"- `{k}`: {v}" for k, v in defs.items()], ""]


def _first(d: dict[str, Any], *paths: str) -> Any:
    """The first of these dotted paths present (and not null) in ``d``: schemas evolve, old JSON stays readable."""
    for path in paths:
        v: Any = d
        for part in path.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if v is not None:
            return v
    return None


def _flat(d: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for k, v in d.items():
        items = v.items() if isinstance(v, dict) else [("", v)]
        for sub, x in items:
            key = f"{k} {sub}".strip().replace("_", " ")
            digits = 4 if "ratio" in key else 2
            if isinstance(x, (int, float, str)) and not isinstance(x, bool):
                rows.append([key, _n(x, digits) if isinstance(x, (int, float)) else x])
            elif isinstance(x, list) and x and all(isinstance(e, (int, float, str)) for e in x):
                rows.append([key, ", ".join(_n(e, digits) if isinstance(e, (int, float)) else e for e in x)])
    return rows


def fleet_ota(s: Section, plots_dir: Path) -> None:
    doc = s.doc or {}
    ota, delta, tel = doc.get("ota") or {}, doc.get("delta") or {}, doc.get("telemetry") or {}
    n = ota.get("devices", 0)
    if ota:
        mean = _first(ota, "wire_ratio.mean", "wire_ratio_mean")
        worst = _first(ota, "wire_ratio.max", "wire_ratio_max")
        resent = _first(ota, "chunks_resent_by_coordinator_to_reconnected", "chunks_resent_on_reconnected")
        total = _first(ota, "chunks_resent_by_coordinator", "chunks_resent_total")
        dups = _first(ota, "duplicate_chunks_received_by_reconnected")
        s.checks += [
            Check("devices in the run", _n(n), "1,000 (issue 5)", n >= 1000, "quick mode" if doc.get("quick") else ""),
            Check("devices that received and verified the bundle", f"{_n(ota.get('completed'))} of {_n(n)}",
                  "all", ota.get("completed") == n and ota.get("deployment_state", "completed") == "completed",
                  f"deployment {ota.get('deployment_state', '?')}, {_n(ota.get('seconds_to_complete'))} s from deploy "
                  "to the last job SUCCEEDED"),
            Check("wire bytes per device / bundle size, mean", _n(mean, 4), "≤ 1.05", mean is not None and mean <= 1.05),
        ]
        calm = _first(ota, "wire_ratio_not_reconnected.max")
        if calm is not None:  # the forced reconnects add traffic on purpose: their devices are reported apart
            s.checks += [
                Check("wire bytes per device / bundle size, worst device not forced to reconnect", _n(calm, 4), "≤ 1.05",
                      calm <= 1.05),
                Check(f"wire bytes per device / bundle size, the {_n(ota.get('forced_reconnects'))} devices forced to "
                      "reconnect mid-transfer", f"mean {_n(_first(ota, 'wire_ratio_reconnected.mean'), 4)}, worst "
                      f"{_n(_first(ota, 'wire_ratio_reconnected.max'), 4)}", "", None,
                      "includes the chunks the broker redelivered (QoS 1) after the reconnect"),
            ]
        else:
            s.checks.append(Check("wire bytes per device / bundle size, worst device", _n(worst, 4), "≤ 1.05",
                                  worst is not None and worst <= 1.05))
        s.checks += [
            Check(f"chunks re-sent to the {_n(ota.get('forced_reconnects'))} devices forced to reconnect mid-transfer",
                  _n(resent), "", None,
                  f"{_n(total)} re-sent in the whole rollout" + (f"; {_n(dups)} duplicate chunks received by the "
                                                                  "reconnected devices" if dups is not None else "")),
        ]
    served = doc.get("ota_origin") or {}
    origin = served.get("origin") or {}
    if origin:  # --origin nginx: the same rollout with the bundle over HTTP
        mqtt_mean = _first(origin, "mqtt_wire_ratio.mean")
        s.checks.append(Check(
            "MQTT bytes per device / bundle size, bundle over HTTP from an nginx origin, mean", _n(mqtt_mean, 4),
            "control only (≤ 0.01)", mqtt_mean is not None and mqtt_mean <= 0.01,
            f"{_n(origin.get('mqtt_wire_bytes_in_per_device_mean'))} B per device over MQTT, "
            f"{_n(_first(origin, 'http_ratio.mean'), 4)}x the bundle over HTTP; "
            f"{_n(served.get('verified_on_device'))} of {_n(served.get('devices'))} verified, "
            f"{_n(served.get('seconds_to_complete'))} s from deploy to the last job SUCCEEDED, "
            f"{_n(origin.get('origin_fallbacks'))} fell back to MQTT"))
    if delta:
        s.checks.append(Check("delta update size / full bundle", _n(delta.get("delta_ratio"), 4), "≤ 0.30",
                              delta.get("delta_ratio") is not None and delta["delta_ratio"] <= 0.30,
                              delta.get("change", "")))
    if tel and not doc.get("verdicts"):  # (a run that records issue 16's verdicts shows its ingest ratios there)
        ratio = tel.get("ratio")
        s.checks.append(Check("coordinator telemetry ingest rate / plain paho subscriber", _n(ratio, 3), "≥ 0.8",
                              ratio is not None and ratio >= 0.8, "one coordinator process"))
    shared = doc.get("telemetry_shared") or {}
    if shared.get("ratio") is not None and not doc.get("verdicts"):
        s.checks.append(Check("coordinator telemetry ingest rate / plain paho subscriber, "
                              f"{shared.get('coordinator_processes', '?')} coordinator processes sharing the subscription",
                              _n(shared["ratio"], 3), "≥ 0.8", shared["ratio"] >= 0.8, "MQTT 5 shared subscription"))
    s.body += ["A coordinator (SQLite registry) and simulated devices (each its own MQTT 5 client running the real "
               "chunk receiver), all through one Mosquitto on this machine.", ""]
    if doc.get("quick"):
        s.body += ["**Quick mode**: fewer devices and a smaller telemetry stream; CI-sized.", ""]
    for part, name in ((ota, "OTA"), (delta, "delta"), (tel, "telemetry")):
        if part:
            s.body += table([name, "value"], _flat({k: v for k, v in part.items() if k != "progress"}))
        else:
            s.body += [f"No {name} part in this JSON.", ""]
    known = {"benchmark", "machine", "quick", "parameters", "ota", "delta", "telemetry"}
    for key, part in doc.items():  # parts added to the benchmark later are shown as they are
        if key not in known and isinstance(part, dict) and _flat(part):
            s.body += table([key.replace("_", " "), "value"], _flat(part))
    png = plots_dir / "fleet_rollout_progress.png"
    s.plots.append(("Rollout progress over time", png, plots.fleet_progress(doc, png)))


def federated_digits(s: Section, plots_dir: Path) -> None:
    doc = s.doc or {}
    acc = doc["accuracy"]
    rounds = acc.get("rounds", len(acc["fedavg"]))
    few = rounds < 10
    for k, gap in acc["gap_to_central_points"].items():
        s.checks.append(Check(f"{k}: gap to central after {rounds} rounds", f"{gap:.2f} points", "≤ 2 points",
                              gap <= 2.0, "quick mode: the target is after 10 rounds" if few else ""))
    wall = doc.get("wall_time")
    if wall:
        s.checks.append(Check(f"wall time per round, edgefleet / bare Flower ({wall['devices']} real devices, median)",
                              _n(wall["ratio_median_round"], 3), "≤ 1.1", wall["ratio_median_round"] <= 1.1,
                              f"load average {wall.get('load_average_1m', '?')}"))
    poisoned = acc.get("poisoned", {})
    curves = {k: v for k, v in poisoned.items() if isinstance(v, list) and v and isinstance(v[0], float)}
    for k, v in curves.items():
        s.checks.append(Check(f"2 of {acc['devices']} devices poisoned: {k} after {len(v)} rounds", f"{v[-1] * 100:.1f}%",
                              "", None, "no numeric target: FedAvg vs the robust strategies"))
    rows = [[k, _n(acc[k][-1] * 100, 1), _n(acc["gap_to_central_points"].get(k)),
             verdict(acc["gap_to_central_points"][k] <= 2.0) if k in acc["gap_to_central_points"] else "—"]
            for k in acc if k == "fedavg" or k.startswith("fedprox")]
    rows.append(["central (same network, union of the data)", _n(acc["central"] * 100, 1), "", ""])
    lo = acc.get("local_only", {})
    if lo:
        rows.append(["local only (each device alone)", f"{lo['mean'] * 100:.1f} mean, {lo['max'] * 100:.1f} best", "", ""])
    s.body += [f"{acc['devices']} devices, each holding mostly two classes of scikit-learn's digits, {rounds} rounds of "
               f"{acc.get('local_epochs', '?')} local epochs; accuracy on {_n(acc.get('test_samples'))} held-out digits. "
               "The accuracy runs use the devices' real trainer and the strategies' aggregation rules in one process; "
               "the wall-time runs use real Flower processes.", "",
               *table(["strategy", f"accuracy % after {rounds} rounds", "gap to central (points)", "≤ 2 points"], rows)]
    if curves:
        s.body += table(["with devices " + str(poisoned.get("poisoned_devices")) + " poisoned", "final accuracy %"],
                        [[k, _n(v[-1] * 100, 1)] for k, v in curves.items()])
    if wall:
        s.body += table(["wall time per round", "median s", "runs"],
                        [[k, _n(wall["median_round_s"][k], 2), len(wall["runs"].get(k, []))] for k in wall["median_round_s"]])
    else:
        s.body += ["No wall-time runs in this JSON (run without `--no-flower`).", ""]
    png = plots_dir / "federated_accuracy.png"
    s.plots.append(("Accuracy per federated round", png, plots.federated_accuracy(doc, png)))


def demo_loop(s: Section, plots_dir: Path) -> None:
    doc = s.doc or {}
    runs, sm = doc["runs"], doc["summary"]
    ok = [r for r in runs if r.get("ok")]
    s.checks += [
        Check("demo runs that completed", f"{len(ok)} of {len(runs)}", "all", bool(runs) and len(ok) == len(runs)),
        Check("every device on the final version, in every run", "yes" if sm.get("all_devices_on_final") else "no",
              "yes", bool(sm.get("all_devices_on_final"))),
        Check("held-out accuracy after the loop ≥ before, in every run", "yes" if sm.get("after_ge_before") else "no",
              "yes", bool(ok) and bool(sm.get("after_ge_before")),
              f"mean {_n((sm.get('accuracy_before') or {}).get('mean', 0) * 100, 1)}% -> "
              f"{_n((sm.get('accuracy_after') or {}).get('mean', 0) * 100, 1)}%"),
    ]
    if any("bad_candidate" in r for r in runs):  # recorded since issue 17's demo
        caught = sm.get("bad_candidates_halted_on_quality", 0)
        s.checks.append(Check("bad candidate rolled back by quality probation on the canary, its rollout halted",
                              f"{caught} of {len(ok)} runs", "every run", bool(ok) and caught == len(ok)))
    if doc.get("quick"):
        s.body += ["**Quick mode**: one run, fewer devices and rounds; CI-sized.", ""]
    s.body += [f"`edgefleet demo --devices {doc.get('devices')} --rounds {doc.get('rounds')}` in a subprocess, one run "
               "per seed, each with its own Mosquitto, coordinator, device processes and Flower SuperLink/SuperNodes: "
               "train, compile, staged rollout of v1, drift, a federated run, compile and staged rollout of v2 (since issue "
               "17: the example CNN with a trainable head; the run trains the head only, v2 ships as a head-only "
               "update, then a bad v3 is deployed without the gate for quality probation to roll back).", ""]
    rows = []
    for r in runs:
        if not r.get("ok"):
            rows.append([r.get("seed"), f"**failed** (exit {r.get('returncode')})", "", "", "", "", _n(r.get("wall_seconds"), 1)])
            continue
        shipped = ", ".join(f"v{x['version']} {_n(x['bytes'])}" + (" (head-only update)" if x.get("head_updates")
                                                                  else " (delta)" if x.get("deltas") else "")
                            for x in r.get("rollouts", []))
        rows.append([r["seed"], f"{r['accuracy_before'] * 100:.1f} -> {r['accuracy_after'] * 100:.1f}",
                     f"v{r['final_version']}", "yes" if r["all_on_final"] else "**no**", _n(r["bytes_shipped"]), shipped,
                     _n(r.get("demo_seconds"), 1)])
    s.body += table(["seed", "accuracy % before -> after", "final version", "every device on it", "bytes shipped",
                     "per rollout", "demo seconds"], rows)
    stages = sm.get("stage_seconds") or {}
    if stages:
        s.body += table(["stage", "seconds, mean", "min", "max"],
                        [[k, _n(v["mean"], 2), _n(v["min"], 2), _n(v["max"], 2)] for k, v in stages.items() if v])


def compiler_thirdparty(s: Section, plots_dir: Path) -> None:
    doc = s.doc or {}
    rows, worked = [], 0
    for m in doc["models"]:
        ok = [v["variant"] for v in m.get("variants", []) if v.get("ok")]
        bad = [f"{v['variant']}: {str(v.get('error', ''))[:90]}" for v in m.get("variants", []) if not v.get("ok")]
        worked += any(v not in ("pack", "tflite-as-is") for v in ok)
        rows.append([m["key"], m.get("pip", m.get("package")), _n(m.get("source_bytes")), ", ".join(ok) or "none",
                     "; ".join(bad) or "none"])
    s.checks.append(Check("third-party models compiled end to end", f"{worked} of {len(rows)}", "≥ 2", worked >= 2))
    s.body += ["Models that ship inside PyPI packages, not trained here; see the script's docstring for the inputs "
               "and the comparisons.", "", *table(["model", "package", "source bytes", "worked", "failed"], rows)]


def onnx_conformance(s: Section, plots_dir: Path) -> None:
    doc = s.doc or {}
    ort_pass, ef, refused, failures = doc["ort_pass"], doc["edgefleet_pass"], doc["refused_at_load"], doc["failures"]
    s.checks.append(Check("ONNX node cases plain ORT passes that fail through edgefleet.load().predict",
                          f"{failures} of {ort_pass}", "0", failures == 0,
                          f"{ef} pass, {refused} refused at load (sequence/optional tensors only)"))
    base = doc.get("baseline_5e5384f", {})
    s.body += [f"onnx's node-test generator built {_n(doc['cases'])} operator cases; plain ONNX Runtime passes "
               f"{_n(ort_pass)} of them. Through `edgefleet.load(path).predict` (inputs by name, each case's "
               f"tolerances): {_n(ef)} pass, {refused} are refused at load with `UnsupportedModelError` "
               f"({doc.get('refused_summary', '')}), {failures} fail. Before issue 11 "
               f"({base.get('note', 'earlier')}): {_n(base.get('edgefleet_pass'))} passed. "
               f"{doc.get('seconds', '?')} s. The CI test `tests/sdk/test_sdk_onnx_conformance.py` runs the same code.", ""]


def quality_probation(s: Section, plots_dir: Path) -> None:
    doc = s.doc or {}
    for c in doc["checks"]:  # the verdict recomputed from the value, never the JSON's own
        met = None if c["value"] is None else meets(float(c["value"]), c["op"], float(c["limit"]))
        lo, hi = c.get("wilson95", [None, None])
        s.checks.append(Check(c["what"], "—" if c["value"] is None else f"{100 * float(c['value']):.1f}%",
                              f"{'≥' if c['op'] == '>=' else '≤'} {100 * float(c['limit']):g}%", met,
                              f"95% CI {100 * lo:.1f}–{100 * hi:.1f}%" if lo is not None else ""))
    agent, rp, t = doc["agent"], doc["replay"], doc["thresholds"]

    def rate(r: dict[str, Any]) -> str:
        lo, hi = r["wilson95"]
        return f"{r['count']}/{r['runs']} ({100 * (r['rate'] or 0):.1f}%, 95% CI {100 * lo:.1f}–{100 * hi:.1f}%)"

    s.body += [f"{doc['runs']} seeded runs; in each, a real agent serving v1 installs a good candidate, a bad one and a "
               "partly shuffled one (one at a time, each on probation with `[quality] mode = \"enforce\"` and the "
               "default thresholds: " + ", ".join(f"{k} {v}" for k, v in t.items()) + ") while a thread feeds it "
               "held-out digits, one a call, no labels. Bad candidates: the good one with its classes permuted, or "
               "a model trained on shuffled labels. "
               f"{doc['seconds']} s in all.", "",
               *table(["candidates", "rolled back on quality"],
                      [["bad (target ≥ 95%)", rate(agent["catch"])], ["good (target ≤ 5%)", rate(agent["false_rollbacks"])]]),
               *table(["candidate", "by", "rolled back", "inputs compared (mean)", "agreement with v1 (mean)",
                       "install to verdict (s)"],
                      [[who, k, rate(v), _n(v["compared_mean"], 1), _n(v["agreement_mean"], 3), _n(v["seconds_mean"], 3)]
                       for who, part in (("bad", agent["bad_by_kind"]), ("bad", agent["bad_by_scenario"]),
                                         ("good", agent["good_by_scenario"]),
                                         ("partly shuffled (no target)", agent["partly_shuffled_by_scenario"]))
                       for k, v in part.items()]),
               "The partly shuffled candidate is v1 fine-tuned on shuffled labels for a while; its accuracy against "
               "v1's, mean per scenario: " + ", ".join(f"{k} {100 * v['accuracy_minus_v1_mean']:+.1f} points"
                                                     for k, v in agent["partly_shuffled_by_scenario"].items()) + ".", "",
               f"Replay of the sequential test alone (the two models' outputs on the live inputs in "
               f"{doc['orders_per_pair']} seeded orders per pair, judged after each input): bad candidates rolled "
               f"back {rate(rp['catch'])} after {_n(rp['mean_inputs_bad'], 1)} inputs on average, good ones "
               f"{rate(rp['false_rollbacks'])} (decided after {_n(rp['mean_inputs_good'], 1)} inputs on average).", ""]


def head_update(s: Section, plots_dir: Path) -> None:
    doc = s.doc or {}
    for c in doc["checks"]:  # the verdict recomputed from the value, never the JSON's own
        op, limit, value = c["op"], c["limit"], c["value"]
        met = None if op == "info" else (value == limit if op == "==" else meets(float(value), op, float(limit)))
        shown = ("yes" if value else "no") if isinstance(value, bool) else _n(value, 4)
        s.checks.append(Check(c["what"], shown, "—" if op == "info" else ("yes" if limit is True else f"{'≤' if op == '<=' else '≥'} {limit:g}"), met))
    m, sz, bb = doc.get("model", {}), doc["sizes"], doc["backbone"]
    if doc.get("quick"):
        s.body += [f"**Quick mode** (epochs {doc.get('epochs')}): CI-sized.", ""]
    s.body += [f"Source: the example digits CNN ({_n(m.get('params'))} parameters, {_n(m.get('test_accuracy'))}% on the "
               f"held-out digits) compiled with `{m.get('recipe')}`: v1 is the pruned int8 backbone plus the head "
               f"{m.get('head')} as {_n(m.get('head_params'))} float32 weights. v2 is v1's head fine-tuned in numpy on the "
               "backbone's features (`edgefleet pack --base v1 --head NEW.npz`); the head-only update is what a device "
               "holding v1 needs to rebuild v2: the manifest as a patch of v1's, its signature and the head file, raw or "
               f"encoded against v1's head file, whichever is smaller (here: {doc.get('head_encoding', 'raw')}).", "",
               *table(["part", "bytes"], [[k.removesuffix("_bytes").replace("_", " "), _n(v)] for k, v in sz.items()]),
               f"Backbone in v2: {bb['quantization']} (input {bb['input_dtype']}, features {bb['features_dtype']}), sparsity "
               f"{bb['sparsity']}, the same file as v1's: {'yes' if bb['identical'] else 'no'}. A device rebuilt v2 from v1 "
               f"and the update in {_n(doc['rebuild']['seconds'], 4)} s, byte-identical to the full download: "
               f"{'yes' if doc['rebuild']['byte_identical'] else 'no'}.", ""]
    acc, agree = doc["accuracy"], doc["agreement"]
    s.body += ["Predictions on the held-out digits, split (backbone + numpy head) against the bundle compiled from the "
               "same source and recipe without a split, and against the Keras model:", "",
               *table(["compared", "top-1 agreement %", "max abs diff", "mean abs diff"],
                      [[k.replace("_", " "), _n(v["top1_agreement"], 2), f"{v['max_abs_diff']:.3g}", f"{v['mean_abs_diff']:.3g}"]
                       for k, v in agree.items()]),
               *table(["model", "accuracy %"], [[k.replace("_", " "), _n(v, 2)] for k, v in acc.items()])]


def fleet_dispatch(s: Section, plots_dir: Path) -> None:
    """Its targets are recorded in the JSON (``verdicts``); the body is the figures of each database."""
    doc = s.doc or {}
    p = doc.get("parameters", {})
    s.body += [f"One `Coordinator.tick()` dispatching a stage of {_n(p.get('devices'))} devices (every device in one "
               "wave), through a real Mosquitto, on each registry database; the dispatch as it was before (a "
               f"transaction per device) on the first {_n(p.get('baseline_devices'))} devices of a second deployment "
               "in the same run.", ""]
    for kind in ("sqlite", "postgresql"):
        part = doc.get(kind)
        if part:
            s.body += table([kind, "value"], _flat(part))
        else:
            s.body += [f"No {kind} part in this JSON (see its target row).", ""]


def federated_head(s: Section, plots_dir: Path) -> None:
    """Its targets are recorded in the JSON (``verdicts``); the body is the drifts' curves and the Flower run."""
    doc = s.doc or {}
    m, tr, fl = doc["model"], doc["train"], doc["flower"]
    if doc.get("quick"):
        s.body += [f"**Quick mode** (epochs {m.get('epochs')}, {doc['rounds']} rounds): CI-sized.", ""]
    s.body += [f"v1: the example digits CNN ({_n(m.get('params'))} parameters) compiled with `{m.get('recipe')}` "
               f"({_n(doc['v1_clean_accuracy'] * 100, 1)}% on {_n(doc.get('test_samples'))} held-out digits). Each drift is "
               f"injected into every device's samples and the test digits; {doc['devices']} non-IID devices (mostly two "
               f"classes each) train only the head, in numpy on their frozen backbone's features ({tr['optimizer']}, "
               f"learning rate {tr['learning_rate']}, {tr['epochs']} local epochs), FedAvg over the heads for "
               f"{doc['rounds']} rounds (in one process, the devices' own trainer). *Recovered*: (after - drifted) / "
               "(clean - drifted). *Central head*: the head trained on the union of the devices' samples.", "",
               *table(["drift", "points lost", "v1 drifted %", f"federated head after {doc['rounds']} rounds %",
                       "central head %", "recovered"],
                      [[d["what"], _n(d["lost_points"], 1), _n(d["v1_drifted_accuracy"] * 100, 1),
                        _n(d["federated"][-1] * 100, 1), _n(d["central_head"] * 100, 1), _n(d["recovered_fraction"], 3)]
                       for d in doc["drifts"].values()])]
    s.body += [f"Real Flower run ({fl['devices']} devices, {fl['rounds']} rounds, drift `{fl['drift']}`): SuperNodes "
               f"whose ClientApp loads v1 with {', '.join(fl['device_runtime']) or '?'} and imported "
               f"{', '.join(fl['device_imports_heavy']) or 'no TensorFlow, Keras, torch, ONNX or scikit-learn'}; "
               f"the gate: {fl['gate']['reason']}.", "",
               *table(["round", "wall s", "device training s (mean)", "device features s (mean)", "examples",
                       "holdout accuracy %"],
                      [[r["round"], _n(r["wall_s"], 2), _n(r["device_train_s"], 4), _n(r["device_features_s"], 4),
                        _n(r["examples"]), _n((r["holdout_accuracy"] or 0) * 100, 1)] for r in fl["per_round"]])]
    up = fl.get("update")
    if up:
        shown = {bool: lambda v: "yes" if v else "no", int: _n}
        s.body += table(["promoted v2", "value"], [[k.replace("_", " "), shown.get(type(v), str)(v)]
                                                  for k, v in up.items()])
        if (up.get("bsdiff4_bytes") or 0) and up["bsdiff4_bytes"] < up.get("head_update_bytes", 0):
            s.body += ["bsdiff4 of the two archives is smaller here: this run's head update shipped the head file raw "
                       "(an update encoding it against v1's head, format 2, is usually smaller: see head_update).", ""]


def soak(s: Section, plots_dir: Path) -> None:
    """Its targets are recorded in the JSON (``verdicts``); the body: the schedule, the rollouts, the costs."""
    doc = s.doc or {}
    p, sch = doc.get("parameters", {}), doc.get("parameters", {}).get("schedule", {})
    s.body += [f"{_n(p.get('devices'))} simulated devices (each its own MQTT session and the real device machine; a "
               "telemetry queue kept until acknowledged, as the agent's) for "
               f"{_n(p.get('minutes'), 0)} minutes: a telemetry record every {_n(p.get('telemetry_interval_s'), 0)} s, "
               f"a staged rollout of a {_n(p.get('bundle_bytes'))}-byte bundle at "
               f"{', '.join(_n(t, 0) for t in sch.get('rollouts_at_s', []))} s, the broker restarted at "
               f"{_n(sch.get('broker_restart_at_s'), 0)} s and a coordinator killed with SIGKILL at "
               f"{_n(sch.get('coordinator_kill_at_s'), 0)} s (restarted by its supervisor); "
               f"{_n(p.get('coordinators'))} `edgefleet cloud serve` processes sharing the subscription and one "
               f"{p.get('registry', '?')} registry. Acknowledged telemetry lost: what the devices saw acknowledged "
               "against the records and high-water marks in the registry after a drain.", ""]
    if doc.get("quick"):
        s.body += ["**Quick mode**: 3 minutes (the CI test's size); the RSS target is for the hour.", ""]
    rows = [[d.get("version"), d.get("id"), _n(d.get("deployed_at_s"), 1), d.get("state"),
             _n(d.get("seconds_to_complete"), 1), f"{_n(d.get('succeeded'))} of {_n(d.get('targets'))}",
             ", ".join(f"{k}: {v}" for k, v in (d.get("stages") or {}).items())] for d in doc.get("rollouts", [])]
    s.body += table(["version", "deployment", "deployed at s", "state", "s to complete", "jobs SUCCEEDED",
                     "stage: times started"], rows)
    rss = {k: v for k, v in (doc.get("rss") or {}).items() if k != "samples"}
    s.body += table(["soak", "value"], _flat({"telemetry": doc.get("telemetry", {}), "rss": rss,
                                              "cpu_seconds": doc.get("cpu_seconds", {}),
                                              "coordinator_cpu_seconds_per_device_hour":
                                                  doc.get("coordinator_cpu_seconds_per_device_hour", {}),
                                              "devices": doc.get("devices_summary", {}),
                                              "broker_rss_bytes_max": doc.get("broker_rss_bytes_max")}))
    s.body += table(["event", "at s", "detail"], [[e.get("event"), _n(e.get("at_s"), 1), ", ".join(
        f"{k} {v}" for k, v in e.items() if k not in ("event", "at_s"))] for e in doc.get("events", [])])


def fleet_scale(s: Section, plots_dir: Path) -> None:
    """Its targets are recorded in the JSON (``verdicts``); the body: what ran and what it cost."""
    doc = s.doc or {}
    p = doc.get("parameters", {})
    s.body += [f"One rollout (one stage) of a {_n(p.get('bundle_bytes'))}-byte bundle to {_n(p.get('devices'))} "
               "simulated devices (fleet_ota's: each its own MQTT session, the real device machine, the device's own "
               "HTTP fetcher), the bundle served by nginx from the directory the coordinator publishes to; the "
               "coordinator (`cloud serve`, SQLite) in its own process, so its CPU and memory are its own.", ""]
    if p.get("why_not_10000"):
        s.body += [f"**Why not 10,000 here**: {p['why_not_10000']}", ""]
    s.body += table(["fleet_scale", "value"], _flat({k: v for k, v in doc.items() if k in (
        "devices_online_before_deploy", "connect_seconds", "deployment_state", "completed", "verified_on_device",
        "seconds_to_complete", "seconds_to_last_device_verified", "coordinator", "wire", "broker_rss_bytes_peak",
        "nginx_rss_bytes_peak")}))
    png = plots_dir / "fleet_scale_progress.png"
    s.plots.append(("Rollout progress over time", png, plots.fleet_progress({"ota": {
        "progress": doc.get("progress"), "devices": p.get("devices"), "bundle_bytes": p.get("bundle_bytes", 0)}}, png)))


def multi_coordinator(s: Section, plots_dir: Path) -> None:
    """Its targets are recorded in the JSON (``verdicts``); the body: who dispatched what."""
    doc = s.doc or {}
    p = doc.get("parameters", {})
    s.body += [f"A staged rollout ({', '.join(f'{k} {v}' for k, v in (p.get('plan') or {}).items())}) to "
               f"{_n(p.get('devices'))} simulated devices by {_n(p.get('coordinators'))} `edgefleet cloud serve` "
               "processes sharing the MQTT 5 shared subscription and one PostgreSQL database"
               + ("; the coordinator that dispatched the canary is killed with SIGKILL once it has, and restarted by "
                  "its supervisor" if p.get("kill_canary_dispatcher") else "") + ".", ""]
    s.body += table(["stage", "dispatched by", "at s", "detail"],
                    [[d.get("stage"), d.get("by"), _n(d.get("at_s")), d.get("detail")]
                     for d in doc.get("stage_dispatchers", [])])
    s.body += table(["multi_coordinator", "value"], _flat({k: v for k, v in doc.items() if k in (
        "devices_online_before_deploy", "devices_connect_seconds", "deployment_state", "seconds_to_complete",
        "each_job", "killed", "jobs_by_stage_and_status")}))


BUILDERS: dict[str, Callable[[Section, Path], None]] = {
    "sdk_overhead": sdk_overhead, "compiler_digits": compiler_digits, "agent_footprint": agent_footprint,
    "fleet_ota": fleet_ota, "federated_digits": federated_digits, "demo_loop": demo_loop,
    "compiler_thirdparty": compiler_thirdparty, "onnx_conformance": onnx_conformance, "head_update": head_update,
    "fleet_dispatch": fleet_dispatch, "federated_head": federated_head,
}
BUILDERS["quality_probation"] = quality_probation
BUILDERS.update(soak=soak, fleet_scale=fleet_scale, multi_coordinator=multi_coordinator)


# -------------------------------------------------------------------------------------------- provenance
def produced_at(doc: dict[str, Any], path: Path, record: dict[str, Any] | None) -> str:
    """When the JSON was written: its own timestamp, else the suite runner's record, else git, else the file time."""
    for holder in (doc.get("machine", {}), doc):
        if isinstance(holder, dict) and holder.get("utc"):
            return f"{holder['utc']} (in the JSON)"
    if record and Path(record.get("result", "")).resolve() == path.resolve():
        mtime = path.stat().st_mtime
        finished = calendar.timegm(time.strptime(record["finished_utc"], "%Y-%m-%dT%H:%M:%SZ"))
        if abs(mtime - finished) < 120:
            return f"{record['finished_utc']} (suite runner)"
    try:
        rel = path.resolve().relative_to(REPO)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(rel)], cwd=REPO, capture_output=True,
                               text=True, timeout=20).stdout.strip()
        when = subprocess.run(["git", "log", "-1", "--format=%cd", "--date=format-local:%Y-%m-%dT%H:%M:%SZ", "--", str(rel)],
                              cwd=REPO, capture_output=True, text=True, timeout=20, env={**os.environ, "TZ": "UTC"}).stdout.strip()
        if when and not dirty:
            return f"{when} (commit date)"
    except (ValueError, OSError, subprocess.SubprocessError):
        pass
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime)) + " (file time)"


def machine_row(s: Section, record: dict[str, Any] | None) -> list[Any]:
    doc = s.doc or {}
    m = doc.get("machine", {}) if isinstance(doc.get("machine"), dict) else {}
    load = m.get("load_average") or m.get("load_average_at_end")
    where = "when written"
    if load is None and isinstance(doc.get("wall_time"), dict) and "load_average_1m" in doc["wall_time"]:
        load, where = [doc["wall_time"]["load_average_1m"]], "1 min, after the Flower runs"
    if load is None and record:
        load, where = record.get("load_average_end"), "suite runner, at the end"
    load_s = "not recorded" if load is None else f"{' / '.join(f'{x:.2f}' for x in load)} ({where})"
    versions = {k: m[k] for k in ("numpy", "edgefleet") if k in m}
    if isinstance(m.get("packages"), dict):
        versions |= {k: v for k, v in m["packages"].items() if v}
    runtimes = sorted({d.get("runtime_version") for d in doc.get("details", []) if d.get("runtime_version")})
    versions_s = ", ".join([f"{k} {v}" for k, v in versions.items()] + runtimes)
    if not versions_s and record:
        env = record.get("environment", {}).get("packages", {})
        versions_s = "runner: " + ", ".join(f"{k} {v}" for k, v in env.items() if v != "not installed")
    return [s.suite.name, f"`{_rel(s.path, REPO)}`", produced_at(doc, s.path, record), m.get("cpu", "not recorded"),
            m.get("cores", m.get("cpus", "?")), load_s, m.get("platform", "not recorded"), m.get("python", "?"),
            versions_s or "not recorded"]


def _rel(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when it lies inside it (as links and names in the report), else absolute."""
    try:
        rel = os.path.relpath(path, base)
    except ValueError:
        return str(path)
    return str(Path(path).resolve()) if rel.startswith("..") and base == REPO else rel


# -------------------------------------------------------------------------------------------- report
def read_sections(results_dir: Path, quick: bool, plots_dir: Path, suites: tuple[Suite, ...] = SUITES) -> list[Section]:
    sections = []
    for suite in suites:
        path = suite.result_file(results_dir, quick)
        s = Section(suite, path)
        if not path.exists():
            s.problem = (f"No results: `{_rel(path, REPO)}` does not exist. "
                         + (suite.note + "." if suite.note else f"Run `python -m benchmarks{' --quick' if quick else ''} "
                                                                    f"--only {suite.name}`."))
            if not suite.default:
                continue
        else:
            try:
                s.doc = json.loads(path.read_text())
                wrong = schema.problems(s.doc, suite.name)
                if wrong:
                    s.problem = (f"`{_rel(path, REPO)}` does not follow the results schema (benchmarks/schema.py): "
                                 + "; ".join(wrong) + f". Run `python -m benchmarks --only {suite.name}` again.")
                    s.doc = s.doc if isinstance(s.doc, dict) else None
                    sections.append(s)
                    continue
                BUILDERS[suite.name](s, plots_dir)
                s.checks += recorded_targets(s.doc)
            except Exception as exc:  # an unexpected schema must not hide the other suites
                s.problem = f"Could not read `{_rel(path, REPO)}`: {type(exc).__name__}: {exc}"
                s.checks, s.body = [], []
                s.doc = s.doc if isinstance(s.doc, dict) else None
                traceback.print_exc()
        sections.append(s)
    return sections


def render(sections: list[Section], results_dir: Path, quick: bool, md_path: Path) -> str:
    runs = load_runs(results_dir, quick).get("suites", {})
    checks = [(s.suite.name, c) for s in sections for c in s.checks if c.met is not None]
    met = sum(1 for _, c in checks if c.met)
    mode = " (quick mode: CI-sized runs, not the published figures)" if quick else ""
    cmd = "python -m benchmarks report" + (" --quick" if quick else "")
    out = [f"# edgefleet benchmarks{mode}", "",
           f"Generated by `{cmd}` at {utc_now()} from the JSON files in `{_rel(results_dir, REPO)}/`; do not edit by "
           "hand. Every figure comes from a script in `benchmarks/` that anyone can rerun "
           "([how](#rerunning)). A target is **missed** whenever the recorded value is over its limit, however close.",
           "", f"**{met} of {len(checks)} targets met.**", "",
           *table(["suite", "target", "measured", "limit", "result", "note"],
                  [[name, *row] for name, row in ((n, check_rows([c])[0]) for n, c in checks)])]
    missing = [s for s in sections if s.doc is None]
    if missing:
        out += ["Suites without results: " + ", ".join(f"`{s.suite.name}`" for s in missing) + " (see their sections).", ""]
    for s in sections:
        out += [f"## {s.suite.title}", ""]
        if s.problem:
            out += [s.problem, ""]
        out += s.body
        info = [c for c in s.checks if c.met is None]
        if info:
            out += ["Also measured (no target):", "", *table(["what", "measured", "note"], [[c.what, c.measured, c.note]
                                                                                           for c in info])]
        for title, png, reason in s.plots:
            out += [f"**{title}**", "", f"![{title}]({_rel(png, md_path.parent)})" if reason is None else f"_No plot: {reason}._",
                    ""]
        out += [f"Rerun: `{s.suite.rerun(quick)}` (writes `{_rel(s.path, REPO)}`), or `python -m benchmarks"
                f"{' --quick' if quick else ''} --only {s.suite.name}`.", ""]
    out += ["## Machine and versions", "",
            "Each JSON records the machine it ran on; the load average is the one recorded with it (the machine is "
            "shared, so absolute latencies are noisy: ratios measured side by side in one run are the robust figures).", "",
            *table(["suite", "JSON", "produced (UTC)", "CPU", "cores", "load average 1/5/15 min", "OS", "Python", "versions"],
                   machines := [machine_row(s, runs.get(s.suite.name)) for s in sections if s.doc is not None])]
    hosts = sorted({f"{m[3]} ({m[6]})" for m in machines if m[3] != "not recorded"})
    if len(hosts) > 1:
        out += [f"**These results come from {len(hosts)} different machines** ({'; '.join(hosts)}): compare absolute "
                "figures only within one suite.", ""]
    if runs:
        latest = max(runs.values(), key=lambda r: r.get("finished_utc", ""))
        pk = latest.get("environment", {}).get("packages", {})
        out += ["### Last suite runs", "",
                *table(["suite", "status", "exit code", "seconds", "started (UTC)", "load average at start", "message"],
                       [[n, r["status"] if r["status"] == "ok" else f"**{r['status']}**", r.get("returncode"),
                         _n(r.get("seconds"), 1), r.get("started_utc"), " / ".join(f"{x:.2f}" for x in r.get("load_average_start", [])),
                         r.get("message", "")] for n, r in runs.items()]),
                f"Package versions at the last suite run ({latest.get('finished_utc')}):", "",
                *table(["package", "version"], [[k, v] for k, v in pk.items()])]
    else:
        out += ["Package versions installed when this report was generated (no suite-runner record; the JSON files "
                "above were produced by running the scripts directly):", "",
                *table(["package", "version"], [[k, v] for k, v in package_versions().items()])]
    out += ["## Rerunning", "",
            "From the repository root, with the project's virtualenv (`bash scripts/setup.sh`):", "",
            "```bash",
            "python -m benchmarks            # every default suite (full size), then this file",
            "python -m benchmarks --quick    # CI-sized runs into *_quick.json and benchmarks/results/BENCHMARKS_quick.md",
            "python -m benchmarks --only sdk_overhead,agent_footprint   # or --skip fleet_ota",
            "python -m benchmarks report     # only regenerate this file and the plots from the JSON",
            "```", "",
            *table(["suite", "script", "in the default run", "writes"],
                   [[s.name, f"`{s.rerun(False)}`", "yes" if s.default else f"no: {s.note}",
                     f"`{_rel(s.result_file(RESULTS, False), REPO)}`"] for s in SUITES])]
    return "\n".join(out).rstrip() + "\n"


def default_report_path(results_dir: Path, quick: bool) -> Path:
    if quick:
        return Path(results_dir) / "BENCHMARKS_quick.md"
    return REPO / "BENCHMARKS.md" if Path(results_dir).resolve() == RESULTS.resolve() else Path(results_dir) / "BENCHMARKS.md"


def generate(results_dir: Path = RESULTS, quick: bool = False, md_path: Path | None = None,
             suites: tuple[Suite, ...] = SUITES) -> tuple[Path, list[Section]]:
    """Write the Markdown report and its PNGs; return (path, sections). Plots go to RESULTS/plots[_quick]/."""
    results_dir = Path(results_dir)
    md_path = Path(md_path) if md_path else default_report_path(results_dir, quick)
    plots_dir = results_dir / ("plots_quick" if quick else "plots")
    sections = read_sections(results_dir, quick, plots_dir, suites)
    for s in sections:  # a plot that could not be drawn this time must not leave an older PNG looking current
        for _, png, reason in s.plots:
            if reason is not None:
                png.unlink(missing_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(render(sections, results_dir, quick, md_path))
    return md_path, sections
