"""SDK subcommands: keys, pack, verify, inspect, predict, bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import click

from .clitypes import DURATION_DAYS
from .errors import ConfigError, InvalidInputError


def _many(values: tuple[str, ...]) -> list[str]:
    return list(values)


SHAPE = "NAME=DIMS"


@click.group(epilog="Example: edgefleet keys generate --out keys")
def keys() -> None:
    """Manage Ed25519 signing keys (and a TUF repository's root, delegations and revocations)."""


@keys.command("generate", epilog="Example: edgefleet keys generate --out keys   # keys/edgefleet.key (0600), "
              "keys/edgefleet.pub")
@click.option("--out", required=True, help="directory for NAME.key (0600) and NAME.pub")
@click.option("--name", default="edgefleet", help="file name stem")
@click.option("--force", is_flag=True, help="overwrite existing key files")
def keys_generate(**params: Any) -> int:
    """Create a signing key pair."""
    return cmd_keys_generate(SimpleNamespace(**params))


@click.command(epilog="Example: edgefleet pack model.tflite -o bundle --name digits --version 1.0.0 --labels "
               "labels.txt --key keys/edgefleet.key --archive\n\n"
               "A head-only update: edgefleet pack --base v1.efb --head new_head.npz --version 2.0.0 --key "
               "keys/edgefleet.key -o v2 --head-update v2.efh")
@click.argument("model", required=False)
@click.option("-o", "--output", required=True, help="bundle directory to write")
@click.option("--name", help="the model's name (required unless --base)")
@click.option("--version", required=True, help="dotted integers, e.g. 1 or 1.2.0")
@click.option("--labels", help="labels file: one per line, or a JSON list")
@click.option("--preprocess", help="preprocessing pipeline as JSON (list of steps)")
@click.option("--reference", help=".npz/.npy/.csv of training inputs for reference statistics")
@click.option("--key", help="private key to sign with (edgefleet keys generate)")
@click.option("--hardware-tag", "hardware_tags", multiple=True, callback=lambda c, p, v: _many(v),
              help="a hardware tag the bundle targets (repeatable)")
@click.option("--archive", is_flag=True, help="also write OUTPUT.efb")
@click.option("--force", is_flag=True, help="replace an existing bundle")
@click.option("--batch-axis", multiple=True, callback=lambda c, p, v: _many(v), metavar="NAME=AXIS|none",
              help="an input's batch axis, or none to pass it exactly as given (default: inferred)")
@click.option("--input-shape", multiple=True, callback=lambda c, p, v: _many(v), metavar=SHAPE,
              help="declare an input's shape, e.g. image=1x3x48x192 ('?' keeps a dimension dynamic)")
@click.option("--state", multiple=True, callback=lambda c, p, v: _many(v), metavar="OUT=IN",
              help="a state pair: output OUT is fed back as input IN on the next call (repeatable; default: "
              "proposed from names such as h0/hn, state/stateN; 'none' for no state)")
@click.option("--state-init", metavar="FILE.npz", help="initial state values, one array per state input (default zeros)")
@click.option("--sample", metavar="FILE.npz", help="real inputs for the smoke tests, one array per input name")
@click.option("--allow-non-finite", multiple=True, callback=lambda c, p, v: _many(v), metavar="NAME",
              help="let input NAME hold NaN/inf (refused by default)")
@click.option("--base", metavar="BUNDLE", help="a bundle with a trainable head: make its next version with --head instead "
              "of packing a MODEL")
@click.option("--head", metavar="FILE.npz", help="with --base: the new head's weights, one float array per LAYER.PARAM")
@click.option("--head-update", metavar="FILE", help="with --base: also write the head-only update a device holding the "
              "base rebuilds the new version from")
@click.option("--pub", multiple=True, callback=lambda c, p, v: _many(v) or None,
              help="with --base: require the base to be signed by this key (repeatable)")
def pack(**params: Any) -> int:
    """Pack a .tflite/.onnx model into a signed bundle, or (--base, --head) make a bundle's next version with a new
    trainable head: the same backbone files, the new head, signed, its lineage naming the base."""
    if params["base"] is not None:
        return cmd_pack_head(SimpleNamespace(**params))
    return cmd_pack(SimpleNamespace(**params))


@click.command(epilog="Example: edgefleet verify bundle.efb --pub keys/edgefleet.pub")
@click.argument("bundle")
@click.option("--pub", multiple=True, callback=lambda c, p, v: _many(v) or None,
              help="trusted public key (repeatable; optional with --repo)")
@click.option("--repo", help="also check the .efb against this TUF repository's signed metadata")
@click.option("--trusted-root", metavar="ROOT.json",
              help="the root to start the chain from (default: the state's or the repository's 1.root.json)")
@click.option("--state", metavar="DIR",
              help="keep the verifier's trusted metadata here between runs (rollback and clock floor memory)")
@click.option("--clock-skew", default="5m", type=DURATION_DAYS, help="accept metadata expired less than this ago")
def verify(**params: Any) -> int:
    """Verify a bundle's signature, hashes and sizes."""
    return cmd_verify(SimpleNamespace(**params))


@click.command(epilog="Example: edgefleet inspect bundle --json")
@click.argument("bundle")
@click.option("--json", is_flag=True, help="print the manifest as JSON")
def inspect(**params: Any) -> int:
    """Show a bundle's manifest."""
    return cmd_inspect(SimpleNamespace(**params))


@click.command(epilog="Example: edgefleet predict bundle --input x.npy --json")
@click.argument("bundle")
@click.option("--input", required=True, help=".npy, .npz (one array per input name) or .csv")
@click.option("--output", help="write predictions to this .npy/.npz")
@click.option("--json", is_flag=True, help="print predictions as JSON")
@click.option("--pub", multiple=True, callback=lambda c, p, v: _many(v) or None, help="require a signature by this key")
@click.option("--backend", type=click.Choice(["litert", "onnxruntime"]), help="the runtime (default: the bundle's)")
@click.option("--threads", type=int, help="runtime threads (default: the runtime's)")
@click.option("--raw", is_flag=True, help="raw integer tensors for quantized models")
def predict(**params: Any) -> int:
    """Run a bundle on inputs from a file."""
    return cmd_predict(SimpleNamespace(**params))


@click.command(epilog="Example: edgefleet bench bundle --runs 300 --compare-raw --json-out results/bench.json")
@click.argument("target")
@click.option("--runs", type=int, default=1000, help="timed runs")
@click.option("--warmup", type=int, default=50, help="untimed runs first")
@click.option("--threads", type=int, help="runtime threads (default: the runtime's)")
@click.option("--batch", type=int, default=1, help="batch size")
@click.option("--backend", type=click.Choice(["litert", "onnxruntime"]), help="the runtime (default: the bundle's)")
@click.option("--json", is_flag=True, help="print the results as JSON (instead of the report)")
@click.option("--json-out", "json_file", metavar="FILE", help="also write the results to this JSON file")
@click.option("--compare-raw", is_flag=True, help="also time the bare runtime call")
@click.option("--input-shape", multiple=True, callback=lambda c, p, v: _many(v), metavar=SHAPE,
              help="the shape to time an input at, e.g. image=1x3x640x640 (needed for dynamic dimensions)")
@click.option("--sample", metavar="FILE.npz", help="real inputs, one array per input name, used as given")
@click.option("--session", is_flag=True, help="time a stateful streaming loop (state carried call to call)")
def bench(**params: Any) -> int:
    """Benchmark a bundle, .efb, .tflite or .onnx model on this machine."""
    return cmd_bench(SimpleNamespace(**params))


def cmd_keys_generate(args: Any) -> int:
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


def cmd_pack_head(args: Any) -> int:
    """``pack --base V1 --head NEW.npz``: the options that describe a new model do not apply."""
    from .bundle import open_bundle
    from .headupdate import head_update_of, update_head
    from .keys import load_private_key

    given = [f"--{k.replace('_', '-')}" for k in ("name", "labels", "preprocess", "reference", "state_init", "sample")
             if getattr(args, k)] + [f"--{k.replace('_', '-')}" for k in ("hardware_tags", "batch_axis", "input_shape", "state",
                                                                          "allow_non_finite") if getattr(args, k)]
    if args.model:
        given.insert(0, f"MODEL ({args.model})")
    if given:
        raise ConfigError(f"--base makes the next version of a bundle with a new head; {', '.join(given)} do not apply")
    if not args.head:
        raise ConfigError("--base needs --head FILE.npz (the new head's weights)")
    key = load_private_key(args.key) if args.key else None
    bundle, archive = update_head(args.base, args.head, args.output, version=args.version, private_key=key,
                                  trusted_keys=args.pub, archive=args.archive, overwrite=args.force)
    m = bundle.manifest
    print(f"packed {m.name} v{m.version} -> {bundle.path}: the base's backbone, a new head "
          f"({m.files[m.head.file].size if m.head else 0:,} bytes), lineage parent v{m.lineage.get('parent_version')}")
    print("signed by key " + key.public.key_id if key else "UNSIGNED (pass --key to sign)")
    if archive:
        print(f"archive: {archive}")
    if args.head_update:
        from .atomic import write_atomic

        base, tmp = open_bundle(args.base, trusted_keys=args.pub)
        try:
            data = head_update_of(bundle, base).to_bytes()
        finally:
            if tmp is not None:
                tmp.cleanup()
        write_atomic(args.head_update, data, parents=True)
        full = sum(e.size for e in m.files.values()) + len(bundle.manifest_bytes)
        print(f"head-only update: {args.head_update} ({len(data):,} bytes, {100.0 * len(data) / full:.1f}% of the bundle's files)")
    return 0


def cmd_pack(args: Any) -> int:
    from .keys import load_private_key
    from .pack import pack, read_labels

    if not args.model or not args.name:
        raise ConfigError("give MODEL and --name (or --base BUNDLE --head FILE.npz for a new head)")
    if any(getattr(args, k, None) for k in ("head", "head_update", "pub")):
        raise ConfigError("--head, --head-update and --pub go with --base BUNDLE")

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


def cmd_verify(args: Any) -> int:
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
    if m.head is not None:
        chain = " -> ".join(f"{layer.name} ({layer.kind}{'' if layer.activation == 'linear' else ', ' + layer.activation})"
                            for layer in m.head.layers)
        lines.append(f"head:       {m.head.input} -> {chain} -> {m.head.output.name} {m.head.output.shape_text()} "
                     f"(float32 weights in {m.head.file})")
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


def cmd_inspect(args: Any) -> int:
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


def cmd_predict(args: Any) -> int:
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


def cmd_bench(args: Any) -> int:
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
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_report(result))
    if args.json_file:
        Path(args.json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_file).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"results written to {args.json_file}", file=sys.stderr if getattr(args, "json", False) else sys.stdout)
    return 0


