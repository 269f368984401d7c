"""ONNX Runtime backend (CPU execution provider, no busy-wait spinning)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import RuntimeBackendError
from ..manifest import TensorSpec

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _spec(node: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(node.type)
    if dtype is None:
        raise RuntimeBackendError(f"ONNX tensor {node.name!r} has unsupported type {node.type}")
    shape = tuple(int(d) if isinstance(d, int) and d > 0 else -1 for d in node.shape)
    return TensorSpec(name=node.name, shape=shape, dtype=dtype)


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, path: str, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeBackendError(
                "ONNX Runtime is not installed: pip install 'edgefleet[device]' (onnxruntime)"
            ) from None
        self.version = f"onnxruntime {ort.__version__}"
        opts = ort.SessionOptions()
        # Never busy-wait between inferences: an idle device must not burn CPU.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise RuntimeBackendError(f"ONNX Runtime cannot load {path}: {exc}") from None
        self.inputs = tuple(_spec(n) for n in self._session.get_inputs())
        self.outputs = tuple(_spec(n) for n in self._session.get_outputs())
        self._in_names = [s.name for s in self.inputs]
        self._out_names = [s.name for s in self.outputs]
        self.batch_resizable = all(s.shape and s.shape[0] == -1 for s in self.inputs)

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        try:
            return list(self._session.run(self._out_names, dict(zip(self._in_names, arrays))))
        except Exception as exc:
            raise RuntimeBackendError(f"ONNX Runtime failed to run the model: {exc}") from None

    def raw_call(self) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
        session, in_names, out_names = self._session, self._in_names, self._out_names

        def call(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
            return list(session.run(out_names, dict(zip(in_names, arrays))))

        return call

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
