"""Stand-ins for the models the README's "your own model" recipes start from.

Real users bring their own files (a Silero-style voice-activity model, a sensor-fusion
net, a text detector); these are small ONNX graphs with the same signatures, built with
onnx.helper so the recipes run anywhere without downloading anything:

    python scripts/recipes/make_models.py OUTDIR

- ``vad.onnx``: inputs ``input`` (batch, 512) audio, ``state`` (2, batch, 128), ``sr`` ()
  int64; outputs ``output`` (batch, 1) speech probability and ``stateN`` (2, batch, 128).
- ``fusion.onnx``: inputs ``image`` (N, 1, 8, 8) and ``vitals`` (N, 4); output ``probs`` (N, 3).
- ``detector.onnx``: input ``image`` (1, 3, H, W) with H and W dynamic; output ``heatmap``
  (1, 1, H-2, W-2) (a 3x3 convolution without padding: it cannot run on a 1x1 image).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def vad(path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (512, 128)).astype(np.float32)
    nodes = [
        h.make_node("MatMul", ["input", "W"], ["proj"]),
        h.make_node("Unsqueeze", ["proj", "ax0"], ["proj3"]),
        h.make_node("Mul", ["state", "half"], ["decay"]),
        h.make_node("Add", ["decay", "proj3"], ["pre"]),
        h.make_node("Tanh", ["pre"], ["stateN"]),
        h.make_node("ReduceMean", ["stateN", "axes02"], ["m"], keepdims=0),
        h.make_node("Cast", ["sr"], ["srf"], to=T.FLOAT),
        h.make_node("Div", ["srf", "k16000"], ["srs"]),
        h.make_node("Mul", ["m", "srs"], ["ms"]),
        h.make_node("Mul", ["ms", "gain"], ["logit"]),
        h.make_node("Sigmoid", ["logit"], ["p"]),
        h.make_node("Unsqueeze", ["p", "ax1"], ["output"]),
    ]
    consts = {
        "W": w, "ax0": np.array([0], np.int64), "ax1": np.array([1], np.int64),
        "half": np.array(0.5, np.float32), "axes02": np.array([0, 2], np.int64),
        "k16000": np.array(16000, np.float32), "gain": np.array(8.0, np.float32),
    }
    graph = h.make_graph(
        nodes, "vad",
        [h.make_tensor_value_info("input", T.FLOAT, ["batch", 512]),
         h.make_tensor_value_info("state", T.FLOAT, [2, "batch", 128]),
         h.make_tensor_value_info("sr", T.INT64, [])],
        [h.make_tensor_value_info("output", T.FLOAT, ["batch", 1]),
         h.make_tensor_value_info("stateN", T.FLOAT, [2, "batch", 128])],
        [nh.from_array(v, k) for k, v in consts.items()],
    )
    _save(graph, path)


def fusion(path: Path) -> None:
    rng = np.random.default_rng(1)
    consts = {
        "Wi": rng.normal(0, 0.1, (64, 3)).astype(np.float32),
        "Wv": rng.normal(0, 0.5, (4, 3)).astype(np.float32),
        "flat": np.array([-1, 64], np.int64),
    }
    nodes = [
        h.make_node("Reshape", ["image", "flat"], ["img64"]),
        h.make_node("MatMul", ["img64", "Wi"], ["a"]),
        h.make_node("MatMul", ["vitals", "Wv"], ["b"]),
        h.make_node("Add", ["a", "b"], ["logits"]),
        h.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = h.make_graph(
        nodes, "fusion",
        [h.make_tensor_value_info("image", T.FLOAT, ["N", 1, 8, 8]),
         h.make_tensor_value_info("vitals", T.FLOAT, ["N", 4])],
        [h.make_tensor_value_info("probs", T.FLOAT, ["N", 3])],
        [nh.from_array(v, k) for k, v in consts.items()],
    )
    _save(graph, path)


def detector(path: Path) -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.2, (1, 3, 3, 3)).astype(np.float32)
    nodes = [
        h.make_node("Conv", ["image", "K"], ["c"], kernel_shape=[3, 3]),
        h.make_node("Sigmoid", ["c"], ["heatmap"]),
    ]
    graph = h.make_graph(
        nodes, "detector",
        [h.make_tensor_value_info("image", T.FLOAT, [1, 3, "H", "W"])],
        [h.make_tensor_value_info("heatmap", T.FLOAT, [1, 1, "Ho", "Wo"])],
        [nh.from_array(w, "K")],
    )
    _save(graph, path)


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    for fn in (vad, fusion, detector):
        fn(out / f"{fn.__name__}.onnx")
        print(f"wrote {out / (fn.__name__ + '.onnx')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
