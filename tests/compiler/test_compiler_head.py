"""edgefleet compile --trainable-head: the backbone compiled (pruned, int8), the head kept as float weights and
run in numpy; predictions as the Keras model's and as the bundle compiled without a split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgefleet
from edgefleet.compiler.api import compile_model
from edgefleet.compiler.config import (
    CompileConfig,
    HeadConfig,
    OutputFormat,
    PruneConfig,
    QuantMode,
    config_from_args,
    load_recipe,
)
from edgefleet.errors import ConfigError


def _cfg(base: Any, head: int = 0, **kw: Any) -> Any:
    return replace(base, head=HeadConfig(layers=head), output=replace(base.output, report=False, latency_runs=5), **kw)


def _keras_out(model: Any, x_raw: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x_raw[..., None] / 16.0, verbose=0))


def test_split_predictions_match_keras_and_the_unsplit_bundle(tiny_keras: Path, tiny_model: Any, base_config: Any,
                                                              tmp_path: Path, digits_arrays: dict[str, np.ndarray]) -> None:
    x, y = digits_arrays["xte"], digits_arrays["yte"]
    ref = _keras_out(tiny_model, x)
    split = compile_model(tiny_keras, tmp_path / "split", _cfg(base_config, head=2))
    plain = compile_model(tiny_keras, tmp_path / "plain", _cfg(base_config))
    with edgefleet.load(split.bundle_path) as s, edgefleet.load(plain.bundle_path) as p:
        head = s.manifest.head
        assert head is not None and [layer.name for layer in head.layers] == ["fc1", "probs"]
        assert [layer.activation for layer in head.layers] == ["relu", "softmax"]
        assert s.manifest.metrics["head_params"] == sum(w.size for w in s.head.weights.values())  # type: ignore[union-attr]
        got = s.predict(x)  # raw 0..16 pixels: the bundle's own preprocessing
        np.testing.assert_allclose(got, ref, atol=1e-4)
        np.testing.assert_allclose(got, p.predict(x), atol=1e-4)
        assert s.features(x).shape == (len(x), 4 * 4 * 16)  # the backbone stops at flatten (pooled 4x4x16)
        assert s.manifest.metrics["accuracy"] == pytest.approx(np.mean(ref.argmax(1) == y) * 100, abs=1e-3)
        assert s.run_smoke_tests().ok
    assert split.report["head"]["params"] > 0 and any("trainable head" in p for p in split.report["passes"])


def test_int8_pruned_backbone_with_a_float_head(tiny_keras: Path, tiny_model: Any, base_config: Any, tmp_path: Path,
                                               digits_arrays: dict[str, np.ndarray]) -> None:
    x, y = digits_arrays["xte"], digits_arrays["yte"]
    prune = PruneConfig(sparsity=0.5, epochs=1, min_weights=16)
    split = compile_model(tiny_keras, tmp_path / "split8", _cfg(base_config, head=2, quantize=QuantMode.INT8, prune=prune))
    plain = compile_model(tiny_keras, tmp_path / "plain8", _cfg(base_config, quantize=QuantMode.INT8, prune=prune))
    with edgefleet.load(split.bundle_path) as s, edgefleet.load(plain.bundle_path) as p:
        m = s.manifest
        assert m.metrics["quantization"] == "int8" and m.outputs[0].quantization is not None  # int8 features
        assert m.metrics["sparsity"] == pytest.approx(0.5, abs=0.02)  # the backbone's kernels
        weights = s.head.weights  # type: ignore[union-attr]
        assert weights["fc1.kernel"].dtype == np.float32 and np.count_nonzero(weights["fc1.kernel"] == 0) == 0  # not pruned
        got, unsplit = s.predict(x), p.predict(x)
        assert np.mean(got.argmax(1) == unsplit.argmax(1)) >= 0.95
        assert float(np.mean(np.abs(got - unsplit))) < 0.02
        assert np.mean(got.argmax(1) == y) * 100 >= np.mean(_keras_out(tiny_model, x).argmax(1) == y) * 100 - 3.0
        assert s.run_smoke_tests().ok


@pytest.mark.filterwarnings("ignore:The structure of `inputs`")
def test_head_layer_kinds_run_as_keras_runs_them(tmp_path: Path) -> None:
    import keras

    from edgefleet.compiler.split import split_keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dropout(0.3, name="drop")(h)
    h = keras.layers.Dense(12, activation="tanh", name="fc")(h)
    h = keras.layers.ReLU(max_value=6.0, name="relu6")(h)
    h = keras.layers.Dense(5, name="logits")(h)
    out = keras.layers.Activation("softmax", name="probs")(h)
    model = keras.Model(inp, out)
    bn = model.get_layer("bn")  # moving statistics far from the initial 0 and 1
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 2, 8), rng.normal(0, 1, 8), rng.normal(0, 1, 8), rng.uniform(0.2, 3, 8)])
    x = rng.normal(0, 1, (32, 6, 6, 3)).astype(np.float32)
    backbone, head = split_keras(model, HeadConfig(layers=7))
    assert [layer.kind for layer in head.layers] == ["global_avg_pool", "batch_norm", "dropout", "dense", "activation",
                                                     "dense", "activation"]
    np.testing.assert_allclose(head.forward(np.asarray(backbone(x))), np.asarray(model(x)), atol=1e-5)

    acts = ["relu", "relu6", "sigmoid", "hard_sigmoid", "tanh", "softplus", "softsign", "silu", "elu", "selu",
            "leaky_relu", "exponential", "log_softmax", "softmax", "linear"]
    for act in acts:
        f_in = keras.Input((6,))
        flat = keras.layers.Flatten(name="flat")(keras.layers.Reshape((2, 3))(keras.layers.Dense(6, name="pre")(f_in)))
        m = keras.Model(f_in, keras.layers.Dense(4, activation=act, name="out")(flat))
        v = rng.normal(0, 2, (16, 6)).astype(np.float32)
        bb, hd = split_keras(m, HeadConfig(names=("flat", "out")))
        np.testing.assert_allclose(hd.forward(np.asarray(bb(v))), np.asarray(m(v)), atol=1e-5, rtol=1e-5, err_msg=act)


@pytest.mark.parametrize(
    ("head", "fragment"),
    [
        (HeadConfig(layers=4), "layer 'pool' is a MaxPooling2D"),
        (HeadConfig(layers=6), "every layer of the model"),
        (HeadConfig(layers=9), "only 6 layers"),
        (HeadConfig(names=("probs", "fc1")), "the last 2 are fc1,probs"),
        (HeadConfig(names=("fc1",)), "the last 1 are probs"),
    ],
)
def test_heads_that_cannot_be_split_are_named(tiny_model: Any, head: HeadConfig, fragment: str) -> None:
    from edgefleet.compiler.split import split_keras

    with pytest.raises(ConfigError, match=fragment):
        split_keras(tiny_model, head)


def test_unsupported_activation_and_sources(tiny_onnx: Path, tiny_keras: Path, base_config: Any, tmp_path: Path) -> None:
    import keras

    from edgefleet.compiler.split import split_keras

    f_in = keras.Input((6,))
    m = keras.Model(f_in, keras.layers.Dense(4, activation="gelu", name="out")(keras.layers.Dense(6)(f_in)))
    with pytest.raises(ConfigError, match="activation 'gelu'"):
        split_keras(m, HeadConfig(layers=1))
    with pytest.raises(ConfigError, match="splits a Keras model.*--trainable-head-from"):
        compile_model(tiny_onnx, tmp_path / "o", _cfg(base_config, head=1, format=OutputFormat.ONNX))
    with pytest.raises(ConfigError, match="names a tensor of an ONNX source"):
        compile_model(tiny_keras, tmp_path / "o", replace(base_config, head=HeadConfig(from_output="flat")))
    assert not (tmp_path / "o").exists()


def _onnx_classifier(path: Path) -> Path:
    """x (N, 3, 8, 8) -> Conv -> Relu -> GlobalAveragePool -> Flatten (feat) -> MatMul + Add -> Relu ->
    BatchNormalization -> Gemm (transB) -> Softmax (probs), written with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    arrays = {
        "cw": rng.normal(0, 0.5, (4, 3, 3, 3)), "w1": rng.normal(0, 1, (4, 6)), "b1": rng.normal(0, 0.1, 6),
        "g": rng.uniform(0.5, 1.5, 6), "be": rng.normal(0, 0.1, 6), "mu": rng.normal(0, 0.5, 6), "var": rng.uniform(0.5, 2, 6),
        "w2": rng.normal(0, 1, (3, 6)), "b2": rng.normal(0, 0.1, 3),
    }
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu0"),
        helper.make_node("GlobalAveragePool", ["r"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["feat"], name="flatten"),
        helper.make_node("MatMul", ["feat", "w1"], ["mm"], name="fc1/MatMul"),
        helper.make_node("Add", ["mm", "b1"], ["h"], name="fc1/Add"),
        helper.make_node("Relu", ["h"], ["hr"], name="fc1/Relu"),
        helper.make_node("BatchNormalization", ["hr", "g", "be", "mu", "var"], ["bn"], epsilon=1e-3, name="bn"),
        helper.make_node("Gemm", ["bn", "w2", "b2"], ["logits"], transB=1, name="fc2"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_split_by_output_name(tmp_path: Path) -> None:
    import onnx

    from edgefleet.compiler.config import DataConfig, OutputConfig

    src = _onnx_classifier(tmp_path / "cls.onnx")
    x = np.random.default_rng(5).normal(0, 1, (64, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    cfg = CompileConfig(format=OutputFormat.ONNX, head=HeadConfig(from_output="feat"),
                        data=DataConfig(calibration=str(tmp_path / "calib.npz")), output=OutputConfig(latency_runs=5, report=False))
    compile_model(src, tmp_path / "f32", cfg)
    compile_model(src, tmp_path / "i8", replace(cfg, quantize=QuantMode.INT8))
    with edgefleet.load(src) as full, edgefleet.load(tmp_path / "f32") as split, edgefleet.load(tmp_path / "i8") as q:
        head = split.manifest.head
        assert head is not None and head.input == "feat"
        assert [(layer.kind, layer.activation) for layer in head.layers] == [
            ("dense", "linear"), ("activation", "relu"), ("batch_norm", "linear"), ("dense", "linear"), ("activation", "softmax")]
        assert [layer.name for layer in head.layers][0] == "fc1_MatMul"
        ref = full.predict(x)
        np.testing.assert_allclose(split.predict(x), ref, atol=1e-5)
        assert split.features(x).shape == (64, 4)
        assert [n.op_type for n in onnx.load(str(tmp_path / "f32" / "model.onnx")).graph.node] == [
            "Conv", "Relu", "GlobalAveragePool", "Flatten"]  # the backbone ends at feat
        assert np.mean(q.predict(x).argmax(1) == ref.argmax(1)) >= 0.9 and q.run_smoke_tests().ok


@pytest.mark.parametrize(
    ("cut", "fragment"),
    [("r", "node 'gap' .GlobalAveragePool. cannot be in a head"), ("nope", "no node of the model outputs"),
     ("probs", "is the model's output"), ("x", "is a model input")],
)
def test_onnx_cuts_that_cannot_make_a_head_are_named(tmp_path: Path, cut: str, fragment: str) -> None:
    from edgefleet.compiler.split_onnx import split_onnx

    src = _onnx_classifier(tmp_path / "cls.onnx")
    with pytest.raises(ConfigError, match=fragment):
        split_onnx(src, cut, tmp_path / "backbone.onnx")


def test_cli_refusal_is_one_line_with_exit_code_2(tiny_keras: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgefleet.cli import cli

    res = CliRunner().invoke(cli, ["compile", str(tiny_keras), "-o", str(tmp_path / "b"), "--trainable-head", "4", "--quiet"])
    assert res.exit_code == 2 and "MaxPooling2D" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["compile", str(tiny_keras), "-o", str(tmp_path / "b"), "--trainable-head", "0"])
    assert res.exit_code == 2 and "N >= 1" in res.output
    assert not (tmp_path / "b").exists()


def test_head_recipe_and_flags(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("[head]\nlayers = 2\n")
    cfg = load_recipe(recipe)
    assert cfg.head == HeadConfig(layers=2) and cfg.head.enabled
    assert load_recipe(_dump(tmp_path, cfg)) == cfg  # the effective recipe round-trips
    from types import SimpleNamespace

    by_name = config_from_args(SimpleNamespace(trainable_head="fc1, probs"), CompileConfig())
    assert by_name.head.names == ("fc1", "probs") and by_name.head.count == 2
    assert config_from_args(SimpleNamespace(trainable_head="3"), cfg).head == HeadConfig(layers=3)
    recipe.write_text('[head]\nlayers = 2\nnames = ["a"]\n')
    with pytest.raises(ConfigError, match="one way"):
        load_recipe(recipe)
    recipe.write_text("[head]\nlayer = 2\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_recipe(recipe)


def _dump(tmp_path: Path, cfg: CompileConfig) -> Path:
    out = tmp_path / "effective.toml"
    out.write_text(cfg.to_toml())
    return out


def test_onnx_split_of_an_exporter_style_graph(tmp_path: Path) -> None:
    """The paddle2onnx-style conv net of make_compiler_models (Constant weights, a flatten computed from the runtime
    shape, so the cut tensor's shape is unknown to ONNX's inference): the backbone's output gets the measured shape."""
    import sys

    from edgefleet.compiler.config import DataConfig, OutputConfig

    sys.path.insert(0, str(Path(__file__).parent))
    import make_compiler_models as mk

    src, data = mk.conv_bn_onnx(tmp_path, channels=(8, 16)), tmp_path / "conv_bn_data.npz"
    cfg = CompileConfig(quantize=QuantMode.INT8, format=OutputFormat.ONNX, head=HeadConfig(from_output="flat"),
                        data=DataConfig(calibration=str(data), max_calibration_samples=32),
                        output=OutputConfig(latency_runs=5, report=False))
    compile_model(src, tmp_path / "b", cfg)
    x = np.load(data)["x"][:16]
    with edgefleet.load(src) as full, edgefleet.load(tmp_path / "b") as m:
        assert m.manifest.outputs[0].shape == (-1, 16) and m.manifest.outputs[0].batch_axis == 0
        assert [layer.kind for layer in m.manifest.head.layers] == ["dense", "activation"]  # type: ignore[union-attr]
        assert np.mean(m.predict(x).argmax(1) == full.predict(x).argmax(1)) >= 0.75 and m.run_smoke_tests().ok
