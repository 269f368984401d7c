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
    _register_trust(ksub, sub)

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
    pk.add_argument("--batch-axis", action="append", default=[], metavar="NAME=AXIS|none",
                    help="an input's batch axis, or none to pass it exactly as given (default: inferred)")
    pk.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                    help="declare an input's shape, e.g. image=1x3x48x192 ('?' keeps a dimension dynamic)")
    pk.add_argument("--state", action="append", default=[], metavar="OUT=IN",
                    help="a state pair: output OUT is fed back as input IN on the next call "
                    "(repeatable; default: proposed from names such as h0/hn, state/stateN; 'none' for no state)")
    pk.add_argument("--state-init", metavar="FILE.npz", help="initial state values, one array per state input (default zeros)")
    pk.add_argument("--sample", metavar="FILE.npz", help="real inputs for the smoke tests, one array per input name")
    pk.add_argument("--allow-non-finite", action="append", default=[], metavar="NAME",
                    help="let input NAME hold NaN/inf (refused by default)")
    pk.set_defaults(func=cmd_pack)

    vf = sub.add_parser("verify", help="verify a bundle's signature, hashes and sizes")
    vf.add_argument("bundle")
    vf.add_argument("--pub", action="append", help="trusted public key (repeatable; optional with --repo)")
    vf.add_argument("--repo", help="also check the .efb against this TUF repository's signed metadata")
    vf.add_argument("--trusted-root", metavar="ROOT.json",
                    help="the root to start the chain from (default: the state's or the repository's 1.root.json)")
    vf.add_argument("--state", metavar="DIR",
                    help="keep the verifier's trusted metadata here between runs (rollback and clock floor memory)")
    vf.add_argument("--clock-skew", default="5m", help="accept metadata expired less than this ago (default 5m)")
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
    bn.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                    help="the shape to time an input at, e.g. image=1x3x640x640 (needed for dynamic dimensions)")
    bn.add_argument("--sample", metavar="FILE.npz", help="real inputs, one array per input name, used as given")
    bn.add_argument("--session", action="store_true", help="time a stateful streaming loop (state carried call to call)")
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


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        name, sep, rest = v.rpartition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"{flag} {v!r}: expected NAME=VALUE")
        out.append((name, rest))
    return out