# ---------------------------------------------------------------- TUF repository (edgefleet.trust)


EXPIRY_DEFAULTS = {"expires": "365d", "snapshot-expires": "7d", "timestamp-expires": "1d", "targets-expires": "365d"}


def _expiry(*roles: str) -> Callable[[Any], Any]:
    """The ``--expires``/``--ROLE-expires`` options of a TUF command (s/m/h/d/w; a bare number is days)."""

    def add(f: Any) -> Any:
        for role in reversed(roles):
            what = "root" if role == "expires" else role.split("-")[0]
            f = click.option(f"--{role}", default=EXPIRY_DEFAULTS[role], type=DURATION_DAYS,
                             help=f"{what} metadata expiry (s/m/h/d/w)")(f)
        return f

    return add


def _keys_opt(flag: str, required: bool, help: str) -> Callable[[Any], Any]:
    return click.option(flag, multiple=True, required=required, callback=lambda c, p, v: _many(v), help=help)


ROOT_KEYS = _keys_opt("--root-key", True, "root private keys that sign targets (repeatable)")
ONLINE_KEY = click.option("--online-key", help="online private key: publish snapshot/timestamp now")


@keys.command("root-init", epilog="Example: edgefleet keys root-init --repo repo --root-key k1.key --root-key k2.key "
              "--threshold 2 --online-key online.pub")
