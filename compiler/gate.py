"""The accuracy gate and the quantization fallback chain.

With a budget (``max_accuracy_drop``, in accuracy points, or MAE units for
regression) a variant whose drop from the source model exceeds it is
rejected, and the next, less aggressive variant is tried::

    int8 -> int8-mixed (sensitive layers in float) -> dynamic -> float16 -> float32

``auto`` measures all of them and keeps the *fastest* (p50) within the budget:
on small CPUs an int8 model is not always the fastest, so we measure and never
assume. A variant larger or slower than float32 (``VariantResult.regressions``)
is never chosen by ``auto``. The gate is pure logic: it calls ``evaluate(format, variant)`` and
decides; building and measuring variants is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from edgefleet.errors import AccuracyBudgetError, CompileError, InvalidInputError

from .config import QuantMode
from .evaluate import VariantResult

CHAIN = ("int8", "int8-mixed", "dynamic", "float16", "float32")
AUTO_CANDIDATES = ("int8", "dynamic", "float16", "float32")
DEFAULT_AUTO_BUDGET = 1.0
SUPPORTED = {
    "tflite": ("float32", "float16", "dynamic", "int8", "int8-mixed", "int16x8"),
    "onnx": ("float32", "float16", "dynamic", "int8", "int8-mixed"),
}

Evaluate = Callable[[str, str], VariantResult]


def chain_for(mode: QuantMode) -> tuple[str, ...]:
    """The variants tried, in order, when ``mode`` is requested."""
    if mode is QuantMode.NONE:
        return ("float32",)
    if mode is QuantMode.INT16X8:
        return ("int16x8", "dynamic", "float16", "float32")
    if mode is QuantMode.AUTO:
        return CHAIN
    start = CHAIN.index(mode.value)
    return CHAIN[start:]


@dataclass
class GateDecision:
    chosen: VariantResult
    results: list[VariantResult]
    message: str
    budget: float | None


def _within(r: VariantResult, budget: float | None) -> bool | None:
    if budget is None or r.score is None:
        return None
    return r.drop <= budget + 1e-9


def _try(evaluate: Evaluate, fmt: str, variant: str, results: list[VariantResult], budget: float | None, last: bool) -> VariantResult | None:
    try:
        r = evaluate(fmt, variant)
    except InvalidInputError:
        raise
    except CompileError as exc:
        if last:
            raise
        results.append(VariantResult(name=f"{fmt}-{variant}", format=fmt, quantization=variant, model_path=None,
                                     within_budget=False, notes={"error": str(exc)[:300]}))
        return None
    r.within_budget = _within(r, budget)
    if not any(x is r for x in results):
        results.append(r)
    return r


def _budget_error(results: list[VariantResult], budget: float) -> AccuracyBudgetError:
    measured = [r for r in results if r.score is not None]
    lines = ", ".join(f"{r.name} drop {r.drop:.2f}" for r in measured) or "nothing could be measured"
    best = min((r.drop for r in measured), default=None)
    hint = f"raise --max-accuracy-drop to at least {best:.2f}" if best is not None else "check the model and data"
    return AccuracyBudgetError(
        f"gate: no variant met the accuracy budget of {budget:g} points ({lines}); "
        f"{hint}, or prune/distill less (lower --prune, --prune-structured, or a wider --distill-width)"
    )


def run_gate(formats: Sequence[str], mode: QuantMode, budget: float | None, evaluate: Evaluate) -> GateDecision:
    results: list[VariantResult] = []
    if mode is QuantMode.AUTO:
        budget = DEFAULT_AUTO_BUDGET if budget is None else budget
        for fmt in formats:
            by_variant: dict[str, VariantResult] = {}
            for variant in AUTO_CANDIDATES:
                r = _try(evaluate, fmt, variant, results, budget, last=False)
                if r is not None:
                    by_variant[variant] = r
            int8 = by_variant.get("int8")
            if int8 is None or not int8.within_budget:
                _try(evaluate, fmt, "int8-mixed", results, budget, last=False)
        within = [r for r in results if r.within_budget]
        if not within:
            raise _budget_error(results, budget)
        ok = [r for r in within if not r.regressions] or [r for r in within if r.quantization == "float32"] or within
        chosen = min(ok, key=lambda r: (r.p50_ms, r.size))
        skipped = [r for r in within if r.regressions]
        message = (f"auto: {chosen.name} is the fastest variant within {budget:g} points "
                   f"(p50 {chosen.p50_ms:.3f} ms, drop {chosen.drop:.2f}) of {len(results)} measured")
        if skipped:
            message += "; skipped as larger or slower than float32: " + ", ".join(
                f"{r.name} ({'/'.join(r.regressions)})" for r in skipped)
    else:
        winners: list[tuple[VariantResult, str]] = []
        for fmt in formats:
            chain = [v for v in chain_for(mode) if v in SUPPORTED[fmt]]
            if not chain:
                raise CompileError(f"quantize: {fmt} has no {mode.value} mode; use --format tflite")
            if budget is None:
                chain = chain[:1]
            rejected: list[VariantResult] = []
            for i, variant in enumerate(chain):
                r = _try(evaluate, fmt, variant, results, budget, last=i == len(chain) - 1 and budget is None)
                if r is None:
                    continue
                if budget is None or r.within_budget:
                    if rejected:
                        why = "; ".join(f"{x.quantization} drop {x.drop:.2f}" for x in rejected)
                        msg = f"{fmt}: {chain[0]} was over the {budget:g}-point budget ({why}); fell back to {variant}, which held (drop {r.drop:.2f})"
                    elif budget is not None:
                        msg = f"{fmt}: {variant} held within the {budget:g}-point budget (drop {r.drop:.2f})"
                    else:
                        msg = f"{fmt}: {variant} (no accuracy budget given)"
                    winners.append((r, msg))
                    break
                rejected.append(r)
        if not winners:
            raise _budget_error(results, budget if budget is not None else 0.0)
        chosen, message = min(winners, key=lambda w: (w[0].p50_ms if len(winners) > 1 else 0.0))
    for r in results:
        r.chosen = r is chosen
    return GateDecision(chosen, results, message, budget)


__all__ = ["run_gate", "chain_for", "GateDecision", "CHAIN", "DEFAULT_AUTO_BUDGET"]
