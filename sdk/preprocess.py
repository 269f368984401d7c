"""Declarative preprocessing: the same pure-numpy code for calibration, evaluation and serving.

A pipeline is a list of steps, each a dict with ``"op"`` and its parameters::

    Pipeline.from_spec({"input_shape": [8, 8], "steps": [
        {"op": "impute", "strategy": "mean"},
        {"op": "standardize"},                      # mean/std from the reference statistics
        {"op": "reshape", "shape": [8, 8, 1]},
        {"op": "resize", "height": 16, "width": 16},
    ]}, reference=compute_reference_stats(train_x))

Ops (arrays are batched, batch axis first; "per-sample" means every other axis):

==============  ============================================================================
cast            ``dtype``: float32|float16|float64|int8|uint8|int16|int32|int64. Float to
                int truncates toward zero (like ``tf.cast``) and saturates at the range.
reshape         ``shape``: per-sample shape, at most one ``-1``.
impute          ``strategy``: constant|mean|median, ``value`` (constant only). Replaces NaN.
clip            ``min`` and/or ``max`` (scalars or per-feature lists), or ``zscore: k`` to
                clip to mean ± k·std (explicit ``mean``/``std`` or the reference statistics).
standardize     ``mean``, ``std`` (both or neither; neither = reference statistics).
                Features with std <= 1e-8 are only centred (as scikit-learn does).
minmax          ``min``, ``max`` (both or neither), ``range`` = [lo, hi], default [0, 1].
scale           ``factor``, ``offset`` = 0: ``x * factor + offset``.
resize          ``height``, ``width``, ``method``: bilinear|nearest (default bilinear),
                ``layout``: NHWC|NCHW (default NHWC; a 2-D sample is (H, W)). Half-pixel
                centres, as TF's ``resize`` with ``half_pixel_centers=True``, no antialias.
channel_order   ``order``: rgb|bgr, ``layout``: NHWC|NCHW. Inputs are RGB; ``bgr`` reverses
                the colour channels (3, or 4 with alpha kept last), ``rgb`` changes nothing.
transpose       ``perm``: a permutation of the per-sample axes.
window          ``size``, ``hop`` (default ``size``), ``pad``: none|zero. First step only.
                Frames one time-first stream (T, *features) into (windows, size, *features).
==============  ============================================================================

Numeric steps (impute, clip, standardize, minmax, scale, bilinear resize) keep a
floating input's dtype and turn integer input into float32. Constants are
precomputed as float32 when the pipeline is built, so ``apply`` is cheap.

Windows: ``apply`` frames a whole stream. With ``pad="zero"`` it also emits one
last zero-padded window when samples after the last full window would otherwise
be dropped. A :class:`PipelineStream` never emits a partial window from ``push``
(more samples may still come); :meth:`PipelineStream.flush` ends the stream and
emits that padded window, so ``push``-ing a stream in any chunks and then
``flush()``-ing gives exactly ``apply`` on the whole stream.

Bounds (a spec may come from a hostile, even signed, manifest): a resize side is at most
:data:`MAX_RESIZE_SIDE`, a window's size and hop at most :data:`MAX_WINDOW`; no step may make
more than :data:`MAX_SAMPLE_ELEMENTS` values per sample (``ConfigError`` when the pipeline is
built with an ``input_shape``, ``InvalidInputError`` on the first input otherwise), nor one
call more than :data:`MAX_CALL_ELEMENTS` at any step (``InvalidInputError``: split the batch).

``input_shape`` is the per-sample shape the caller supplies; for a pipeline that
starts with a window it is the shape of one time step (``features``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union, get_args

import numpy as np

from .errors import ConfigError, InvalidInputError

Shape = tuple[int, ...]
#: A scalar or a (nested) tuple of floats: a per-feature constant.
Numbers = Union[float, tuple[Any, ...]]

EPS = 1e-8
DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
}
_F32_MAX = float(np.finfo(np.float32).max)
_INT_MAX = 2**31 - 1
_MAX_DEPTH = 8
#: Bounds on what a (possibly hostile, even signed) preprocessing spec can make us allocate.
#: A resize side, a window's size and hop:
MAX_RESIZE_SIDE = 16384
MAX_WINDOW = 1 << 20
#: the values of one sample at any step (64 Mi: 256 MiB of float32) ...
MAX_SAMPLE_ELEMENTS = 1 << 26
#: ... and of one call's whole batch at any step (256 Mi: 1 GiB of float32); split larger batches
MAX_CALL_ELEMENTS = 1 << 28
_REQUIRED: Any = object()


class _ShapeError(Exception):
    """A step cannot take data of this per-sample shape (turned into Config/InvalidInputError)."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _plain(v: Any) -> Any:
    """Nested tuples -> nested lists (JSON-friendly)."""
    return [_plain(i) for i in v] if isinstance(v, tuple) else v


