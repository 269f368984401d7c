"""The compiler on the models issue 11 is about: exporter-style conv nets with BatchNorm, multi-input and
multi-output Keras and ONNX models; size/latency regressions flagged; lineage and latency recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgefleet
from edgefleet.compiler.api import compile_model
from edgefleet.compiler.config import CompileConfig, DataConfig, OutputConfig, OutputFormat, QuantMode

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import make_compiler_models as mk  # noqa: E402


@pytest.fixture(scope="module")
def conv_bn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("conv_bn")
    return mk.conv_bn_onnx(out), out / "conv_bn_data.npz"


def _cfg(data: Path, quantize: QuantMode, **kw: Any) -> CompileConfig:
    return CompileConfig(quantize=quantize, format=OutputFormat.ONNX,
                         data=DataConfig(calibration=str(data), max_calibration_samples=32, **kw),
                         output=OutputConfig(latency_runs=30))


def test_onnx_int8_folds_batchnorm_and_is_smaller_than_float(conv_bn: tuple[Path, Path], tmp_path: Path) -> None:
    """Issue 11: the static int8 ONNX of an exporter-style conv net was larger than float32 (BatchNorm unfolded,
    Constant weights given QDQ pairs, because quant_pre_process failed silently in symbolic shape inference)."""
    import onnx

    src, data = conv_bn
    f32 = compile_model(src, tmp_path / "f32", _cfg(data, QuantMode.NONE))
    i8 = compile_model(src, tmp_path / "i8", _cfg(data, QuantMode.INT8))
    assert i8.chosen.quantization == "int8"
    assert i8.chosen.size <= f32.chosen.size, (i8.chosen.size, f32.chosen.size)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "i8" / "model.onnx")).graph.node]
    assert "BatchNormalization" not in ops
    assert "skipped" not in i8.chosen.notes["pre_process"]
    report = json.loads((i8.report_dir / "report.json").read_text())
    int8_row = next(r for r in report["variants"] if r["variant"] == "onnx-int8")
    assert int8_row["size_bytes"] <= next(r for r in report["variants"] if r["variant"] == "onnx-float32")["size_bytes"]
    assert "larger" not in int8_row["regressions"]
    assert "larger" not in (i8.report_dir / "report.md").read_text()
    x = np.load(data)["x"][:8]
    with edgefleet.load(tmp_path / "f32") as mf, edgefleet.load(tmp_path / "i8") as mq:
        assert np.mean(mf.predict(x).argmax(1) == mq.predict(x).argmax(1)) >= 0.75


@pytest.fixture(scope="module")
def tiny_dense(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("tiny_dense")
    return mk.tiny_dense_onnx(out), out / "tiny_dense_data.npz"


def test_a_larger_variant_is_flagged_and_warned_about(tiny_dense: tuple[Path, Path], tmp_path: Path,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    src, data = tiny_dense
    result = compile_model(src, tmp_path / "b", _cfg(data, QuantMode.INT8))
    r = result.chosen
    assert r.quantization == "int8" and "larger" in r.regressions
    f32 = next(v for v in result.variants if v.quantization == "float32")
    assert r.regressions["larger"] == {"size_bytes": r.size, "float32_size_bytes": f32.size}
    err = capfd.readouterr().err
    assert f"onnx-int8 is larger than float32 ({r.size:,} vs {f32.size:,} bytes)" in err
    assert result.warnings and result.warnings[0] in err
    row = next(x for x in json.loads((result.report_dir / "report.json").read_text())["variants"] if x["variant"] == "onnx-int8")
    assert row["regressions"]["larger"]["size_bytes"] == r.size
    md = (result.report_dir / "report.md").read_text()
    assert f"**larger**: {r.size:,} vs {f32.size:,} bytes" in md


def test_auto_never_chooses_a_larger_or_slower_variant(tiny_dense: tuple[Path, Path], tmp_path: Path) -> None:
    src, data = tiny_dense
    cfg = replace(_cfg(data, QuantMode.AUTO, eval=str(data)), max_accuracy_drop=100.0)
    result = compile_model(src, tmp_path / "b", cfg)
    flagged = [v for v in result.variants if v.regressions]
    assert any(v.quantization == "int8" for v in flagged)
    assert not result.chosen.regressions
    assert "skipped as larger or slower than float32" in result.gate_message


def test_latency_and_source_hash_without_eval(conv_bn: tuple[Path, Path], tmp_path: Path) -> None:
    """Issue 11: without --eval the manifest and report recorded p50 0.0; lineage hashed the quantized file."""
    import hashlib

    src, data = conv_bn
    for name, cfg in (("calib", _cfg(data, QuantMode.INT8)),
                      ("synthetic", CompileConfig(format=OutputFormat.ONNX, output=OutputConfig(latency_runs=20)))):
        result = compile_model(src, tmp_path / name, cfg)
        assert all(v.p50_ms > 0 for v in result.variants if v.model_path is not None)
        with edgefleet.load(tmp_path / name) as m:
            assert m.manifest.metrics["p50_latency_ms"] > 0
            assert m.manifest.lineage["source_model_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert result.report["latency_input"] == ("calibration sample" if name == "calib" else "synthetic inputs of the declared shapes")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every model of make_compiler_models.py; Keras ones are built in a child process."""
    out = tmp_path_factory.mktemp("built")
    subprocess.run([sys.executable, str(HERE / "make_compiler_models.py"), str(out)], check=True, capture_output=True)
    return out


