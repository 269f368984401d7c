"""SDK overhead: ``Model.predict()`` against the bare runtime call, same inputs, same run.

    python -m benchmarks.sdk_overhead [--runs 5000] [--quick] [--out FILE]

Builds the test models (a tiny digits MLP as TFLite float/int8 and ONNX, and a
wider dense TFLite model (~0.15 ms) and a small CNN of a millisecond or more) in a subprocess, then runs
``edgefleet bench --compare-raw`` logic on each with batch 1 and no
preprocessing. Targets (issue 2): median overhead <= 5 us over raw LiteRT, and a
ratio <= 1.02 for a model of 1 ms or more. Writes benchmarks/results/sdk_overhead.json
(``--quick``: sdk_overhead_quick.json), with every percentile of both latencies
(``quantiles_us``) for the distribution plot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--quick", action="store_true", help="CI-sized run (500 runs)")
    ap.add_argument("--out", help="JSON file (default benchmarks/results/sdk_overhead[_quick].json)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(RESULTS / f"sdk_overhead{'_quick' if args.quick else ''}.json")
    runs = 500 if args.quick else args.runs

    from edgefleet.bench import BenchConfig, format_report, machine_info, run_bench

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(HERE.parent / "tests" / "make_models.py"), tmp, "--bench"], check=True, capture_output=True)
        rows = []
        for fname in ("digits_float.tflite", "digits_int8.tflite", "dense_wide.tflite", "conv_1ms.tflite", "digits.onnx"):
            cfg = BenchConfig(runs=runs, warmup=200, threads=1, compare_raw=True)
            res = run_bench(Path(tmp) / fname, cfg)
            res["target"] = fname
            print(format_report(res), "\n")
            rows.append(res)
    summary = [
        {
            "model": r["target"],
            "raw_p50_us": round(r["raw"]["p50_us"], 2),
            "predict_p50_us": round(r["predict"]["p50_us"], 2),
            "overhead_us": round(r["overhead_us_median_of_blocks"], 2),
            "ratio": round(r["ratio_p50"], 4),
            "cpu_us_per_inference": round(r["cpu_seconds_per_inference"] * 1e6, 1),
        }
        for r in rows
    ]
    print(f"{'model':24} {'raw p50 us':>11} {'predict p50':>12} {'overhead us':>12} {'ratio':>7}")
    for s in summary:
        print(f"{s['model']:24} {s['raw_p50_us']:11.2f} {s['predict_p50_us']:12.2f} {s['overhead_us']:12.2f} {s['ratio']:7.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"suite": "sdk_overhead", "quick": args.quick, "runs": runs, "machine": machine_info(), "summary": summary, "details": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
