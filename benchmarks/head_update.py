"""Head-only updates of the compiler's example CNN; write benchmarks/results/head_update.json.

Targets (issue 17), on the example digits CNN (``edgefleet examples train-digits``) compiled with
``--trainable-head 1 --prune 0.8 --quantize int8`` (the backbone pruned and int8, the last Dense kept
as float32 weights):

* a head-only update (``edgefleet pack --base v1 --head NEW.npz --head-update FILE``: the manifest as
  a patch of v1's, its signature, the head file) is at most 5% of the full v2 bundle (``.efb``);
* v2 keeps v1's pruned int8 backbone: the same model file, byte for byte (sparsity and int8 as v1's);
* the head-only update is no larger than a bsdiff4 delta of the two ``.efb`` archives (what the
  coordinator ships when no head update applies): its head file travels raw (format 1) or encoded
  against v1's head file (format 2, ``xor-lzma``: XOR with v1's head, LZMA2), whichever is smaller
  (both sizes recorded; the update a device rebuilds v2 from here is that one).

Also recorded, without a target: what the update holds, part by part, and what it would be with the
whole manifest instead of the patch; that a device rebuilding v2 from v1 and the update gets the full
v2's files byte for byte (and how long it takes); predictions of the split bundle against the bundle
compiled from the same source without a split (float32 and pruned int8) and against the Keras model.

The new head is v1's fine-tuned in numpy on the backbone's features of the training digits (softmax
regression, as a device trains it), so every weight changes.

Run: ``TF_CPP_MIN_LOG_LEVEL=3 python -m benchmarks.head_update [--quick] [--out FILE]``.
``--quick`` trains fewer epochs (CI-sized) and writes ``head_update_quick.json``.
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

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 0.05


def finetune_head(head: Any, feats: np.ndarray, y: np.ndarray, epochs: int, lr: float = 0.05, seed: int = 0) -> Any:
    """v1's one-Dense softmax head fine-tuned by minibatch SGD on cross-entropy (numpy, float32)."""
    (layer,) = head.layers
    k, b = (np.array(head.weights[f"{layer.name}.{p}"]) for p in ("kernel", "bias"))
    rng = np.random.default_rng(seed)
    onehot = np.eye(k.shape[1], dtype=np.float32)[y]
    for _ in range(epochs):
        order = rng.permutation(len(feats))
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            z = feats[idx] @ k + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            g = (p - onehot[idx]) / len(idx)
            k -= lr * (feats[idx].T @ g)
            b -= lr * g.sum(0)
    return head.with_weights({f"{layer.name}.kernel": k, f"{layer.name}.bias": b})


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {"top1_agreement": round(float(np.mean(a.argmax(1) == b.argmax(1))) * 100, 3),
            "max_abs_diff": float(np.max(np.abs(a - b))), "mean_abs_diff": float(np.mean(np.abs(a - b)))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs (CI-sized)")
    ap.add_argument("--out", help="JSON file (default benchmarks/results/head_update[_quick].json)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(HERE / "results" / f"head_update{'_quick' if args.quick else ''}.json")
    epochs = {"train": 4, "prune": 1, "head": 2} if args.quick else {"train": 12, "prune": 4, "head": 5}

    import edgefleet
    from edgefleet.bundle import open_bundle, verify_bundle_dir
    from edgefleet.cloud_sync.wire.transfer import make_delta
    from edgefleet.compiler import compile_model
    from edgefleet.compiler.config import CompileConfig, DataConfig, HeadConfig, OutputConfig, PruneConfig, QuantMode
    from edgefleet.compiler.examples import train_digits, write_digits
    from edgefleet.headupdate import HeadUpdate, head_update_of, plan_rebuild, rebuild_bundle, update_head
    from edgefleet.keys import generate_keypair, load_private_key

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-head-"))
    train, test = write_digits(work / "data")
    info = train_digits(work / "digits.keras", epochs=epochs["train"])
    priv, pub = generate_keypair(work / "keys")
    with np.load(train) as tr, np.load(test) as te:
        xtr, ytr, xte, yte = tr["x"], tr["y"], te["x"], te["y"]

    base = CompileConfig(
        data=DataConfig(train=str(train), calibration=str(train), eval=str(test)),
        output=OutputConfig(latency_runs=50, report=False, key=str(priv), name="digits", version="1.0.0", archive=True),
    )
    sparse_int8 = replace(base, quantize=QuantMode.INT8, prune=PruneConfig(sparsity=0.8, epochs=epochs["prune"]))
    compiled: dict[str, Any] = {}
    for label, cfg in (("split_int8", replace(sparse_int8, head=HeadConfig(layers=1))), ("unsplit_int8", sparse_int8),
                       ("split_fp32", replace(base, head=HeadConfig(layers=1))), ("unsplit_fp32", base)):
        t = time.perf_counter()
        res = compile_model(work / "digits.keras", work / label, cfg)
        compiled[label] = {"path": res.bundle_path, "variant": res.chosen.name, "compile_s": round(time.perf_counter() - t, 1),
                           "accuracy": round(res.chosen.score.value, 3) if res.chosen.score else None,
                           "sparsity": round(res.chosen.sparsity, 4)}
        print(f"  {label:13s} {res.chosen.name:12s} acc {compiled[label]['accuracy']} ({compiled[label]['compile_s']} s)",
              file=sys.stderr)

    import keras

    source = keras.models.load_model(work / "digits.keras", compile=False)
    keras_out = np.asarray(source.predict(xte[..., None] / 16.0, verbose=0))
    preds = {}
    for label, c in compiled.items():
        with edgefleet.load(c["path"], trusted_keys=pub) as m:
            preds[label] = m.predict(xte)
    v1_path = compiled["split_int8"]["path"]
    with edgefleet.load(v1_path, trusted_keys=pub) as m1:
        assert m1.head is not None
        head_v1 = m1.head
        feats_tr = m1.features(xtr)
        v1_manifest = m1.manifest
    new_head = finetune_head(head_v1, feats_tr, ytr, epochs["head"])
    np.savez(work / "new_head.npz", **new_head.weights)

    t = time.perf_counter()
    v2, v2_efb = update_head(Path(str(v1_path) + ".efb"), work / "new_head.npz", work / "v2", version="2.0.0",
                             private_key=load_private_key(priv), trusted_keys=pub, archive=True)
    update_s = time.perf_counter() - t
    assert v2_efb is not None
    installed = verify_bundle_dir(v1_path, pub)
    update = head_update_of(v2, installed)  # the smaller of the raw and the encoded head
    payload = update.to_bytes()
    raw_update, encoded_update = (head_update_of(v2, installed, enc) for enc in ("raw", "xor-lzma"))
    archives_delta = make_delta((Path(str(v1_path) + ".efb")).read_bytes(), v2_efb.read_bytes(), max_ratio=float("inf"))
    assert archives_delta is not None
    (work / "v2.efh").write_bytes(payload)
    t = time.perf_counter()
    rebuilt = rebuild_bundle(installed, HeadUpdate.from_bytes(payload), work / "rebuilt", pub)
    rebuild_s = time.perf_counter() - t
    same_files = sorted(p.name for p in rebuilt.path.iterdir()) == sorted(p.name for p in v2.path.iterdir()) and all(
        (rebuilt.path / p.name).read_bytes() == p.read_bytes() for p in v2.path.iterdir())
    assert installed.manifest.head is not None
    plan = plan_rebuild(installed.manifest_bytes, update, pub,
                        installed_head=(v1_path / installed.manifest.head.file).read_bytes())
    full_v2 = v2_efb.stat().st_size
    m2 = v2.manifest
    backbone_same = (v1_path / v1_manifest.model_file).read_bytes() == (v2.path / m2.model_file).read_bytes()
    with edgefleet.load(v2_efb, trusted_keys=pub) as mv2:
        pred_v2 = mv2.predict(xte)
    b2, tmp = open_bundle(v2_efb, pub)
    assert b2.manifest_bytes == plan.manifest_bytes
    if tmp is not None:
        tmp.cleanup()

    def acc(p: np.ndarray) -> float:
        return round(float(np.mean(p.argmax(1) == yte)) * 100, 3)

    sizes = {
        "full_v2_efb_bytes": full_v2,
        "full_v2_files_bytes": sum(p.stat().st_size for p in v2.path.iterdir()),
        "model_file_bytes": m2.files[m2.model_file].size,
        "head_file_bytes": len(plan.head),
        "head_encoded_bytes": len(encoded_update.head),
        "manifest_bytes": len(plan.manifest_bytes),
        "manifest_patch_bytes": len(json.dumps(dict(update.manifest_patch), separators=(",", ":"))),
        "signature_bytes": len(update.signature or b""),
        "update_raw_head_bytes": raw_update.size,
        "update_encoded_head_bytes": encoded_update.size,
        "update_bytes": len(payload),
        "bsdiff4_of_archives_bytes": len(archives_delta),
    }
    sizes["update_with_whole_manifest_bytes"] = sizes["head_file_bytes"] + sizes["manifest_bytes"] + sizes["signature_bytes"]
    ratio = len(payload) / full_v2
    checks = [
        {"what": "head-only update / full v2 bundle (.efb)", "value": round(ratio, 4), "op": "<=", "limit": TARGET_RATIO},
        {"what": "v2's backbone is v1's pruned int8 model file, byte for byte", "value": backbone_same, "op": "==",
         "limit": True},
        {"what": "v2 backbone sparsity (v1's)", "value": m2.metrics.get("sparsity"), "op": "info", "limit": None},
        {"what": "rebuilt v2 (v1 + update) byte-identical to the full v2", "value": same_files, "op": "==", "limit": True},
        {"what": f"head-only update ({update.head_encoding} head) / bsdiff4 of the two .efb archives",
         "value": round(len(payload) / len(archives_delta), 4), "op": "<=", "limit": 1.0},
        {"what": "head-only update with the head file raw / bsdiff4 of the two .efb archives",
         "value": round(raw_update.size / len(archives_delta), 4), "op": "info", "limit": None},
        {"what": "head-only update with the whole manifest instead of the patch / full v2",
         "value": round(sizes["update_with_whole_manifest_bytes"] / full_v2, 4), "op": "info", "limit": None},
    ]
    for c in checks:
        c["met"] = None if c["op"] == "info" else (c["value"] <= c["limit"] if c["op"] == "<=" else c["value"] == c["limit"])
    from .schema import envelope

    doc = {
        **envelope("head_update", args.quick, ("tensorflow", "keras", "bsdiff4")),
        "epochs": epochs,
        "model": {"params": info["params"], "test_accuracy": round(info["test_accuracy"], 3), "head": "probs (Dense 256 -> 10)",
                  "head_params": new_head.n_params, "recipe": "--trainable-head 1 --prune 0.8 --quantize int8"},
        "sizes": sizes,
        "ratio": round(ratio, 4),
        "head_encoding": update.head_encoding,
        "backbone": {"identical": backbone_same, "sha256": m2.files[m2.model_file].sha256,
                     "quantization": m2.metrics.get("quantization"), "sparsity": m2.metrics.get("sparsity"),
                     "input_dtype": m2.inputs[0].dtype, "features_dtype": m2.outputs[0].dtype},
        "rebuild": {"byte_identical": same_files, "seconds": round(rebuild_s, 4), "update_head_seconds": round(update_s, 2)},
        "accuracy": {"keras_source": acc(keras_out), **{k: acc(v) for k, v in preds.items()}, "v2": acc(pred_v2)},
        "agreement": {
            "split_vs_unsplit_fp32": agreement(preds["split_fp32"], preds["unsplit_fp32"]),
            "split_vs_unsplit_int8": agreement(preds["split_int8"], preds["unsplit_int8"]),
            "split_fp32_vs_keras": agreement(preds["split_fp32"], keras_out),
            "split_int8_vs_keras": agreement(preds["split_int8"], keras_out),
        },
        "compiled": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in compiled.items()},
        "checks": checks,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    for c in checks:
        met = "-" if c["met"] is None else ("yes" if c["met"] else "NO")
        print(f"{c['what']:75s} {c['value']!s:>8}  {c['op']} {c['limit']}  {met}")
    print(f"\nwritten to {out}")
    return 0 if all(c["met"] is not False for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