def _multi_cfg(data: Path, quantize: QuantMode, fmt: OutputFormat) -> CompileConfig:
    return CompileConfig(quantize=quantize, format=fmt, max_accuracy_drop=None,
                         data=DataConfig(calibration=str(data), eval=str(data), label="target", max_calibration_samples=64),
                         output=OutputConfig(latency_runs=20))


@pytest.mark.parametrize("kind,fmt", [("keras", OutputFormat.TFLITE), ("keras", OutputFormat.ONNX), ("onnx", OutputFormat.ONNX)])
def test_two_input_two_output_models_compile_end_to_end(built: Path, tmp_path: Path, kind: str, fmt: OutputFormat) -> None:
    src = built / f"two_input.{kind}"
    data = built / f"two_input_{kind}.npz"
    d = dict(np.load(data))
    x = {"a": d["a"], "b": d["b"]}
    for q in (QuantMode.NONE, QuantMode.INT8):
        out = tmp_path / f"{fmt.value}-{q.value}"
        result = compile_model(src, out, _multi_cfg(data, q, fmt))
        assert result.chosen.quantization == ("float32" if q is QuantMode.NONE else "int8")
        assert result.baseline is not None and result.baseline.metric == "accuracy"
        assert result.chosen.p50_ms > 0
        with edgefleet.load(out) as m:
            names = [s.name for s in m.manifest.inputs]
            assert len(names) == 2 and len(m.manifest.outputs) == 2
            assert m.run_smoke_tests().ok
            feed = {n: x["a" if "a" in n.split(":")[0].split("_")[-1:] else "b"] for n in names}
            pred = m.predict(feed)
            assert isinstance(pred, dict) and len(pred) == 2
            probs = next(v for v in pred.values() if v.shape[-1] == 3)
            acc = float(np.mean(probs.argmax(1) == d["target"]) * 100)
            assert acc == pytest.approx(result.chosen.score.value, abs=1e-6)
            if q is QuantMode.NONE:
                assert acc == pytest.approx(result.baseline.value, abs=1e-6)
            else:
                assert acc >= result.baseline.value - 15


def test_multi_input_data_errors_are_named(built: Path, tmp_path: Path) -> None:
    from edgefleet.errors import InvalidInputError

    src = built / "two_input.onnx"
    data = built / "two_input_onnx.npz"
    with pytest.raises(InvalidInputError, match=r"unexpected \['target'\].*--label"):  # labels not named
        compile_model(src, tmp_path / "b", replace(_multi_cfg(data, QuantMode.NONE, OutputFormat.ONNX),
                                                   data=DataConfig(eval=str(data))))
    with pytest.raises(InvalidInputError, match="--label nope names none"):
        compile_model(src, tmp_path / "b", replace(_multi_cfg(data, QuantMode.NONE, OutputFormat.ONNX),
                                                   data=DataConfig(eval=str(data), label="nope")))
    single = tmp_path / "x.npz"
    np.savez(single, x=np.zeros((4, 6), np.float32))
    with pytest.raises(InvalidInputError, match="one array per input name"):
        compile_model(src, tmp_path / "b", replace(_multi_cfg(data, QuantMode.INT8, OutputFormat.ONNX),
                                                   data=DataConfig(calibration=str(single))))
    assert not (tmp_path / "b").exists()
