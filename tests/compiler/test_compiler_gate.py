"""The gate as pure logic: fallback chain, auto picks the fastest within budget, impossible budgets."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.compiler.config import QuantMode
from edgefleet.compiler.evaluate import Score, VariantResult
from edgefleet.compiler.gate import chain_for, run_gate
from edgefleet.errors import AccuracyBudgetError, CompileError


def fake(drops: dict[str, float], p50: dict[str, float] | None = None, fail: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def evaluate(fmt: str, variant: str) -> VariantResult:
        calls.append(f"{fmt}-{variant}")
        if variant in fail:
            raise CompileError(f"{variant} unsupported")
        r = VariantResult(name=f"{fmt}-{variant}", format=fmt, quantization=variant, model_path=Path("m"))
        r.score = Score("accuracy", 97.0 - drops[variant], True)
        r.drop = drops[variant]
        r.p50_ms = (p50 or {}).get(variant, 1.0)
        return r

    return evaluate, calls


DROPS = {"int8": 3.0, "int8-mixed": 1.5, "dynamic": 0.2, "float16": 0.0, "float32": 0.0, "int16x8": 0.1}


def test_chain_order() -> None:
    assert chain_for(QuantMode.INT8) == ("int8", "int8-mixed", "dynamic", "float16", "float32")
    assert chain_for(QuantMode.DYNAMIC) == ("dynamic", "float16", "float32")
    assert chain_for(QuantMode.NONE) == ("float32",)


def test_fallback_stops_at_the_first_variant_within_budget() -> None:
    evaluate, calls = fake(DROPS)
    d = run_gate(["tflite"], QuantMode.INT8, 0.5, evaluate)
    assert calls == ["tflite-int8", "tflite-int8-mixed", "tflite-dynamic"]
    assert d.chosen.quantization == "dynamic" and d.chosen.chosen
    assert "fell back to dynamic" in d.message and "int8 drop 3.00" in d.message


def test_mixed_int8_holds_when_it_is_within_budget() -> None:
    evaluate, _ = fake(DROPS)
    assert run_gate(["tflite"], QuantMode.INT8, 2.0, evaluate).chosen.quantization == "int8-mixed"


def test_without_budget_the_requested_mode_is_kept() -> None:
    evaluate, calls = fake(DROPS)
    assert run_gate(["onnx"], QuantMode.INT8, None, evaluate).chosen.name == "onnx-int8"
    assert calls == ["onnx-int8"]


def test_auto_keeps_the_fastest_within_budget() -> None:
    p50 = {"int8": 0.05, "int8-mixed": 0.4, "dynamic": 0.3, "float16": 0.2, "float32": 0.1}
    evaluate, calls = fake(DROPS, p50)
    d = run_gate(["tflite"], QuantMode.AUTO, 0.5, evaluate)
    assert d.chosen.quantization == "float32"  # int8 is fastest but over budget; float32 beats dynamic here
    assert "tflite-int8-mixed" in calls


def test_a_failing_conversion_falls_back_too() -> None:
    evaluate, _ = fake(DROPS, fail=("int8", "int8-mixed"))
    d = run_gate(["tflite"], QuantMode.INT8, 0.5, evaluate)
    assert d.chosen.quantization == "dynamic"
    assert any(r.notes.get("error") for r in d.results)


def test_impossible_budget_names_what_to_change() -> None:
    evaluate, _ = fake({k: 5.0 for k in DROPS})
    with pytest.raises(AccuracyBudgetError, match="raise --max-accuracy-drop to at least 5.00"):
        run_gate(["tflite"], QuantMode.INT8, 0.5, evaluate)


def test_auto_never_chooses_a_regression_even_when_it_is_fastest() -> None:
    p50 = {"int8": 0.05, "int8-mixed": 0.4, "dynamic": 0.3, "float16": 0.2, "float32": 0.1}
    inner, _ = fake(DROPS, p50)

    def evaluate(fmt: str, variant: str) -> VariantResult:
        r = inner(fmt, variant)
        if variant == "int8":
            r.regressions = {"larger": {"size_bytes": 2000, "float32_size_bytes": 1000}}
        return r

    d = run_gate(["onnx"], QuantMode.AUTO, 5.0, evaluate)
    assert d.chosen.quantization == "float32"
    assert "skipped as larger or slower than float32: onnx-int8 (larger)" in d.message