@click.option("--repo", required=True, help="repository directory (metadata/ and targets/)")
@_keys_opt("--root-key", True, "an offline root key (repeatable); a .key file also signs, a .pub file is only listed")
@click.option("--threshold", type=int, required=True, help="root (and targets) signatures required")
@click.option("--online-key", required=True,
              help="the coordinator's online key (.pub; a .key also signs the first snapshot/timestamp)")
@_expiry("expires", "targets-expires", "snapshot-expires", "timestamp-expires")
def keys_root_init(**params: Any) -> int:
    """Create a TUF repository: root v1 with a threshold of offline keys."""
    return cmd_keys_root_init(SimpleNamespace(**params))


@keys.command("rotate-root", epilog="Example: edgefleet keys rotate-root --repo repo --old-key k1.key --old-key k2.key "
              "--root-key k3.key --threshold 1")
@click.option("--repo", required=True, help="repository directory")
@_keys_opt("--old-key", False, "a current root private key (repeatable)")
@_keys_opt("--root-key", True, "a root key of the new version (repeatable; .key signs, .pub is only listed)")
@click.option("--threshold", type=int, required=True, help="root signatures required")
@click.option("--online-key", help="replace the online key (.pub, or .key to publish right away)")
@_expiry("expires", "targets-expires", "snapshot-expires", "timestamp-expires")
def keys_rotate_root(**params: Any) -> int:
    """Write the next root version, signed by the old and the new root keys."""
    return cmd_keys_rotate_root(SimpleNamespace(**params))