class _Params:
    """Typed access to one step's parameter dict; every failure is a ConfigError naming the step."""

    def __init__(self, raw: Mapping[Any, Any], where: str, allowed: Sequence[str]) -> None:
        extra = [k for k in raw if k != "op" and k not in allowed]
        if extra:
            names = ", ".join(_short(k) for k in extra)
            raise ConfigError(f"{where}: unknown parameter(s) {names}; allowed: {', '.join(allowed) or 'none'}")
        self.raw = raw
        self.where = where

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: {message}")

    def given(self, name: str) -> bool:
        return self.raw.get(name) is not None

    def _get(self, name: str, default: Any) -> tuple[Any, bool]:
        value = self.raw.get(name)
        if value is None:
            if default is _REQUIRED:
                raise self.fail(f"missing required parameter {name!r}")
            return default, False
        return value, True

    def int_(self, name: str, default: Any = _REQUIRED, minimum: int = 1, maximum: int = _INT_MAX) -> int:
        value, found = self._get(name, default)
        if not found:
            return value  # type: ignore[no-any-return]
        if not _is_int(value) or not minimum <= int(value) <= maximum:
            bound = f">= {minimum}" + (f" and <= {maximum}" if maximum != _INT_MAX else "")
            raise self.fail(f"parameter {name!r} must be an integer {bound}, got {_short(value)}")
        return int(value)

    def choice(self, name: str, options: Sequence[str], default: Any = _REQUIRED) -> str:
        value, found = self._get(name, default)
        if found and (not isinstance(value, str) or value not in options):
            raise self.fail(f"parameter {name!r} must be one of {', '.join(options)}; got {_short(value)}")
        return value  # type: ignore[no-any-return]

    def number(self, name: str, default: Any = _REQUIRED) -> float:
        value, found = self._get(name, default)
        if not found:
            return value  # type: ignore[no-any-return]
        result = _to_numbers(value, 0)
        if result is None or isinstance(result, tuple):
            raise self.fail(f"parameter {name!r} must be a finite number, got {_short(value)}")
        return result

    def numbers(self, name: str, default: Any = _REQUIRED) -> Numbers | None:
        value, found = self._get(name, default)
        if not found:
            return value  # type: ignore[no-any-return]
        result = _to_numbers(value.tolist() if isinstance(value, np.ndarray) else value, 0)
        if result is not None and isinstance(result, tuple):
            try:
                np.array(result, dtype=np.float64)
            except ValueError:
                result = None
        if result is None:
            raise self.fail(
                f"parameter {name!r} must be a finite number or a rectangular (nested) list of them, got {_short(value)}"
            )
        return result

    def ints(self, name: str) -> tuple[int, ...]:
        value, _ = self._get(name, _REQUIRED)
        if not isinstance(value, (list, tuple)) or not all(_is_int(v) and abs(int(v)) <= _INT_MAX for v in value):
            raise self.fail(f"parameter {name!r} must be a list of integers, got {_short(value)}")
        return tuple(int(v) for v in value)


def _to_numbers(value: Any, depth: int) -> Numbers | None:
    """A finite float (float32 range) or a non-empty nested tuple of them; None when invalid."""
    if _is_num(value):
        try:
            f = float(value)
        except OverflowError:
            return None
        return f if math.isfinite(f) and abs(f) <= _F32_MAX else None
    if isinstance(value, (list, tuple)) and value and depth < _MAX_DEPTH:
        items = tuple(_to_numbers(v, depth + 1) for v in value)
        return None if any(i is None for i in items) else items
    return None


def _const(value: Numbers) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _check_pair(p: _Params, a: Numbers, b: Numbers, names: str) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    try:
        np.broadcast_shapes(lo.shape, hi.shape)
    except ValueError:
        raise p.fail(f"parameters {names} have shapes {lo.shape} and {hi.shape}, which do not broadcast") from None
    return lo, hi


