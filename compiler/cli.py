"""``edgefleet compile``, ``edgefleet datasets`` and ``edgefleet examples``.

Light at import time: handlers import the compiler (and TensorFlow) when they run.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def register(sub: Any) -> None:
    c = sub.add_parser(
        "compile",
        help="prune, distill, quantize and export a model into a signed bundle, with an accuracy gate",
        description="Compile SOURCE (.keras/.h5, SavedModel dir, .onnx or .tflite) into a bundle at -o BUNDLE. "
        "Flags override the --recipe; the effective recipe goes into the bundle lineage and BUNDLE.report/recipe.toml.",
    )
    c.add_argument("source", help="model: .keras/.h5, SavedModel directory, .onnx or .tflite")
    c.add_argument("-o", "--output", required=True, help="bundle directory to write")
    c.add_argument("--recipe", help="TOML recipe (every flag has a field)")
    c.add_argument("--quantize", choices=["none", "dynamic", "float16", "int8", "int16x8", "auto"])
    c.add_argument("--prune", type=_fraction, metavar="SPARSITY", help="magnitude pruning to this sparsity (0..1)")
    c.add_argument("--prune-structured", type=_fraction, metavar="FRACTION", help="remove this fraction of filters/units")
    c.add_argument("--distill-width", type=_fraction, metavar="FRACTION", help="distil into a student this much as wide")
    c.add_argument("--student", help="distil into this Keras model instead of a narrower copy")
    c.add_argument("--format", choices=["tflite", "onnx", "both"])
    c.add_argument("--train", metavar="DATA", help=".npz (x, y) or .csv for fine-tuning")
    c.add_argument("--calibration", metavar="DATA", help="data for int8 calibration (default: --train)")
    c.add_argument("--eval", metavar="DATA", help="held-out data for accuracy, the gate and the report")
    c.add_argument("--label", metavar="KEY", help="npz array holding the eval labels (default y); multi-input data "
                   "files hold one array per input name")
    c.add_argument("--state", action="append", metavar="OUT=IN", help="a state pair of a stateful model: output OUT "
                   "feeds input IN on the next call (source names; repeat for several); 'none' for none; default: "
                   "proposed from names and shapes (h0/hn, state/stateN, ...)")
    c.add_argument("--max-accuracy-drop", type=float, metavar="POINTS", help="accuracy budget in points")
    c.add_argument("--onnx-calibration", choices=["minmax", "entropy", "percentile"])
    c.add_argument("--no-per-channel", action="store_true", help="per-tensor ONNX weight quantization")
    c.add_argument("--exclude-ops", nargs="+", metavar="OP", help="ONNX op types to keep in float")
    c.add_argument("--preprocess", metavar="JSON", help="preprocessing pipeline spec (JSON)")
    c.add_argument("--labels", metavar="FILE", help="class labels, one per line or a JSON list")
    c.add_argument("--name")
    c.add_argument("--version")
    c.add_argument("--key", metavar="FILE", help="Ed25519 private key to sign the bundle")
    c.add_argument("--seed", type=int)
    c.add_argument("--archive", action="store_true", help="also write BUNDLE.efb")
    c.add_argument("--force", action="store_true", help="replace an existing bundle")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_compile)

    d = sub.add_parser("datasets", help="write example datasets (offline)")
    dsub = d.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    dg = dsub.add_parser("digits", help="scikit-learn's 8x8 digits as train.npz/test.npz")
    dg.add_argument("-o", "--output", required=True, help="directory")
    dg.add_argument("--seed", type=int, default=0)
    dg.set_defaults(func=cmd_datasets_digits)

    e = sub.add_parser("examples", help="example models to try the compiler with")
    esub = e.add_subparsers(dest="example", metavar="EXAMPLE", required=True)
    td = esub.add_parser("train-digits", help="train a small CNN on the digits in seconds")
    td.add_argument("-o", "--output", required=True, help="model file (.keras)")
    td.add_argument("--epochs", type=int, default=12)
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--force", action="store_true")
    td.set_defaults(func=cmd_examples_train_digits)


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def cmd_compile(args: argparse.Namespace) -> int:
    _quiet_tf()
    from .config import CompileConfig, config_from_args, load_recipe

    base = load_recipe(args.recipe) if args.recipe else CompileConfig()
    cfg = config_from_args(args, base)
    from .api import compile_model

    result = compile_model(args.source, args.output, cfg, progress=not args.quiet)
    _print_summary(result)
    return 0


def _print_summary(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    metric = result.baseline.metric if result.baseline else "score"
    table = Table(title="variants")
    for col in ("variant", "size", "gzip", metric, "drop", "p50 ms", "chosen"):
        table.add_column(col, justify="right" if col not in ("variant",) else "left")
    for r in result.variants:
        table.add_row(
            r.name, f"{r.size:,}", f"{r.gzip_size:,}",
            "-" if r.score is None else f"{r.score.value:.2f}", f"{r.drop:.2f}",
            f"{r.p50_ms:.3f}",
            ("yes" if r.chosen else ("error" if r.notes.get("error") else "")) + (f" ({'/'.join(r.regressions)})" if r.regressions else ""),
        )
    console.print(table)
    if result.baseline:
        console.print(f"source {result.baseline.metric}: {result.baseline.value:.2f}")
    console.print(f"gate: {result.gate_message}")
    console.print(f"bundle: {result.bundle_path}")
    if result.report_dir:
        console.print(f"report: {result.report_dir}/report.md")


def cmd_datasets_digits(args: argparse.Namespace) -> int:
    from .examples import write_digits

    train, test = write_digits(args.output, seed=args.seed)
    print(f"wrote {train} and {test} (raw 8x8 images, pixels 0..16; labels 0..9)")
    return 0


def cmd_examples_train_digits(args: argparse.Namespace) -> int:
    _quiet_tf()
    from .examples import train_digits

    info = train_digits(args.output, epochs=args.epochs, seed=args.seed, overwrite=args.force)
    print(f"wrote {info['model']} ({info['params']:,} parameters, test accuracy {info['test_accuracy']:.2f}%)")
    print(f"preprocessing and labels: {info['sidecar']} (read by edgefleet compile)")
    return 0
