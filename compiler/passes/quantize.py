"""Quantization: TFLite (dynamic, float16, int8, int8 with float islands, int16x8) and ONNX (dynamic, static QDQ, float16).

One entry point per format, dispatching on :class:`Variant` names:

=============  ==================================================================================
float32        no quantization
float16        weights stored as float16 (TFLite: dequantized at load; ONNX: float16 graph, float I/O)
dynamic        int8 weights, float activations (quantized on the fly)
int8           full integer: int8 weights and activations from calibration; TFLite I/O is int8
int8-mixed     int8, with the most sensitive layers kept in float (the gate's first fallback)
int16x8        TFLite only: int16 activations, int8 weights (float I/O)
=============  ==================================================================================

Calibration data is a plain iterable of preprocessed float32 batches (the
SDK's preprocessing pipeline applied to the calibration DATA), so the
quantization ranges describe exactly what the device will feed the model.

Sensitive layers: for TFLite they are measured with TensorFlow's
``QuantizationDebugger`` (per-layer RMSE of the quantized activation divided
by its quantization step); for ONNX the first and last weighted nodes are
kept in float (the layers known to suffer most), as ORT offers no cheap
per-node measure.
"""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edgefleet.errors import CompileError, InvalidInputError

from ..config import CalibrationMethod, QuantizeOptions
from ..data import n_samples, take
from .export import convert_tflite, quiet, tflite_converter

TFLITE_VARIANTS = ("float32", "float16", "dynamic", "int8", "int8-mixed", "int16x8")
ONNX_VARIANTS = ("float32", "float16", "dynamic", "int8", "int8-mixed")
_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def _representative(calibration: Any) -> Any:
    """TFLite's representative dataset: one sample at a time; several inputs as a dict by input (signature) name."""
    if calibration is None or n_samples(calibration) == 0:
        raise InvalidInputError(
            "quantize: the calibration set is empty; give --calibration DATA (or --train DATA) with samples"
        )
    if isinstance(calibration, dict):
        arrays = {k: np.asarray(v) for k, v in calibration.items()}

        def gen_multi() -> Iterable[dict[str, np.ndarray]]:
            for i in range(n_samples(arrays)):
                yield {k: v[i : i + 1] for k, v in arrays.items()}

        return gen_multi
    data = np.asarray(calibration, dtype=np.float32)

    def gen() -> Iterable[list[np.ndarray]]:
        for i in range(len(data)):
            yield [data[i : i + 1]]

    return gen


def sensitive_tflite_nodes(model: Any, calibration: np.ndarray, count: int) -> list[str]:
    """Names of the ``count`` layers whose int8 activations err most (RMSE / quantization step)."""
    import tensorflow as tf

    conv = tflite_converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _representative(calibration)
    try:
        with quiet():
            debugger = tf.lite.experimental.QuantizationDebugger(converter=conv, debug_dataset=_representative(take(calibration, slice(0, 64))))
            debugger.run()
            buf = io.StringIO()
            debugger.layer_statistics_dump(buf)
    except Exception as exc:
        raise CompileError(f"quantize: measuring layer sensitivity failed: {str(exc)[:300]}") from None
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    scored = []
    for row in rows:
        if row.get("op_name") not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_3D", "TRANSPOSE_CONV"):
            continue
        scale = float(row.get("scale") or 0.0)
        mse = float(row.get("mean_squared_error") or 0.0)
        score = np.sqrt(mse) / scale if scale > 0 else 0.0
        scored.append((score, row["tensor_name"]))
    scored.sort(key=lambda t: -t[0])
    return [name for _, name in scored[:count]]


