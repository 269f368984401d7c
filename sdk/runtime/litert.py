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
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

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
    dtype = np.dtype(detail["dtype"]).name
    quant = None
    if scale and dtype in ("int8", "uint8", "int16", "int32"):
        quant = Quantization(float(scale), int(zero_point))
    return TensorSpec(name=str(detail["name"]), shape=tuple(shape), dtype=dtype, quantization=quant)


class LiteRTBackend:
    name = "litert"

    def __init__(self, path: str, threads: int | None = None) -> None:
        cls, self.version = _interpreter_class()
        try:
            self._interp = cls(model_path=path, num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeBackendError(f"LiteRT cannot load {path}: {exc}") from None
        in_details = self._interp.get_input_details()
        out_details = self._interp.get_output_details()
        self.inputs = tuple(_spec(d) for d in in_details)
        self.outputs = tuple(_spec(d) for d in out_details)
        self._in_index = [int(d["index"]) for d in in_details]
        self._out_index = [int(d["index"]) for d in out_details]
        self._current = [tuple(int(x) for x in d["shape"]) for d in in_details]
        self.batch_resizable = all(s.shape and s.shape[0] == -1 for s in self.inputs)
        self._lock = threading.Lock()
        self._single, self._in0 = len(self._in_index) == 1, self._in_index[0]
        self._single_out, self._out0 = len(self._out_index) == 1, self._out_index[0]

    def _resize(self, arrays: Sequence[np.ndarray]) -> None:
        for i, arr in enumerate(arrays):
            if arr.shape != self._current[i]:
                self._interp.resize_tensor_input(self._in_index[i], list(arr.shape), strict=True)
                self._current[i] = arr.shape
        self._interp.allocate_tensors()

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        interp = self._interp
        with self._lock:
            try:
                if self._single:
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
        self._interp = None  # type: ignore[assignment]
