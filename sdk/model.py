"""``edgefleet.load()`` and ``Model``: verified bundles run with their own preprocessing."""

from __future__ import annotations

import os
import tempfile
from collections import abc
from dataclasses import dataclass
from math import isfinite
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union, cast

import numpy as np

from .bundle import Bundle, open_bundle
from .errors import (
    BundleFormatError,
    BundleIntegrityError,
    ConfigError,
    InvalidInputError,
    SignatureError,
)
from .head import Head
from .keys import KeySource
from .manifest import Manifest, ModelFormat, TensorSpec
from .preprocess import Pipeline, PipelineStream, check_finite, decode_labels
from .runtime import Backend, format_of, open_backend

if TYPE_CHECKING:
    from .session import Session

ArrayLike = Union[np.ndarray, Sequence[Any], float, int, str]
Inputs = Union[ArrayLike, Mapping[str, ArrayLike], None]
_NUMERIC_KINDS = ("f", "i", "u", "b")
_STRING_KINDS = ("U", "S", "O")


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    max_abs_error: float
    message: str


def np_dtype(dtype: str) -> np.dtype:
    """The numpy dtype for a manifest dtype name (strings are object arrays)."""
    return np.dtype(object) if dtype == "string" else np.dtype(dtype)


class _InputPlan:
    """Everything ``predict`` needs to know about one input, computed once."""

    __slots__ = (
        "spec", "pipeline", "raw_rank", "dtype", "quant", "sample_shape", "axis", "model_batch",
        "qparams", "is_string", "cast_check", "shape", "qlut", "simple", "sample_static", "check_finite", "expand",
    )

    def __init__(self, spec: TensorSpec, pipeline: Pipeline, model_spec: TensorSpec) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.axis = spec.batch_axis
        self.shape = spec.shape
        self.sample_shape = spec.sample_shape
        if not pipeline.is_identity and self.axis not in (0, None):
            raise BundleFormatError(
                f"input {spec.name!r}: preprocessing needs the batch axis first (or none), "
                f"but the manifest declares batch_axis {self.axis}"
            )
        if pipeline.input_shape is not None:
            self.raw_rank = len(pipeline.input_shape)
        else:
            self.raw_rank = len(spec.sample_shape)
        self.dtype = np_dtype(spec.dtype)
        self.is_string = spec.dtype == "string"
        self.quant = spec.quantization
        # the batch size the model file itself fixes (None: dynamic), which decides whether
        # a larger batch runs in one call or one sample at a time
        ax = self.axis
        self.model_batch = (
            model_spec.shape[ax] if ax is not None and ax < len(model_spec.shape) and model_spec.shape[ax] > 0 else None
        )
        self.qparams: tuple[np.float32, np.float32, int, int] | None = None
        if self.quant is not None and self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            self.qparams = (np.float32(1.0 / self.quant.scale), np.float32(self.quant.zero_point), int(info.min), int(info.max))
        #: a cast into this dtype can lose values and must be checked (narrowing floats, ints)
        self.cast_check = self.dtype.kind in "fiu"
        #: 8-bit quantization of float32 values as a table lookup (see ``_quant_lut``)
        self.qlut = _quant_lut(self.qparams, self.dtype) if self.qparams is not None else None
        #: one sample has a fixed shape (``_prepare`` compares shapes as tuples)
        self.sample_static = -1 not in self.sample_shape
        #: ``_prepare``'s short route applies: no preprocessing, numbers, fixed sample shape
        self.simple = pipeline.is_identity and not self.is_string and self.sample_static
        #: the index that adds the batch axis to one sample (``np.expand_dims`` as a view)
        self.expand = None if self.axis is None else (slice(None),) * self.axis + (np.newaxis,)
        #: the short route's NaN/inf check of ready float values (the model's own dtype)
        self.check_finite = spec.finite and self.dtype.kind == "f"


def smoke_array(value: Any, spec: TensorSpec) -> np.ndarray:
    """A smoke-test input read back from its JSON form in the input's own dtype (real
    values for quantized inputs)."""
    if spec.quantization is not None:
        return np.asarray(value, dtype=np.float32)
    return np.asarray(value, dtype=np_dtype(spec.dtype))


def _dequant(o: np.ndarray, zero_point: int, scale: float) -> np.ndarray:
    out = o.astype(np.float32)
    out -= zero_point
    out *= np.float32(scale)
    return out


def _quantize_formula(arr: np.ndarray, qparams: tuple[np.float32, np.float32, int, int], dtype: np.dtype) -> np.ndarray:
    """Real values to the input's integer type: round(x / scale) + zero point, clipped."""
    inv_scale, zero_point, lo, hi = qparams
    q = np.rint(arr * inv_scale)
    q += zero_point
    return np.clip(q, lo, hi, out=q).astype(dtype)


