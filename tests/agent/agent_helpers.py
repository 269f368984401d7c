"""Helpers shared by the agent tests and their subprocess workers (no pytest imports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def make_onnx(path: Path, seed: int, n_in: int = 4, n_out: int = 3) -> Path:
    """A tiny dense layer y = x @ W + b as an ONNX file (onnx.helper: no TensorFlow)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_in, n_out)).astype(np.float32)
    b = rng.normal(size=(n_out,)).astype(np.float32)
    return dense_onnx(path, w, b)


def dense_onnx(path: Path, w: np.ndarray, b: np.ndarray) -> Path:
    """The dense layer y = x @ w + b as an ONNX file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_in, n_out = w.shape
    w, b = np.asarray(w, np.float32), np.asarray(b, np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def reference_stats(seed: int = 0) -> dict[str, Any]:
    from edgefleet.stats import compute_reference_stats

    return compute_reference_stats(np.random.default_rng(seed).normal(size=(500, 4)))


def build_bundle(
    root: Path,
    version: str,
    private_key: Any = None,
    seed: int = 1,
    hardware_tags: tuple[str, ...] = ("test-board",),
    archive: bool = False,
    name: str = "dense",
    with_reference: bool = True,
) -> Path:
    from edgefleet.pack import pack

    root.mkdir(parents=True, exist_ok=True)
    src = make_onnx(root / f"src-{name}-{version}-{seed}.onnx", seed)
    out = root / f"{name}-v{version}-s{seed}{'-' + '-'.join(hardware_tags) if hardware_tags else ''}"
    bundle, arch = pack(
        src, out, name=name, version=version, private_key=private_key, hardware_tags=hardware_tags,
        archive=archive, reference_stats=reference_stats() if with_reference else None, overwrite=True,
    )
    return arch if archive and arch is not None else bundle.path


def build_variant(root: Path, version: str, private_key: Any = None, *, seed: int = 1, noise: float = 0.0,
                  noise_seed: int = 0, permutation: Any = None, name: str = "dense",
                  hardware_tags: tuple[str, ...] = ("test-board",), archive: bool = False) -> Path:
    """A bundle of the dense model of ``seed`` (as :func:`build_bundle` makes it), its weights moved by Gaussian
    ``noise`` (a fine-tuned version: it agrees with the original on most inputs) and/or its output classes
    reordered by ``permutation`` (a broken version: it runs fine and predicts the wrong classes)."""
    from edgefleet.pack import pack

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 3))
    b = rng.normal(size=(3,))
    if noise:
        move = np.random.default_rng(noise_seed)
        w = w + noise * move.normal(size=w.shape)
        b = b + noise * move.normal(size=b.shape)
    if permutation is not None:
        w, b = w[:, list(permutation)], b[list(permutation)]
    tag = f"n{noise:g}-{noise_seed}" + ("-p" + "".join(map(str, permutation)) if permutation is not None else "")
    src = dense_onnx(root / f"src-{name}-{version}-{seed}-{tag}.onnx", w, b)
    out = root / f"{name}-v{version}-s{seed}-{tag}"
    bundle, arch = pack(src, out, name=name, version=version, private_key=private_key, hardware_tags=hardware_tags,
                        archive=archive, reference_stats=reference_stats(), overwrite=True)
    return arch if archive and arch is not None else bundle.path


def copy_bundle(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


def rewrite_manifest(bundle_dir: Path, change: Any, private_key: Any = None) -> None:
    """Edit a bundle's manifest dict with ``change(d)``; re-sign with ``private_key`` if given."""
    import json

    from edgefleet.keys import sign_payload
    from edgefleet.manifest import Manifest

    d = json.loads((bundle_dir / "manifest.json").read_text())
    change(d)
    raw = Manifest.from_dict(d).to_bytes()
    (bundle_dir / "manifest.json").write_bytes(raw)
    if private_key is not None:
        doc = sign_payload(private_key, raw)
        (bundle_dir / "signature").write_text(json.dumps(doc, sort_keys=True) + "\n")
