"""edgefleet.compiler: prune, distill, quantize and export models, with an accuracy gate and a report.

``from edgefleet.compiler import compile_model, CompileConfig`` is light: the
heavy toolchains (TensorFlow, ONNX Runtime quantization, tf2onnx) load only
when a pass runs.
"""

from __future__ import annotations

from edgefleet.lazy import lazy_getattr

_LAZY = {
    "compile_model": ("edgefleet.compiler.api", "compile_model"),
    "CompileResult": ("edgefleet.compiler.api", "CompileResult"),
    "CompileConfig": ("edgefleet.compiler.config", "CompileConfig"),
    "QuantMode": ("edgefleet.compiler.config", "QuantMode"),
    "OutputFormat": ("edgefleet.compiler.config", "OutputFormat"),
    "load_recipe": ("edgefleet.compiler.config", "load_recipe"),
    "load_data": ("edgefleet.compiler.data", "load_data"),
}


__getattr__ = lazy_getattr("edgefleet.compiler", _LAZY, globals())

__all__ = list(_LAZY)