class _Reference:
    """Lazy, validated access to a reference statistics dict (see ``edgefleet.stats``)."""

    def __init__(self, ref: Mapping[str, Any] | None) -> None:
        self._ref = ref
        self._shape: Shape | None = None
        self._cache: dict[str, np.ndarray] = {}

    def _fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{where}: reference statistics {message}")

    def shape(self, where: str) -> Shape:
        if self._shape is not None:
            return self._shape
        if self._ref is None:
            raise ConfigError(
                f"{where}: takes its constants from the reference statistics, but none were given; "
                "pass reference=... (edgefleet.stats.compute_reference_stats) or give the parameters explicitly"
            )
        if not isinstance(self._ref, Mapping):
            raise self._fail(where, f"must be a dict, got {type(self._ref).__name__}")
        shape = self._ref.get("shape")
        if not isinstance(shape, (list, tuple)) or not all(_is_int(d) and 1 <= int(d) <= _INT_MAX for d in shape):
            raise self._fail(where, f"need 'shape' as a list of positive integers, got {_short(shape)}")
        self._shape = tuple(int(d) for d in shape)
        return self._shape

    def array(self, key: str, where: str) -> np.ndarray:
        shape = self.shape(where)
        if key in self._cache:
            return self._cache[key]
        assert self._ref is not None
        raw = self._ref.get(key)
        if raw is None:
            raise self._fail(where, f"have no {key!r}")
        try:
            arr = np.asarray(raw, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise self._fail(where, f"{key!r} must be a list of numbers") from None
        size = math.prod(shape)
        if arr.size != size:
            raise self._fail(where, f"{key!r} has {arr.size} values, expected {size} for shape {list(shape)}")
        if not np.isfinite(arr).all() or np.abs(arr).max(initial=0.0) > _F32_MAX:
            raise self._fail(where, f"{key!r} holds non-finite values")
        if key == "std" and (arr < 0).any():
            raise self._fail(where, "'std' holds negative values")
        self._cache[key] = arr.astype(np.float32).reshape(shape)
        return self._cache[key]


@dataclass(frozen=True)
class _Kernel:
    """A compiled step: ``infer`` maps per-sample shapes (raising _ShapeError), ``run`` maps batches."""

    infer: Callable[[Shape], Shape]
    run: Callable[[np.ndarray], np.ndarray]


def _same(shape: Shape) -> Shape:
    return shape


def _fits(const: np.ndarray, label: str) -> Callable[[Shape], Shape]:
    """An ``infer`` that checks a constant broadcasts onto the per-sample shape without growing it."""

    def infer(shape: Shape) -> Shape:
        ok = const.ndim <= len(shape)
        if ok:
            try:
                ok = np.broadcast_shapes(const.shape, shape) == shape
            except ValueError:
                ok = False
        if not ok:
            raise _ShapeError(
                f"{label} have shape {const.shape}, which does not broadcast to the per-sample shape {shape}"
            )
        return shape

    return infer


def _fits_all(*checks: Callable[[Shape], Shape]) -> Callable[[Shape], Shape]:
    def infer(shape: Shape) -> Shape:
        for check in checks:
            check(shape)
        return shape

    return infer


def _float_in(x: np.ndarray) -> np.ndarray:
    return x if x.dtype.kind == "f" else x.astype(np.float32)


def _float_out(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return y.astype(x.dtype if x.dtype.kind == "f" else np.float32, copy=False)


def _labels(explicit: bool, names: str) -> str:
    return f"parameters {names}" if explicit else "reference statistics"


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class CastStep:
    dtype: str
    op: ClassVar[str] = "cast"
    ALLOWED: ClassVar[tuple[str, ...]] = ("dtype",)

    @classmethod
    def parse(cls, p: _Params) -> CastStep:
        return cls(p.choice("dtype", tuple(DTYPES)))

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "dtype": self.dtype}

    def compile(self, ref: _Reference, where: str) -> _Kernel:
        target = np.dtype(DTYPES[self.dtype])

        def run(x: np.ndarray) -> np.ndarray:
            return _cast(x, target, where)

        return _Kernel(_same, run)


def _cast(x: np.ndarray, target: np.dtype, where: str) -> np.ndarray:
    if x.dtype == target:
        return x
    if target.kind in "iu" and x.dtype.kind in "fiub":
        info = np.iinfo(target)
        if x.dtype.kind == "f":
            if np.isnan(x).any():
                raise InvalidInputError(f"{where}: cannot cast NaN to {target}; impute missing values first")
            if info.bits >= 32:
                work = x.astype(np.float64, copy=False)
            else:  # the narrow ranges are exact in float32 (not in float16)
                work = x if x.dtype.itemsize >= 4 else x.astype(np.float32)
            hi = float(info.max)
            if int(hi) > info.max:  # int64 max is not a float64
                hi = float(np.nextafter(hi, 0.0))
            return np.clip(work, float(info.min), hi).astype(target)
        if x.dtype.kind in "iu":
            src = np.iinfo(x.dtype)
            if src.min < info.min or src.max > info.max:
                lo, hi_i = max(src.min, info.min), min(src.max, info.max)
                return x.clip(x.dtype.type(lo), x.dtype.type(hi_i)).astype(target)
    return x.astype(target)


@dataclass(frozen=True)
class ReshapeStep:
    shape: tuple[int, ...]
    op: ClassVar[str] = "reshape"
    ALLOWED: ClassVar[tuple[str, ...]] = ("shape",)

    @classmethod
    def parse(cls, p: _Params) -> ReshapeStep:
        shape = p.ints("shape")
        if any(d < 1 and d != -1 for d in shape) or shape.count(-1) > 1:
            raise p.fail(f"parameter 'shape' takes positive sizes and at most one -1, got {list(shape)}")
        return cls(shape)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "shape": list(self.shape)}

    def compile(self, ref: _Reference, where: str) -> _Kernel:
        target = self.shape
        known = math.prod(d for d in target if d != -1)

        def infer(shape: Shape) -> Shape:
            size = math.prod(shape)
            if -1 in target:
                if size % known:
                    raise _ShapeError(f"cannot reshape per-sample shape {shape} ({size} values) into {list(target)}")
                return tuple(size // known if d == -1 else d for d in target)
            if size != known:
                raise _ShapeError(f"cannot reshape per-sample shape {shape} ({size} values) into {list(target)}")
            return target

        def run(x: np.ndarray) -> np.ndarray:
            return x.reshape((x.shape[0], *infer(x.shape[1:])))

        return _Kernel(infer, run)


@dataclass(frozen=True)
class ImputeStep:
    strategy: str
    value: Numbers | None = None
    op: ClassVar[str] = "impute"
    ALLOWED: ClassVar[tuple[str, ...]] = ("strategy", "value")

    @classmethod
    def parse(cls, p: _Params) -> ImputeStep:
        strategy = p.choice("strategy", ("constant", "mean", "median"))
        if strategy == "constant":
            return cls(strategy, p.numbers("value"))
        if p.given("value"):
            raise p.fail(f"strategy {strategy!r} takes its fill values from the reference statistics; drop 'value'")
        return cls(strategy)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "strategy": self.strategy}
        if self.value is not None:
            out["value"] = _plain(self.value)
        return out

    def compile(self, ref: _Reference, where: str) -> _Kernel:
        if self.strategy == "constant":
            assert self.value is not None
            fill, label = _const(self.value), "parameter 'value'"
        else:
            fill, label = ref.array(self.strategy, where), "reference statistics"

        def run(x: np.ndarray) -> np.ndarray:
            if x.dtype.kind != "f":
                return x
            return _float_out(np.where(np.isnan(x), fill, x), x)

        return _Kernel(_fits(fill, label), run)


