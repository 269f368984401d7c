"""LiteRT (``ai-edge-litert``) backend; ``tflite_runtime`` only as a fallback."""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import RuntimeBackendError
from ..manifest import Quantization, TensorSpec


def _interpreter_class() -> tuple[Any, str]:
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter as litert

        ver = getattr(ai_edge_litert, "__version__", "unknown")
        return litert.Interpreter, f"ai-edge-litert {ver}"
    except ImportError:
        pass
    try:  # pragma: no cover - only where ai-edge-litert is unavailable
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise RuntimeBackendError(
            "no LiteRT runtime: install it with pip install 'edgefleet[device]' (ai-edge-litert)"
        ) from None


def _spec(detail: dict[str, Any]) -> TensorSpec:
    sig = detail.get("shape_signature")
    shape = [int(d) for d in (sig if sig is not None and len(sig) else detail["shape"])]
    shape = [d if d > 0 else -1 for d in shape]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    dt = np.dtype(detail["dtype"])
    dtype = "string" if dt.kind in "SUO" else dt.name
    quant = None
    if scale and dtype in ("int8", "uint8", "int16", "int32"):
        quant = Quantization(float(scale), int(zero_point))
    return TensorSpec(name=str(detail["name"]), shape=tuple(shape), dtype=dtype, quantization=quant)


_VARIABLE_OPS = {"VAR_HANDLE", "ASSIGN_VARIABLE", "READ_VARIABLE"}


class LiteRTBackend:
    name = "litert"

    def __init__(self, path: str, threads: int | None = None) -> None:
        cls, self.version = _interpreter_class()
        self._cls, self._path, self._threads = cls, path, threads
        self._interp = self._new_interpreter()
        in_details = self._interp.get_input_details()
        out_details = self._interp.get_output_details()
        self.inputs = tuple(_spec(d) for d in in_details)
        self.outputs = tuple(_spec(d) for d in out_details)
        self._in_index = [int(d["index"]) for d in in_details]
        self._out_index = [int(d["index"]) for d in out_details]
        self._initial = [tuple(int(x) for x in d["shape"]) for d in in_details]
        self._current = list(self._initial)
        self.has_variables = self._uses_variables()
        self._lock = threading.Lock()
        self._single = len(self._in_index) == 1
        self._in0 = self._in_index[0] if self._in_index else -1
        self._single_out, self._out0 = len(self._out_index) == 1, self._out_index[0]

    def _new_interpreter(self) -> Any:
        try:
            interp = self._cls(model_path=self._path, num_threads=self._threads)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeBackendError(f"LiteRT cannot load {self._path}: {exc}") from None
        return interp

    def _uses_variables(self) -> bool:
        try:
            ops = self._interp._get_ops_details()
        except Exception:  # pragma: no cover - private API missing in some LiteRT build
            return False
        return any(op.get("op_name") in _VARIABLE_OPS for op in ops)

    def _fresh(self) -> None:
        """A new interpreter: resource variables back to their initial values (LiteRT's
        reset_all_variables does not reset resource variables)."""
        self._interp = self._new_interpreter()
        self._current = list(self._initial)

    def reset_variables(self) -> None:
        if self.has_variables:
            with self._lock:
                self._fresh()

    def clone(self) -> LiteRTBackend:
        return LiteRTBackend(self._path, self._threads)

    def _resize(self, arrays: Sequence[np.ndarray]) -> None:
        for i, arr in enumerate(arrays):
            if arr.shape != self._current[i]:
                self._interp.resize_tensor_input(self._in_index[i], list(arr.shape), strict=True)
                self._current[i] = arr.shape
        self._interp.allocate_tensors()

    def run(self, arrays: Sequence[np.ndarray], reset: bool = False) -> list[np.ndarray]:
        with self._lock:
            if reset and self.has_variables:
                self._fresh()
            interp = self._interp
            try:
                if not self._in_index:
                    pass
                elif self._single:
                    arr = arrays[0]
                    if arr.shape != self._current[0]:
                        self._resize(arrays)
                    interp.set_tensor(self._in0, arr)
                else:
                    if any(a.shape != c for a, c in zip(arrays, self._current)):
                        self._resize(arrays)
                    for idx, arr in zip(self._in_index, arrays):
                        interp.set_tensor(idx, arr)
                interp.invoke()
            except (ValueError, RuntimeError) as exc:
                raise RuntimeBackendError(
                    f"LiteRT failed to run the model on inputs {[a.shape for a in arrays]}: {exc}"
                ) from None
            if self._single_out:
                return [interp.get_tensor(self._out0)]
            return [interp.get_tensor(idx) for idx in self._out_index]

    def raw_call(self) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
        interp, in_index, out_index = self._interp, self._in_index, self._out_index

        def call(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
            for idx, arr in zip(in_index, arrays):
                interp.set_tensor(idx, arr)
            interp.invoke()
            return [interp.get_tensor(idx) for idx in out_index]

        return call

    def close(self) -> None:
        self._interp = None
