"""SDK subcommands: keys, pack, verify, inspect, predict, bench."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, InvalidInputError


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage Ed25519 signing keys")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = ksub.add_parser("generate", help="create a signing key pair")
    gen.add_argument("--out", required=True, help="directory for NAME.key (0600) and NAME.pub")
    gen.add_argument("--name", default="edgefleet", help="file name stem (default: edgefleet)")
    gen.add_argument("--force", action="store_true", help="overwrite existing key files")
    gen.set_defaults(func=cmd_keys_generate)

    pk = sub.add_parser("pack", help="pack a .tflite/.onnx model into a signed bundle")
    pk.add_argument("model", help="a .tflite or .onnx file")
    pk.add_argument("-o", "--output", required=True, help="bundle directory to write")
    pk.add_argument("--name", required=True)
    pk.add_argument("--version", required=True, help="dotted integers, e.g. 1 or 1.2.0")
    pk.add_argument("--labels", help="labels file: one per line, or a JSON list")
    pk.add_argument("--preprocess", help="preprocessing pipeline as JSON (list of steps)")
    pk.add_argument("--reference", help=".npz/.npy/.csv of training inputs for reference statistics")
    pk.add_argument("--key", help="private key to sign with (edgefleet keys generate)")
    pk.add_argument("--hardware-tag", action="append", default=[], dest="hardware_tags")
    pk.add_argument("--archive", action="store_true", help="also write OUTPUT.efb")
    pk.add_argument("--force", action="store_true", help="replace an existing bundle")
    pk.set_defaults(func=cmd_pack)

    vf = sub.add_parser("verify", help="verify a bundle's signature, hashes and sizes")
    vf.add_argument("bundle")
    vf.add_argument("--pub", action="append", required=True, help="trusted public key (repeatable)")
    vf.set_defaults(func=cmd_verify)

    ins = sub.add_parser("inspect", help="show a bundle's manifest")
    ins.add_argument("bundle")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=cmd_inspect)

    pr = sub.add_parser("predict", help="run a bundle on inputs from a file")
    pr.add_argument("bundle")
    pr.add_argument("--input", required=True, help=".npy, .npz (one array per input name) or .csv")
    pr.add_argument("--output", help="write predictions to this .npy/.npz")
    pr.add_argument("--json", action="store_true", help="print predictions as JSON")
    pr.add_argument("--pub", action="append", help="require a signature by this key")
    pr.add_argument("--backend", choices=["litert", "onnxruntime"])
    pr.add_argument("--threads", type=int)
    pr.add_argument("--raw", action="store_true", help="raw integer tensors for quantized models")
    pr.set_defaults(func=cmd_predict)

    bn = sub.add_parser("bench", help="benchmark a bundle or model on this machine")
    bn.add_argument("target", help="bundle, .efb, .tflite or .onnx")
    bn.add_argument("--runs", type=int, default=1000)
    bn.add_argument("--warmup", type=int, default=50)
    bn.add_argument("--threads", type=int)
    bn.add_argument("--batch", type=int, default=1)
    bn.add_argument("--backend", choices=["litert", "onnxruntime"])
    bn.add_argument("--json", dest="json_file", help="write the results to this JSON file")
    bn.add_argument("--compare-raw", action="store_true", help="also time the bare runtime call")
    bn.set_defaults(func=cmd_bench)


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from .keys import generate_keypair, load_public_key

    priv, pub = generate_keypair(args.out, name=args.name, overwrite=args.force)
    print(f"private key: {priv} (mode 0600; keep it secret)")
    print(f"public key:  {pub} (key id {load_public_key(pub).key_id})")
    return 0


def read_array_file(path: str) -> Any:
    """Read .npy (one array), .npz (dict of arrays; never pickles) or .csv (floats)."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"input file {path} does not exist")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if p.suffix in (".csv", ".txt"):
            text = p.read_text("utf-8").splitlines()
            skip = 1 if text and any(c.isalpha() and c not in "eE" for c in text[0].replace("nan", "")) else 0
            arr = np.genfromtxt(p, delimiter=",", dtype=np.float32, skip_header=skip)
            return arr
    except ValueError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from None
    raise InvalidInputError(f"{path}: unsupported input file type (use .npy, .npz or .csv)")


