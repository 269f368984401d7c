"""edgefleet.compiler: prune, distill, quantize and export models, with an accuracy gate and a report.

``from edgefleet.compiler import compile_model, CompileConfig`` is light: the
heavy toolchains (TensorFlow, ONNX Runtime quantization, tf2onnx) load only
when a pass runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.lazy import lazy_attributes

_LAZY = {
    "compile_model": ("edgefleet.compiler.api", "compile_model"),
    "CompileResult": ("edgefleet.compiler.api", "CompileResult"),
    "CompileConfig": ("edgefleet.compiler.config", "CompileConfig"),
    "QuantMode": ("edgefleet.compiler.config", "QuantMode"),
    "OutputFormat": ("edgefleet.compiler.config", "OutputFormat"),
    "load_recipe": ("edgefleet.compiler.config", "load_recipe"),
    "load_data": ("edgefleet.compiler.data", "load_data"),
}

if TYPE_CHECKING:  # the names _LAZY loads, typed for mypy and IDEs (a test keeps both in step)
    from .api import CompileResult as CompileResult
    from .api import compile_model as compile_model
    from .config import CompileConfig as CompileConfig
    from .config import OutputFormat as OutputFormat
    from .config import QuantMode as QuantMode
    from .config import load_recipe as load_recipe
    from .data import load_data as load_data

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = list(_LAZY)
