"""Each pass on tiny models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgefleet
from edgefleet.compiler.config import CalibrationMethod, DistillConfig, PruneConfig, QuantizeOptions, StructuredConfig


def _x(a: dict[str, np.ndarray], key: str = "xtr") -> np.ndarray:
    return (a[key][..., None] / 16.0).astype(np.float32)


def _acc(model: Any, a: dict[str, np.ndarray]) -> float:
    return float(np.mean(model.predict(_x(a, "xte"), verbose=0).argmax(1) == a["yte"]) * 100)


def test_schedule_and_mask() -> None:
    from edgefleet.compiler.passes.prune import magnitude_mask, schedule

    cfg = PruneConfig(sparsity=0.8)
    values = [schedule(s, 100, cfg) for s in range(0, 101, 10)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.8) and values == sorted(values)
    w = np.arange(-5, 5, dtype=np.float32)
    mask = magnitude_mask(w, 0.5)
    assert mask.sum() == 5 and set(np.abs(w[mask == 0])) == {0, 1, 2}


def test_magnitude_pruning_reaches_the_target(tiny_model: Any, digits_arrays: dict[str, np.ndarray]) -> None:
    import keras

    from edgefleet.compiler.passes.prune import prune, sparsity_of

    model = keras.models.clone_model(tiny_model)
    model.set_weights(tiny_model.get_weights())
    prune(model, _x(digits_arrays), digits_arrays["ytr"], PruneConfig(sparsity=0.7, epochs=2, min_weights=1))
    assert sparsity_of(model) == pytest.approx(0.7, abs=0.01)
    assert _acc(model, digits_arrays) > 85.0


def test_structured_slicing_is_exact_when_removed_filters_are_dead(tiny_model: Any, digits_arrays: dict[str, np.ndarray]) -> None:
    import keras

    from edgefleet.compiler.passes.structured import narrow

    model = keras.models.clone_model(tiny_model)
    weights = [w.copy() for w in tiny_model.get_weights()]
    # kill half of conv1, conv2 and fc1's outputs (kernel and bias): they contribute nothing downstream
    for k in (0, 2, 4):
        n = weights[k].shape[-1]
        weights[k][..., : n // 2] = 0.0
        weights[k + 1][: n // 2] = 0.0
    model.set_weights(weights)
    small = narrow(model, 0.5)
    assert [layer.get_config().get("filters") for layer in small.layers[:2]] == [1, 8] or small.count_params() < model.count_params() / 2
    x = _x(digits_arrays, "xte")[:50]
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_structured_pruning_shrinks_and_keeps_accuracy(tiny_model: Any, digits_arrays: dict[str, np.ndarray]) -> None:
    from edgefleet.compiler.passes.structured import structured_prune

    small = structured_prune(tiny_model, _x(digits_arrays), digits_arrays["ytr"], StructuredConfig(fraction=0.5, epochs=3))
    assert small.count_params() < tiny_model.count_params() * 0.6
    assert _acc(small, digits_arrays) > 85.0


def test_distillation_trains_a_narrower_student(tiny_model: Any, digits_arrays: dict[str, np.ndarray]) -> None:
    from edgefleet.compiler.passes.distill import count_params, distill

    student = distill(tiny_model, _x(digits_arrays), digits_arrays["ytr"], DistillConfig(width=0.5, epochs=8))
    assert count_params(student) * 3 < count_params(tiny_model)
    assert _acc(student, digits_arrays) > 80.0


@pytest.mark.parametrize("variant", ["float32", "float16", "dynamic", "int8", "int8-mixed", "int16x8"])
def test_tflite_variants_run_in_the_sdk(tiny_model: Any, digits_arrays: dict[str, np.ndarray], tmp_path: Path, variant: str) -> None:
    from edgefleet.compiler.passes.quantize import quantize_tflite

    path, notes = quantize_tflite(tiny_model, variant, tmp_path / "m.tflite", _x(digits_arrays)[:64], QuantizeOptions(sensitive_layers=1))
    with edgefleet.load(path) as m:
        out = m.predict(_x(digits_arrays, "xte"))
        assert (m.inputs[0].dtype == "int8") == (variant == "int8")
    assert np.mean(out.argmax(1) == digits_arrays["yte"]) > 0.8
    if variant == "int8-mixed":
        assert len(notes["float_layers"]) == 1


@pytest.mark.parametrize("variant, method", [("dynamic", "minmax"), ("int8", "minmax"), ("int8", "entropy"), ("int8", "percentile"), ("float16", "minmax")])
def test_onnx_variants_run_in_the_sdk(tiny_onnx: Path, digits_arrays: dict[str, np.ndarray], tmp_path: Path, variant: str, method: str) -> None:
    import onnx

    from edgefleet.compiler.passes.quantize import quantize_onnx

    opts = QuantizeOptions(onnx_calibration=CalibrationMethod(method))
    path, _ = quantize_onnx(tiny_onnx, variant, tmp_path / "m.onnx", _x(digits_arrays)[:64], opts)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    if variant == "int8":
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    with edgefleet.load(path) as m:
        out = m.predict(_x(digits_arrays, "xte"))
    assert np.mean(out.argmax(1) == digits_arrays["yte"]) > 0.8


def test_onnx_op_exclusion_keeps_those_ops_in_float(tiny_onnx: Path, digits_arrays: dict[str, np.ndarray], tmp_path: Path) -> None:
    import onnx

    from edgefleet.compiler.passes.quantize import quantize_onnx

    path, notes = quantize_onnx(tiny_onnx, "int8", tmp_path / "m.onnx", _x(digits_arrays)[:32], QuantizeOptions(onnx_exclude_ops=("Conv",)))
    graph = onnx.load(str(path)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "Conv":
            assert producers.get(node.input[1]) != "DequantizeLinear"  # float weights
    assert notes["excluded_nodes"]


def test_export_matches_the_source(tiny_model: Any, tiny_onnx: Path, digits_arrays: dict[str, np.ndarray], tmp_path: Path) -> None:
    from edgefleet.compiler.passes.export import check_export, to_tflite

    x = _x(digits_arrays, "xte")
    ref = tiny_model.predict(x, verbose=0)
    for path in (to_tflite(tiny_model, tmp_path / "m.tflite"), tiny_onnx):
        with edgefleet.load(path) as m:
            cmp = check_export(ref, m.predict(x), path.suffix)
        assert cmp["agreement"] == 100.0
