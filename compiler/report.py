"""``report.json``, ``report.md`` and an accuracy-vs-size plot for one compile run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgefleet.atomic import replace_dir, temp_name

from .evaluate import VariantResult

COLUMNS = ("variant", "format", "quantization", "sparsity", "params", "size_bytes", "gzip_bytes", "score", "drop", "p50_ms", "p50_invoke_ms", "flags", "chosen")


def report_dir_for(bundle: str | os.PathLike) -> Path:
    out = Path(bundle)
    return out.parent / f"{out.name}.report"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "**yes**" if v else ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def markdown(doc: Mapping[str, Any]) -> str:
    rows = doc["variants"]
    metric = doc["baseline"]["metric"] if doc.get("baseline") else "score"
    head = [c if c != "score" else metric for c in COLUMNS]
    lines = [
        f"# Compile report: {doc['bundle']['name']} v{doc['bundle']['version']}",
        "",
        f"Source: `{doc['source']['file']}` ({doc['source']['kind']}), sha256 `{doc['source']['sha256'][:16]}...`",
        "",
    ]
    if doc.get("baseline"):
        b = doc["baseline"]
        lines.append(f"Baseline (source model): {b['metric']} = {b['value']:.4g} on {doc['eval_samples']} eval samples.")
    if doc.get("latency_input"):
        lines.append(f"Latency (p50, one thread) measured on: {doc['latency_input']}.")
    st = doc.get("state")
    if st:
        pairs = ", ".join(f"`{o}` -> `{i}`" for o, i in st["pairs"].items())
        lines.append(f"State (output -> input): {pairs}; state inputs calibrated "
                     f"{st.get('calibration', 'not at all (no calibrating variant)')}; evaluated with "
                     f"{st.get('eval', 'no eval data')}.")
    if doc.get("budget") is not None:
        lines.append(f"Accuracy budget: at most {doc['budget']:g} points of drop.")
    lines += [f"Gate: {doc['gate']}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = {**r, "flags": ", ".join(r.get("regressions") or ())}
        lines.append("| " + " | ".join(_fmt(cells.get(c)) for c in COLUMNS) + " |")
    flagged = [r for r in rows if r.get("regressions")]
    if flagged:
        lines.append("\nRegressions against the float32 variant of the same format (`auto` never chooses one):")
    for r in flagged:
        g = r["regressions"]
        what = []
        if "larger" in g:
            what.append(f"**larger**: {g['larger']['size_bytes']:,} vs {g['larger']['float32_size_bytes']:,} bytes")
        if "slower" in g:
            what.append(f"**slower**: p50 {g['slower']['p50_ms']:.4g} vs {g['slower']['float32_p50_ms']:.4g} ms")
        lines.append(f"- `{r['variant']}` {'; '.join(what)}" + (" (chosen: asked for explicitly)" if r.get("chosen") else ""))
    errors = [r for r in rows if r.get("notes", {}).get("error")]
    for r in errors:
        lines.append(f"\n- `{r['variant']}` failed: {r['notes']['error']}")
    lines += ["", f"Passes: {', '.join(doc['passes']) or 'none'}.", f"Machine: {doc['machine'].get('cpu')} ({doc['machine'].get('cores')} cores).", ""]
    return "\n".join(lines)


def plot(rows: Sequence[Mapping[str, Any]], path: Path, metric: str, baseline: float | None = None, budget: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for i, r in enumerate(rows):
        if r.get("score") is None or not r.get("size_bytes"):
            continue
        marker = "*" if r.get("chosen") else ("o" if r["format"] == "tflite" else "s")
        ax.scatter(r["size_bytes"] / 1024, r["score"], marker=marker, s=160 if r.get("chosen") else 50,
                   color="tab:red" if r.get("chosen") else ("tab:blue" if r["format"] == "tflite" else "tab:green"))
        ax.annotate(r["variant"], (r["size_bytes"] / 1024, r["score"]), fontsize=7, xytext=(5, 4 + 9 * (i % 4)), textcoords="offset points")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", linewidth=1, label="source")
        if budget is not None:
            ax.axhline(baseline - budget, color="tab:red", linestyle=":", linewidth=1, label="budget")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("model size (KiB, log scale)")
    ax.set_ylabel(metric)
    ax.set_title("accuracy vs size (star = chosen; circle tflite, square onnx)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out_dir: Path, doc: dict[str, Any], recipe_toml: str) -> Path:
    """Write the report directory atomically (temp dir + rename)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(out_dir)
    tmp.mkdir()
    try:
        (tmp / "report.json").write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        (tmp / "report.md").write_text(markdown(doc))
        (tmp / "recipe.toml").write_text(recipe_toml)
        base = doc.get("baseline") or {}
        higher = base.get("metric") in ("accuracy", "agreement")
        plot(doc["variants"], tmp / "accuracy_vs_size.png", base.get("metric", "score"), base.get("value"),
             doc.get("budget") if higher else None)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def rows_of(results: Sequence[VariantResult]) -> list[dict[str, Any]]:
    return [r.row() for r in results]


__all__ = ["write_report", "markdown", "plot", "report_dir_for", "rows_of"]
