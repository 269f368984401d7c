"""Trainable heads (edgefleet.head): the layer specs, the head file, the numpy forward pass, and
bundles whose predict runs a backbone then a head (no TensorFlow: the backbones are the
session's ONNX/TFLite test models)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sdk_head_helpers import reference_forward, small_head

import edgefleet
from edgefleet.canonical import canonical_json
from edgefleet.errors import (
    BundleFormatError,
    BundleIntegrityError,
    ConfigError,
    InvalidInputError,
    UnsupportedFormatError,
)
from edgefleet.head import HEAD_FILE, Head, HeadLayer, param_key, read_npz
from edgefleet.manifest import Manifest
from edgefleet.pack import pack

HEAVY = ("tensorflow", "keras", "tf_keras", "flwr", "paho", "tf2onnx", "onnx", "torch", "sklearn")


def test_forward_matches_the_layers_maths() -> None:
    head = small_head()
    x = np.random.default_rng(1).normal(0, 1, (16, 10)).astype(np.float32)
    out = head.forward(x)
    assert out.dtype == np.float32 and out.shape == (16, 3)
    np.testing.assert_allclose(out, reference_forward(head, x), atol=1e-5)
    np.testing.assert_allclose(head.forward(x[0]), out[0], atol=1e-6)  # one unbatched sample
    with pytest.raises(InvalidInputError, match=r"shape \[10\]"):
        head.forward(np.zeros((2, 9), np.float32))


def test_pooling_flatten_and_activations() -> None:
    x = np.random.default_rng(2).normal(0, 2, (3, 4, 5, 6)).astype(np.float32)
    pool = Head([HeadLayer("global_avg_pool", "gap", (4, 5, 6), (6,))], {})
    np.testing.assert_allclose(pool.forward(x), x.mean(axis=(1, 2)), atol=1e-6)
    keep = Head([HeadLayer("global_max_pool", "gmp", (-1, -1, 6), (1, 1, 6))], {})  # dynamic spatial size
    np.testing.assert_array_equal(keep.forward(x), x.max(axis=(1, 2), keepdims=True))
    flat = Head([HeadLayer("flatten", "flat", (4, 5, 6), (120,))], {})
    np.testing.assert_array_equal(flat.forward(x), x.reshape(3, -1))
    v = np.linspace(-6, 6, 49, dtype=np.float32)
    expected = {
        "relu6": np.clip(v, 0, 6), "sigmoid": 1 / (1 + np.exp(-v.astype(np.float64))), "tanh": np.tanh(v),
        "hard_sigmoid": np.clip(v / 6 + 0.5, 0, 1), "softplus": np.log1p(np.exp(v.astype(np.float64))),
        "elu": np.where(v > 0, v, np.expm1(v)), "silu": v / (1 + np.exp(-v.astype(np.float64))),
        "leaky_relu": np.where(v >= 0, v, 0.2 * v), "softsign": v / (1 + np.abs(v)),
    }
    for name, want in expected.items():
        act = Head([HeadLayer("activation", "act", (49,), (49,), name)], {})
        np.testing.assert_allclose(act.forward(v), want, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        ({"kind": "conv2d"}, "kind 'conv2d'"),
        ({"activation": "gelu"}, "activation 'gelu'"),
        ({"params": {"kernel": [9, 8], "bias": [8]}}, "does not take inputs"),
        ({"params": {"bias": [8]}}, "weights"),
        ({"output_shape": [7]}, "output shape"),
        ({"name": "a/b"}, "layer name"),
        ({"input_shape": [0]}, "dimensions"),
        ({"extra": 1}, "unknown fields"),
    ],
)
def test_bad_layer_specs_are_format_errors(layer: dict[str, object], fragment: str) -> None:
    spec = small_head().layers[0].to_dict()
    spec.update(layer)
    with pytest.raises(BundleFormatError, match=fragment):
        HeadLayer.from_dict(spec, "layers[0]")


def test_specs_round_trip_through_canonical_json() -> None:
    head = small_head()
    for layer in head.layers:
        assert HeadLayer.from_dict(json.loads(canonical_json(layer.to_dict())), "x") == layer


def test_head_file_is_deterministic_and_read_back_exactly() -> None:
    head = small_head()
    data = head.to_npz()
    assert data == small_head().to_npz()  # same weights, same bytes
    back = Head.from_npz(data, head.layers)
    for key, arr in head.weights.items():
        np.testing.assert_array_equal(back.weights[key], arr)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # a plain .npz numpy reads
        assert sorted(npz.files) == sorted(head.weights)


def _npz(arrays: dict[str, object]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda w: w.pop("fc.bias"), "need exactly"),
        (lambda w: w.update({"extra": np.zeros(2, np.float32)}), "need exactly"),
        (lambda w: w.update({"fc.bias": np.zeros(7, np.float32)}), "shape"),
        (lambda w: w.update({"fc.bias": np.full(8, np.nan, np.float32)}), "NaN"),
        (lambda w: w.update({"fc.bias": np.arange(8)}), "float values"),
        (lambda w: w.update({"fc.bias": np.array([object()] * 8, dtype=object)}), "unreadable"),
    ],
)
def test_bad_head_files_are_refused(change: object, fragment: str) -> None:
    head = small_head()
    weights: dict[str, object] = dict(head.weights)
    change(weights)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=fragment):
        Head.from_npz(_npz(weights), head.layers, error=ConfigError)


def test_an_oversized_member_is_refused_before_it_is_read() -> None:
    head = small_head()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:  # 8 values declared, 64 MiB of zeros behind them
        for key in head.weights:
            arr = np.zeros(8 << 20, np.float64) if key == "fc.bias" else head.weights[key]
            member = io.BytesIO()
            np.lib.format.write_array(member, arr)
            zf.writestr(key + ".npy", member.getvalue())
    with pytest.raises(BundleFormatError, match="more than shape"):
        read_npz(buf.getvalue(), head.layers)
    with pytest.raises(BundleFormatError, match="not an .npz"):
        read_npz(b"not a zip", head.layers)


# -- bundles with a head ------------------------------------------------------------------------------------------
@pytest.fixture()
def head_bundle(tmp_path: Path, model_dir: Path) -> Path:
    bundle, _ = pack(model_dir / "digits.onnx", tmp_path / "h", name="digits", version="1", labels=["a", "b", "c"],
                     preprocessing=[{"op": "scale", "factor": 0.0625}], head=small_head())
    return bundle.path


def test_predict_runs_the_backbone_then_the_head(head_bundle: Path, model_dir: Path, tmp_path: Path,
                                                digits_data: tuple[np.ndarray, np.ndarray]) -> None:
    x = digits_data[0][:32]
    plain, _ = pack(model_dir / "digits.onnx", tmp_path / "plain", name="digits", version="1",
                    preprocessing=[{"op": "scale", "factor": 0.0625}])
    with edgefleet.load(plain.path) as p, edgefleet.load(head_bundle) as m:
        backbone = p.predict(x)
        assert m.head is not None and p.head is None
        np.testing.assert_allclose(m.features(x), backbone, atol=1e-6)
        np.testing.assert_allclose(m.predict(x), reference_forward(m.head, backbone.astype(np.float64)), atol=1e-5)
        np.testing.assert_allclose(m.predict(x[0]), m.predict(x)[0], atol=1e-6)
        assert [s.name for s in m.outputs] == ["probs"] and m.outputs[0].shape == (-1, 3)
        assert m.predict_labels(x[:2]) == [["a", "b", "c"][i] for i in m.predict(x[:2]).argmax(1)]
        assert m.run_smoke_tests().ok
        with pytest.raises(ConfigError, match="no trainable head"):
            p.features(x)


def test_a_session_on_a_head_bundle_returns_the_heads_output(head_bundle: Path,
                                                             digits_data: tuple[np.ndarray, np.ndarray]) -> None:
    x = digits_data[0][:4]
    with edgefleet.load(head_bundle) as m:
        sess = m.session()
        np.testing.assert_allclose(sess.predict(x), m.predict(x), atol=1e-7)
        np.testing.assert_allclose(sess.push(x[0]), m.predict(x[0]), atol=1e-7)


def test_a_quantized_backbone_feeds_the_head_real_values(tmp_path: Path, model_dir: Path,
                                                        digits_data: tuple[np.ndarray, np.ndarray]) -> None:
    x = digits_data[0][:16] / 16.0
    bundle, _ = pack(model_dir / "digits_int8.tflite", tmp_path / "q", name="q", version="1", head=small_head())
    with edgefleet.load(bundle.path) as m:
        feats = m.features(x)
        assert m.manifest.outputs[0].quantization is not None and feats.dtype == np.float32
        np.testing.assert_allclose(m.predict(x), m.head.forward(feats), atol=1e-6)  # type: ignore[union-attr]
        assert m.run_smoke_tests().ok and m.manifest.smoke_tests["atol"] > 1e-4  # type: ignore[index]


def test_the_head_is_a_listed_hashed_and_signed_entry(tmp_path: Path, model_dir: Path, keypair: tuple[Path, Path]) -> None:
    from edgefleet.keys import load_private_key

    bundle, _ = pack(model_dir / "digits.onnx", tmp_path / "s", name="digits", version="1", head=small_head(),
                     private_key=load_private_key(keypair[0]))
    raw = json.loads((bundle.path / "manifest.json").read_bytes())
    assert raw["format_version"] == 2
    assert raw["head"]["file"] == HEAD_FILE and raw["head"]["sha256"] == raw["files"][HEAD_FILE]["sha256"]
    assert raw["head"]["input"] == "probs" and [layer["kind"] for layer in raw["head"]["layers"]] == [
        "dense", "batch_norm", "dropout", "dense"]
    assert raw["head"]["layers"][0]["activation"] == "relu" and raw["head"]["layers"][0]["params"]["kernel"] == [10, 8]
    edgefleet.load(bundle.path, trusted_keys=keypair[1]).close()
    data = bytearray((bundle.path / HEAD_FILE).read_bytes())
    data[-20] ^= 1
    (bundle.path / HEAD_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="head.npz"):
        edgefleet.load(bundle.path, trusted_keys=keypair[1])


def test_manifest_head_checks(head_bundle: Path) -> None:
    raw = json.loads((head_bundle / "manifest.json").read_bytes())
    Manifest.from_dict(raw)
    for change, error, fragment in [
        (lambda d: d.update(format_version=1), BundleFormatError, "heads need 2"),
        (lambda d: d.update(format_version=3), UnsupportedFormatError, "upgrade edgefleet"),
        (lambda d: d["head"].update(sha256="0" * 64), BundleFormatError, "differs from files"),
        (lambda d: d["head"].update(input="logits"), BundleFormatError, "reads 'logits'"),
        (lambda d: d["head"].update(file="model.onnx"), BundleFormatError, "not listed"),
        (lambda d: d["head"]["layers"][0].update(input_shape=[11]), BundleFormatError, "does not take inputs"),
        (lambda d: d["outputs"][0].update(shape=[-1, 11]), BundleFormatError, "takes samples of shape"),
        (lambda d: d["head"]["output"].update(shape=[-1, 4]), BundleFormatError, "head.output"),
        (lambda d: d["head"]["layers"].append(d["head"]["layers"][0]), BundleFormatError, "several layers named"),
        (lambda d: d["head"]["layers"].append(dict(d["head"]["layers"][0], name="fc2")), BundleFormatError, "takes"),
    ]:
        bad = json.loads(json.dumps(raw))
        change(bad)
        with pytest.raises(error, match=fragment):
            Manifest.from_dict(bad)


def test_pack_refuses_a_head_that_does_not_fit(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(BundleFormatError, match="takes samples of shape"):
        pack(model_dir / "digits.onnx", tmp_path / "a", name="d", version="1", head=small_head(features=12))
    with pytest.raises(ConfigError, match="one output"):
        pack(model_dir / "two_inputs.onnx", tmp_path / "b", name="d", version="1", head=small_head(features=3))
    with pytest.raises(ConfigError, match="3 classes"):
        pack(model_dir / "digits.onnx", tmp_path / "c", name="d", version="1", head=small_head(), labels=list("abcdefghij"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def _modules_after(code: str) -> set[str]:
    script = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    return {m.split(".")[0] for m in json.loads(proc.stdout.strip().splitlines()[-1])}


def test_a_head_bundle_runs_without_frameworks(head_bundle: Path) -> None:
    loaded = _modules_after(
        "import numpy as np, edgefleet\n"
        f"m = edgefleet.load({str(head_bundle)!r})\n"
        "x = np.zeros((2, 64), np.float32)\n"
        "assert m.predict(x).shape == (2, 3) and m.features(x).shape == (2, 10)\n"
    )
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_param_keys_name_layer_and_weight() -> None:
    layer = small_head().layers[0]
    assert [param_key(layer, p) for p, _ in layer.params] == ["fc.kernel", "fc.bias"]
