"""Build the small real models the signature and session tests run.

Run as a script in its own process (``python tests/sdk/make_signature_models.py OUTDIR``) so
the test process never imports TensorFlow. Every model is checked here against its raw
runtime (LiteRT / ONNX Runtime) before it is written; the expected values the tests need
(Keras's own stateful GRU loop, the float reference for int8) are saved next to them.

Models (file: inputs -> outputs):

- ``multi_in.tflite``: Keras functional, image (N,8,8,1) + vec (N,4) -> (N,3); the
  converter's own tensor names (``serving_default_image:0`` ...).
- ``bcast.tflite``: a (3,4) + b (4,) -> out = 2a + b (3,4); fixed shapes, no shared batch.
- ``bcast.onnx``: a (N,4) + b (4,) -> out (N,4) = a + b; only ``a`` has a batch axis.
- ``two_named.onnx``: a (N,3), b (M,2) -> a2 = 2a (N,3), b1 = b + 1 (M,2); the axis-0 dims are
  named differently, so there is no shared batch axis.
- ``scalar_gain.tflite``: x (N,16), gain () -> y = x * gain.
- ``scalar_only.tflite``: n () -> powers (3,) = [n, n^2, n^3].
- ``const.onnx``: no inputs -> c (2,3) constant.
- ``dyn_hw.tflite``: image (1,H,W,3) -> features (1,4): 3x3 conv then global mean.
- ``dyn_hw.onnx``: image (N,3,H,W) with named dims -> mean (N,3) = w * mean over H,W.
- ``two_float.tflite`` / ``two_int8.tflite``: a (N,8), b (N,4) -> scores (N,3); the int8 one
  fully quantized (int8 inputs and outputs). ``two_ref.npz`` holds sample inputs.
- ``rv_acc.tflite``: x (1,4) -> acc (1,4); a resource variable (initial [1,2,3,4]) adds x on
  every invoke and the call returns the new value.
- ``gru.tflite`` / ``gru.onnx``: x (N,5,3), h0 (N,8) -> y (N,5,2), hn (N,8); a GRU trained a
  few epochs on synthetic sequences. ``gru_ref.npz``: ``chunks`` (K,B,5,3) and Keras's
  ``stateful=True`` GRU (same weights, batch B) outputs ``y`` (K,B,5,2) and states ``h``
  (K,B,8) after each chunk.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

T, F, UNITS, K, B = 5, 3, 8, 4, 2


# -- helpers -------------------------------------------------------------------
def _interp(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def tflite_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Raw LiteRT call on a fresh interpreter, inputs and outputs by tensor name."""
    it = _interp(path)
    for d in it.get_input_details():
        a = feeds[d["name"]]
        if tuple(a.shape) != tuple(d["shape"]):
            it.resize_tensor_input(d["index"], list(a.shape), strict=True)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], feeds[d["name"]])
    it.invoke()
    return {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds)))


def rename_tflite(data: bytes, names: dict[str, str]) -> bytes:
    """Rename tensors of the main subgraph (the converter calls outputs ``Identity``...)."""
    from tensorflow.lite.tools import flatbuffer_utils as fb

    model = fb.convert_bytearray_to_object(bytearray(data))
    sg = model.subgraphs[0]
    done = set()
    for idx in list(sg.inputs) + list(sg.outputs):
        t = sg.tensors[idx]
        old = t.name.decode() if isinstance(t.name, bytes) else t.name
        if old in names:
            t.name = names[old].encode()
            done.add(old)
    missing = set(names) - done
    assert not missing, f"no tensors named {missing}"
    return bytes(fb.convert_object_to_bytearray(model))


def io_names(path: Path) -> tuple[list[str], list[str]]:
    it = _interp(path)
    return [d["name"] for d in it.get_input_details()], [d["name"] for d in it.get_output_details()]


def out_names_by_rank(data: bytes) -> dict[int, str]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    return {len(d["shape_signature"]): d["name"] for d in it.get_output_details()}


def convert(fn: Any, trackable: Any = None, **opts: Any) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], trackable)
    for k, v in opts.items():
        setattr(conv, k, v)
    return conv.convert()


def save_onnx(graph: Any, path: Path) -> None:
    import onnx
    from onnx import helper

    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def close(a: np.ndarray, b: np.ndarray, tol: float, what: str) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = float(np.abs(a - b).max()) if a.size else 0.0
    assert err <= tol, f"{what}: max |diff| {err} > {tol}"


