"""Batch-axis inference (pure): what pack and load read off a model's shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import edgefleet
from edgefleet.manifest import TensorSpec, infer_batch_axes


def t(name: str, shape: tuple[int, ...], dims: tuple[str | None, ...] | None = None) -> TensorSpec:
    return TensorSpec(name, shape, "float32", dims=dims)


def test_dynamic_axis0_shared_by_name_and_a_named_batch_elsewhere() -> None:
    ins = [t("x", (-1, 512), ("batch", None)), t("state", (2, -1, 128), (None, "batch", None)), t("sr", ())]
    outs = [t("p", (-1, 1), ("batch", None)), t("stateN", (2, -1, 128), (None, "batch", None))]
    assert infer_batch_axes(ins, outs) == ([0, 1, None], [0, 1])


def test_differently_named_dims_do_not_share_a_batch() -> None:
    ins = [t("a", (-1, 3), ("N", None)), t("b", (-1, 2), ("M", None))]
    outs = [t("a2", (-1, 3), ("N", None)), t("b1", (-1, 2), ("M", None))]
    assert infer_batch_axes(ins, outs) == ([0, None], [0, None])


def test_unnamed_dynamic_axis0_is_shared_and_fixed_shapes_have_none() -> None:
    assert infer_batch_axes([t("a", (-1, 3)), t("b", (-1, 2))], [t("y", (-1, 1))]) == ([0, 0], [0])
    assert infer_batch_axes([t("a", (3, 4)), t("b", (4,))], [t("y", (3, 4))]) == ([None, None], [None])
    # a fixed batch of one on every input (many exported TFLite models)
    assert infer_batch_axes([t("img", (1, 224, 224, 3))], [t("p", (1, 10))]) == ([0], [0])
    assert infer_batch_axes([], [t("c", (2, 3))]) == ([], [None])


def test_exporter_made_up_dim_names_are_no_names(tmp_path: Path) -> None:
    """tf2onnx / Keras's ONNX export name each input's batch unk__N: one shared batch."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    graph = h.make_graph(
        [h.make_node("Concat", ["a", "b"], ["y"], axis=1)],
        "g",
        [h.make_tensor_value_info("a", T.FLOAT, ["unk__6", 4]), h.make_tensor_value_info("b", T.FLOAT, ["unk__7", 3])],
        [h.make_tensor_value_info("y", T.FLOAT, ["unk__8", 7])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    with edgefleet.load(tmp_path / "m.onnx") as m:
        assert [s.batch_axis for s in m.inputs + m.outputs] == [0, 0, 0]
        y = m.predict({"a": np.ones(4, np.float32), "b": np.zeros(3, np.float32)})
        assert y.shape == (7,)