def parse_shapes(values: list[str], flag: str = "--input-shape", dynamic_ok: bool = False) -> dict[str, tuple[int, ...]]:
    """``NAME=1x3x48x192`` (``?`` for a dynamic dimension where allowed) -> {NAME: dims}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, text in _pairs(values, flag):
        dims = []
        for part in text.lower().split("x"):
            if part in ("?", "-1") and dynamic_ok:
                dims.append(-1)
            elif part.isdigit() and 0 < int(part) <= 1 << 31:
                dims.append(int(part))
            else:
                raise ConfigError(f"{flag} {name}={text}: dimensions are positive integers joined by 'x'" + (" ('?' for dynamic)" if dynamic_ok else ""))
        if len(dims) > 64:
            raise ConfigError(f"{flag} {name}: at most 64 dimensions")
        shapes[name] = tuple(dims)
    return shapes


def parse_batch_axes(values: list[str]) -> dict[str, int | None]:
    axes: dict[str, int | None] = {}
    for name, text in _pairs(values, "--batch-axis"):
        if text.lower() == "none":
            axes[name] = None
        elif text.isdigit() and int(text) < 64:
            axes[name] = int(text)
        else:
            raise ConfigError(f"--batch-axis {name}={text}: expected an axis number or 'none'")
    return axes


def parse_state(values: list[str]) -> dict[str, str] | None:
    if not values:
        return None
    if values == ["none"]:
        return {}
    state = dict(_pairs(values, "--state"))
    return state


def _npz(path: str, what: str) -> dict[str, Any]:
    data = read_array_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected an .npz with one array per input name")
    return data


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
        batch_axes=parse_batch_axes(args.batch_axis) or None,
        input_shapes=parse_shapes(args.input_shape, dynamic_ok=True) or None,
        state=parse_state(args.state),
        state_initial=_npz(args.state_init, "--state-init") if args.state_init else None,
        sample_inputs=_npz(args.sample, "--sample") if args.sample else None,
        allow_non_finite=args.allow_non_finite,
    )
    m = bundle.manifest
    print(f"packed {m.name} v{m.version} ({m.model_format.value}) -> {bundle.path}")
    for t in m.inputs:
        print(f"  input  {t.name}: {t.dtype}{t.shape_text()} batch axis {t.batch_axis if t.batch_axis is not None else 'none'}")
    for t in m.outputs:
        print(f"  output {t.name}: {t.dtype}{t.shape_text()} batch axis {t.batch_axis if t.batch_axis is not None else 'none'}")
    for st in m.state:
        print(f"  state  {st.output} -> {st.input} (initial: {st.initial or 'zeros'})")
    if m.stateful_variables:
        print("  state  kept in the model's resource variables (each Session has its own)")
    print("signed by key " + key.public.key_id if key else "UNSIGNED (pass --key to sign)")
    if archive:
        print(f"archive: {archive}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .bundle import open_bundle

    if not args.pub and not args.repo:
        raise ConfigError("give --pub KEY (bare-key check) or --repo DIR (TUF metadata), or both")
    if args.repo:
        from .trust import parse_duration, verify_bundle

        v = verify_bundle(
            args.bundle,
            args.repo,
            trusted_root=args.trusted_root,
            state_dir=args.state,
            clock_skew=parse_duration(args.clock_skew, "--clock-skew"),
        )
        print(
            f"OK: {v.path} is a signed target (root v{v.root_version}, timestamp v{v.timestamp_version}, "
            f"snapshot v{v.snapshot_version}); {v.length} bytes sha256 {v.sha256[:16]}...; "
            f"bundle signed by model key {v.signer.key_id if v.signer else '?'}; trust anchor: {v.anchor}"
        )
        if not args.pub:
            return 0
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
            ax = "none" if s.batch_axis is None else str(s.batch_axis)
            fin = "" if s.finite or kind == "output" else " NaN/inf allowed"
            lines.append(f"{kind + ':':11} {s.name} {s.shape_text()} {s.dtype}{q} batch axis {ax}{fin}")
    for st in m.state:
        lines.append(f"state:      {st.output} -> {st.input} (initial: {st.initial or 'zeros'})")
    if m.stateful_variables:
        lines.append("state:      kept in resource variables (each Session has its own)")
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
        names = [t.name for t in model.inputs]
        if isinstance(data, dict):
            if len(names) == 1:
                name = names[0]
                data = data.get(name, data.get("x", next(iter(data.values()))))
            else:
                state = {st.input for st in model.manifest.state}
                wanted = [n for n in names if n not in state or n in data]
                missing = [n for n in wanted if n not in data]
                if missing:
                    raise InvalidInputError(f"{args.input} lacks inputs {missing}; the .npz must hold one array per input name {names}")
                data = {n: data[n] for n in wanted}
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
        input_shapes=parse_shapes(args.input_shape) or None,
        sample=args.sample,
        session=args.session,
    )
    result = run_bench(args.target, cfg)
    print(format_report(result))
    if args.json_file:
        Path(args.json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_file).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"results written to {args.json_file}")
    return 0


# ---------------------------------------------------------------- TUF repository (edgefleet.trust)


def _register_trust(ksub: Any, sub: Any) -> None:
    def expiry_flags(p: Any, *roles: str) -> None:
        defaults = {"expires": "365d", "snapshot-expires": "7d", "timestamp-expires": "1d", "targets-expires": "365d"}
        for role in roles:
            p.add_argument(f"--{role}", default=defaults[role], help=f"expiry (default {defaults[role]}; s/m/h/d/w)")

    ri = ksub.add_parser("root-init", help="create a TUF repository: root v1 with a threshold of offline keys")
    ri.add_argument("--repo", required=True, help="repository directory (metadata/ and targets/)")
    ri.add_argument("--root-key", action="append", required=True,
                    help="an offline root key (repeatable); a .key file also signs, a .pub file is only listed")
    ri.add_argument("--threshold", type=int, required=True, help="root (and targets) signatures required")
    ri.add_argument("--online-key", required=True,
                    help="the coordinator's online key (.pub; a .key also signs the first snapshot/timestamp)")
    expiry_flags(ri, "expires", "targets-expires", "snapshot-expires", "timestamp-expires")
    ri.set_defaults(func=cmd_keys_root_init)

    rr = ksub.add_parser("rotate-root", help="write the next root version, signed by the old and the new root keys")
    rr.add_argument("--repo", required=True)
    rr.add_argument("--old-key", action="append", default=[], help="a current root private key (repeatable)")
    rr.add_argument("--root-key", action="append", required=True,
                    help="a root key of the new version (repeatable; .key signs, .pub is only listed)")
    rr.add_argument("--threshold", type=int, required=True)
    rr.add_argument("--online-key", help="replace the online key (.pub, or .key to publish right away)")
    expiry_flags(rr, "expires", "targets-expires", "snapshot-expires", "timestamp-expires")
    rr.set_defaults(func=cmd_keys_rotate_root)

    dg = ksub.add_parser("delegate", help="let a model key sign model NAME (paths NAME/*, terminating)")
    dg.add_argument("--repo", required=True)
    dg.add_argument("--model", required=True)
    dg.add_argument("--key", action="append", required=True, help="model signing key (.pub; repeatable)")
    dg.add_argument("--threshold", type=int, help="signatures of the model's keys required (default 1)")
    dg.add_argument("--root-key", action="append", required=True, help="root private keys that sign targets")
    dg.add_argument("--online-key", help="online private key: publish snapshot/timestamp now")
    expiry_flags(dg, "targets-expires", "snapshot-expires", "timestamp-expires")
    dg.set_defaults(func=cmd_keys_delegate)

    rv = ksub.add_parser("revoke", help="remove a key from model NAME (or the rollback role) and record it as revoked")
    rv.add_argument("--repo", required=True)
    which = rv.add_mutually_exclusive_group(required=True)
    which.add_argument("--model")
    which.add_argument("--rollback", action="store_true", help="revoke a key of the rollback role (rollback orders)")
    rv.add_argument("--key", action="append", required=True, help="the key to revoke (.pub; repeatable)")
    rv.add_argument("--root-key", action="append", required=True, help="root private keys that sign targets")
    rv.add_argument("--online-key", help="online private key: publish snapshot/timestamp now")
    expiry_flags(rv, "targets-expires", "snapshot-expires", "timestamp-expires")
    rv.set_defaults(func=cmd_keys_revoke)

    repo = sub.add_parser("repo", help="publish bundles in a TUF repository (edgefleet keys root-init creates one)")
    rsub = repo.add_subparsers(dest="repo_command", metavar="ACTION", required=True)
    ad = rsub.add_parser("add", help="add a bundle archive as target NAME/VERSION.efb, signed by the model key")
    ad.add_argument("bundle", help="the .efb archive")
    ad.add_argument("--repo", required=True)
    ad.add_argument("--key", action="append", required=True, help="the model's private key (repeatable for a threshold)")
    ad.add_argument("--delta", help="also add this delta file (applies to --delta-base) as a target")
    ad.add_argument("--delta-base", metavar="VERSION", help="the published version the delta applies to")
    ad.add_argument("--online-key", help="online private key: update snapshot and timestamp now")
    expiry_flags(ad, "expires", "snapshot-expires", "timestamp-expires")
    ad.set_defaults(func=cmd_repo_add)

    dr = rsub.add_parser("delegate-rollback",
                         help="delegate the rollback role (no paths: signs rollback orders only, never a bundle)")
    dr.add_argument("key", nargs="+", help="rollback-order signing key(s) (.pub): the coordinator's --signing-key")
    dr.add_argument("--repo", required=True)
    dr.add_argument("--threshold", type=int, help="signatures of the rollback keys an order needs (default 1)")
    dr.add_argument("--root-key", action="append", required=True, help="root private keys that sign targets")
    dr.add_argument("--online-key", help="online private key: publish snapshot/timestamp now")
    expiry_flags(dr, "targets-expires", "snapshot-expires", "timestamp-expires")
    dr.set_defaults(func=cmd_repo_delegate_rollback)

    pb = rsub.add_parser("publish", help="sign a fresh timestamp (and snapshot if needed); run it periodically")
    pb.add_argument("--repo", required=True)
    pb.add_argument("--online-key", required=True, help="the online private key")
    expiry_flags(pb, "snapshot-expires", "timestamp-expires")
    pb.set_defaults(func=cmd_repo_publish)


def _expiries(args: argparse.Namespace) -> dict[str, Any]:
    from .trust import parse_duration

    out = {}
    for flag in ("expires", "targets_expires", "snapshot_expires", "timestamp_expires"):
        if getattr(args, flag, None) is not None:
            out[flag] = parse_duration(getattr(args, flag), "--" + flag.replace("_", "-"))
    return out


def _report(published: Any) -> int:
    for path in published.written:
        print(f"wrote {path}")
    for note in published.notes:
        print(f"note: {note}")
    return 0


def cmd_keys_root_init(args: argparse.Namespace) -> int:
    from .trust import init_repository, load_key_arg

    exp = _expiries(args)
    return _report(init_repository(
        args.repo, [load_key_arg(k) for k in args.root_key], args.threshold, load_key_arg(args.online_key),
        exp["expires"], exp["targets_expires"], exp["snapshot_expires"], exp["timestamp_expires"],
    ))


def cmd_keys_rotate_root(args: argparse.Namespace) -> int:
    from .trust import load_key_arg, rotate_root

    exp = _expiries(args)
    return _report(rotate_root(
        args.repo, [load_key_arg(k) for k in args.old_key], [load_key_arg(k) for k in args.root_key], args.threshold,
        load_key_arg(args.online_key) if args.online_key else None,
        exp["expires"], exp["targets_expires"], exp["snapshot_expires"], exp["timestamp_expires"],
    ))


def cmd_keys_delegate(args: argparse.Namespace) -> int:
    from .trust import delegate, load_key_arg

    exp = _expiries(args)
    return _report(delegate(
        args.repo, args.model, [load_key_arg(k) for k in args.key], [load_key_arg(k) for k in args.root_key],
        args.threshold, load_key_arg(args.online_key) if args.online_key else None,
        exp["targets_expires"], exp["snapshot_expires"], exp["timestamp_expires"],
    ))


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from .trust import ROLLBACK_ROLE, load_key_arg, revoke

    exp = _expiries(args)
    return _report(revoke(
        args.repo, ROLLBACK_ROLE if args.rollback else args.model, [load_key_arg(k) for k in args.key], [load_key_arg(k) for k in args.root_key],
        load_key_arg(args.online_key) if args.online_key else None,
        exp["targets_expires"], exp["snapshot_expires"], exp["timestamp_expires"],
    ))


def cmd_repo_add(args: argparse.Namespace) -> int:
    from .trust import add_bundle, load_key_arg

    exp = _expiries(args)
    return _report(add_bundle(
        args.repo, args.bundle, [load_key_arg(k) for k in args.key],
        load_key_arg(args.online_key) if args.online_key else None,
        args.delta, args.delta_base, exp["expires"], exp["snapshot_expires"], exp["timestamp_expires"],
    ))


def cmd_repo_delegate_rollback(args: argparse.Namespace) -> int:
    from .trust import delegate_rollback, load_key_arg

    exp = _expiries(args)
    return _report(delegate_rollback(
        args.repo, [load_key_arg(k) for k in args.key], [load_key_arg(k) for k in args.root_key], args.threshold,
        load_key_arg(args.online_key) if args.online_key else None,
        exp["targets_expires"], exp["snapshot_expires"], exp["timestamp_expires"],
    ))


def cmd_repo_publish(args: argparse.Namespace) -> int:
    from .trust import load_key_arg, publish

    exp = _expiries(args)
    return _report(publish(args.repo, load_key_arg(args.online_key), exp["snapshot_expires"], exp["timestamp_expires"]))