@dataclass(frozen=True)
class ClipStep:
    min: Numbers | None = None
    max: Numbers | None = None
    zscore: float | None = None
    mean: Numbers | None = None
    std: Numbers | None = None
    op: ClassVar[str] = "clip"
    ALLOWED: ClassVar[tuple[str, ...]] = ("min", "max", "zscore", "mean", "std")

    @classmethod
    def parse(cls, p: _Params) -> ClipStep:
        if p.given("zscore"):
            if p.given("min") or p.given("max"):
                raise p.fail("give either 'min'/'max' or 'zscore', not both")
            k = p.number("zscore")
            if k <= 0:
                raise p.fail(f"parameter 'zscore' must be > 0, got {k}")
            if p.given("mean") != p.given("std"):
                raise p.fail("give both 'mean' and 'std' (or neither, to use the reference statistics)")
            mean, std = p.numbers("mean", None), p.numbers("std", None)
            if mean is not None and std is not None:
                _, s = _check_pair(p, mean, std, "'mean' and 'std'")
                if (s < 0).any():
                    raise p.fail("parameter 'std' must not be negative")
            return cls(zscore=k, mean=mean, std=std)
        if p.given("mean") or p.given("std"):
            raise p.fail("'mean'/'std' only go with 'zscore'")
        lo, hi = p.numbers("min", None), p.numbers("max", None)
        if lo is None and hi is None:
            raise p.fail("give 'min' and/or 'max', or 'zscore'")
        if lo is not None and hi is not None:
            a, b = _check_pair(p, lo, hi, "'min' and 'max'")
            if (a > b).any():
                raise p.fail("'min' is above 'max'")
        return cls(min=lo, max=hi)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op}
        for name in ("min", "max", "zscore", "mean", "std"):
            value = getattr(self, name)
            if value is not None:
                out[name] = _plain(value)
        return out

    def compile(self, ref: _Reference, where: str) -> _Kernel:
        lo: np.ndarray | None
        hi: np.ndarray | None
        if self.zscore is not None:
            explicit = self.mean is not None and self.std is not None
            if self.mean is not None and self.std is not None:
                mean, std = _const(self.mean), _const(self.std)
            else:
                mean, std = ref.array("mean", where), ref.array("std", where)
            k = np.float32(self.zscore)
            lo, hi = mean - k * std, mean + k * std
            infer = _fits_all(_fits(mean, _labels(explicit, "'mean'")), _fits(std, _labels(explicit, "'std'")))
        else:
            lo = None if self.min is None else _const(self.min)
            hi = None if self.max is None else _const(self.max)
            infer = _fits_all(
                *[_fits(c, f"parameter {n!r} values") for c, n in ((lo, "min"), (hi, "max")) if c is not None]
            )

        def run(x: np.ndarray) -> np.ndarray:
            return _float_out(np.clip(_float_in(x), lo, hi), x)

        return _Kernel(infer, run)


@dataclass(frozen=True)
class StandardizeStep:
    mean: Numbers | None = None
    std: Numbers | None = None
    op: ClassVar[str] = "standardize"
    ALLOWED: ClassVar[tuple[str, ...]] = ("mean", "std")

    @classmethod
    def parse(cls, p: _Params) -> StandardizeStep:
        if p.given("mean") != p.given("std"):
            raise p.fail("give both 'mean' and 'std', or neither to use the reference statistics")
        mean, std = p.numbers("mean", None), p.numbers("std", None)
        if mean is not None and std is not None:
            _, s = _check_pair(p, mean, std, "'mean' and 'std'")
            if (s < 0).any():
                raise p.fail("parameter 'std' must not be negative")
        return cls(mean, std)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op}
        if self.mean is not None:
            out["mean"], out["std"] = _plain(self.mean), _plain(self.std)
        return out

    def compile(self, ref: _Reference, where: str) -> _Kernel:
        explicit = self.mean is not None and self.std is not None
        if self.mean is not None and self.std is not None:
            mean, std = _const(self.mean), _const(self.std)
        else:
            mean, std = ref.array("mean", where), ref.array("std", where)
        inv = np.where(std > EPS, 1.0 / np.maximum(std, EPS), 1.0).astype(np.float32)

        def run(x: np.ndarray) -> np.ndarray:
            return _float_out((_float_in(x) - mean) * inv, x)

        infer = _fits_all(_fits(mean, _labels(explicit, "'mean'")), _fits(std, _labels(explicit, "'std'")))
        return _Kernel(infer, run)


@dataclass(frozen=True)
class MinMaxStep:
    min: Numbers | None = None
    max: Numbers | None = None
    range: tuple[float, float] = (0.0, 1.0)
    op: ClassVar[str] = "minmax"
    ALLOWED: ClassVar[tuple[str, ...]] = ("min", "max", "range")

    @classmethod
    def parse(cls, p: _Params) -> MinMaxStep:
        if p.given("min") != p.given("max"):
            raise p.fail("give both 'min' and 'max', or neither to use the reference statistics")
        lo, hi = p.numbers("min", None), p.numbers("max", None)
        if lo is not None and hi is not None:
            a, b = _check_pair(p, lo, hi, "'min' and 'max'")
            if (a > b).any():
                raise p.fail("'min' is above 'max'")
        rng = p.numbers("range", (0.0, 1.0))
        if not (
            isinstance(rng, tuple) and len(rng) == 2 and all(isinstance(v, float) for v in rng) and rng[0] < rng[1]
        ):
            raise p.fail(f"parameter 'range' must be [lo, hi] with lo < hi, got {_short(p.raw.get('range'))}")
        return cls(lo, hi, (float(rng[0]), float(rng[1])))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op}
        if self.min is not None:
            out["min"], out["max"] = _plain(self.min), _plain(self.max)
        out["range"] = list(self.range)
        return out

    def compile(self, ref: _Reference, where: str) -> _Kernel:
        explicit = self.min is not None and self.max is not None
        if self.min is not None and self.max is not None:
            lo, hi = _const(self.min), _const(self.max)
        else:
            lo, hi = ref.array("min", where), ref.array("max", where)
        span = hi.astype(np.float64) - lo
        scale = ((self.range[1] - self.range[0]) / np.where(span > EPS, span, 1.0)).astype(np.float32)
        start = np.float32(self.range[0])

        def run(x: np.ndarray) -> np.ndarray:
            return _float_out((_float_in(x) - lo) * scale + start, x)

        infer = _fits_all(_fits(lo, _labels(explicit, "'min'")), _fits(hi, _labels(explicit, "'max'")))
        return _Kernel(infer, run)


