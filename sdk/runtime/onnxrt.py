"""ONNX Runtime backend (CPU execution provider, no busy-wait spinning)."""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import RuntimeBackendError, UnsupportedModelError
from ..manifest import TensorSpec

_ORT_TYPES = {
    "float": "float32",
    "float16": "float16",
    "double": "float64",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "string": "string",
}


#: dimension names exporters make up for "unknown" (tf2onnx and Keras's ONNX export write
#: unk__6, unk__7 for the batch of each input): no name, not distinct dimensions
_GENERATED_DIM = re.compile(r"^unk__\d+$")


def _spec(node: Any, what: str) -> TensorSpec:
    kind = str(node.type)
    if kind.startswith(("seq(", "optional(", "map(", "sparse_tensor(")):
        raise UnsupportedModelError(
            f"ONNX {what} {node.name!r} is a {kind}: edgefleet passes tensors only "
            "(sequence, optional, map and sparse types cannot be given or returned)"
        )
    dtype = _ORT_TYPES.get(kind[len("tensor(") : -1]) if kind.startswith("tensor(") else None
    if dtype is None:
        raise UnsupportedModelError(f"ONNX {what} {node.name!r} has the element type {kind}, which edgefleet cannot pass")
    raw = node.shape
    if raw is None:  # unknown rank
        raise UnsupportedModelError(f"ONNX {what} {node.name!r} has no known rank; give the graph's {what} a shape")
    shape = tuple(int(d) if isinstance(d, int) and d > 0 else -1 for d in raw)
    dims = tuple(d if isinstance(d, str) and d and not _GENERATED_DIM.match(d) else None for d in raw)
    return TensorSpec(name=node.name, shape=shape, dtype=dtype, dims=dims)


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
        self._path, self._threads = path, threads
        opts = ort.SessionOptions()
        # Never busy-wait between inferences: an idle device must not burn CPU.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        # kernel errors come back as a named RuntimeBackendError with ORT's message, so ORT's
        # own logger (which prints them to stderr again, in colour) keeps to fatal ones
        opts.log_severity_level = 4
        ort.set_default_logger_severity(4)
        try:
            self._session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise RuntimeBackendError(f"ONNX Runtime cannot load {path}: {exc}") from None
        self.inputs = tuple(_spec(n, "input") for n in self._session.get_inputs())
        self.outputs = tuple(_spec(n, "output") for n in self._session.get_outputs())
        self._in_names = [s.name for s in self.inputs]
        self._out_names = [s.name for s in self.outputs]
        self.has_variables = False

    def run(self, arrays: Sequence[np.ndarray], reset: bool = False) -> list[np.ndarray]:
        try:
            return list(self._session.run(self._out_names, dict(zip(self._in_names, arrays))))
        except Exception as exc:
            raise RuntimeBackendError(f"ONNX Runtime failed to run the model: {exc}") from None

    def raw_call(self) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
        session, in_names, out_names = self._session, self._in_names, self._out_names

        def call(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
            return list(session.run(out_names, dict(zip(in_names, arrays))))

        return call

    def reset_variables(self) -> None:
        return None

    def clone(self) -> OnnxBackend:
        return OnnxBackend(self._path, self._threads)

    def close(self) -> None:
        self._session = None
