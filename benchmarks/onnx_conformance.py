"""ONNX operator conformance through ``edgefleet.load(...).predict`` (issue 11).

The onnx wheel ships the node-test generator (``onnx.backend.test.case.node``), not
its data: every operator case (model, inputs, expected outputs, tolerances) is built
here, run through plain ONNX Runtime, and every case plain ORT passes is run through
``edgefleet.load(path).predict`` with inputs by name. The same code as the CI test
``tests/sdk/test_sdk_onnx_conformance.py`` (loaded from there, so the two cannot
drift apart); this script records the counts as JSON for BENCHMARKS.md.

    python -m benchmarks.onnx_conformance [--out benchmarks/results/onnx_conformance.json]

Target: every case plain ORT passes also passes through edgefleet, except those
refused at load with ``UnsupportedModelError`` (sequence/optional tensors only).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
TEST = HERE.parent / "tests" / "sdk" / "test_sdk_onnx_conformance.py"


def _conformance_module() -> Any:
    spec = importlib.util.spec_from_file_location("edgefleet_onnx_conformance", TEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--out", default=str(HERE / "results" / "onnx_conformance.json"))
    ap.add_argument("--quick", action="store_true", help="the same run (it takes well under a minute)")
    args = ap.parse_args(argv)
    import onnxruntime as ort


    conf = _conformance_module()
    ort.set_default_logger_severity(3)
    t0 = time.perf_counter()
    cases = conf.collect_cases()
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ef-onnx-conf-") as d, warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        tally = conf.run_conformance(cases, Path(d))
    tally.collect_seconds, tally.seconds = t1 - t0, time.perf_counter() - t0
    print(tally.counts_line())
    if tally.refused:
        print(f"refused at load: {tally.refused_summary()}")
    if tally.failures:
        print(tally.failure_listing())
    from .schema import envelope

    doc = {
        **envelope("onnx_conformance", args.quick, ("onnx",)),
        "cases": tally.total,
        "ort_pass": tally.ort_pass,
        "edgefleet_pass": tally.ef_pass,
        "refused_at_load": len(tally.refused),
        "refused_cases": sorted(tally.refused),
        "refused_summary": tally.refused_summary(),
        "failures": tally.n_failures,
        "failing_cases": {cat: [n for n, _ in items] for cat, items in tally.failures.items()},
        "seconds": round(tally.seconds, 1),
        "baseline_5e5384f": {"edgefleet_pass": 834, "ort_pass": 1589, "note": "the sdk at commit 5e5384f, measured with the same test code"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if tally.n_failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