@dataclass(frozen=True)
class ScaleStep:
    factor: Numbers
    offset: Numbers = 0.0
    op: ClassVar[str] = "scale"
    ALLOWED: ClassVar[tuple[str, ...]] = ("factor", "offset")

    @classmethod
    def parse(cls, p: _Params) -> ScaleStep:
        factor = p.numbers("factor")
        offset = p.numbers("offset", 0.0)
        assert factor is not None and offset is not None
        return cls(factor, offset)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "factor": _plain(self.factor), "offset": _plain(self.offset)}

    def compile(self, ref: _Reference, where: str) -> _Kernel:
        factor, offset = _const(self.factor), _const(self.offset)
        no_offset = not offset.any()

        def run(x: np.ndarray) -> np.ndarray:
            y = _float_in(x) * factor
            return _float_out(y if no_offset else y + offset, x)

        infer = _fits_all(_fits(factor, "parameter 'factor' values"), _fits(offset, "parameter 'offset' values"))
        return _Kernel(infer, run)


def _image_axes(shape: Shape, layout: str, what: str) -> tuple[int, int, int | None]:
    """(height axis, width axis, channel axis) of a per-sample image shape, batch axis not counted."""
    if len(shape) == 2:
        return 0, 1, None
    if len(shape) == 3:
        return (1, 2, 0) if layout == "NCHW" else (0, 1, 2)
    raise _ShapeError(f"{what} takes images of per-sample shape (H, W) or 3-D ({layout}), got {shape}")


_LinearCoords = tuple[np.ndarray, np.ndarray, np.ndarray]


def _linear_coords(in_size: int, out_size: int) -> _LinearCoords:
    """Half-pixel-centre source indices (low, high) and weights of the high one."""
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    floor = np.floor(src)
    low = np.maximum(floor, 0).astype(np.intp)
    high = np.minimum(np.ceil(src), in_size - 1).astype(np.intp)
    return low, high, (src - floor).astype(np.float32)


def _nearest_coords(in_size: int, out_size: int) -> np.ndarray:
    src = np.floor((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size))
    return np.minimum(src, in_size - 1).astype(np.intp)


def _axis_shape(ndim: int, axis: int) -> tuple[int, ...]:
    return tuple(-1 if i == axis else 1 for i in range(ndim))


@dataclass(frozen=True)
class ResizeStep:
    height: int
    width: int
    method: str = "bilinear"
    layout: str = "NHWC"
    op: ClassVar[str] = "resize"
    ALLOWED: ClassVar[tuple[str, ...]] = ("height", "width", "method", "layout")

    @classmethod
    def parse(cls, p: _Params) -> ResizeStep:
        return cls(
            p.int_("height", maximum=MAX_RESIZE_SIDE),
            p.int_("width", maximum=MAX_RESIZE_SIDE),
            p.choice("method", ("bilinear", "nearest"), "bilinear"),
            p.choice("layout", ("NHWC", "NCHW"), "NHWC"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "height": self.height, "width": self.width, "method": self.method, "layout": self.layout}

    def compile(self, ref: _Reference, where: str) -> _Kernel:
        def infer(shape: Shape) -> Shape:
            h, w, _ = _image_axes(shape, self.layout, "resize")
            out = list(shape)
            out[h], out[w] = self.height, self.width
            return tuple(out)

        @functools.cache  # per input size: (rows, columns) to take
        def nearest(in_h: int, in_w: int) -> tuple[np.ndarray, np.ndarray]:
            return _nearest_coords(in_h, self.height), _nearest_coords(in_w, self.width)

        @functools.cache  # per input size: (rows, columns) as (low, high, weight of high)
        def linear(in_h: int, in_w: int) -> tuple[_LinearCoords, _LinearCoords]:
            return _linear_coords(in_h, self.height), _linear_coords(in_w, self.width)

        def run(x: np.ndarray) -> np.ndarray:
            h, w, _ = _image_axes(x.shape[1:], self.layout, "resize")
            h, w = h + 1, w + 1
            if x.shape[h] == self.height and x.shape[w] == self.width:
                return x if self.method == "nearest" else _float_out(_float_in(x), x)
            if self.method == "nearest":
                rows, cols = nearest(x.shape[h], x.shape[w])
                return np.take(np.take(x, rows, axis=h), cols, axis=w)
            (y0, y1, wy), (x0, x1, wx) = linear(x.shape[h], x.shape[w])
            xf = _float_in(x)
            top, bottom = np.take(xf, y0, axis=h), np.take(xf, y1, axis=h)
            rows_ = top + (bottom - top) * wy.reshape(_axis_shape(xf.ndim, h))
            left, right = np.take(rows_, x0, axis=w), np.take(rows_, x1, axis=w)
            return _float_out(left + (right - left) * wx.reshape(_axis_shape(xf.ndim, w)), x)

        return _Kernel(infer, run)


@dataclass(frozen=True)
class ChannelOrderStep:
    order: str
    layout: str = "NHWC"
    op: ClassVar[str] = "channel_order"
    ALLOWED: ClassVar[tuple[str, ...]] = ("order", "layout")

    @classmethod
    def parse(cls, p: _Params) -> ChannelOrderStep:
        return cls(p.choice("order", ("rgb", "bgr")), p.choice("layout", ("NHWC", "NCHW"), "NHWC"))

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "order": self.order, "layout": self.layout}

    def compile(self, ref: _Reference, where: str) -> _Kernel:
        def infer(shape: Shape) -> Shape:
            if len(shape) != 3:
                raise _ShapeError(f"channel_order takes 3-D images ({self.layout}), got per-sample shape {shape}")
            channels = shape[0] if self.layout == "NCHW" else shape[2]
            if channels not in (3, 4):
                raise _ShapeError(f"channel_order takes 3 or 4 channels, got {channels} (per-sample shape {shape})")
            return shape

        def run(x: np.ndarray) -> np.ndarray:
            if self.order == "rgb":
                return x
            axis = 1 if self.layout == "NCHW" else 3
            index = [2, 1, 0] if x.shape[axis] == 3 else [2, 1, 0, 3]
            return np.take(x, index, axis=axis)

        return _Kernel(infer, run)