def cmd_pack(args: argparse.Namespace) -> int:
    from .keys import load_private_key
    from .pack import pack, read_labels

    preprocessing = None
    if args.preprocess:
        try:
            preprocessing = json.loads(Path(args.preprocess).read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read preprocessing JSON {args.preprocess}: {exc}") from None
    reference = None
    if args.reference:
        from .stats import compute_reference_stats

        data = read_array_file(args.reference)
        if isinstance(data, dict):
            data = data.get("x", next(iter(data.values())))
        reference = compute_reference_stats(data)
    key = load_private_key(args.key) if args.key else None
    bundle, archive = pack(
        args.model,
        args.output,
        name=args.name,
        version=args.version,
        labels=read_labels(args.labels) if args.labels else None,
        preprocessing=preprocessing,
        private_key=key,
        archive=args.archive,
        reference_stats=reference,
        hardware_tags=args.hardware_tags,
        overwrite=args.force,
    )
    m = bundle.manifest
    print(f"packed {m.name} v{m.version} ({m.model_format.value}) -> {bundle.path}")
    print("signed by key " + key.public.key_id if key else "UNSIGNED (pass --key to sign)")
    if archive:
        print(f"archive: {archive}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .bundle import open_bundle

    bundle, tmp = open_bundle(args.bundle, trusted_keys=args.pub, require_signature=True)
    try:
        m = bundle.manifest
        signer = bundle.signer.key_id if bundle.signer else "?"
        print(f"OK: {m.name} v{m.version}: signature by key {signer} valid, {len(m.files)} file(s) match their sha256 and size")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def _manifest_summary(m: Any) -> str:
    lines = [
        f"name:       {m.name}",
        f"version:    {m.version}",
        f"format:     {m.model_format.value} (runtime {m.target.runtime}, min agent {m.target.min_agent_version})",
        f"created:    {m.created_at or '-'}",
    ]
    if m.target.hardware_tags:
        lines.append(f"hardware:   {', '.join(m.target.hardware_tags)}")
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for s in specs:
            q = f" quant(scale={s.quantization.scale:.6g}, zp={s.quantization.zero_point})" if s.quantization else ""
            lines.append(f"{kind + ':':11} {s.name} {list(s.shape)} {s.dtype}{q}")
    for name, steps in (m.preprocessing or {}).items():
        ops = [st.get("op") for st in (steps.get("steps", []) if isinstance(steps, dict) else steps)]
        lines.append(f"preprocess: {name}: {' -> '.join(ops) or '(none)'}")
    if m.labels:
        shown = ", ".join(m.labels[:10]) + (" ..." if len(m.labels) > 10 else "")
        lines.append(f"labels:     {len(m.labels)} ({shown})")
    for fname, entry in sorted(m.files.items()):
        lines.append(f"file:       {fname} {entry.size} bytes sha256 {entry.sha256[:16]}...")
    lines.append(f"smoke test: {'yes' if m.smoke_tests else 'no'}; reference stats: {'yes' if m.reference_stats else 'no'}")
    for k, v in sorted((m.metrics or {}).items()):
        lines.append(f"metric:     {k} = {v}")
    if m.lineage:
        lines.append("lineage:    " + ", ".join(f"{k}={v}" for k, v in sorted(m.lineage.items()) if not isinstance(v, (dict, list))))
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .bundle import open_bundle

    bundle, tmp = open_bundle(args.bundle)
    try:
        if args.json:
            out = bundle.manifest.to_dict()
            out["signed"] = bundle.signed
            print(json.dumps(out, indent=2, sort_keys=True))
        else:
            print(_manifest_summary(bundle.manifest))
            print(f"signed:     {'yes (verify with edgefleet verify --pub KEY)' if bundle.signed else 'no'}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from .model import load

    model = load(args.bundle, backend=args.backend, threads=args.threads, trusted_keys=args.pub)
    with model:
        data = read_array_file(args.input)
        if isinstance(data, dict) and len(model.inputs) == 1:
            name = model.inputs[0].name
            data = data.get(name, data.get("x", next(iter(data.values()))))
        out = model.predict(data, raw=args.raw)
        outs = out if isinstance(out, dict) else {model.outputs[0].name: out}
        if args.output:
            if args.output.endswith(".npz"):
                np.savez(args.output, **outs)
            else:
                np.save(args.output, np.asarray(next(iter(outs.values()))))
        if args.json:
            result: dict[str, Any] = {k: np.asarray(v).tolist() for k, v in outs.items()}
            if model.labels:
                result["labels"] = model.predict_labels(data)
            json.dump(result, sys.stdout)
            sys.stdout.write("\n")
        elif not args.output:
            first = np.asarray(next(iter(outs.values())))
            if model.labels:
                labels = model.predict_labels(data)
                print("\n".join(str(x) for x in (labels if isinstance(labels, list) else [labels])))
            else:
                print(np.array2string(first, precision=5, threshold=200))
        else:
            print(f"wrote predictions for {len(np.atleast_1d(next(iter(outs.values()))))} sample(s) to {args.output}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, format_report, run_bench

    cfg = BenchConfig(
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        batch=args.batch,
        backend=args.backend,
        compare_raw=args.compare_raw,
    )
    result = run_bench(args.target, cfg)
    print(format_report(result))
    if args.json_file:
        Path(args.json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_file).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"results written to {args.json_file}")
    return 0
