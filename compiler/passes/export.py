"""Export: Keras / SavedModel / TFLite sources to float ``.tflite`` and ``.onnx``, checked against the source.

Keras 3 models go to ONNX through ``model.export(path, format="onnx")``
(``tf2onnx.convert.from_keras`` does not understand Keras 3); SavedModel
directories and ``.tflite`` files through the tf2onnx command line in a child
process (its Python API for them needs a frozen graph). Every export is run on
the eval data with the SDK runtime and compared with the source's outputs.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import CompileError

ONNX_OPSET = 17


@contextlib.contextmanager
def quiet() -> Any:
    """Silence the converters' chatter on stdout/stderr (Python level)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out


def tflite_converter(model: Any) -> Any:
    """A fresh ``TFLiteConverter`` for a Keras model or a SavedModel directory."""
    import tensorflow as tf

    if isinstance(model, (str, os.PathLike)):
        return tf.lite.TFLiteConverter.from_saved_model(str(model))
    return tf.lite.TFLiteConverter.from_keras_model(model)


def convert_tflite(converter: Any, out: Path, what: str) -> Path:
    try:
        with quiet():
            data = converter.convert()
    except Exception as exc:  # converter errors are many types; name the pass and the mode
        msg = str(exc).strip().splitlines()
        detail = next((line for line in msg if "error" in line.lower()), msg[0] if msg else type(exc).__name__)
        raise CompileError(
            f"quantize: the TFLite converter failed for {what}: {detail[:400]}. "
            "The model may use an op this mode does not support; try another --quantize mode"
        ) from None
    out.write_bytes(data)
    return out


def to_tflite(model: Any, out: Path) -> Path:
    """Float32 ``.tflite``."""
    return convert_tflite(tflite_converter(model), out, "float32")


def _ensure_called(model: Any) -> None:
    """Keras refuses to export a freshly loaded model that has never been called."""
    zeros = {t.name: np.zeros([1 if d is None else int(d) for d in t.shape], dtype=t.dtype or "float32") for t in model.inputs}
    model(next(iter(zeros.values())) if len(zeros) == 1 else zeros)


def to_onnx(model: Any, out: Path, source_kind: str = "keras") -> Path:
    """Float32 ``.onnx`` from a Keras model, a SavedModel directory or a ``.tflite`` file."""
    if source_kind == "keras":
        try:
            with quiet():
                _ensure_called(model)
                model.export(str(out), format="onnx", verbose=False)
        except Exception as exc:
            raise CompileError(f"export: Keras could not export the model to ONNX: {str(exc)[:400]}") from None
    else:
        flag = "--saved-model" if source_kind == "savedmodel" else "--tflite"
        cmd = [sys.executable, "-m", "tf2onnx.convert", flag, str(model), "--output", str(out), "--opset", str(ONNX_OPSET)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.is_file():
            tail = [line for line in proc.stderr.splitlines() if "rror" in line][-3:] or proc.stderr.splitlines()[-3:]
            raise CompileError(f"export: tf2onnx could not convert {model} to ONNX: {' | '.join(tail)[:600]}")
    return out


def _rows(outputs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(all outputs flattened side by side, the first output's rows) -- one output may be given bare."""
    outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    first = np.asarray(outs[0], np.float64).reshape(len(outs[0]), -1)
    return np.concatenate([np.asarray(o, np.float64).reshape(len(o), -1) for o in outs], axis=1), first


def compare_outputs(reference: Any, got: Any) -> dict[str, float]:
    """Max absolute difference over all outputs and (for class scores) top-1 agreement of the first output.
    ``reference`` and ``got`` are one array, or lists of the outputs in the same order."""
    (reference, ref_first), (got, got_first) = _rows(reference), _rows(got)
    if reference.shape != got.shape:
        raise CompileError(f"export: exported model outputs {got.shape}, the source {reference.shape}")
    result = {"max_abs_diff": float(np.max(np.abs(reference - got))) if reference.size else 0.0}
    if ref_first.shape[1] > 1 and ref_first.shape == got_first.shape:
        result["agreement"] = float(np.mean(ref_first.argmax(1) == got_first.argmax(1)) * 100.0)
    return result


def check_export(reference: Any, got: Any, what: str, atol: float = 1e-3) -> dict[str, float]:
    """Raise if a float export does not reproduce the source's outputs."""
    cmp = compare_outputs(reference, got)
    ref = _rows(reference)[0]
    scale = max(1.0, float(np.max(np.abs(ref))) if np.size(ref) else 1.0)
    if cmp["max_abs_diff"] > atol * scale:
        raise CompileError(
            f"export: the {what} export differs from the source by up to {cmp['max_abs_diff']:.3g} on the eval data; "
            "the converter changed the model's maths (report it with the model attached)"
        )
    return cmp


__all__ = ["to_tflite", "to_onnx", "tflite_converter", "convert_tflite", "compare_outputs", "check_export", "quiet"]