@dataclass(frozen=True)
class TransposeStep:
    perm: tuple[int, ...]
    op: ClassVar[str] = "transpose"
    ALLOWED: ClassVar[tuple[str, ...]] = ("perm",)

    @classmethod
    def parse(cls, p: _Params) -> TransposeStep:
        perm = p.ints("perm")
        if sorted(perm) != list(range(len(perm))):
            raise p.fail(f"parameter 'perm' must be a permutation of 0..n-1 over the per-sample axes, got {list(perm)}")
        return cls(perm)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "perm": list(self.perm)}

    def compile(self, ref: _Reference, where: str) -> _Kernel:
        axes = (0, *(a + 1 for a in self.perm))

        def infer(shape: Shape) -> Shape:
            if len(shape) != len(self.perm):
                raise _ShapeError(f"perm {list(self.perm)} does not fit the per-sample shape {shape}")
            return tuple(shape[a] for a in self.perm)

        def run(x: np.ndarray) -> np.ndarray:
            return x.transpose(axes)

        return _Kernel(infer, run)


@dataclass(frozen=True)
class WindowStep:
    size: int
    hop: int
    pad: str = "none"
    op: ClassVar[str] = "window"
    ALLOWED: ClassVar[tuple[str, ...]] = ("size", "hop", "pad")

    @classmethod
    def parse(cls, p: _Params) -> WindowStep:
        size = p.int_("size", maximum=MAX_WINDOW)
        return cls(size, p.int_("hop", size, maximum=MAX_WINDOW), p.choice("pad", ("none", "zero"), "none"))

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "size": self.size, "hop": self.hop, "pad": self.pad}

    def compile(self, ref: _Reference, where: str) -> _Kernel:
        """The framing as a kernel: a batch axis of time steps becomes (windows, size, *features)."""

        def infer(shape: Shape) -> Shape:
            return (self.size, *shape)

        def run(x: np.ndarray) -> np.ndarray:
            return self.frame(x, pad=self.pad == "zero")

        return _Kernel(infer, run)

    def frame(self, x: np.ndarray, pad: bool) -> np.ndarray:
        """(T, *f) -> (windows, size, *f); with ``pad`` also the zero-padded tail window."""
        t = x.shape[0]
        n = 0 if t < self.size else 1 + (t - self.size) // self.hop
        if pad and n * self.hop < t:
            n += 1
            missing = (n - 1) * self.hop + self.size - t
            x = np.concatenate([x, np.zeros((missing, *x.shape[1:]), dtype=x.dtype)])
        framed = n * self.size * math.prod(x.shape[1:])
        if framed > MAX_CALL_ELEMENTS:
            raise InvalidInputError(
                f"framing {t} samples into {n} windows of {self.size} would make {framed} elements, over the cap "
                f"of {MAX_CALL_ELEMENTS}; pass a shorter stream"
            )
        index = (np.arange(n) * self.hop)[:, None] + np.arange(self.size)
        return x[index]


Step = Union[
    CastStep,
    ReshapeStep,
    ImputeStep,
    ClipStep,
    StandardizeStep,
    MinMaxStep,
    ScaleStep,
    ResizeStep,
    ChannelOrderStep,
    TransposeStep,
    WindowStep,
]
_STEP_CLASSES: tuple[Any, ...] = get_args(Step)
STEP_TYPES: dict[str, Any] = {cls.op: cls for cls in _STEP_CLASSES}


def _where(index: int, op: str) -> str:
    return f"preprocessing steps[{index}] ({op})"


def parse_step(raw: Any, index: int = 0) -> Step:
    """One step dict -> a typed, validated step object."""
    if isinstance(raw, _STEP_CLASSES):
        raw = raw.to_dict()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"preprocessing steps[{index}] must be a dict with an 'op', got {_short(raw)}")
    op = raw.get("op")
    if not isinstance(op, str) or op not in STEP_TYPES:
        raise ConfigError(
            f"preprocessing steps[{index}]: unknown op {_short(op)}; known ops: {', '.join(sorted(STEP_TYPES))}"
        )
    cls = STEP_TYPES[op]
    where = _where(index, op)
    return cls.parse(_Params(raw, where, cls.ALLOWED))  # type: ignore[no-any-return]


def _parse_shape(value: Any) -> Shape | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(_is_int(d) and 1 <= int(d) <= _INT_MAX for d in value):
        raise ConfigError(f"preprocessing input_shape must be a list of positive integers or null, got {_short(value)}")
    return tuple(int(d) for d in value)


def check_finite(arr: np.ndarray, what: str, *, allow_nan: bool = False) -> None:
    """The one NaN/inf check of input values (a model's inputs and a pipeline's).

    Float arrays only; an ``InvalidInputError`` names ``what``, how many values are
    not finite and the first one's kind and index. ``allow_nan`` (a pipeline that
    imputes missing values) refuses only inf. All finite costs one sum.
    """
    if arr.dtype.kind != "f" or not arr.size:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(arr.sum()):  # a finite sum: no NaN or inf (an overflowing sum looks properly below)
            return
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(arr[first]) else "inf"
        hint = "" if allow_nan else "; clean the data or add an impute step to the preprocessing"
        raise InvalidInputError(f"{what} holds {int(bad.sum())} non-finite values ({kind} at index {first}){hint}")