# -- ONNX models (no TensorFlow) ---------------------------------------------------
def build_onnx(out: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    fl = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    save_onnx(
        helper.make_graph(
            [helper.make_node("Add", ["a", "b"], ["out"])],
            "bcast",
            [vi("a", fl, ["N", 4]), vi("b", fl, [4])],
            [vi("out", fl, ["N", 4])],
        ),
        out / "bcast.onnx",
    )
    save_onnx(
        helper.make_graph(
            [helper.make_node("Add", ["a", "a"], ["a2"]), helper.make_node("Add", ["b", "one"], ["b1"])],
            "two_named",
            [vi("a", fl, ["N", 3]), vi("b", fl, ["M", 2])],
            [vi("a2", fl, ["N", 3]), vi("b1", fl, ["M", 2])],
            [numpy_helper.from_array(np.ones(1, np.float32), "one")],
        ),
        out / "two_named.onnx",
    )
    save_onnx(
        helper.make_graph(
            [helper.make_node("Identity", ["C"], ["c"])],
            "const",
            [],
            [vi("c", fl, [2, 3])],
            [numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3) / 4, "C")],
        ),
        out / "const.onnx",
    )
    w = np.array([0.5, -2.0, 3.0], np.float32).reshape(1, 3)
    save_onnx(
        helper.make_graph(
            [
                helper.make_node("ReduceMean", ["image"], ["m"], axes=[2, 3], keepdims=0),
                helper.make_node("Mul", ["m", "w"], ["mean"]),
            ],
            "dyn_hw",
            [vi("image", fl, ["N", 3, "H", "W"])],
            [vi("mean", fl, ["N", 3])],
            [numpy_helper.from_array(w, "w")],
        ),
        out / "dyn_hw.onnx",
    )
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    close(ort_run(out / "bcast.onnx", {"a": a, "b": b})["out"], a + b, 0, "bcast.onnx")
    img = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    close(ort_run(out / "dyn_hw.onnx", {"image": img})["mean"], img.mean((2, 3)) * w, 1e-6, "dyn_hw.onnx")
    close(ort_run(out / "const.onnx", {})["c"], np.arange(6).reshape(2, 3) / 4, 0, "const.onnx")


