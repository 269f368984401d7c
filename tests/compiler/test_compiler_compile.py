"""compile_model and the CLI end to end: bundles, gate fallback, reproducibility, bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgefleet
from edgefleet.compiler.api import _Compiler, compile_model
from edgefleet.compiler.config import OutputFormat, PruneConfig, QuantMode
from edgefleet.errors import AccuracyBudgetError, CompileError, ConfigError, InvalidInputError


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert not Path(str(out) + ".report").exists()


def test_int8_bundle_is_signed_complete_and_runs(tiny_keras: Path, base_config: Any, keypair: tuple[Path, Path],
                                                tmp_path: Path, digits_arrays: dict[str, np.ndarray]) -> None:
    priv, pub = keypair
    cfg = replace(base_config, quantize=QuantMode.INT8, max_accuracy_drop=2.0,
                  output=replace(base_config.output, key=str(priv), name="digits", version="3"))
    out = tmp_path / "b"
    result = compile_model(tiny_keras, out, cfg)
    assert result.chosen.quantization in ("int8", "int8-mixed", "dynamic")
    m = edgefleet.load(out, trusted_keys=pub)
    with m:
        man = m.manifest
        assert man.name == "digits" and man.version == "3"
        # the recipe as compiled, with file names instead of build-host paths (the key's included)
        want = cfg.to_dict()
        got = man.lineage["recipe"]
        assert got.keys() == want.keys() and got["output"]["key"] == priv.name
        for section, fields in want.items():
            for field, value in (fields.items() if isinstance(fields, dict) else []):
                shown = got[section][field]
                assert shown == value or (isinstance(value, str) and shown == Path(value).name), (section, field)
        assert str(tmp_path) not in json.dumps(man.to_dict())
        assert man.lineage["source"]["sha256"] and man.lineage["datasets"]["eval"]["samples"] == 450
        assert man.reference_stats and man.preprocessing and list(man.labels) == [str(i) for i in range(10)]
        assert m.run_smoke_tests().ok
        assert len(man.smoke_tests["inputs"][man.inputs[0].name]) == 4
        acc = np.mean(m.predict(digits_arrays["xte"]).argmax(1) == digits_arrays["yte"]) * 100  # raw 0..16 pixels
        assert acc == pytest.approx(man.metrics["accuracy"], abs=1e-3)
    report = json.loads((result.report_dir / "report.json").read_text())
    assert {r["variant"] for r in report["variants"]} >= {"tflite-float32", result.chosen.name}
    assert (result.report_dir / "report.md").read_text().count("| tflite-") >= 2
    assert (result.report_dir / "accuracy_vs_size.png").stat().st_size > 1000


def test_gate_falls_back_when_int8_is_over_budget(tiny_keras: Path, base_config: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = _Compiler.evaluate

    def worse_int8(self: _Compiler, fmt: str, variant: str) -> Any:
        r = real(self, fmt, variant)
        if variant.startswith("int8"):
            r.drop = 10.0  # force the budget to fail for every int8 variant
        return r

    monkeypatch.setattr(_Compiler, "evaluate", worse_int8)
    cfg = replace(base_config, quantize=QuantMode.INT8, max_accuracy_drop=1.0)
    result = compile_model(tiny_keras, tmp_path / "b", cfg)
    assert [r.quantization for r in result.variants if r.within_budget is not None] == ["dynamic", "int8-mixed", "int8"]
    assert result.chosen.quantization == "dynamic"
    assert "fell back to dynamic" in result.gate_message
    with edgefleet.load(tmp_path / "b") as m:
        assert m.manifest.metrics["quantization"] == "dynamic"


def test_impossible_budget_leaves_nothing_behind(tiny_keras: Path, base_config: Any, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = _Compiler.evaluate

    def hopeless(self: _Compiler, fmt: str, variant: str) -> Any:
        r = real(self, fmt, variant)
        r.drop = 50.0
        return r

    monkeypatch.setattr(_Compiler, "evaluate", hopeless)
    out = tmp_path / "b"
    with pytest.raises(AccuracyBudgetError, match="max-accuracy-drop"):
        compile_model(tiny_keras, out, replace(base_config, quantize=QuantMode.DYNAMIC, max_accuracy_drop=0.5))
    _nothing_left(out)


def test_onnx_auto_from_an_onnx_source(tiny_onnx: Path, base_config: Any, tmp_path: Path) -> None:
    from edgefleet.compiler.examples import DIGITS_PREPROCESSING

    cfg = replace(base_config, quantize=QuantMode.AUTO, format=OutputFormat.ONNX, max_accuracy_drop=1.5,
                  preprocessing=DIGITS_PREPROCESSING)
    result = compile_model(tiny_onnx, tmp_path / "b", cfg)
    names = {r.name for r in result.variants}
    assert {"onnx-float32", "onnx-dynamic", "onnx-int8", "onnx-float16"} <= names
    ok = [r for r in result.variants if r.within_budget]
    assert result.chosen.p50_ms == min(r.p50_ms for r in ok)
    with edgefleet.load(tmp_path / "b") as m:
        assert m.manifest.model_format.value == "onnx" and m.run_smoke_tests().ok


def test_same_recipe_and_seed_give_the_same_model(tiny_keras: Path, base_config: Any, tmp_path: Path) -> None:
    cfg = replace(base_config, quantize=QuantMode.INT8, prune=PruneConfig(sparsity=0.5, epochs=1),
                  output=replace(base_config.output, report=False))
    digests = []
    for i in range(2):
        compile_model(tiny_keras, tmp_path / f"b{i}", cfg)
        with edgefleet.load(tmp_path / f"b{i}") as m:
            digests.append(m.manifest.files["model.tflite"].sha256)
            assert m.manifest.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert digests[0] == digests[1]


# -- bad inputs -------------------------------------------------------------------------
def test_unknown_file_type(tmp_path: Path, base_config: Any) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(b"not a model")
    with pytest.raises(CompileError, match="unknown model type .pt"):
        compile_model(src, tmp_path / "b", base_config)
    _nothing_left(tmp_path / "b")


@pytest.mark.parametrize("suffix", [".keras", ".onnx", ".tflite"])
def test_corrupt_model(tmp_path: Path, base_config: Any, suffix: str) -> None:
    src = tmp_path / f"model{suffix}"
    src.write_bytes(b"\x00garbage" * 50)
    cfg = replace(base_config, format=OutputFormat.ONNX if suffix == ".onnx" else OutputFormat.TFLITE)
    with pytest.raises(CompileError, match="corrupt"):
        compile_model(src, tmp_path / "b", cfg)
    _nothing_left(tmp_path / "b")


def test_shape_mismatch(tiny_keras: Path, base_config: Any, tmp_path: Path) -> None:
    bad = tmp_path / "flat.npz"
    np.savez(bad, x=np.zeros((20, 64), np.float32), y=np.zeros(20, np.int64))
    cfg = replace(base_config, preprocessing=[{"op": "scale", "factor": 0.0625}],
                  data=replace(base_config.data, eval=str(bad)))
    with pytest.raises(InvalidInputError, match=r"\(64,\).*\(8, 8, 1\)"):
        compile_model(tiny_keras, tmp_path / "b", cfg)
    _nothing_left(tmp_path / "b")


def test_empty_calibration_set(tiny_keras: Path, base_config: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 8, 8), np.float32), y=np.zeros(0, np.int64))
    cfg = replace(base_config, quantize=QuantMode.INT8, data=replace(base_config.data, calibration=str(empty)))
    with pytest.raises(InvalidInputError, match="no samples"):
        compile_model(tiny_keras, tmp_path / "b", cfg)
    _nothing_left(tmp_path / "b")


def test_option_errors_are_named(tiny_keras: Path, tiny_onnx: Path, base_config: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Keras source"):
        compile_model(tiny_onnx, tmp_path / "b", replace(base_config, format=OutputFormat.ONNX, prune=PruneConfig(sparsity=0.5)))
    with pytest.raises(ConfigError, match="--eval"):
        compile_model(tiny_keras, tmp_path / "b", replace(base_config, max_accuracy_drop=1.0, data=replace(base_config.data, eval=None)))
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        compile_model(tiny_keras, tmp_path / "exists", base_config)


def test_cli_compile_and_exit_codes(tiny_keras: Path, digits_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main

    recipe = tmp_path / "r.toml"
    recipe.write_text("[output]\nlatency_runs = 10\n[data]\nmax_calibration_samples = 50\n")
    out = tmp_path / "cli-bundle"
    code = main(["compile", str(tiny_keras), "-o", str(out), "--recipe", str(recipe), "--quantize", "dynamic",
                 "--eval", str(digits_dir / "test.npz"), "--max-accuracy-drop", "2", "--quiet", "--name", "cli"])
    assert code == 0
    assert "gate: tflite: dynamic held" in capsys.readouterr().out
    with edgefleet.load(out) as m:
        assert m.manifest.lineage["recipe"]["output"]["latency_runs"] == 10
    bad = tmp_path / "m.pt"
    bad.write_bytes(b"x")
    assert main(["compile", str(bad), "-o", str(tmp_path / "x")]) == CompileError.exit_code
    assert main(["datasets", "digits", "-o", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "train.npz").is_file()