def _numeric(x: Any, what: str) -> np.ndarray:
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise InvalidInputError(f"{what}: expected numbers, got dtype {arr.dtype}")
    if arr.ndim < 1:
        raise InvalidInputError(f"{what}: expected a batched array (batch axis first), got a scalar")
    return arr


class Pipeline:
    """A validated, precompiled preprocessing pipeline. Build it with :meth:`from_spec`."""

    def __init__(
        self,
        steps: Sequence[Step | Mapping[str, Any]] = (),
        input_shape: Sequence[int] | None = None,
        reference: Mapping[str, Any] | None = None,
    ) -> None:
        self.input_shape: Shape | None = _parse_shape(input_shape)
        self.steps: tuple[Step, ...] = tuple(parse_step(s, i) for i, s in enumerate(steps))
        for i, step in enumerate(self.steps):
            if isinstance(step, WindowStep) and i != 0:
                raise ConfigError(f"{_where(i, 'window')}: a window step must be the first step")
        self.has_window = bool(self.steps) and isinstance(self.steps[0], WindowStep)
        self.allows_missing = any(isinstance(s, ImputeStep) for s in self.steps)
        self.is_identity = not self.steps
        self._window: WindowStep | None = self.steps[0] if self.has_window else None  # type: ignore[assignment]
        ref = _Reference(reference)
        body = self.steps[1:] if self.has_window else self.steps
        offset = 1 if self.has_window else 0
        self._kernels: list[tuple[str, _Kernel]] = []
        self._shapes_ok: dict[Shape, int] = {}  # per-sample input shape -> most values at any step
        for i, step in enumerate(body, start=offset):
            where = _where(i, step.op)
            self._kernels.append((where, step.compile(ref, where)))
        #: True when some step takes its constants from the reference statistics.
        self.needs_reference = ref._shape is not None
        self.output_shape: Shape | None = None
        if self.input_shape is not None:
            try:
                self.output_shape = self._infer(self.input_shape)
            except _InferError as exc:
                raise ConfigError(f"{exc.where}: {exc.message} (with input_shape {list(self.input_shape)})") from None

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any] | Sequence[Any] | None, reference: Mapping[str, Any] | None = None
    ) -> Pipeline:
        """Build from ``None`` (identity), a list of step dicts, or ``{"input_shape": ..., "steps": [...]}``."""
        if spec is None:
            return cls()
        if isinstance(spec, Mapping):
            extra = [k for k in spec if k not in ("input_shape", "steps")]
            if extra:
                raise ConfigError(
                    f"preprocessing spec has unknown key(s) {', '.join(_short(k) for k in extra)}; "
                    "allowed: input_shape, steps"
                )
            steps = spec.get("steps")
            if steps is None:
                steps = []
            if not isinstance(steps, (list, tuple)):
                raise ConfigError(f"preprocessing 'steps' must be a list of step dicts, got {_short(steps)}")
            return cls(steps, spec.get("input_shape"), reference)
        if isinstance(spec, (list, tuple)):
            return cls(spec, None, reference)
        raise ConfigError(f"a preprocessing spec is a list of steps or a dict with 'steps', got {_short(spec)}")

    def to_spec(self) -> dict[str, Any]:
        """The spec as plain JSON types; ``from_spec(p.to_spec(), ref)`` rebuilds the same pipeline."""
        return {
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "steps": [s.to_dict() for s in self.steps],
        }

    def _infer(self, shape: Shape) -> Shape:
        return self._infer_peak(shape)[0]

    def _infer_peak(self, shape: Shape) -> tuple[Shape, int]:
        """The output shape of one sample and the most values one sample has at any step;
        a step making more than :data:`MAX_SAMPLE_ELEMENTS` is an ``_InferError``."""
        if self._window is not None:
            shape = (self._window.size, *shape)
        peak = math.prod(shape)
        for where, kernel in self._kernels:
            try:
                shape = kernel.infer(shape)
            except _ShapeError as exc:
                raise _InferError(where, str(exc)) from None
            size = math.prod(shape)
            if size > MAX_SAMPLE_ELEMENTS:
                raise _InferError(
                    where, f"makes {size} elements per sample {list(shape)}, over the cap of {MAX_SAMPLE_ELEMENTS}"
                )
            peak = max(peak, size)
        return shape, peak

    def _check(self, x: Any, what: str) -> np.ndarray:
        arr = _numeric(x, what)
        if self.input_shape is not None and arr.shape[1:] != self.input_shape:
            lead = "T" if self._window is not None else "N"
            raise InvalidInputError(
                f"{what}: expected shape ({lead}{''.join(f', {d}' for d in self.input_shape)}), got {arr.shape}"
            )
        check_finite(arr, what, allow_nan=self.allows_missing)
        return arr

    def _run(self, x: np.ndarray) -> np.ndarray:
        sample_shape = x.shape[1:]
        peak = self._shapes_ok.get(sample_shape)
        if peak is None:  # shape inference once per input shape, not per call
            shape = sample_shape
            peak = math.prod(shape)
            for where, kernel in self._kernels:
                try:
                    shape = kernel.infer(shape)
                except _ShapeError as exc:
                    raise InvalidInputError(f"{where}: {exc}") from None
                size = math.prod(shape)
                if size > MAX_SAMPLE_ELEMENTS:
                    raise InvalidInputError(
                        f"{where}: makes {size} elements per sample {list(shape)}, over the cap of {MAX_SAMPLE_ELEMENTS}"
                    )
                peak = max(peak, size)
            if len(self._shapes_ok) < 64:
                self._shapes_ok[sample_shape] = peak
        if x.shape[0] * peak > MAX_CALL_ELEMENTS:
            raise InvalidInputError(
                f"preprocessing {x.shape[0]} samples would make {x.shape[0] * peak} elements at one step, over the "
                f"cap of {MAX_CALL_ELEMENTS}; pass a smaller batch"
            )
        for _, kernel in self._kernels:
            x = kernel.run(x)
        return np.ascontiguousarray(x)

    def apply(self, x: np.ndarray, what: str = "preprocessing input") -> np.ndarray:
        """Run on a batch (batch axis first), or on one time-first stream when the pipeline starts with a window."""
        arr = self._check(x, what)
        if self._window is not None:
            arr = self._window.frame(arr, pad=self._window.pad == "zero")
        return self._run(arr)

    __call__ = apply

    def stream(self) -> PipelineStream:
        """A stateful stream that turns chunks of samples into processed windows."""
        if self._window is None:
            raise ConfigError("this preprocessing has no window step, so it cannot stream; use apply()")
        return PipelineStream(self)

    def __repr__(self) -> str:
        ops = " -> ".join(s.op for s in self.steps) or "identity"
        return f"<Pipeline {ops} input_shape={self.input_shape}>"


