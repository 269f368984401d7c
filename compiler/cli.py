"""``edgefleet compile``, ``edgefleet datasets`` and ``edgefleet examples``.

Light at import time: handlers import the compiler (and TensorFlow) when they run.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import click


def _list_or_none(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str] | None:
    return list(value) or None


def _ops(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str] | None:
    return [op.strip() for v in value for op in v.split(",") if op.strip()] or None


@click.command("compile", epilog="Example: edgefleet compile digits.keras -o digits-bundle --quantize int8 --train data/train.npz "
               "--eval data/test.npz --name digits --version 1.0.0 --key keys/edgefleet.key")
@click.argument("source")
@click.option("-o", "--output", required=True, help="bundle directory to write")
@click.option("--recipe", help="TOML recipe (every flag has a field)")
@click.option("--quantize", type=click.Choice(["none", "dynamic", "float16", "int8", "int16x8", "auto"]),
              help="quantization (default: the recipe's)")
@click.option("--prune", type=float, metavar="SPARSITY", help="magnitude pruning to this sparsity (0..1)")
@click.option("--prune-structured", type=float, metavar="FRACTION", help="remove this fraction of filters/units")
@click.option("--distill-width", type=float, metavar="FRACTION", help="distil into a student this much as wide")
@click.option("--student", help="distil into this Keras model instead of a narrower copy")
@click.option("--format", type=click.Choice(["tflite", "onnx", "both"]), help="output format (default: the recipe's)")
@click.option("--train", metavar="DATA", help=".npz (x, y) or .csv for fine-tuning")
@click.option("--calibration", metavar="DATA", help="data for int8 calibration (default: --train)")
@click.option("--eval", metavar="DATA", help="held-out data for accuracy, the gate and the report")
@click.option("--label", metavar="KEY", help="npz array holding the eval labels (default y); multi-input data files "
              "hold one array per input name")
@click.option("--state", multiple=True, callback=_list_or_none, metavar="OUT=IN",
              help="a state pair of a stateful model: output OUT feeds input IN on the next call (source names; repeat "
              "for several); 'none' for none; default: proposed from names and shapes (h0/hn, state/stateN, ...)")
@click.option("--trainable-head", metavar="N|NAMES",
              help="keep the last N layers (or these comma-separated layer names: the model's last ones) as a "
              "float trainable head beside the compiled backbone; head-only updates then ship just the head")
@click.option("--trainable-head-from", metavar="OUTPUT_NAME",
              help="ONNX sources: the tensor where the trainable head starts (the nodes from it to the output are the "
              "head, kept as float weights)")
@click.option("--max-accuracy-drop", type=float, metavar="POINTS", help="accuracy budget in points")
@click.option("--onnx-calibration", type=click.Choice(["minmax", "entropy", "percentile"]),
              help="ONNX int8 calibration method")
@click.option("--no-per-channel", is_flag=True, help="per-tensor ONNX weight quantization")
@click.option("--exclude-ops", multiple=True, callback=_ops, metavar="OP[,OP]",
              help="ONNX op types to keep in float (repeatable, or comma-separated)")
@click.option("--preprocess", metavar="JSON", help="preprocessing pipeline spec (JSON)")
@click.option("--labels", metavar="FILE", help="class labels, one per line or a JSON list")
@click.option("--name", help="the bundle's model name")
@click.option("--version", help="the bundle's version")
@click.option("--key", metavar="FILE", help="Ed25519 private key to sign the bundle")
@click.option("--seed", type=int, help="random seed")
@click.option("--archive", is_flag=True, help="also write BUNDLE.efb")
@click.option("--force", is_flag=True, help="replace an existing bundle")
@click.option("--quiet", is_flag=True, help="no progress bars")
def compile_command(**params: Any) -> int:
    """Compile SOURCE (.keras/.h5, SavedModel dir, .onnx or .tflite) into a bundle at -o BUNDLE: prune, distill,
    quantize and export, with an accuracy gate. Flags override the --recipe; the effective recipe goes into the
    bundle lineage and BUNDLE.report/recipe.toml."""
    return cmd_compile(SimpleNamespace(**params))


@click.group(epilog="Example: edgefleet datasets digits -o data")
def datasets() -> None:
    """Write example datasets (offline)."""


@datasets.command("digits", epilog="Example: edgefleet datasets digits -o data   # data/train.npz, data/test.npz")
@click.option("-o", "--output", required=True, help="directory")
@click.option("--seed", type=int, default=0, help="random seed of the split")
def datasets_digits(**params: Any) -> int:
    """scikit-learn's 8x8 digits as train.npz/test.npz."""
    return cmd_datasets_digits(SimpleNamespace(**params))


@click.group(epilog="Example: edgefleet examples train-digits -o digits.keras")
def examples() -> None:
    """Example models to try the compiler with."""


@examples.command("train-digits", epilog="Example: edgefleet examples train-digits -o digits.keras")
@click.option("-o", "--output", required=True, help="model file (.keras)")
@click.option("--epochs", type=int, default=12, help="training epochs")
@click.option("--seed", type=int, default=0, help="random seed")
@click.option("--force", is_flag=True, help="replace an existing model file")
def examples_train_digits(**params: Any) -> int:
    """Train a small CNN on the digits in seconds."""
    return cmd_examples_train_digits(SimpleNamespace(**params))


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def cmd_compile(args: Any) -> int:
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


def cmd_datasets_digits(args: Any) -> int:
    from .examples import write_digits

    train, test = write_digits(args.output, seed=args.seed)
    print(f"wrote {train} and {test} (raw 8x8 images, pixels 0..16; labels 0..9)")
    return 0


def cmd_examples_train_digits(args: Any) -> int:
    _quiet_tf()
    from .examples import train_digits

    info = train_digits(args.output, epochs=args.epochs, seed=args.seed, overwrite=args.force)
    print(f"wrote {info['model']} ({info['params']:,} parameters, test accuracy {info['test_accuracy']:.2f}%)")
    print(f"preprocessing and labels: {info['sidecar']} (read by edgefleet compile)")
    return 0
