"""Build the models the compiler's multi-input and quantization tests use.

ONNX models are written by hand with ``onnx.helper`` (importable, no TensorFlow);
Keras models are built when this file runs as a script
(``python tests/compiler/make_compiler_models.py OUTDIR``) so that the pytest
process imports TensorFlow only when a test compiles a Keras source.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

SEED = 7


def _bn_params(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)]


def conv_bn_onnx(out: Path, channels: tuple[int, ...] = (16, 32, 64), hw: int = 24) -> Path:
    """A small conv net written the way paddle2onnx writes one (PP-OCR's direction classifier, the model issue 11
    measured): Conv -> BatchNormalization -> Relu blocks whose weights are ``Constant`` nodes, not initializers,
    and a flatten computed from the tensor's shape (Shape -> Slice -> Concat(axis=-1) -> Reshape), which ONNX
    Runtime's symbolic shape inference cannot follow. Input ``image`` (N, 3, hw, hw) -> ``probs`` (N, 10)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    nodes, inits = [], []
    prev, cin = "image", 3
    for i, cout in enumerate(channels):
        w = (rng.normal(0, 1, (cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"conv{i}.w"))
        nodes.append(helper.make_node("Conv", [prev, f"conv{i}.w"], [f"conv{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        names = [f"bn{i}.{k}" for k in ("scale", "bias", "mean", "var")]
        inits += [numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip(_bn_params(rng, cout), names)]
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}", *names], [f"bn{i}"], name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"], name=f"relu{i}"))
        nodes.append(helper.make_node("MaxPool", [f"relu{i}"], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2], name=f"pool{i}"))
        prev, cin = f"pool{i}", cout
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"))
    # flatten to (N, C) from the runtime shape, as exporters do: concat([shape[:1], [-1]], axis=-1)
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for v, n in
              (([0], "s.start"), ([1], "s.end"), ([0], "s.axes"), ([-1], "minus_one"))]
    nodes += [
        helper.make_node("Shape", ["gap"], ["gap.shape"], name="shape"),
        helper.make_node("Slice", ["gap.shape", "s.start", "s.end", "s.axes"], ["batch"], name="slice"),
        helper.make_node("Concat", ["batch", "minus_one"], ["flat.shape"], axis=-1, name="concat"),
        helper.make_node("Reshape", ["gap", "flat.shape"], ["flat"], name="flatten"),
    ]
    inits.append(numpy_helper.from_array((rng.normal(0, 1, (10, cin)) / np.sqrt(cin)).astype(np.float32), "fc.w"))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc.b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1, name="fc"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"))
    consts = [helper.make_node("Constant", [], [t.name], value=t, name=f"const.{t.name}") for t in inits]
    graph = helper.make_graph(
        consts + nodes, "conv_bn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, hw, hw])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = out / "conv_bn.onnx"
    onnx.save(model, str(path))
    x = rng.random((48, 3, hw, hw), dtype=np.float32)
    np.savez(out / "conv_bn_data.npz", x=x)
    return path


def tiny_dense_onnx(out: Path) -> Path:
    """``x`` (N, 8) -> ``y`` (N, 4) through one 8x4 MatMul + Add: 36 weights, so int8's quantize/dequantize
    nodes and scales outweigh what int8 saves -- the int8 file is larger than the float32 one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"), helper.make_node("Add", ["h", "B"], ["y"], name="add")],
        "tiny_dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(rng.normal(0, 1, (8, 4)).astype(np.float32), "W"),
         numpy_helper.from_array(rng.normal(0, 1, 4).astype(np.float32), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = out / "tiny_dense.onnx"
    onnx.save(model, str(path))
    np.savez(out / "tiny_dense_data.npz", x=rng.normal(0, 1, (64, 8)).astype(np.float32))
    return path


def _two_input_data(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    a = rng.normal(0, 1, (n, 6)).astype(np.float32)
    b = rng.normal(0, 1, (n, 4, 4, 1)).astype(np.float32)
    # a rule both inputs take part in: class = which of three sums is largest
    sums = np.stack([a[:, :3].sum(1), a[:, 3:].sum(1), b.reshape(n, -1).mean(1) * 4], axis=1)
    return {"a": a, "b": b, "target": sums.argmax(1).astype(np.int64)}


def two_input_onnx(out: Path) -> Path:
    """``a`` (N, 6) and ``b`` (N, 16) -> ``probs`` (N, 3) and ``score`` (N, 1): two inputs, two outputs.
    Writes ``two_input_onnx.npz`` with arrays ``a``, ``b`` and labels ``target``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    d = _two_input_data(rng, 96)
    d["b"] = d["b"].reshape(len(d["b"]), 16)
    # weights that compute the rule (plus noise), so the labels mean something
    wa = np.zeros((6, 3), np.float32)
    wa[:3, 0] = wa[3:, 1] = 1.0
    wb = np.zeros((16, 3), np.float32)
    wb[:, 2] = 0.25
    wa += rng.normal(0, 0.05, wa.shape).astype(np.float32)
    inits = [numpy_helper.from_array(v, k) for k, v in (("Wa", wa), ("Wb", wb),
                                                        ("Ws", rng.normal(0, 1, (3, 1)).astype(np.float32)))]
    nodes = [
        helper.make_node("MatMul", ["a", "Wa"], ["ha"], name="mm_a"),
        helper.make_node("MatMul", ["b", "Wb"], ["hb"], name="mm_b"),
        helper.make_node("Add", ["ha", "hb"], ["logits"], name="add"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["logits", "Ws"], ["score"], name="mm_s"),
    ]
    graph = helper.make_graph(
        nodes, "two_input",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 6]), helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3]), helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = out / "two_input.onnx"
    onnx.save(model, str(path))
    np.savez(out / "two_input_onnx.npz", **d)
    return path


def two_input_keras(out: Path) -> Path:
    """Keras: ``a`` (6,) and ``b`` (4, 4, 1) -> outputs ``probs`` (3,) and ``value`` (1,), briefly trained on
    the rule of ``_two_input_data``. Writes ``two_input_keras.npz`` (``a``, ``b``, labels ``target``)."""
    import keras

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    d = _two_input_data(rng, 600)
    a = keras.Input((6,), name="a")
    b = keras.Input((4, 4, 1), name="b")
    hb = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(b))
    h = keras.layers.Concatenate()([keras.layers.Dense(16, activation="relu")(a), hb])
    model = keras.Model({"a": a, "b": b}, {"probs": keras.layers.Dense(3, activation="softmax", name="probs")(h),
                                           "value": keras.layers.Dense(1, name="value")(h)})
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss={"probs": "sparse_categorical_crossentropy", "value": "mse"})
    x = {"a": d["a"], "b": d["b"]}
    model.fit(x, {"probs": d["target"], "value": d["a"].sum(1, keepdims=True)}, epochs=8, batch_size=32, verbose=0)
    path = out / "two_input.keras"
    model.save(path)
    np.savez(out / "two_input_keras.npz", **{k: v[:200] for k, v in d.items()})
    return path


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    conv_bn_onnx(out)
    tiny_dense_onnx(out)
    two_input_onnx(out)
    two_input_keras(out)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main(Path(sys.argv[1]))