class _InferError(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


class PipelineStream:
    """Chunks in, completed processed windows out; leftover samples carry over between pushes."""

    def __init__(self, pipeline: Pipeline) -> None:
        if pipeline._window is None:
            raise ConfigError("PipelineStream needs a pipeline that starts with a window step")
        self._pipeline = pipeline
        self._window: WindowStep = pipeline._window
        self.reset()

    def reset(self) -> None:
        """Forget buffered samples: the next push starts a new stream."""
        self._buffer: np.ndarray | None = None
        self._skip = 0  # samples still to drop before the next window starts (hop > size)
        self._features: Shape | None = self._pipeline.input_shape

    @property
    def pending(self) -> int:
        """Samples buffered towards the next window."""
        return 0 if self._buffer is None else int(self._buffer.shape[0])

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add (T, *features) samples; return the processed windows they complete (maybe zero of them)."""
        arr = self._pipeline._check(chunk, "stream chunk")
        if self._features is None:
            self._features = arr.shape[1:]
        elif arr.shape[1:] != self._features:
            raise InvalidInputError(
                f"stream chunk: samples have shape {arr.shape[1:]}, earlier ones had {self._features}"
            )
        if self._skip:
            drop = min(self._skip, arr.shape[0])
            arr, self._skip = arr[drop:], self._skip - drop
        data = arr if self._buffer is None else np.concatenate([self._buffer, arr])
        win = self._window
        n = 0 if data.shape[0] < win.size else 1 + (data.shape[0] - win.size) // win.hop
        windows = win.frame(data, pad=False)
        consumed = n * win.hop
        if consumed <= data.shape[0]:
            self._buffer = data[consumed:].copy()
        else:
            self._buffer, self._skip = data[:0].copy(), consumed - data.shape[0]
        return self._pipeline._run(windows)

    def flush(self) -> np.ndarray:
        """End the stream: with ``pad="zero"`` emit the padded partial window (as ``apply`` does); then reset."""
        buffer = self._buffer
        if buffer is None:
            buffer = np.zeros((0, *(self._features or ())), dtype=np.float32)
        pad = self._window.pad == "zero" and self._skip == 0 and buffer.shape[0] > 0
        windows = self._window.frame(buffer, pad=True) if pad else self._window.frame(buffer[:0], pad=False)
        self.reset()
        return self._pipeline._run(windows)


def decode_labels(scores: np.ndarray, labels: Sequence[str], top_k: int = 1) -> str | list[Any]:
    """Scores over the last axis -> label names.

    1-D scores (one sample) give a label (``top_k=1``) or a list of ``top_k`` labels, best
    first; batched scores give a list with one such entry per sample. Ties go to the
    lower class index.
    """
    s = np.asarray(scores)
    if s.ndim == 0 or s.dtype.kind not in "fiub":
        raise InvalidInputError(f"decode_labels: expected numeric scores with a class axis, got {s.dtype} {s.shape}")
    if not all(isinstance(label, str) for label in labels):
        raise ConfigError("decode_labels: labels must be strings")
    classes = s.shape[-1]
    if len(labels) != classes:
        raise InvalidInputError(f"decode_labels: scores have {classes} classes but there are {len(labels)} labels")
    if not _is_int(top_k) or not 1 <= top_k <= classes:
        raise ConfigError(f"decode_labels: top_k must be an integer in 1..{classes}, got {_short(top_k)}")
    if s.dtype.kind == "f" and np.isnan(s).any():
        raise InvalidInputError("decode_labels: scores hold NaN")
    if top_k == 1:
        index = np.argmax(s, axis=-1)[..., None]
    else:
        index = np.argsort(-s.astype(np.float64), axis=-1, kind="stable")[..., :top_k]
    names = np.asarray(list(labels), dtype=object)[index]
    result: Any = (names[..., 0] if top_k == 1 else names).tolist()
    return result  # type: ignore[no-any-return]


__all__ = [
    "Pipeline",
    "PipelineStream",
    "decode_labels",
    "parse_step",
    "Step",
    "CastStep",
    "ReshapeStep",
    "ImputeStep",
    "ClipStep",
    "StandardizeStep",
    "MinMaxStep",
    "ScaleStep",
    "ResizeStep",
    "ChannelOrderStep",
    "TransposeStep",
    "WindowStep",
]