def quantize_tflite(
    model: Any,
    variant: str,
    out: Path,
    calibration: Any = None,
    options: QuantizeOptions = QuantizeOptions(),
) -> tuple[Path, dict[str, Any]]:
    """Convert a Keras model (or SavedModel directory) to ``.tflite`` as ``variant``; return (path, notes)."""
    import tensorflow as tf

    if variant not in TFLITE_VARIANTS:
        raise CompileError(f"quantize: unknown TFLite variant {variant!r}; choose one of {TFLITE_VARIANTS}")
    notes: dict[str, Any] = {}
    conv = tflite_converter(model)
    if variant == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = _representative(calibration)  # type: ignore[arg-type]
        if options.tflite_exclude_nodes:
            return _selective(model, out, calibration, list(options.tflite_exclude_nodes), notes)  # type: ignore[arg-type]
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    elif variant == "int8-mixed":
        nodes = sensitive_tflite_nodes(model, calibration, options.sensitive_layers)  # type: ignore[arg-type]
        nodes = list(dict.fromkeys([*nodes, *options.tflite_exclude_nodes]))
        return _selective(model, out, calibration, nodes, notes)  # type: ignore[arg-type]
    elif variant == "int16x8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = _representative(calibration)  # type: ignore[arg-type]
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    convert_tflite(conv, out, variant)
    return out, notes


def _selective(model: Any, out: Path, calibration: np.ndarray, nodes: list[str], notes: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    import tensorflow as tf

    conv = tflite_converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _representative(calibration)
    try:
        with quiet():
            opts = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=conv, debug_dataset=_representative(take(calibration, slice(0, 8))), debug_options=opts
            )
            data = debugger.get_nondebug_quantized_model()
    except Exception as exc:
        raise CompileError(f"quantize: int8 with float layers {nodes} failed: {str(exc)[:300]}") from None
    out.write_bytes(data)
    notes["float_layers"] = nodes
    return out, notes


class _Reader:
    """ORT ``CalibrationDataReader``: one preprocessed sample per call (every input, by name)."""

    def __init__(self, names: list[str], data: Any) -> None:
        if not isinstance(data, dict):
            data = {names[0]: np.asarray(data, np.float32)}
        missing = [n for n in names if n not in data]
        if missing:
            raise InvalidInputError(f"quantize: the calibration data has arrays {sorted(data)}; the model's inputs are {names}")
        self._it = iter([{n: np.asarray(data[n][i : i + 1]) for n in names} for i in range(n_samples(data))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _weighted_nodes(model_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path)).graph
    return [n.name for n in graph.node if n.op_type in _WEIGHTED_OPS]


def _nodes_of_ops(model_path: Path, ops: Sequence[str]) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path)).graph
    return [n.name for n in graph.node if n.op_type in ops]


_ORT_METHODS = {CalibrationMethod.MINMAX: "MinMax", CalibrationMethod.ENTROPY: "Entropy", CalibrationMethod.PERCENTILE: "Percentile"}


