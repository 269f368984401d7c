"""The PNG plots of BENCHMARKS.md, drawn from the suites' JSON (matplotlib, Agg backend).

Each function takes a suite's JSON document and the PNG path to write and returns
``None`` when it wrote the plot, or a sentence saying why it could not (the data
is not in that JSON), which the report prints in the plot's place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, png: Path) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=110, metadata={"Software": None})
    _pyplot().close(fig)


def _cdf(ax: Any, quantiles: list[float], label: str, color: str, style: str = "-") -> None:
    """Percentiles 1..99 of a latency distribution as a CDF (0 and 100 are single outliers)."""
    q = np.asarray(quantiles, dtype=float)
    pct = np.arange(len(q)) * (100.0 / (len(q) - 1))
    keep = (pct >= 1) & (pct <= 99)
    ax.plot(q[keep], pct[keep], style, color=color, label=label, linewidth=1.6)


def _latency_axis(ax: Any) -> None:
    """Log scale with plain 1-2-5 labels when the latencies span a decade or more, linear otherwise."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    xs = np.concatenate([np.asarray(line.get_xdata(), dtype=float) for line in ax.get_lines()])
    lo, hi = float(xs.min()), float(xs.max())
    if lo > 0 and hi / lo >= 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency per call, us (log scale)", fontsize=8)
    else:
        ax.set_xlabel("latency per call, us", fontsize=8)


def sdk_latency(doc: dict[str, Any], png: Path) -> str | None:
    details = [d for d in doc.get("details", []) if "quantiles_us" in d.get("predict", {})]
    if not details:
        return ("this sdk_overhead JSON holds no latency distributions (written before `quantiles_us` was recorded); "
                "rerun `python -m benchmarks --only sdk_overhead`")
    plt = _pyplot()
    cols = min(3, len(details))
    rows = -(-len(details) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, d in zip(axes.flat, details):
        if "raw" in d:
            _cdf(ax, d["raw"]["quantiles_us"], "raw runtime call", COLORS[0], "--")
        _cdf(ax, d["predict"]["quantiles_us"], "predict()", COLORS[1])
        ax.set_title(f"{d.get('target', d['model']['name'])} ({d.get('backend', '')})", fontsize=9)
        _latency_axis(ax)
        ax.set_ylabel("percentile", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(details):]:
        ax.axis("off")
    fig.suptitle(f"SDK: latency distribution per model, batch 1, {doc.get('runs', '?')} calls each (1st-99th percentile)",
                 fontsize=10)
    _save(fig, png)
    return None


def compiler_latency(doc: dict[str, Any], png: Path) -> str | None:
    runs = {k: v for k, v in doc.get("runs", {}).items() if v.get("latency_us", {}).get("predict")}
    if not runs:
        return ("this compiler_digits JSON holds no latency distributions (written before `latency_us` was recorded); "
                "rerun `python -m benchmarks --only compiler_digits`")
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for i, (label, r) in enumerate(runs.items()):
        c = COLORS[i % len(COLORS)]
        _cdf(a1, r["latency_us"]["predict"], label, c)
        if r["latency_us"].get("raw"):
            _cdf(a2, r["latency_us"]["raw"], label, c)
    for ax, title in ((a1, "predict() (with the SDK's input/output handling)"), (a2, "bare runtime call")):
        ax.set_title(title, fontsize=9)
        _latency_axis(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    a1.set_ylabel("percentile")
    fig.suptitle(f"Compiler variants of the digits CNN: latency distribution, batch 1, {doc.get('latency_runs', '?')} "
                 "calls each (1st-99th percentile)", fontsize=10)
    _save(fig, png)
    return None


def compiler_accuracy_size(doc: dict[str, Any], png: Path) -> str | None:
    runs = doc.get("runs", {})
    if not runs:
        return "this compiler_digits JSON has no variants"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.6))
    for i, (label, r) in enumerate(runs.items()):
        c = COLORS[i % len(COLORS)]
        ax.scatter(r["size_bytes"] / 1024, r["accuracy"], color=c, s=50, label=f"{label} ({r['variant']})", zorder=3)
        ax.scatter(r["gzip_bytes"] / 1024, r["accuracy"], facecolors="none", edgecolors=c, s=50, zorder=3)
        ax.plot([r["gzip_bytes"] / 1024, r["size_bytes"] / 1024], [r["accuracy"]] * 2, color=c, alpha=0.4)
    base = doc.get("model", {}).get("test_accuracy")
    if base is not None:
        ax.axhline(base, color="grey", linestyle=":", label=f"Keras source {base:.2f}%")
    ax.set_xscale("log")
    ax.set_xlabel("model file size, KiB (log); filled = file, hollow = gzipped")
    ax.set_ylabel("accuracy on held-out digits, %")
    ax.set_title("Compiler variants of the digits CNN: accuracy vs size", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, png)
    return None


def fleet_progress(doc: dict[str, Any], png: Path) -> str | None:
    ota = doc.get("ota", {})
    series = ota.get("progress", doc.get("progress"))
    if not series:
        return ("this fleet_ota JSON has no `progress` series (written before the benchmark recorded rollout progress "
                "over time); rerun `python -m benchmarks --only fleet_ota`")
    pts = np.asarray(series, dtype=float).reshape(-1, 2)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.step(pts[:, 0], pts[:, 1], where="post", color=COLORS[0], label="jobs SUCCEEDED, as the coordinator sees them")
    n = ota.get("devices")
    if n:
        ax.axhline(n, color="grey", linestyle=":", label=f"{n:,} devices")
    ax.set_xlabel("seconds since the deployment was created")
    ax.set_ylabel("devices succeeded")
    mb = ota.get("bundle_bytes", 0) / 1e6
    ax.set_title(f"Fleet OTA: rollout progress over time ({mb:.1f} MB bundle, one Mosquitto)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, png)
    return None


def federated_accuracy(doc: dict[str, Any], png: Path) -> str | None:
    acc = doc.get("accuracy")
    if not acc or not acc.get("fedavg"):
        return "this federated_digits JSON holds no per-round accuracy"
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    central = acc.get("central")
    for i, key in enumerate(k for k in acc if k == "fedavg" or k.startswith("fedprox")):
        ys = np.asarray(acc[key]) * 100
        a1.plot(np.arange(1, len(ys) + 1), ys, marker="o", markersize=3, color=COLORS[i], label=key)
    if central is not None:
        a1.axhline(central * 100, color="black", linestyle=":", label=f"central {central * 100:.1f}%")
        a1.axhline(central * 100 - 2, color="grey", linestyle="--", label="central - 2 points (target)")
    local = acc.get("local_only", {}).get("max")
    if local is not None:
        a1.axhline(local * 100, color=COLORS[3], linestyle=":", label=f"best local-only device {local * 100:.1f}%")
    a1.set_title(f"{acc.get('devices', '?')} devices, non-IID digits", fontsize=9)
    poisoned = acc.get("poisoned", {})
    for i, key in enumerate(k for k, v in poisoned.items() if isinstance(v, list) and v and isinstance(v[0], float)):
        ys = np.asarray(poisoned[key]) * 100
        a2.plot(np.arange(1, len(ys) + 1), ys, marker="o", markersize=3, color=COLORS[(i + 4) % len(COLORS)], label=key)
    a2.set_title(f"devices {poisoned.get('poisoned_devices', '?')} poisoned ({poisoned.get('attack', '')})", fontsize=9)
    for ax in (a1, a2):
        ax.set_xlabel("round")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    a1.set_ylabel("accuracy on the global test set, %")
    fig.suptitle("Federated retraining: accuracy per round", fontsize=10)
    _save(fig, png)
    return None
