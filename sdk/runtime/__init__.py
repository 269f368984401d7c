"""Runtime backends: LiteRT for ``.tflite``, ONNX Runtime for ``.onnx``.

Each backend module imports its runtime only when a model is opened, so
``import edgefleet`` stays light and a device needs only the runtime it uses.
"""

from __future__ import annotations

import os

from ..errors import RuntimeBackendError, UnsupportedFormatError
from ..manifest import ModelFormat
from .base import Backend

BACKENDS = {"litert": ModelFormat.TFLITE, "tflite": ModelFormat.TFLITE, "onnxruntime": ModelFormat.ONNX, "onnx": ModelFormat.ONNX}


def format_of(path: str | os.PathLike[str]) -> ModelFormat:
    """Model format from the file suffix, or from its first bytes."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix == ".tflite":
        return ModelFormat.TFLITE
    if suffix == ".onnx":
        return ModelFormat.ONNX
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise UnsupportedFormatError(f"cannot read model {path}: {exc.strerror}") from None
    if head[4:8] == b"TFL3":
        return ModelFormat.TFLITE
    raise UnsupportedFormatError(
        f"{path}: unknown model type (expected a .tflite or .onnx file)"
    )


def open_backend(
    path: str | os.PathLike[str],
    model_format: ModelFormat,
    backend: str | None = None,
    threads: int | None = None,
) -> Backend:
    """Open ``path`` with the backend the format calls for, or the one asked for."""
    if backend is not None:
        wanted = BACKENDS.get(backend.lower())
        if wanted is None:
            raise RuntimeBackendError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
        if wanted is not model_format:
            raise RuntimeBackendError(
                f"backend {backend!r} cannot run a {model_format.value} model; "
                f"use {'litert' if model_format is ModelFormat.TFLITE else 'onnxruntime'}"
            )
    if threads is not None and threads < 1:
        raise RuntimeBackendError(f"threads must be >= 1, got {threads}")
    if model_format is ModelFormat.TFLITE:
        from .litert import LiteRTBackend

        return LiteRTBackend(str(path), threads)
    from .onnxrt import OnnxBackend

    return OnnxBackend(str(path), threads)


__all__ = ["Backend", "format_of", "open_backend", "BACKENDS"]