def pre_process_onnx(float_model: Path, out: Path) -> str:
    """ONNX Runtime's ``quant_pre_process``: shape inference, then graph optimisation (BatchNorm folded into
    the Conv before it, ``Constant`` weights turned into initializers, ...), so the quantizer sees the graph
    ORT will run. Without it, an exporter's unfolded BatchNorm and Constant-node weights get quantize/
    dequantize pairs of their own and the "int8" model is larger and slower than the float one.

    ORT's symbolic shape inference gives up on some exporters' shape arithmetic (e.g. a Concat of shape
    values on axis -1); ONNX's own shape inference is then used, which still lets the optimiser fold.
    Returns how the model was prepared (for the variant's notes); ``skipped: ...`` if nothing worked.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    errors = []
    for how, skip_symbolic in (("symbolic shape inference + optimisation", False), ("onnx shape inference + optimisation", True)):
        try:
            # ORT's symbolic shape inference writes sym_shape_infer_temp.onnx into the working
            # directory: run it in the output's folder (absolute paths), never the user's
            with quiet(), contextlib.chdir(out.resolve().parent):
                quant_pre_process(str(float_model.resolve()), str(out.resolve()), skip_symbolic_shape=skip_symbolic)
            return how
        except Exception as exc:  # ORT raises assertions and its own types from deep inside shape inference
            errors.append(f"{type(exc).__name__}: {str(exc)[:120]}".rstrip(": "))
    out.write_bytes(float_model.read_bytes())
    return "skipped: " + "; ".join(errors)


# DequantizeLinear takes a per-channel ``axis`` from opset 13 on; ORT's quantizer writes one for a folded Conv's
# bias whatever the opset, so an opset-11 model (paddle2onnx's default) came out invalid once its BatchNorm folded.
PER_CHANNEL_OPSET = 13


def _raise_opset(path: Path, opset: int, notes: dict[str, Any]) -> None:
    import onnx
    from onnx import version_converter

    model = onnx.load(str(path))
    have = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if have >= opset:
        return
    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as exc:
        raise CompileError(f"quantize: per-channel int8 needs ONNX opset {opset}, and the model's opset {have} "
                           f"could not be converted ({str(exc)[:200]}); use --no-per-channel") from None
    onnx.save(converted, str(path))
    notes["opset"] = f"{have} -> {opset}"


def quantize_onnx(
    float_model: Path,
    variant: str,
    out: Path,
    calibration: Any = None,
    options: QuantizeOptions = QuantizeOptions(),
) -> tuple[Path, dict[str, Any]]:
    """Quantize a float ``.onnx`` as ``variant`` (QDQ format for static int8); return (path, notes)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if variant not in ONNX_VARIANTS:
        raise CompileError(f"quantize: ONNX has no {variant!r} mode; choose one of {ONNX_VARIANTS} or --format tflite")
    notes: dict[str, Any] = {}
    excluded = list(options.onnx_exclude_nodes) + _nodes_of_ops(float_model, options.onnx_exclude_ops)
    if variant == "float32":
        out.write_bytes(float_model.read_bytes())
    elif variant == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with quiet():
            m16 = convert_float_to_float16(onnx.load(str(float_model)), keep_io_types=True)
        onnx.save(m16, str(out))
    elif variant == "dynamic":
        pre = out.with_name(out.stem + ".pre.onnx")
        notes["pre_process"] = pre_process_onnx(float_model, pre)
        try:
            with quiet():
                quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8,
                                 per_channel=options.onnx_per_channel, nodes_to_exclude=excluded or None)
        except Exception as exc:
            raise CompileError(f"quantize: ONNX dynamic quantization failed: {str(exc)[:300]}") from None
        finally:
            pre.unlink(missing_ok=True)
    else:
        if calibration is None or n_samples(calibration) == 0:
            raise InvalidInputError("quantize: the calibration set is empty; give --calibration DATA (or --train DATA)")
        if variant == "int8-mixed":
            weighted = _weighted_nodes(float_model)
            k = max(1, options.sensitive_layers // 2)
            keep = list(dict.fromkeys(weighted[:k] + weighted[-k:]))
            excluded = list(dict.fromkeys(excluded + keep))
            notes["float_layers"] = keep
        pre = out.with_name(out.stem + ".pre.onnx")
        notes["pre_process"] = pre_process_onnx(float_model, pre)
        if options.onnx_per_channel:
            _raise_opset(pre, PER_CHANNEL_OPSET, notes)
        graph = onnx.load(str(pre)).graph
        inits = {t.name for t in graph.initializer}
        input_names = [i.name for i in graph.input if i.name not in inits]
        extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
        if options.onnx_calibration is CalibrationMethod.PERCENTILE:
            extra["CalibPercentile"] = options.percentile
        try:
            with quiet():
                quantize_static(
                    str(pre), str(out), _Reader(input_names, calibration),
                    quant_format=QuantFormat.QDQ, per_channel=options.onnx_per_channel,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded or None,
                    calibrate_method=getattr(OrtMethod, _ORT_METHODS[options.onnx_calibration]),
                    extra_options=extra,
                )
        except Exception as exc:
            raise CompileError(f"quantize: ONNX static int8 quantization failed: {str(exc)[:300]}") from None
        finally:
            pre.unlink(missing_ok=True)
    if excluded:
        notes.setdefault("excluded_nodes", excluded)
    return out, notes


__all__ = ["quantize_tflite", "quantize_onnx", "pre_process_onnx", "sensitive_tflite_nodes", "TFLITE_VARIANTS", "ONNX_VARIANTS"]
