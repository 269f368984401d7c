"""``edgefleet.load()`` and ``Model``: verified bundles run with their own preprocessing."""

from __future__ import annotations

import os
import tempfile
from collections import abc
from dataclasses import dataclass
from math import isfinite
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np

from .bundle import Bundle, open_bundle
from .errors import (
    BundleFormatError,
    BundleIntegrityError,
    ConfigError,
    InvalidInputError,
    SignatureError,
)
from .keys import KeySource
from .manifest import Manifest, ModelFormat, TensorSpec
from .preprocess import Pipeline, PipelineStream, decode_labels
from .runtime import Backend, format_of, open_backend

ArrayLike = Union[np.ndarray, Sequence[Any], float, int]
Inputs = Union[ArrayLike, Mapping[str, ArrayLike]]
_FLOAT_KINDS = ("f",)
_NUMERIC_KINDS = ("f", "i", "u", "b")


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    max_abs_error: float
    message: str


class _InputPlan:
    """Everything ``predict`` needs to know about one input, computed once."""

    __slots__ = ("spec", "pipeline", "raw_rank", "dtype", "quant", "sample_shape", "fixed_batch", "qparams")

    def __init__(self, spec: TensorSpec, pipeline: Pipeline) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.sample_shape = spec.sample_shape
        if pipeline.input_shape is not None:
            self.raw_rank = len(pipeline.input_shape)
        else:
            self.raw_rank = len(spec.sample_shape)
        self.dtype = np.dtype(spec.dtype)
        self.quant = spec.quantization
        self.fixed_batch = spec.shape[0] if spec.shape and spec.shape[0] > 0 else None
        self.qparams: tuple[np.float32, np.float32, int, int] | None = None
        if self.quant is not None:
            info = np.iinfo(self.dtype)
            self.qparams = (np.float32(1.0 / self.quant.scale), np.float32(self.quant.zero_point), int(info.min), int(info.max))


def _dequant(o: np.ndarray, zero_point: int, scale: float) -> np.ndarray:
    out = o.astype(np.float32)
    out -= zero_point
    out *= np.float32(scale)
    return out