# -- TFLite models ---------------------------------------------------------------
def build_simple_tflite(out: Path) -> None:
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)

    # multi-input Keras model with the converter's own names
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1), name="image")
    vec = keras.Input((4,), name="vec")
    h = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(image))
    h = keras.layers.Concatenate()([h, keras.layers.Dense(8, activation="relu")(vec)])
    model = keras.Model([image, vec], keras.layers.Dense(3)(h))
    (out / "multi_in.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    ins, outs = io_names(out / "multi_in.tflite")
    im_name = next(n for n in ins if "image" in n)
    vec_name = next(n for n in ins if "vec" in n)
    xi, xv = rng.standard_normal((5, 8, 8, 1)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    got = tflite_run(out / "multi_in.tflite", {im_name: xi, vec_name: xv})[outs[0]]
    close(got, model.predict([xi, xv], verbose=0), 1e-5, "multi_in.tflite")

    @tf.function(
        input_signature=[tf.TensorSpec([3, 4], tf.float32, name="a"), tf.TensorSpec([4], tf.float32, name="b")]
    )
    def bcast(a: Any, b: Any) -> Any:
        return 2.0 * a + b

    data = convert(bcast)
    data = rename_tflite(data, {out_names_by_rank(data)[2]: "out"})
    (out / "bcast.tflite").write_bytes(data)
    a, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    close(tflite_run(out / "bcast.tflite", {"a": a, "b": b})["out"], 2 * a + b, 1e-6, "bcast.tflite")

    @tf.function(
        input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x"), tf.TensorSpec([], tf.float32, name="gain")]
    )
    def scalar_gain(x: Any, gain: Any) -> Any:
        return x * gain

    data = convert(scalar_gain)
    data = rename_tflite(data, {out_names_by_rank(data)[2]: "y"})
    (out / "scalar_gain.tflite").write_bytes(data)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    close(tflite_run(out / "scalar_gain.tflite", {"x": x, "gain": np.float32(2.5)})["y"], x * 2.5, 0, "scalar_gain")

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="n")])
    def scalar_only(n: Any) -> Any:
        return tf.stack([n, n * n, n * n * n])

    data = convert(scalar_only)
    data = rename_tflite(data, {out_names_by_rank(data)[1]: "powers"})
    (out / "scalar_only.tflite").write_bytes(data)
    close(tflite_run(out / "scalar_only.tflite", {"n": np.float32(3)})["powers"], [3, 9, 27], 0, "scalar_only")

    kernel = tf.constant(rng.standard_normal((3, 3, 3, 4)).astype(np.float32) / 3)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32, name="image")])
    def dyn_hw(img: Any) -> Any:
        y = tf.nn.relu(tf.nn.conv2d(img, kernel, strides=1, padding="SAME"))
        return tf.reduce_mean(y, axis=[1, 2])

    data = convert(dyn_hw)
    data = rename_tflite(data, {out_names_by_rank(data)[2]: "features"})
    (out / "dyn_hw.tflite").write_bytes(data)
    for hw in ((7, 9), (12, 5)):
        img = rng.standard_normal((1, *hw, 3)).astype(np.float32)
        close(tflite_run(out / "dyn_hw.tflite", {"image": img})["features"], dyn_hw(img).numpy(), 1e-5, f"dyn_hw {hw}")

    # resource-variable state: every invoke adds x to the accumulator and returns it
    class Acc(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.acc = tf.Variable(np.array([[1, 2, 3, 4]], np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def __call__(self, x: Any) -> Any:
            self.acc.assign_add(x)
            return self.acc.read_value() * 1.0

    mod = Acc()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([mod.__call__.get_concrete_function()], mod)
    conv.experimental_enable_resource_variables = True
    data = conv.convert()
    data = rename_tflite(data, {out_names_by_rank(data)[2]: "acc", "serving_default_x:0": "x"})
    (out / "rv_acc.tflite").write_bytes(data)
    it = _interp(out / "rv_acc.tflite")
    (din,), (dout,) = it.get_input_details(), it.get_output_details()
    one = np.ones((1, 4), np.float32)
    for k in range(1, 4):
        it.set_tensor(din["index"], one)
        it.invoke()
        close(it.get_tensor(dout["index"]), [[1 + k, 2 + k, 3 + k, 4 + k]], 0, f"rv_acc invoke {k}")


def build_int8(out: Path) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    a_in, b_in = keras.Input((8,), name="a"), keras.Input((4,), name="b")
    h = keras.layers.Concatenate()(
        [keras.layers.Dense(16, activation="relu")(a_in), keras.layers.Dense(8, activation="relu")(b_in)]
    )
    model = keras.Model([a_in, b_in], keras.layers.Dense(3)(h))
    rng = np.random.default_rng(2)
    cal_a = rng.uniform(-1, 1, (200, 8)).astype(np.float32)
    cal_b = rng.uniform(0, 2, (200, 4)).astype(np.float32)

    @tf.function(
        input_signature=[tf.TensorSpec([None, 8], tf.float32, name="a"), tf.TensorSpec([None, 4], tf.float32, name="b")]
    )
    def fn(a: Any, b: Any) -> Any:
        return model([a, b])

    data = convert(fn)
    data = rename_tflite(data, {out_names_by_rank(data)[2]: "scores"})
    (out / "two_float.tflite").write_bytes(data)

    def representative() -> Any:
        for i in range(0, 200, 2):
            yield [cal_a[i : i + 1], cal_b[i : i + 1]]

    data = convert(
        fn,
        optimizations=[tf.lite.Optimize.DEFAULT],
        representative_dataset=representative,
        target_spec=_int8_target(tf),
        inference_input_type=tf.int8,
        inference_output_type=tf.int8,
    )
    data = rename_tflite(data, {out_names_by_rank(data)[2]: "scores"})
    (out / "two_int8.tflite").write_bytes(data)
    # sample inputs inside the calibration range, the float model's outputs on them
    xa, xb = cal_a[::20].copy(), cal_b[::20].copy()
    ref = tflite_run(out / "two_float.tflite", {"a": xa, "b": xb})["scores"]
    close(ref, model.predict([xa, xb], verbose=0), 1e-5, "two_float")
    it = _interp(out / "two_int8.tflite")
    feeds = {}
    for d in it.get_input_details():
        assert d["dtype"] == np.int8, d
        scale, zp = d["quantization"]
        x = {"a": xa, "b": xb}[d["name"]]
        feeds[d["name"]] = np.clip(np.rint(x / scale) + zp, -128, 127).astype(np.int8)
    (dout,) = it.get_output_details()
    q = tflite_run(out / "two_int8.tflite", feeds)["scores"]
    scale, zp = dout["quantization"]
    close((q.astype(np.float32) - zp) * scale, ref, 0.1, "two_int8 vs float")
    np.savez(out / "two_ref.npz", a=xa, b=xb, scores=ref)


def _int8_target(tf: Any) -> Any:
    from tensorflow.lite.python.lite import TargetSpec

    return TargetSpec(supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8])


def build_gru(out: Path) -> None:
    import keras
    import onnx
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    # synthetic task: a leaky running sum of two input features
    xs = rng.standard_normal((256, 20, F)).astype(np.float32)
    ys = np.zeros((256, 20, 2), np.float32)
    acc = np.zeros((256, 2), np.float32)
    for t in range(20):
        acc = 0.8 * acc + 0.3 * xs[:, t, :2]
        ys[:, t] = np.tanh(acc)
    x_in, h_in = keras.Input((None, F), name="x"), keras.Input((UNITS,), name="h0")
    gru = keras.layers.GRU(UNITS, return_sequences=True, return_state=True)
    dense = keras.layers.Dense(2)
    seq, hn = gru(x_in, initial_state=h_in)
    train = keras.Model([x_in, h_in], dense(seq))
    train.compile(keras.optimizers.Adam(0.01), "mse")
    train.fit([xs, np.zeros((256, UNITS), np.float32)], ys, epochs=4, batch_size=32, verbose=0)

    # export: fixed T, unrolled (plain builtin ops), explicit state in and out
    gru_u = keras.layers.GRU(UNITS, return_sequences=True, return_state=True, unroll=True)
    dense_u = keras.layers.Dense(2)
    x_e, h_e = keras.Input((T, F), name="x"), keras.Input((UNITS,), name="h0")
    seq_e, hn_e = gru_u(x_e, initial_state=h_e)
    export = keras.Model([x_e, h_e], [dense_u(seq_e), hn_e])
    gru_u.set_weights(gru.get_weights())
    dense_u.set_weights(dense.get_weights())

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, T, F], tf.float32, name="x"),
            tf.TensorSpec([None, UNITS], tf.float32, name="h0"),
        ]
    )
    def fn(x: Any, h0: Any) -> Any:
        y, h = export([x, h0])
        return {"y": y, "hn": h}

    data = convert(fn)
    ranks = out_names_by_rank(data)
    data = rename_tflite(data, {ranks[3]: "y", ranks[2]: "hn"})
    (out / "gru.tflite").write_bytes(data)

    onnx_path = out / "gru.onnx"
    export.export(str(onnx_path), format="onnx", verbose=False)
    m = onnx.load(str(onnx_path))
    g = m.graph
    rename = {}
    for o in g.output:
        rank = len(o.type.tensor_type.shape.dim)
        rename[o.name] = {3: "y", 2: "hn"}[rank]
    for node in g.node:
        node.output[:] = [rename.get(n, n) for n in node.output]
        node.input[:] = [rename.get(n, n) for n in node.input]
    for o in g.output:
        o.name = rename[o.name]
    assert sorted(i.name for i in g.input) == ["h0", "x"], [i.name for i in g.input]
    for v in list(g.input) + list(g.output):  # one name for the batch dimension everywhere
        d0 = v.type.tensor_type.shape.dim[0]
        d0.ClearField("dim_value")
        d0.dim_param = "N"
        if v.name == "y":  # tf2onnx leaves the time axis unnamed (unk__NN); it is T
            v.type.tensor_type.shape.dim[1].dim_value = T
    onnx.checker.check_model(m)
    onnx.save(m, str(onnx_path))

    # Keras's own stateful loop: the same weights, batch B, K successive chunks
    x_s = keras.Input((T, F), batch_size=B, name="x")
    gru_s = keras.layers.GRU(UNITS, return_sequences=True, stateful=True)
    dense_s = keras.layers.Dense(2)
    stateful = keras.Model(x_s, dense_s(gru_s(x_s)))
    gru_s.set_weights(gru.get_weights())
    dense_s.set_weights(dense.get_weights())
    chunks = rng.standard_normal((K, B, T, F)).astype(np.float32)
    ref_y, ref_h = [], []
    for k in range(K):
        ref_y.append(np.asarray(stateful(chunks[k])))
        ref_h.append(np.asarray(gru_s.states[0]))
    ref_y, ref_h = np.stack(ref_y), np.stack(ref_h)
    assert np.abs(ref_h[-1]).max() > 0.05  # the state actually carries something
    np.savez(out / "gru_ref.npz", chunks=chunks, y=ref_y, h=ref_h)

    # the raw runtimes, state fed back by hand, equal Keras's loop
    h_t = np.zeros((B, UNITS), np.float32)
    h_o = h_t.copy()
    for k in range(K):
        r = tflite_run(out / "gru.tflite", {"x": chunks[k], "h0": h_t})
        close(r["y"], ref_y[k], 1e-5, f"gru.tflite chunk {k}")
        h_t = r["hn"]
        close(h_t, ref_h[k], 1e-5, f"gru.tflite state {k}")
        o = ort_run(onnx_path, {"x": chunks[k], "h0": h_o})
        close(o["y"], ref_y[k], 1e-5, f"gru.onnx chunk {k}")
        h_o = o["hn"]
        close(h_o, ref_h[k], 1e-5, f"gru.onnx state {k}")
    # a fresh state gives other outputs than the carried one (the loop is really stateful)
    assert (
        np.abs(
            tflite_run(out / "gru.tflite", {"x": chunks[1], "h0": np.zeros((B, UNITS), np.float32)})["y"] - ref_y[1]
        ).max()
        > 1e-3
    )


def main() -> None:
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build_onnx(target)
    if "--no-tflite" not in sys.argv:
        build_simple_tflite(target)
        build_int8(target)
        build_gru(target)
    print(f"signature models written to {target} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