def _float32_from_ordinal(o: np.ndarray) -> np.ndarray:
    """float32 values from their rank among the finite float32 values (0 is +-0.0)."""
    bits = np.where(o >= 0, o, (-o) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def _quant_lut(qparams: tuple[np.float32, np.float32, int, int], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray] | None:
    """Quantizing float32 values to an 8-bit type as one ``searchsorted`` and one ``take``.

    ``_quantize_formula`` is a non-decreasing step function of its float32 input, so it is
    fully described by the smallest float32 value reaching each level above the lowest
    (found by bisection over the ordered float32 values, evaluating the formula itself).
    Returns (thresholds, levels): ``levels.take(thresholds.searchsorted(x, "right"))``
    equals ``_quantize_formula(x)`` for every float32 ``x`` but NaN and +inf, for which the
    last threshold (+inf) makes ``take`` raise ``IndexError`` (the caller then uses the
    formula)."""
    if dtype.itemsize != 1:
        return None
    lo, hi = qparams[2], qparams[3]
    levels = np.arange(lo, hi + 1, dtype=np.int64)
    want = levels[1:]
    top = np.int64(0x7F7FFFFF)  # the ordinal of the largest finite float32
    below = np.full(want.shape, -top)  # formula(below) < want
    above = np.full(want.shape, top)  # formula(above) >= want
    with np.errstate(over="ignore", invalid="ignore"):
        if not (_quantize_formula(_float32_from_ordinal(below), qparams, dtype) < want).all():
            return None
        if not (_quantize_formula(_float32_from_ordinal(above), qparams, dtype) >= want).all():
            return None
        while (above - below > 1).any():
            mid = below + (above - below) // 2
            ok = _quantize_formula(_float32_from_ordinal(mid), qparams, dtype).astype(np.int64) >= want
            above = np.where(ok, mid, above)
            below = np.where(ok, below, mid)
        steps = _float32_from_ordinal(above)
        lut = (np.append(steps, np.float32(np.inf)), levels.astype(dtype))
        # belt and braces: the table must reproduce the formula around every step
        probe = np.concatenate([steps, _float32_from_ordinal(below), np.array([0.0, -0.0, -np.inf], dtype=np.float32)])
        if not np.array_equal(lut[1].take(lut[0].searchsorted(probe, "right")), _quantize_formula(probe, qparams, dtype)):
            return None
    return lut


def _finite_fast(arr: np.ndarray) -> bool:
    """A cheap filter: True means no NaN or inf. False may also be a large finite value
    (an overflow of the sum of squares): :func:`~.preprocess.check_finite` then looks properly."""
    if arr.dtype.itemsize < 4:  # float16 squares overflow from 256: a plain sum
        return isfinite(arr.sum())
    return isfinite(np.vdot(arr, arr))


def _dequant_table(q: Any, dtype: np.dtype) -> np.ndarray | None:
    """``_dequant`` of every value of an 8-bit type, indexed by the value itself (an int8 -1
    is index -1, the last entry), so dequantizing is one ``take``."""
    if q is None or dtype.kind not in "iu" or dtype.itemsize != 1:
        return None
    values = np.arange(256, dtype=np.uint8).view(dtype)
    return _dequant(values, q.zero_point, q.scale)


class _FastPath:
    """``predict`` for one input given as a ready array (no preprocessing, no casts): the
    checks and conversions decided once at load."""

    __slots__ = ("dtype", "sample_shape", "rank", "batched", "shape", "model_batch", "finite", "lut", "spec", "search", "levels")
    search: Any  # the thresholds' bound searchsorted (None: not quantized)
    levels: Any  # the levels' bound take

    def __init__(self, plan: _InputPlan) -> None:
        self.spec = plan.spec
        self.sample_shape = plan.sample_shape
        self.rank = len(plan.sample_shape) + 1
        self.batched = plan.axis == 0
        self.shape = plan.shape
        self.model_batch = plan.model_batch
        self.finite = plan.spec.finite
        # a quantized input takes float32 real values, quantized with a table
        self.lut = plan.qlut
        self.search = plan.qlut[0].searchsorted if plan.qlut is not None else None
        self.levels = plan.qlut[1].take if plan.qlut is not None else None
        self.dtype = np.dtype(np.float32) if plan.qlut is not None else plan.dtype


def _shape_ok(got: tuple[int, ...], expected: tuple[int, ...], skip: int | None = None) -> bool:
    if len(got) != len(expected):
        return False
    for i, (g, want) in enumerate(zip(got, expected)):
        if want != -1 and g != want and i != skip:
            return False
    return True


def _fmt_shape(shape: Iterable[int]) -> str:
    dims = ["N" if d == -1 else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _take(o: np.ndarray, axis: int) -> np.ndarray:
    """Drop a batch axis of size 1."""
    if o.ndim <= axis or o.shape[axis] != 1:
        return o
    # cast: NumPy types a scalar index as Any; this is an array but for a 1-D output, where it is a NumPy
    # scalar (which the callers pass on or wrap like a 0-d array)
    return cast(np.ndarray, o[0] if axis == 0 else np.take(o, 0, axis=axis))


def _head_of(manifest: Manifest, bundle: Bundle | None, head: Head | None) -> Head | None:
    """The manifest's head with its weights: ``head`` when given (the same layers), else read from the bundle."""
    spec = manifest.head
    if spec is None:
        if head is not None:
            raise ConfigError(f"model {manifest.name} has no trainable head in its manifest; none can be given")
        return None
    if head is None:
        if bundle is None:
            raise BundleFormatError(f"the manifest of {manifest.name} declares a head, but its weights were not given")
        try:
            data = (bundle.path / spec.file).read_bytes()
        except OSError as exc:
            raise BundleIntegrityError(f"bundle file {spec.file!r} is unreadable: {exc.strerror}") from None
        return Head.from_npz(data, spec.layers, what=f"bundle file {spec.file!r}")
    if head.layers != spec.layers:
        raise BundleFormatError(f"the head given for {manifest.name} has other layers than its manifest declares")
    return head


class Model:
    """A loaded model. ``predict`` is safe to call from several threads.

    Every input and output carries its signature (``TensorSpec``): name, dtype, shape with
    named dynamic dimensions, and a batch axis or none. Inputs without a batch axis are
    passed exactly as given; the outputs' batch axis is dropped only when the caller gave
    one unbatched sample for every batched input.

    A bundle with a trainable head (``manifest.head``) runs the model file (the backbone),
    then the head in numpy: ``outputs`` is the head's output, :meth:`features` the backbone's.
    """

    def __init__(
        self,
        manifest: Manifest,
        backend: Backend,
        bundle: Bundle | None = None,
        _tmp: tempfile.TemporaryDirectory[str] | None = None,
        *,
        head: Head | None = None,
    ) -> None:
        self.manifest = manifest
        self.bundle = bundle
        self._backend = backend
        self._tmp = _tmp
        self.inputs: tuple[TensorSpec, ...] = manifest.inputs
        #: what predict returns (a head's output); the model file's own outputs are ``_file_outputs``
        self.outputs: tuple[TensorSpec, ...] = manifest.served_outputs
        self._file_outputs: tuple[TensorSpec, ...] = manifest.outputs
        self._head = _head_of(manifest, bundle, head)
        #: the head the manifest's smoke tests were recorded with (``use_head`` changes only what is served)
        self._smoke_head = self._head
        self._check_backend_agrees()
        pre = manifest.preprocessing or {}
        unknown = set(pre) - {s.name for s in self.inputs}
        if unknown:
            raise BundleFormatError(f"manifest preprocessing names unknown inputs {sorted(unknown)}")
        try:
            self._plans = [
                _InputPlan(spec, Pipeline.from_spec(pre.get(spec.name), manifest.reference_stats), mspec)
                for spec, mspec in zip(self.inputs, backend.inputs)
            ]
        except ConfigError as exc:
            raise BundleFormatError(f"manifest preprocessing is invalid: {exc}") from None
        self._names = [s.name for s in self.inputs]
        self._index = {n: i for i, n in enumerate(self._names)}
        self._out_quant = [s.quantization for s in self._file_outputs]
        self._any_out_quant = any(q is not None for q in self._out_quant)
        self._out_axes = [s.batch_axis for s in self._file_outputs]
        self._batched = [i for i, p in enumerate(self._plans) if p.axis is not None]
        self._fixed = [i for i in self._batched if self._plans[i].model_batch is not None]
        self._state_inputs = {st.input: st for st in manifest.state}
        #: input index -> position in manifest.state
        self._state_slots = {self._index[st.input]: k for k, st in enumerate(manifest.state)}
        out_index = {s.name: j for j, s in enumerate(self._file_outputs)}
        free = [i for i in range(len(self._names)) if i not in self._state_slots]
        #: the one non-state input of a streaming model (index, plan), for Session's fast step
        self._one_free: tuple[int, _InputPlan] | None = (free[0], self._plans[free[0]]) if len(free) == 1 and self._state_slots else None
        #: per state pair: (input index, output index, whether the output's raw array can be
        #: fed back as it is: same dtype and quantization)
        self._state_feedback = [
            (
                self._index[st.input],
                out_index[st.output],
                self._file_outputs[out_index[st.output]].dtype == self.inputs[self._index[st.input]].dtype
                and self._file_outputs[out_index[st.output]].quantization == self.inputs[self._index[st.input]].quantization,
            )
            for st in manifest.state
        ]
        self._variables = manifest.stateful_variables
        self._initial_cache: dict[str, np.ndarray] = {}
        # dequantizing an 8-bit output is one table lookup (None: no table, ``_dequant``)
        self._out_tables = [_dequant_table(q, np_dtype(s.dtype)) for s, q in zip(self._file_outputs, self._out_quant)]
        self._out_dropped = [i for i, ax in enumerate(self._out_axes) if ax is not None]
        self._out_table0 = self._out_tables[0] if len(self._out_tables) == 1 else None
        # Fast path: one input given as a ready array in the model's own layout: float values
        # of the model's dtype, or float32 real values of an 8-bit quantized input; batch axis
        # first (or none), no preprocessing, fixed sample shape, no resource variables.
        self._fast: _FastPath | None = None
        if len(self._plans) == 1 and not self._variables:
            plan0 = self._plans[0]
            if plan0.simple and plan0.axis in (0, None) and (plan0.dtype.kind == "f" and plan0.quant is None or plan0.qlut is not None):
                self._fast = _FastPath(plan0)

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

    @property
    def stateful(self) -> bool:
        """Whether the model carries state from call to call (state pairs or LiteRT variables)."""
        return self.manifest.stateful

    def _check_backend_agrees(self) -> None:
        got = [(s.name, s.dtype) for s in self._backend.inputs]
        want = [(s.name, s.dtype) for s in self.manifest.inputs]
        if got != want or [s.dtype for s in self._backend.outputs] != [s.dtype for s in self.manifest.outputs]:
            raise BundleIntegrityError(
                f"the manifest's inputs/outputs {want} do not describe the model file, which has {got}"
            )
        for mine, theirs in zip(self.manifest.inputs, self._backend.inputs):
            if len(mine.shape) != len(theirs.shape) or any(
                a > 0 and b > 0 and a != b for a, b in zip(mine.shape, theirs.shape)
            ):
                raise BundleIntegrityError(
                    f"the manifest declares input {mine.name!r} as {mine.shape_text()}, "
                    f"but the model file takes {theirs.shape_text()}"
                )

    # -- inference ---------------------------------------------------------
    def _feeds(self, x: Inputs, skip: Mapping[str, Any] = {}) -> list[Any]:
        """One value per input, in input order; ``skip`` names inputs filled elsewhere (state)."""
        names = self._names
        if x is None or (not isinstance(x, np.ndarray) and isinstance(x, abc.Mapping)):
            given = {} if x is None else x
            missing = [n for n in names if n not in given and n not in skip]
            extra = [n for n in given if n not in self._index or n in skip]
            if missing or extra:
                wanted = [n for n in names if n not in skip]
                raise InvalidInputError(
                    f"inputs must be named {wanted}; missing {missing}, unexpected {sorted(map(str, extra))}"
                )
            return [given.get(n) if n not in skip else None for n in names]
        free = [n for n in names if n not in skip]
        if len(free) != 1:
            raise InvalidInputError(
                f"model has {len(free)} inputs {free}: pass a dict of named arrays"
                if free else "model takes no inputs: call predict() or predict({})"
            )
        return [x if n == free[0] else None for n in names]

    def _prepare(self, plan: _InputPlan, value: Any, preprocess: bool, raw: bool) -> tuple[np.ndarray, bool | None]:
        """Return (array in the model's layout and dtype, whether the caller gave one unbatched
        sample: ``None`` for an input without a batch axis)."""
        spec = plan.spec
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        if plan.simple and arr.dtype == plan.dtype and (plan.qparams is None or raw):
            # short route (same checks, same result): ready values, no preprocessing
            shape = arr.shape
            axis = plan.axis
            one: bool | None
            if axis is None:
                match, one = shape == plan.shape, None
            elif len(shape) == len(plan.shape) and (shape[1:] if axis == 0 else shape[:axis] + shape[axis + 1 :]) == plan.sample_shape:
                match, one = True, False
            else:
                match = one = shape == plan.sample_shape
            if match:  # otherwise the general route below says what is wrong
                if one:
                    arr = arr[plan.expand]
                if plan.check_finite and not _finite_fast(arr):
                    check_finite(arr, f"input {spec.name!r}")
                return arr, one
        kind = arr.dtype.kind
        if plan.is_string:
            if kind not in _STRING_KINDS:
                raise InvalidInputError(f"input {spec.name!r}: expected strings, got dtype {arr.dtype}")
        elif kind not in _NUMERIC_KINDS:
            raise InvalidInputError(f"input {spec.name!r}: expected numbers, got dtype {arr.dtype}")
        pipeline = plan.pipeline
        use_pipeline = preprocess and not pipeline.is_identity
        axis = plan.axis
        single: bool | None = None
        if axis is None:
            if use_pipeline:
                arr = pipeline.apply(arr[np.newaxis], f"input {spec.name!r}")[0]
        elif use_pipeline and pipeline.has_window:
            single = False
        else:
            rank = plan.raw_rank if use_pipeline else len(plan.sample_shape)
            if arr.ndim == rank:
                arr = arr[np.newaxis] if axis == 0 else np.expand_dims(arr, axis)
                single = True
            elif arr.ndim == rank + 1:
                single = False
            else:
                shown = plan.sample_shape if not use_pipeline or pipeline.input_shape is None else pipeline.input_shape
                raise InvalidInputError(
                    f"input {spec.name!r}: expected shape {_fmt_shape(shown)} for one sample or a batch of them "
                    f"(batch axis {axis}), got {arr.shape}"
                )
        if use_pipeline and axis is not None:
            arr = pipeline.apply(arr, f"input {spec.name!r}")
        if not _shape_ok(arr.shape, plan.shape, axis):
            raise InvalidInputError(
                f"input {spec.name!r}: expected shape {spec.shape_text()}"
                + (" (no batch axis: passed as given)" if axis is None else "")
                + f", got {arr.shape}"
                + (" after preprocessing" if use_pipeline else "")
            )
        if kind == "f" and spec.finite and (not use_pipeline or pipeline.allows_missing):
            check_finite(arr, f"input {spec.name!r}")
        if plan.qparams is not None and not raw:
            lut = plan.qlut
            try:
                if lut is None or arr.dtype != np.float32:
                    raise IndexError
                arr = lut[1].take(lut[0].searchsorted(arr, "right"))
            except IndexError:  # no table, or NaN/+inf, which the formula decides
                arr = _quantize_formula(arr, plan.qparams, plan.dtype)
        elif arr.dtype != plan.dtype:
            if raw and plan.quant is not None and arr.dtype.kind == "f":
                raise InvalidInputError(
                    f"input {spec.name!r}: raw mode needs {spec.dtype} values, got {arr.dtype}"
                )
            arr = self._cast(plan, arr)
        return arr, single

    @staticmethod
    def _cast(plan: _InputPlan, arr: np.ndarray) -> np.ndarray:
        """Convert to the model's dtype; a value the dtype cannot hold is an error, never a silent change."""
        spec, want = plan.spec, plan.dtype
        if plan.is_string:
            return arr.astype(object)
        src = arr.dtype.kind
        if want.kind == "f":
            with np.errstate(over="ignore"):
                out = arr.astype(want)
            if src == "f" and arr.size and not isfinite(float(out.sum(dtype=np.float64))):
                bad = np.isfinite(arr) & ~np.isfinite(out)
                if not bad.any():
                    return out  # NaN/inf given, not made by the cast (the finite check rules on those)
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise InvalidInputError(
                    f"input {spec.name!r}: {int(bad.sum())} values overflow {spec.dtype} "
                    f"(e.g. {arr[first]!r} at index {first})"
                )
            return out
        if want.kind in "iu" and arr.size:
            if src == "f":
                if not np.array_equal(arr, np.trunc(arr)):
                    raise InvalidInputError(f"input {spec.name!r}: expected whole numbers for {spec.dtype}, got fractions")
            if src in "fiu":
                info = np.iinfo(want)
                lo, hi = arr.min(), arr.max()
                if lo < info.min or hi > info.max:
                    raise InvalidInputError(
                        f"input {spec.name!r}: values from {lo} to {hi} do not fit {spec.dtype} ({info.min}..{info.max})"
                    )
        return arr.astype(want)

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        batched = self._batched
        if not batched:
            return self._invoke(arrays)
        plans = self._plans
        first = batched[0]
        n = arrays[first].shape[plans[first].axis]  # type: ignore[index]
        if len(batched) > 1 and any(arrays[i].shape[plans[i].axis] != n for i in batched):  # type: ignore[index]
            sizes = [arrays[i].shape[plans[i].axis] for i in batched]  # type: ignore[index]
            raise InvalidInputError(
                "batched inputs have different batch sizes "
                + ", ".join(f"{self._names[i]}={s}" for i, s in zip(batched, sizes))
            )
        for i in self._fixed:
            fixed = plans[i].model_batch
            if n != fixed:
                if fixed != 1:
                    raise InvalidInputError(f"model takes batches of exactly {fixed}, got {n}")
                return self._run_one_by_one(arrays, n)
        return self._invoke(arrays)

    def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._variables:
            return self._backend.run(arrays, reset=True)
        return self._backend.run(arrays)

    def _run_one_by_one(self, arrays: list[np.ndarray], n: int) -> list[np.ndarray]:
        """A model file that fixes a batch of one, given a batch of ``n``: one call per sample."""
        missing = [s.name for s, ax in zip(self._file_outputs, self._out_axes) if ax is None]
        if missing:
            raise InvalidInputError(
                f"model takes batches of exactly 1 and its outputs {missing} have no batch axis: pass one sample at a time"
            )
        axes = [p.axis for p in self._plans]
        parts = []
        for k in range(n):
            feed = [a if ax is None else (a[k : k + 1] if ax == 0 else np.take(a, [k], axis=ax)) for a, ax in zip(arrays, axes)]
            parts.append(self._invoke(feed))
        return [np.concatenate([p[j] for p in parts], axis=self._out_axes[j]) for j in range(len(self._file_outputs))]

    def _call(self, feeds: Sequence[Any], preprocess: bool, raw: bool) -> list[np.ndarray]:
        arrays: list[np.ndarray] = []
        singles: list[bool] = []
        for plan, value in zip(self._plans, feeds):
            arr, single = self._prepare(plan, value, preprocess, raw)
            arrays.append(arr)
            if single is not None:
                singles.append(single)
        outs = self._run(arrays)
        if self._any_out_quant and not raw:
            outs = self._dequantize(outs)
        if singles and all(singles):
            outs = [o if ax is None else _take(o, ax) for o, ax in zip(outs, self._out_axes)]
        return outs

    def _predict_fast(self, fast: _FastPath, x: np.ndarray, raw: bool) -> list[np.ndarray] | None:
        """``predict`` for the fast path's input (see ``_FastPath``); ``None``: take the general path."""
        shape = x.shape
        single = False
        if not fast.batched:
            if shape != fast.shape:
                return None
        elif len(shape) == fast.rank and shape[1:] == fast.sample_shape:
            if fast.model_batch is not None and shape[0] != fast.model_batch:
                return None  # one call per sample, or the error: the general path
        elif shape == fast.sample_shape and (fast.model_batch is None or fast.model_batch == 1):
            single = True
            x = x[np.newaxis]
        else:
            return None
        if fast.finite and not _finite_fast(x):
            check_finite(x, f"input {fast.spec.name!r}")
        if fast.search is not None:
            try:
                x = fast.levels(fast.search(x, "right"))
            except IndexError:  # NaN or +inf: the formula decides
                return None
        outs = self._backend.run((x,))
        if self._any_out_quant and not raw:
            outs = self._dequantize(outs)
        if single:
            axes = self._out_axes
            for i in self._out_dropped:
                outs[i] = _take(outs[i], axes[i])  # type: ignore[arg-type]
        return outs

    def _pack(self, outs: list[np.ndarray]) -> Any:
        if len(outs) == 1:
            return outs[0]
        return {s.name: o for s, o in zip(self._file_outputs, outs)}

    def predict(self, x: Inputs = None, *, raw: bool = False, preprocess: bool = True) -> Any:
        """Predict on one sample or a batch.

        ``x`` is an array (single-input models) or a dict of named arrays (``None`` or
        ``{}`` for a model without inputs). Returns an array for single-output models, else
        a dict by output name. Quantized models take and return real values unless
        ``raw=True``. State inputs of a stateful model that are not given start from their
        initial value (use :meth:`session` to carry state from call to call). A model with a
        trainable head returns the head's output (``raw`` then applies to the inputs only).
        """
        if self._head is not None:
            return self._head.forward(self._features(x, raw, preprocess))
        fast = self._fast
        if fast is not None and type(x) is np.ndarray and (fast.lut is None or not raw) and (x.dtype is fast.dtype or x.dtype == fast.dtype):
            outs = self._predict_fast(fast, x, raw)
            if outs is not None:
                return outs[0] if len(outs) == 1 else {s.name: o for s, o in zip(self._file_outputs, outs)}
        if type(x) is dict and not self._state_inputs and len(x) == len(self._names):
            try:  # every input named (what ``_feeds`` checks, in one pass)
                feeds = [x[n] for n in self._names]
            except KeyError:
                feeds = self._feeds(x)
            return self._pack(self._call(feeds, preprocess, raw))
        if self._state_inputs and not (isinstance(x, abc.Mapping) and all(n in x for n in self._state_inputs)):
            # state inputs not given: from their initial values (explicit ones in a dict win)
            given = {n: x[n] for n in self._state_inputs if n in x} if isinstance(x, abc.Mapping) else None
            rest = {k: v for k, v in x.items() if k not in self._state_inputs} if isinstance(x, abc.Mapping) else x
            return self._pack(self._step(rest, None, given, raw=raw, preprocess=preprocess)[0])
        return self._pack(self._call(self._feeds(x), preprocess, raw))

    # -- a trainable head ----------------------------------------------------
    @property
    def head(self) -> Head | None:
        """The trainable head (layers and float32 weights), or ``None`` for a model without one."""
        return self._head

    def use_head(self, head: Head) -> None:
        """Serve ``head`` from now on instead of the bundle's (the same layers as the manifest declares, e.g. a
        device's personal head); :meth:`run_smoke_tests` still checks the bundle's own head. A model without a
        trainable head refuses (``ConfigError``)."""
        self._head = _head_of(self.manifest, None, head)

    def features(self, x: Inputs = None, *, raw: bool = False, preprocess: bool = True) -> np.ndarray:
        """The backbone's output (real values) for ``x``: what the trainable head takes.

        Inputs as for :meth:`predict`. A model compiled without ``--trainable-head`` has no
        backbone apart from its whole self: ``ConfigError``."""
        if self._head is None:
            raise ConfigError(
                f"model {self.name} has no trainable head, so no separate backbone features: "
                "compile it with --trainable-head N"
            )
        return self._features(x, raw, preprocess)

    def _features(self, x: Inputs, raw: bool, preprocess: bool) -> np.ndarray:
        """The model file's one output as real values (a head bundle is stateless, one output)."""
        fast = self._fast
        outs = None
        if fast is not None and type(x) is np.ndarray and (fast.lut is None or not raw) and x.dtype == fast.dtype:
            outs = self._predict_fast(fast, x, raw)
        if outs is None:
            outs = self._call(self._feeds(x), preprocess, raw)
        out = outs[0]
        return self._dequantize_one(out, 0) if raw else out

    # -- state ---------------------------------------------------------------
    def initial_state(self, name: str) -> np.ndarray:
        """The initial value of state input ``name`` as the bundle declares it (batch of one
        where the input has a batch axis, dynamic dimensions as 1)."""
        st = self._state_inputs.get(name)
        if st is None:
            raise ConfigError(f"{name!r} is not a state input; state inputs are {sorted(self._state_inputs)}")
        cached = self._initial_cache.get(name)
        if cached is not None:
            return cached
        plan = self._plans[self._index[name]]
        if st.initial is None or self.bundle is None:
            shape = tuple(1 if d == -1 else d for d in plan.shape)
            value = np.zeros(shape, np_dtype(plan.spec.dtype) if plan.quant is None else np.float32)
        else:
            value = self.bundle.read_array(st.initial)
            if not _shape_ok(value.shape, plan.shape):
                raise BundleFormatError(
                    f"initial state {st.initial!r} has shape {value.shape}; input {name!r} takes {plan.spec.shape_text()}"
                )
        value.setflags(write=False)
        self._initial_cache[name] = value
        return value

    def _initial_for(self, name: str, single: bool | None, n: int | None) -> np.ndarray:
        """The initial state shaped for a call: unbatched for one sample, repeated for ``n``."""
        value = self.initial_state(name)
        ax = self._plans[self._index[name]].axis
        if ax is None:
            return value
        if single:
            return _take(value, ax)
        if n is not None and value.shape[ax] != n:
            value = np.repeat(value, n, axis=ax) if value.shape[ax] == 1 else value
        return value

    def _step(
        self,
        x: Inputs,
        raw_state: list[np.ndarray] | None,
        state: Mapping[str, Any] | None,
        *,
        raw: bool = False,
        preprocess: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
        """One call of a stateful model: ``x`` holds the other inputs.

        The state inputs come from ``raw_state`` (the runtime's own arrays from the previous
        step, in ``manifest.state`` order) or else from ``state`` (real values by name) or else
        their initial values. Returns (every output as ``predict`` gives them, the next raw
        state, whether the call was one unbatched sample)."""
        one_free = self._one_free
        if raw_state is not None and one_free is not None and isinstance(x, np.ndarray):
            # the streaming loop: one input given, the state the runtime returned last time
            i0, plan0 = one_free
            arr, single = self._prepare(plan0, x, preprocess, raw)
            arrays_ = self._merge(i0, arr, raw_state)
            outs = self._run(arrays_)
            nxt = [outs[j] if direct else self._prepare(self._plans[i], self._dequantize_one(outs[j], j), False, False)[0]
                   for i, j, direct in self._state_feedback]
            if self._any_out_quant and not raw:
                outs = self._dequantize(outs)
            if single:
                outs = [o if ax is None else _take(o, ax) for o, ax in zip(outs, self._out_axes)]
            return outs, nxt, bool(single)
        feeds = self._feeds(x, self._state_inputs)
        slots = self._state_slots
        arrays: list[Any] = [None] * len(feeds)
        singles: list[bool] = []
        n: int | None = None
        for i, (plan, value) in enumerate(zip(self._plans, feeds)):
            if i in slots:
                continue
            arr, single = self._prepare(plan, value, preprocess, raw)
            arrays[i] = arr
            if single is not None:
                singles.append(single)
                if n is None:
                    n = arr.shape[plan.axis]  # type: ignore[index]
        one = bool(singles) and all(singles)
        if raw_state is not None:
            for i, k in slots.items():
                arrays[i] = raw_state[k]
        else:
            for i in slots:
                name = self._names[i]
                value = state[name] if state is not None and name in state else self._initial_for(name, one, None if one else n)
                arrays[i] = self._prepare(self._plans[i], value, False, False)[0]
        outs = self._run(arrays)
        nxt = [
            outs[j] if direct else self._prepare(self._plans[i], self._dequantize_one(outs[j], j), False, False)[0]
            for i, j, direct in self._state_feedback
        ]
        if self._any_out_quant and not raw:
            outs = self._dequantize(outs)
        if one:
            outs = [o if ax is None else _take(o, ax) for o, ax in zip(outs, self._out_axes)]
        return outs, nxt, one

    def _merge(self, i0: int, arr: np.ndarray, raw_state: list[np.ndarray]) -> list[np.ndarray]:
        """The runtime's inputs in order: ``arr`` at ``i0``, the state at its slots."""
        arrays = [arr] * len(self._plans)
        for i, k in self._state_slots.items():
            arrays[i] = raw_state[k]
        return arrays

    def _dequantize_one(self, o: np.ndarray, j: int) -> np.ndarray:
        q = self._out_quant[j]
        return o if q is None else _dequant(o, q.zero_point, q.scale)

    def _state_values(self, raw_state: list[np.ndarray], one: bool) -> dict[str, np.ndarray]:
        """Real values by state input name, shaped as the caller sees them (one sample: no batch axis)."""
        out: dict[str, np.ndarray] = {}
        for (i, _, _), arr in zip(self._state_feedback, raw_state):
            plan = self._plans[i]
            q = plan.quant
            value = arr if q is None else _dequant(arr, q.zero_point, q.scale)
            out[self._names[i]] = np.array(_take(value, plan.axis) if one and plan.axis is not None else value)
        return out

    def session(self) -> Session:
        """A :class:`Session` that carries this model's state from call to call."""
        from .session import Session

        return Session(self)

    def prepare(self, x: Inputs, *, raw: bool = False, preprocess: bool = True) -> list[np.ndarray]:
        """The inputs exactly as the runtime takes them (preprocessed, quantized, batched), in input order.

        Together with :meth:`raw_call` this times or debugs the bare runtime on the same data.
        """
        return [self._prepare(plan, value, preprocess, raw)[0] for plan, value in zip(self._plans, self._feeds(x))]

    def _dequantize(self, outs: list[np.ndarray]) -> list[np.ndarray]:
        table = self._out_table0
        if table is not None and outs[0].ndim:  # the common case: one 8-bit output
            return [table.take(outs[0])]
        return [
            o if q is None else (t.take(o) if t is not None and o.ndim else _dequant(o, q.zero_point, q.scale))
            for o, q, t in zip(outs, self._out_quant, self._out_tables)
        ]

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
        """Run the manifest's smoke-test vectors (model inputs, no preprocessing, state given)."""
        smoke = self.manifest.smoke_tests
        if not smoke:
            return SmokeResult(True, 0.0, "no smoke tests in manifest")
        try:
            feeds = {s.name: smoke_array(smoke["inputs"][s.name], s) for s in self.inputs}
            expected = dict(smoke["outputs"])
            atol, rtol = float(smoke.get("atol", 1e-3)), float(smoke.get("rtol", 1e-3))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            return SmokeResult(False, float("inf"), f"smoke tests are malformed: {exc!r}")
        try:
            given = feeds if len(feeds) != 1 else next(iter(feeds.values()))
            if self._smoke_head is not None:  # the bundle's own head, even when another one is served
                out = self._smoke_head.forward(self._features(given, False, False))
            else:
                out = self.predict(given, preprocess=False)
        except Exception as exc:  # a smoke test reports, it does not crash the caller
            return SmokeResult(False, float("inf"), f"smoke test failed to run: {exc}")
        got = out if isinstance(out, dict) else {self.outputs[0].name: out}
        worst = 0.0
        for name, want_raw in expected.items():
            if name not in got:
                return SmokeResult(False, float("inf"), f"smoke test expects output {name!r}, model has none")
            g = np.asarray(got[name])
            if g.dtype == object or g.dtype.kind in "US":
                want_s = np.asarray(want_raw, dtype=object)
                if g.shape != want_s.shape or not all(str(a) == str(b) for a, b in zip(g.ravel(), want_s.ravel())):
                    return SmokeResult(False, float("inf"), f"output {name!r} differs from the expected strings")
                continue
            try:
                want = np.asarray(want_raw, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                return SmokeResult(False, float("inf"), f"smoke tests are malformed: {exc}")
            g = g.astype(np.float64)
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
    path: str | os.PathLike[str],
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

        manifest, be = manifest_for_model(p, backend=backend, threads=threads, finite=False)
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