def _shape_ok(sample: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    if len(sample) != len(expected):
        return False
    for got, want in zip(sample, expected):
        if want != -1 and got != want:
            return False
    return True


def _fmt_shape(shape: Iterable[int]) -> str:
    return "(" + ", ".join("N" if d == -1 else str(d) for d in shape) + ")"


class Model:
    """A loaded model. ``predict`` is safe to call from several threads."""

    def __init__(
        self,
        manifest: Manifest,
        backend: Backend,
        bundle: Bundle | None = None,
        _tmp: tempfile.TemporaryDirectory | None = None,
    ) -> None:
        self.manifest = manifest
        self.bundle = bundle
        self._backend = backend
        self._tmp = _tmp
        self.inputs: tuple[TensorSpec, ...] = manifest.inputs
        self.outputs: tuple[TensorSpec, ...] = manifest.outputs
        self._check_backend_agrees()
        pre = manifest.preprocessing or {}
        unknown = set(pre) - {s.name for s in self.inputs}
        if unknown:
            raise BundleFormatError(f"manifest preprocessing names unknown inputs {sorted(unknown)}")
        try:
            self._plans = [
                _InputPlan(spec, Pipeline.from_spec(pre.get(spec.name), manifest.reference_stats))
                for spec in self.inputs
            ]
        except ConfigError as exc:
            raise BundleFormatError(f"manifest preprocessing is invalid: {exc}") from None
        self._names = [s.name for s in self.inputs]
        self._out_quant = [s.quantization for s in self.outputs]
        self._any_out_quant = any(q is not None for q in self._out_quant)
        # Fast path: one float input, no preprocessing, fixed sample shape, no quantization.
        plan0 = self._plans[0]
        self._fast: tuple[np.dtype, int, tuple[int, ...]] | None = None
        if (
            len(self._plans) == 1
            and plan0.pipeline.is_identity
            and plan0.quant is None
            and plan0.dtype.kind == "f"
            and -1 not in plan0.sample_shape
            and (self._backend.batch_resizable or plan0.fixed_batch is None)
        ):
            self._fast = (plan0.dtype, len(plan0.sample_shape) + 1, plan0.sample_shape)

    # -- facts -------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def backend_name(self) -> str:
        return self._backend.name

    @property
    def runtime_version(self) -> str:
        return self._backend.version

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    def _check_backend_agrees(self) -> None:
        got = [(s.name, s.dtype) for s in self._backend.inputs]
        want = [(s.name, s.dtype) for s in self.manifest.inputs]
        if got != want or [s.dtype for s in self._backend.outputs] != [s.dtype for s in self.manifest.outputs]:
            raise BundleIntegrityError(
                f"the manifest's inputs/outputs {want} do not describe the model file, which has {got}"
            )

    # -- inference ---------------------------------------------------------
    def _feeds(self, x: Inputs) -> list[Any]:
        if not isinstance(x, np.ndarray) and isinstance(x, abc.Mapping):
            missing = [n for n in self._names if n not in x]
            extra = [n for n in x if n not in self._names]
            if missing or extra:
                raise InvalidInputError(
                    f"inputs must be named {self._names}; missing {missing}, unexpected {extra}"
                )
            return [x[n] for n in self._names]
        if len(self._names) != 1:
            raise InvalidInputError(
                f"model has {len(self._names)} inputs {self._names}: pass a dict of named arrays"
            )
        return [x]

    def _prepare(self, plan: _InputPlan, value: Any, preprocess: bool, raw: bool) -> tuple[np.ndarray, bool]:
        """Return (batched array in the model's dtype, whether the caller gave one sample)."""
        spec = plan.spec
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        if arr.dtype.kind not in _NUMERIC_KINDS:
            raise InvalidInputError(f"input {spec.name!r}: expected numbers, got dtype {arr.dtype}")
        pipeline = plan.pipeline
        use_pipeline = preprocess and not pipeline.is_identity
        if use_pipeline and pipeline.has_window:
            single = False
        else:
            rank = plan.raw_rank if use_pipeline else len(plan.sample_shape)
            if arr.ndim == rank:
                arr = arr[np.newaxis]
                single = True
            elif arr.ndim == rank + 1:
                single = False
            else:
                raise InvalidInputError(
                    f"input {spec.name!r}: expected shape {_fmt_shape(plan.sample_shape if not use_pipeline or pipeline.input_shape is None else pipeline.input_shape)} "
                    f"for one sample or a batch of them, got {arr.shape}"
                )
        if use_pipeline:
            arr = pipeline.apply(arr, f"input {spec.name!r}")
        if not _shape_ok(arr.shape[1:], plan.sample_shape):
            raise InvalidInputError(
                f"input {spec.name!r}: expected shape {_fmt_shape(spec.shape)}, got {arr.shape}"
                + (" after preprocessing" if use_pipeline else "")
            )
        if arr.dtype.kind == "f" and (not use_pipeline or pipeline.allows_missing):
            self._check_finite(spec, arr)
        if plan.qparams is not None and not raw:
            inv_scale, zero_point, lo, hi = plan.qparams
            q = np.rint(arr * inv_scale)
            q += zero_point
            arr = np.clip(q, lo, hi, out=q).astype(plan.dtype)
        elif arr.dtype != plan.dtype:
            if raw and plan.quant is not None and arr.dtype.kind == "f":
                raise InvalidInputError(
                    f"input {spec.name!r}: raw mode needs {spec.dtype} values, got {arr.dtype}"
                )
            arr = arr.astype(plan.dtype)
        return arr, single

    @staticmethod
    def _check_finite(spec: TensorSpec, arr: np.ndarray) -> None:
        if isfinite(arr.sum()):  # finite sum: no NaN or inf (cheap common path)
            return
        bad = ~np.isfinite(arr)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            kind = "NaN" if np.isnan(arr[first]) else "inf"
            raise InvalidInputError(
                f"input {spec.name!r} holds {int(bad.sum())} non-finite values ({kind} at index {first}); "
                "clean the data or declare an impute step in the preprocessing"
            )

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        plan0 = self._plans[0]
        n = arrays[0].shape[0]
        if any(a.shape[0] != n for a in arrays):
            raise InvalidInputError(f"inputs have different batch sizes {[a.shape[0] for a in arrays]}")
        if plan0.fixed_batch is not None and n != plan0.fixed_batch and not self._backend.batch_resizable:
            if plan0.fixed_batch != 1:
                raise InvalidInputError(f"model takes batches of exactly {plan0.fixed_batch}, got {n}")
            parts = [self._backend.run([a[i : i + 1] for a in arrays]) for i in range(n)]
            return [np.concatenate([p[k] for p in parts]) for k in range(len(self.outputs))]
        return self._backend.run(arrays)

    def predict(self, x: Inputs, *, raw: bool = False, preprocess: bool = True) -> Any:
        """Predict on one sample or a batch.

        ``x`` is an array (single-input models) or a dict of named arrays. Returns an
        array for single-output models, else a dict by output name. Quantized models
        take and return real values unless ``raw=True``.
        """
        fast = self._fast
        if fast is not None and type(x) is np.ndarray and x.dtype == fast[0] and x.ndim == fast[1] and x.shape[1:] == fast[2]:
            if not isfinite(x.sum()):
                self._check_finite(self._plans[0].spec, x)
            outs = self._backend.run((x,))
            if self._any_out_quant and not raw:
                outs = self._dequantize(outs)
            return outs[0] if len(outs) == 1 else {s.name: o for s, o in zip(self.outputs, outs)}
        arrays: list[np.ndarray] = []
        single = False
        for plan, value in zip(self._plans, self._feeds(x)):
            arr, single = self._prepare(plan, value, preprocess, raw)
            arrays.append(arr)
        outs = self._run(arrays)
        if self._any_out_quant and not raw:
            outs = self._dequantize(outs)
        if single:
            outs = [o[0] for o in outs]
        if len(outs) == 1:
            return outs[0]
        return {s.name: o for s, o in zip(self.outputs, outs)}

    def prepare(self, x: Inputs, *, raw: bool = False, preprocess: bool = True) -> list[np.ndarray]:
        """The inputs exactly as the runtime takes them (preprocessed, quantized, batched), in input order.

        Together with :meth:`raw_call` this times or debugs the bare runtime on the same data.
        """
        return [self._prepare(plan, value, preprocess, raw)[0] for plan, value in zip(self._plans, self._feeds(x))]

    def _dequantize(self, outs: list[np.ndarray]) -> list[np.ndarray]:
        return [o if q is None else _dequant(o, q.zero_point, q.scale) for o, q in zip(outs, self._out_quant)]

    def predict_labels(self, x: Inputs, top_k: int = 1) -> Any:
        """Decode class labels with the manifest's labels: a string for one sample, a list for a batch."""
        if not self.labels:
            raise ConfigError(f"model {self.name} has no labels; pack it with --labels FILE")
        out = self.predict(x)
        if isinstance(out, dict):
            out = out[self.outputs[0].name]
        return decode_labels(np.asarray(out), list(self.labels), top_k=top_k)

    def stream(self, input_name: str | None = None) -> ModelStream:
        """A stateful stream for models whose preprocessing starts with a sliding window."""
        plan = self._plan_for(input_name)
        if not plan.pipeline.has_window:
            raise ConfigError(f"input {plan.spec.name!r} has no window step: use predict()")
        return ModelStream(self, plan.spec.name, plan.pipeline.stream())

    def _plan_for(self, input_name: str | None) -> _InputPlan:
        if input_name is None:
            if len(self._plans) != 1:
                raise ConfigError("name the input: the model has several")
            return self._plans[0]
        for plan in self._plans:
            if plan.spec.name == input_name:
                return plan
        raise ConfigError(f"no input named {input_name!r}; inputs are {self._names}")

    def run_smoke_tests(self) -> SmokeResult:
        """Run the manifest's smoke-test vectors (model inputs, no preprocessing)."""
        smoke = self.manifest.smoke_tests
        if not smoke:
            return SmokeResult(True, 0.0, "no smoke tests in manifest")
        try:
            feeds = {k: np.asarray(v, dtype=np.float64) for k, v in smoke["inputs"].items()}
            expected = {k: np.asarray(v, dtype=np.float64) for k, v in smoke["outputs"].items()}
            atol, rtol = float(smoke.get("atol", 1e-3)), float(smoke.get("rtol", 1e-3))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return SmokeResult(False, float("inf"), f"smoke tests are malformed: {exc}")
        feeds = {k: v.astype(np.dtype(s.dtype) if s.quantization is None else np.float32) for s in self.inputs for k, v in feeds.items() if k == s.name}
        try:
            out = self.predict(feeds if len(feeds) > 1 else next(iter(feeds.values())), preprocess=False)
        except Exception as exc:  # a smoke test reports, it does not crash the caller
            return SmokeResult(False, float("inf"), f"smoke test failed to run: {exc}")
        got = out if isinstance(out, dict) else {self.outputs[0].name: out}
        worst = 0.0
        for name, want in expected.items():
            if name not in got:
                return SmokeResult(False, float("inf"), f"smoke test expects output {name!r}, model has none")
            g = np.asarray(got[name], dtype=np.float64)
            if g.shape != want.shape:
                return SmokeResult(False, float("inf"), f"output {name!r} shape {g.shape} != expected {want.shape}")
            err = float(np.max(np.abs(g - want))) if g.size else 0.0
            worst = max(worst, err)
            if not np.allclose(g, want, atol=atol, rtol=rtol):
                return SmokeResult(False, worst, f"output {name!r} differs from the expected values by up to {err:.3g}")
        return SmokeResult(True, worst, "ok")

    def raw_call(self) -> Any:
        """The bare runtime call, for overhead benchmarks (not thread-safe)."""
        return self._backend.raw_call()

    def close(self) -> None:
        self._backend.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Model {self.name} v{self.version} on {self.backend_name}>"


class ModelStream:
    """Feed a stream in chunks; get predictions for every completed window."""

    def __init__(self, model: Model, input_name: str, state: PipelineStream) -> None:
        self._model, self._name, self._state = model, input_name, state

    def push(self, chunk: ArrayLike) -> Any:
        """Add samples (time first); return predictions for the windows they completed, or None."""
        return self._predict_windows(self._state.push(np.asarray(chunk)))

    def flush(self) -> Any:
        """End the stream: predict on the zero-padded last window when the window step pads."""
        return self._predict_windows(self._state.flush())

    def _predict_windows(self, windows: np.ndarray) -> Any:
        if windows.shape[0] == 0:
            return None
        feed = {self._name: windows} if len(self._model.inputs) > 1 else windows
        return self._model.predict(feed, preprocess=False)

    def reset(self) -> None:
        self._state.reset()


def load(
    path: str | os.PathLike,
    *,
    backend: str | None = None,
    threads: int | None = None,
    trusted_keys: Iterable[KeySource] | KeySource | None = None,
    require_signature: bool | None = None,
) -> Model:
    """Load a bundle directory, an ``.efb`` archive, or a bare ``.tflite``/``.onnx`` file.

    With ``trusted_keys`` the bundle must carry a valid signature by one of them;
    every file is checked against the manifest's hashes and sizes either way.
    """
    p = Path(path)
    if p.is_file() and p.suffix.lower() in (".tflite", ".onnx"):
        if trusted_keys or require_signature:
            raise SignatureError(f"{p} is a bare model file with no signature; pack and sign it first")
        from .pack import manifest_for_model

        manifest, be = manifest_for_model(p, backend=backend, threads=threads)
        return Model(manifest, be)
    bundle, tmp = open_bundle(p, trusted_keys, require_signature=require_signature)
    try:
        fmt = bundle.manifest.model_format
        if format_of(bundle.model_path) is not fmt and fmt is ModelFormat.TFLITE:
            raise BundleIntegrityError(f"{bundle.model_path} is not a {fmt.value} model")
        be = open_backend(bundle.model_path, fmt, backend=backend, threads=threads)
        return Model(bundle.manifest, be, bundle, tmp)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