@keys.command("delegate", epilog="Example: edgefleet keys delegate --repo repo --model digits --key digits.pub "
              "--root-key k1.key --root-key k2.key")
@click.option("--repo", required=True, help="repository directory")
@click.option("--model", required=True, help="the model NAME (paths NAME/*)")
@_keys_opt("--key", True, "model signing key (.pub; repeatable)")
@click.option("--threshold", type=int, help="signatures of the model's keys required (default 1)")
@ROOT_KEYS
@ONLINE_KEY
@_expiry("targets-expires", "snapshot-expires", "timestamp-expires")
def keys_delegate(**params: Any) -> int:
    """Let a model key sign model NAME (paths NAME/*, terminating)."""
    return cmd_keys_delegate(SimpleNamespace(**params))


@keys.command("revoke", epilog="Example: edgefleet keys revoke --repo repo --model digits --key digits.pub "
              "--root-key k1.key --root-key k2.key")
@click.option("--repo", required=True, help="repository directory")
@click.option("--model", help="the model whose key to revoke (or --rollback)")
@click.option("--rollback", is_flag=True, help="revoke a key of the rollback role (rollback orders)")
@_keys_opt("--key", True, "the key to revoke (.pub; repeatable)")
@ROOT_KEYS
@ONLINE_KEY
@_expiry("targets-expires", "snapshot-expires", "timestamp-expires")
def keys_revoke(**params: Any) -> int:
    """Remove a key from model NAME (or the rollback role) and record it as revoked."""
    if bool(params["model"]) == bool(params["rollback"]):
        raise click.UsageError("give one of --model NAME or --rollback")
    return cmd_keys_revoke(SimpleNamespace(**params))


@click.group(epilog="Example: edgefleet repo add digits.efb --repo repo --key digits.key --online-key online.key")
def repo() -> None:
    """Publish bundles in a TUF repository (edgefleet keys root-init creates one)."""


@repo.command("add", epilog="Example: edgefleet repo add digits.efb --repo repo --key digits.key --online-key online.key")
@click.argument("bundle")
@click.option("--repo", required=True, help="repository directory")
@_keys_opt("--key", True, "the model's private key (repeatable for a threshold)")
@click.option("--delta", help="also add this delta file (applies to --delta-base) as a target")
@click.option("--delta-base", metavar="VERSION", help="the published version the delta applies to")
@click.option("--online-key", help="online private key: update snapshot and timestamp now")
@click.option("--origin-url", metavar="URL", help="the coordinator's --origin-url: the signed target carries "
              "URL/<sha256>, where devices download it over HTTP(S)")
@_expiry("expires", "snapshot-expires", "timestamp-expires")
def repo_add(**params: Any) -> int:
    """Add a bundle archive (.efb) as target NAME/VERSION.efb, signed by the model key."""
    return cmd_repo_add(SimpleNamespace(**params))


@repo.command("delegate-rollback", epilog="Example: edgefleet repo delegate-rollback rollback.pub --repo repo "
              "--root-key k1.key --root-key k2.key")
