"""Build the tiny models the SDK tests run (Keras -> TFLite float and int8, ONNX by hand).

Run as a script in its own process (``python tests/make_models.py OUTDIR``) so the
test process itself never imports TensorFlow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def build_onnx(out: Path, seed: int = 0) -> None:
    """64 -> 10 softmax classifier trained by a few steps of numpy logistic regression."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x, y = digits()
    x = x / 16.0
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.01, (64, 10)).astype(np.float32)
    b = np.zeros(10, np.float32)
    onehot = np.eye(10, dtype=np.float32)[y]
    for _ in range(200):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(x)
        w -= 0.5 * (x.T @ grad)
        b -= 0.5 * grad.sum(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "digits_linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "digits.onnx"))

    # two named inputs: a (N,3) + b (N,3) -> sum (N,3) and product (N,3)
    graph2 = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, ["N", 3]),
        ],
    )
    m2 = helper.make_model(graph2, opset_imports=[helper.make_opsetid("", 17)])
    m2.ir_version = 8
    onnx.save(m2, str(out / "two_inputs.onnx"))


def build_tflite(out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    x, y = digits()
    x = x / 16.0
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    (out / "digits_float.tflite").write_bytes(conv.convert())

    def representative():
        for i in range(0, 300, 3):
            yield [x[i : i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    (out / "digits_int8.tflite").write_bytes(conv.convert())

    if "--bench" in sys.argv:
        # models for the overhead benchmark: a wider dense stack (~0.15 ms) and a small CNN (>= 1 ms)
        wide = keras.Sequential(
            [keras.Input((256,))] + [keras.layers.Dense(512, activation="relu") for _ in range(4)] + [keras.layers.Dense(10)]
        )
        (out / "dense_wide.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(wide).convert())
        conv = keras.Sequential(
            [keras.Input((32, 32, 8))]
            + [keras.layers.Conv2D(48, 3, padding="same", activation="relu") for _ in range(3)]
            + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
        )
        (out / "conv_1ms.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(conv).convert())


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    build_onnx(target)
    if "--no-tflite" not in sys.argv:
        build_tflite(target)
    print("models written to", target)
