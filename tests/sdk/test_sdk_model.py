"""Inference through edgefleet.load(): shapes, batching, int8 real I/O, bad input, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import edgefleet
from edgefleet.errors import InvalidInputError, RuntimeBackendError
from edgefleet.pack import pack

PRE = [{"op": "scale", "factor": 0.0625}]
LABELS = [f"digit-{i}" for i in range(10)]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    made = {}
    for key, fname in (("onnx", "digits.onnx"), ("float", "digits_float.tflite"), ("int8", "digits_int8.tflite")):
        bundle, _ = pack(model_dir / fname, out / key, name=f"digits-{key}", version="1", labels=LABELS, preprocessing=PRE)
        made[key] = bundle.path
    return made


@pytest.mark.parametrize("kind", ["onnx", "float", "int8"])
def test_accuracy_on_digits(bundles: dict[str, Path], digits_data: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    x, y = digits_data
    with edgefleet.load(bundles[kind]) as model:
        probs = model.predict(x)
        assert probs.shape == (len(x), 10) and probs.dtype == np.float32
        acc = float((probs.argmax(1) == y).mean())
        assert acc > 0.85, acc
        one = model.predict(x[0])
        assert one.shape == (10,)
        np.testing.assert_allclose(one, probs[0], atol=1e-5)
        assert model.predict_labels(x[:3]) == [LABELS[int(i)] for i in probs[:3].argmax(1)]


def test_int8_real_io_matches_float_and_raw_is_integer(bundles: dict[str, Path], digits_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = digits_data
    with edgefleet.load(bundles["float"]) as f, edgefleet.load(bundles["int8"]) as q:
        pf, pq = f.predict(x[:200]), q.predict(x[:200])
        assert np.abs(pf - pq).max() < 0.1
        assert (pf.argmax(1) == pq.argmax(1)).mean() > 0.95
        spec = q.inputs[0]
        assert spec.dtype == "int8" and spec.quantization is not None
        xq = np.clip(np.round(x[:5] / 16 / spec.quantization.scale) + spec.quantization.zero_point, -128, 127).astype(np.int8)
        raw = q.predict(xq, raw=True, preprocess=False)
        assert raw.dtype == np.int8
        with pytest.raises(InvalidInputError, match="raw mode"):
            q.predict(x[:5] / 16, raw=True, preprocess=False)


@pytest.mark.parametrize("kind", ["onnx", "float", "int8"])
def test_bad_input_is_named_and_model_keeps_serving(bundles: dict[str, Path], kind: str) -> None:
    with edgefleet.load(bundles[kind]) as model:
        with pytest.raises(InvalidInputError, match=r"input '[^']+': expected shape \(N, 64\), got \(3, 63\)"):
            model.predict(np.zeros((3, 63), np.float32))
        with pytest.raises(InvalidInputError, match="got"):
            model.predict(np.zeros((2, 2, 64), np.float32))
        bad = np.zeros((4, 64), np.float32)
        bad[2, 5] = np.nan
        with pytest.raises(InvalidInputError, match=r"NaN at index \(2, 5\)"):
            model.predict(bad)
        bad[2, 5] = np.inf
        with pytest.raises(InvalidInputError, match="inf"):
            model.predict(bad)
        with pytest.raises(InvalidInputError, match="numbers"):
            model.predict(np.array([["a"] * 64]))
        with pytest.raises(InvalidInputError, match="named"):
            model.predict({"nope": np.zeros(64)})
        assert model.predict(np.zeros(64)).shape == (10,)


def test_multi_input_dict_and_outputs(tmp_path: Path, model_dir: Path) -> None:
    bundle, _ = pack(model_dir / "two_inputs.onnx", tmp_path / "t", name="two", version="1")
    with edgefleet.load(bundle.path) as model:
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        out = model.predict({"a": a, "b": a})
        assert set(out) == {"sum", "prod"}
        np.testing.assert_allclose(out["sum"], 2 * a)
        single = model.predict({"a": a[0], "b": a[1]})
        np.testing.assert_allclose(single["prod"], a[0] * a[1])
        with pytest.raises(InvalidInputError, match="dict"):
            model.predict(a)
        with pytest.raises(InvalidInputError, match="batch sizes"):
            model.predict({"a": a, "b": a[:1]})


def test_backend_override(bundles: dict[str, Path]) -> None:
    with edgefleet.load(bundles["onnx"], backend="onnxruntime", threads=1) as m:
        assert m.backend_name == "onnxruntime"
    with pytest.raises(RuntimeBackendError, match="cannot run a onnx model"):
        edgefleet.load(bundles["onnx"], backend="litert")
    with pytest.raises(RuntimeBackendError, match="unknown backend"):
        edgefleet.load(bundles["onnx"], backend="tensorrt")


def test_bare_model_files_load(model_dir: Path, keypair: tuple[Path, Path]) -> None:
    with edgefleet.load(model_dir / "digits_float.tflite") as m:
        assert m.predict(np.zeros((2, 64), np.float32)).shape == (2, 10)
    with pytest.raises(edgefleet.SignatureError):
        edgefleet.load(model_dir / "digits.onnx", trusted_keys=[keypair[1]])


def test_corrupt_model_is_backend_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 4 + b"TFL3" + b"\x01" * 100)
    with pytest.raises(RuntimeBackendError, match="LiteRT cannot load"):
        edgefleet.load(bad)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(RuntimeBackendError, match="ONNX Runtime cannot load"):
        edgefleet.load(bad)
    other = tmp_path / "model.pt"
    other.write_bytes(b"PK\x03\x04 not a model we run")
    with pytest.raises(edgefleet.UnsupportedFormatError, match="unknown model type"):
        pack(other, tmp_path / "o", name="x", version="1")
    with pytest.raises(edgefleet.BundleFormatError, match="neither a bundle"):
        edgefleet.load(other)


def test_smoke_tests_pass_and_detect_wrong_expectations(bundles: dict[str, Path]) -> None:
    for kind in bundles:
        with edgefleet.load(bundles[kind]) as m:
            res = m.run_smoke_tests()
            assert res.ok, (kind, res)


@pytest.mark.parametrize("kind", ["float", "onnx"])
def test_thread_safety(bundles: dict[str, Path], digits_data: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    x, _ = digits_data
    with edgefleet.load(bundles[kind]) as model:
        expected = model.predict(x[:64])
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(150):
                    n = int(rng.integers(1, 5))
                    i = int(rng.integers(0, 60))
                    got = model.predict(x[i : i + n])
                    np.testing.assert_allclose(got, expected[i : i + n], atol=1e-5)
            except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]


def _window_model(path: Path) -> Path:
    """ONNX: (N, 4, 2) windows -> per-window mean over time (N, 2)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["w"], ["mean"], axes=[1], keepdims=0)],
        "window_mean",
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["N", 4, 2])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_streaming_windows_carry_state_between_calls(tmp_path: Path) -> None:
    model_path = _window_model(tmp_path / "w.onnx")
    pre = {"input_shape": [2], "steps": [{"op": "window", "size": 4, "hop": 2}]}
    bundle, _ = pack(model_path, tmp_path / "b", name="w", version="1", preprocessing=pre)
    signal = np.arange(40, dtype=np.float32).reshape(20, 2)
    with edgefleet.load(bundle.path) as model:
        whole = model.predict(signal)  # stateless: the whole stream at once
        assert whole.shape == (9, 2)
        stream = model.stream()
        parts = [stream.push(signal[i : i + 3]) for i in range(0, 20, 3)]
        got = np.concatenate([p for p in parts if p is not None])
        np.testing.assert_allclose(got, whole)
        np.testing.assert_allclose(whole[0], signal[:4].mean(0))


def test_impute_lets_missing_values_through(tmp_path: Path, model_dir: Path, digits_data: tuple[np.ndarray, np.ndarray]) -> None:
    from edgefleet.stats import compute_reference_stats

    x, y = digits_data
    ref = compute_reference_stats(x)
    pre = [{"op": "impute", "strategy": "mean"}, {"op": "scale", "factor": 0.0625}]
    bundle, _ = pack(model_dir / "digits.onnx", tmp_path / "b", name="d", version="1", preprocessing=pre, reference_stats=ref)
    holes = x[:50].copy()
    holes[:, 20:24] = np.nan
    with edgefleet.load(bundle.path) as model:
        acc = (model.predict(holes).argmax(1) == y[:50]).mean()
        assert acc > 0.7
        holes[0, 0] = np.inf
        with pytest.raises(InvalidInputError):
            model.predict(holes)