@click.argument("key", nargs=-1, required=True, callback=lambda c, p, v: _many(v))
@click.option("--repo", required=True, help="repository directory")
@click.option("--threshold", type=int, help="signatures of the rollback keys an order needs (default 1)")
@ROOT_KEYS
@ONLINE_KEY
@_expiry("targets-expires", "snapshot-expires", "timestamp-expires")
def repo_delegate_rollback(**params: Any) -> int:
    """Delegate the rollback role to KEY... (.pub: the coordinator's --signing-key); it signs rollback orders
    only, never a bundle."""
    return cmd_repo_delegate_rollback(SimpleNamespace(**params))


@repo.command("publish", epilog="Example: edgefleet repo publish --repo repo --online-key online.key")
@click.option("--repo", required=True, help="repository directory")
@click.option("--online-key", required=True, help="the online private key")
@_expiry("snapshot-expires", "timestamp-expires")
def repo_publish(**params: Any) -> int:
    """Sign a fresh timestamp (and snapshot if needed); run it periodically."""
    return cmd_repo_publish(SimpleNamespace(**params))


def _expiries(args: Any) -> dict[str, Any]:
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


def cmd_keys_root_init(args: Any) -> int:
    from .trust import init_repository, load_key_arg

    exp = _expiries(args)
    return _report(init_repository(
        args.repo, [load_key_arg(k) for k in args.root_key], args.threshold, load_key_arg(args.online_key),
        exp["expires"], exp["targets_expires"], exp["snapshot_expires"], exp["timestamp_expires"],
    ))


def cmd_keys_rotate_root(args: Any) -> int:
    from .trust import load_key_arg, rotate_root

    exp = _expiries(args)
    return _report(rotate_root(
        args.repo, [load_key_arg(k) for k in args.old_key], [load_key_arg(k) for k in args.root_key], args.threshold,
        load_key_arg(args.online_key) if args.online_key else None,
        exp["expires"], exp["targets_expires"], exp["snapshot_expires"], exp["timestamp_expires"],
    ))


def cmd_keys_delegate(args: Any) -> int:
    from .trust import delegate, load_key_arg

    exp = _expiries(args)
    return _report(delegate(
        args.repo, args.model, [load_key_arg(k) for k in args.key], [load_key_arg(k) for k in args.root_key],
        args.threshold, load_key_arg(args.online_key) if args.online_key else None,
        exp["targets_expires"], exp["snapshot_expires"], exp["timestamp_expires"],
    ))


def cmd_keys_revoke(args: Any) -> int:
    from .trust import ROLLBACK_ROLE, load_key_arg, revoke

    exp = _expiries(args)
    return _report(revoke(
        args.repo, ROLLBACK_ROLE if args.rollback else args.model, [load_key_arg(k) for k in args.key], [load_key_arg(k) for k in args.root_key],
        load_key_arg(args.online_key) if args.online_key else None,
        exp["targets_expires"], exp["snapshot_expires"], exp["timestamp_expires"],
    ))


def cmd_repo_add(args: Any) -> int:
    from .trust import add_bundle, load_key_arg

    exp = _expiries(args)
    return _report(add_bundle(
        args.repo, args.bundle, [load_key_arg(k) for k in args.key],
        load_key_arg(args.online_key) if args.online_key else None,
        args.delta, args.delta_base, exp["expires"], exp["snapshot_expires"], exp["timestamp_expires"],
        origin_url=getattr(args, "origin_url", None),
    ))


def cmd_repo_delegate_rollback(args: Any) -> int:
    from .trust import delegate_rollback, load_key_arg

    exp = _expiries(args)
    return _report(delegate_rollback(
        args.repo, [load_key_arg(k) for k in args.key], [load_key_arg(k) for k in args.root_key], args.threshold,
        load_key_arg(args.online_key) if args.online_key else None,
        exp["targets_expires"], exp["snapshot_expires"], exp["timestamp_expires"],
    ))


def cmd_repo_publish(args: Any) -> int:
    from .trust import load_key_arg, publish

    exp = _expiries(args)
    return _report(publish(args.repo, load_key_arg(args.online_key), exp["snapshot_expires"], exp["timestamp_expires"]))
