"""Measure the compiler's targets on the digits CNN; write benchmarks/results/compiler_digits.json.

Targets (issue 3), each measured through ``edgefleet.load`` on the held-out digits:

* int8 TFLite >= 3.8x smaller than fp32, <= 0.5 points accuracy drop;
* 80% sparsity + int8 >= 10x smaller gzipped than fp32 gzipped, <= 2 points drop;
* structured pruning of half the filters >= 1.5x faster p50, <= 1 point drop;
* distilled student with >= 4x fewer parameters within 1.5 points of the teacher.

Each variant's latency distribution (``edgefleet.bench``: ``predict()`` and the
bare runtime call, interleaved, every percentile) is saved for the plots of
``python -m benchmarks report``.

Run: ``TF_CPP_MIN_LOG_LEVEL=3 python -m benchmarks.compiler_digits [--runs N] [--quick] [--out FILE]``.
``--quick`` trains fewer epochs (CI-sized; figures not comparable with the targets)
and writes ``compiler_digits_quick.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=500, help="latency samples per variant")
    ap.add_argument("--quick", action="store_true", help="fewer epochs and latency runs (CI-sized)")
    ap.add_argument("--out", help="JSON file (default benchmarks/results/compiler_digits[_quick].json)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(HERE / "results" / f"compiler_digits{'_quick' if args.quick else ''}.json")
    if args.quick:
        args.runs = min(args.runs, 100)
    epochs = {"train": 4, "prune": 1, "structured": 2, "distill": 5} if args.quick else \
        {"train": 12, "prune": 4, "structured": 6, "distill": 20}

    from edgefleet.bench import BenchConfig, run_bench
    from edgefleet.compiler import compile_model
    from edgefleet.compiler.config import (
        CompileConfig,
        DataConfig,
        DistillConfig,
        OutputConfig,
        OutputFormat,
        PruneConfig,
        QuantMode,
        StructuredConfig,
    )
    from edgefleet.compiler.examples import train_digits, write_digits

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    train, test = write_digits(work / "data")
    t0 = time.perf_counter()
    info = train_digits(work / "digits.keras", epochs=epochs["train"])
    train_s = time.perf_counter() - t0
    base = CompileConfig(
        data=DataConfig(train=str(train), calibration=str(train), eval=str(test)),
        output=OutputConfig(latency_runs=args.runs, report=False),
    )
    runs: dict[str, Any] = {}

    def run(label: str, cfg: CompileConfig) -> Any:
        t = time.perf_counter()
        res = compile_model(work / "digits.keras", work / label, cfg)
        r = res.chosen
        assert r.score is not None and res.baseline is not None  # the benchmark compiles with eval data
        dist = run_bench(res.bundle_path, BenchConfig(runs=args.runs, warmup=50, threads=1, compare_raw=True))
        runs[label] = {
            "variant": r.name, "size_bytes": r.size, "gzip_bytes": r.gzip_size, "params": r.params,
            "sparsity": round(r.sparsity, 4), "accuracy": round(r.score.value, 3), "drop": round(r.drop, 3),
            "p50_ms": round(r.p50_ms, 4), "p50_invoke_ms": round(r.p50_invoke_ms, 4),
            "source_accuracy": round(res.baseline.value, 3), "compile_s": round(time.perf_counter() - t, 1),
            "latency_us": {k: dist[k]["quantiles_us"] for k in ("predict", "raw") if k in dist},
        }
        print(f"  {label:12s} {r.name:18s} acc {r.score.value:6.2f} size {r.size:>9,} gzip {r.gzip_size:>9,} "
              f"p50 {r.p50_ms:.4f} ms (invoke {r.p50_invoke_ms:.4f})", file=sys.stderr)
        return res

    run("fp32", base)
    run("int8", replace(base, quantize=QuantMode.INT8))
    run("sparse_int8", replace(base, quantize=QuantMode.INT8, prune=PruneConfig(sparsity=0.8, epochs=epochs["prune"])))
    run("structured", replace(base, structured=StructuredConfig(fraction=0.5, epochs=epochs["structured"])))
    run("distilled", replace(base, distill=DistillConfig(width=0.4, epochs=epochs["distill"])))
    run("onnx_fp32", replace(base, format=OutputFormat.ONNX))
    run("onnx_int8", replace(base, quantize=QuantMode.INT8, format=OutputFormat.ONNX))

    fp32, i8, sp, st, ds = (runs[k] for k in ("fp32", "int8", "sparse_int8", "structured", "distilled"))
    targets = [
        ("int8 size ratio vs fp32", fp32["size_bytes"] / i8["size_bytes"], ">=", 3.8),
        ("int8 accuracy drop (points)", i8["drop"], "<=", 0.5),
        ("80% sparse + int8 gzip ratio vs fp32 gzip", fp32["gzip_bytes"] / sp["gzip_bytes"], ">=", 10.0),
        ("80% sparse + int8 accuracy drop", sp["drop"], "<=", 2.0),
        ("structured 50% p50 speedup (model invoke)", fp32["p50_invoke_ms"] / st["p50_invoke_ms"], ">=", 1.5),
        ("structured 50% p50 speedup (predict, incl. SDK overhead)", fp32["p50_ms"] / st["p50_ms"], "info", None),
        ("structured 50% accuracy drop", st["drop"], "<=", 1.0),
        ("distilled parameter ratio", fp32["params"] / ds["params"], ">=", 4.0),
        ("distilled accuracy drop vs teacher", ds["drop"], "<=", 1.5),
        ("onnx int8 vs fp32 p50 speedup (invoke)", runs["onnx_fp32"]["p50_invoke_ms"] / runs["onnx_int8"]["p50_invoke_ms"], "info", None),
    ]
    rows = []
    for name, value, op, limit in targets:
        ok = None if op == "info" else (value >= limit if op == ">=" else value <= limit)
        rows.append({"target": name, "value": round(float(value), 3), "op": op, "limit": limit, "met": ok})
    from .schema import envelope

    doc = {
        **envelope("compiler_digits", args.quick, ("tensorflow", "tf-keras", "tensorflow-model-optimization", "onnx")),
        "epochs": epochs,
        "model": {"params": info["params"], "test_accuracy": round(info["test_accuracy"], 3), "train_s": round(train_s, 1)},
        "runs": runs,
        "targets": rows,
        "latency_runs": args.runs,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{'target':58s} {'value':>9s}  {'limit':>8s}  met")
    for r in rows:
        bound = "" if r["limit"] is None else f"{r['op']} {r['limit']}"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"{r['target']:58s} {r['value']:9.3f}  {bound:>8s}  {met}")
    print(f"\nwritten to {out}")
    return 0 if all(r["met"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
