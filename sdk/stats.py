"""Reference statistics of training inputs, and drift scores for live inputs.

:func:`compute_reference_stats` summarises a batch ``(N, *shape)`` per feature (one
feature = one element of a sample, flattened in C order) as a plain-JSON dict that
bundle manifests carry::

    {"shape": [...], "count": N, "mean": [...], "std": [...], "min": [...], "max": [...],
     "median": [...], "bin_edges": [[...], ...], "bin_fractions": [[...], ...],
     "bin_features": [...]}

NaN is ignored everywhere (a missing value); inf is refused. ``std`` is the
population standard deviation.

Histograms: a feature's ``bin_edges`` ``e_0 < e_1 < ... < e_m`` are its quantiles
(``bins + 1`` of them, equal ones merged, so point masses such as "pixel is 0" get
a bin of their own). They define ``m + 2`` buckets ``(-inf, e_0], (e_0, e_1], ...,
(e_m, +inf)``; ``bin_fractions`` has one entry per bucket (the last is 0 for the
training data itself: live values above the training maximum land there).
``bin_features`` lists the flat feature indices that have a histogram: all of them,
or ``max_features`` evenly spaced ones for wide inputs such as images.

:class:`RunningStats` follows live data against such a reference: per-feature
mean/variance (Welford/Chan, vectorised over each batch) and histogram counts in
the reference buckets, mergeable and persistable, scored by :meth:`RunningStats.drift`
as the population stability index (PSI) per feature and the mean shift in
reference standard deviations. Rule of thumb: PSI < 0.1 stable, 0.1-0.25 moderate,
> 0.25 a significant shift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ConfigError, InvalidInputError

EPS = 1e-8
_CHUNK_ELEMENTS = 1 << 22  # bound on the (rows x features x edges) comparison block
_FORMAT = 1


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _batch(x: Any, what: str) -> np.ndarray:
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise InvalidInputError(f"{what}: expected numbers, got dtype {arr.dtype}")
    if arr.ndim < 1:
        raise InvalidInputError(f"{what}: expected a batch (N, *shape), got a scalar")
    return arr


def _pad_edges(edges: Sequence[Sequence[float]]) -> np.ndarray:
    """Ragged per-feature edges -> (F, M) float64 padded with +inf (never below a value)."""
    width = max((len(e) for e in edges), default=0)
    out = np.full((len(edges), width), np.inf)
    for row, e in zip(out, edges):  # per feature, not per sample
        row[: len(e)] = e
    return out


def _bucket_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts (F, M + 1): bucket = number of a feature's edges strictly below the value; non-finite values skipped."""
    n, f = values.shape
    m = edges.shape[1]
    counts = np.zeros(f * (m + 1), dtype=np.int64)
    offsets = np.arange(f) * (m + 1)
    rows = max(1, _CHUNK_ELEMENTS // max(1, f * m))
    for start in range(0, n, rows):  # blocks of rows bound the memory; each block is vectorised
        block = values[start : start + rows]
        index = (edges[None, :, :] < block[:, :, None]).sum(axis=2) + offsets
        counts += np.bincount(index[np.isfinite(block)], minlength=f * (m + 1))
    return counts.reshape(f, m + 1)


def _psi_rows(reference: np.ndarray, counts: np.ndarray, eps: float) -> np.ndarray:
    """PSI per row of (rows, buckets) reference fractions and live counts; 0 for rows without data."""
    total = counts.sum(axis=1, keepdims=True)
    actual = np.divide(counts, total, out=np.zeros(counts.shape), where=total > 0)
    a, r = np.maximum(actual, eps), np.maximum(reference, eps)
    out = np.asarray(((a - r) * np.log(a / r)).sum(axis=1))  # NumPy types a ufunc's result as Any
    out[total[:, 0] == 0] = 0.0
    return out


def compute_reference_stats(x: np.ndarray, bins: int = 10, max_features: int | None = None) -> dict[str, Any]:
    """Per-feature statistics and quantile histograms of a training batch ``(N, *shape)``."""
    if not _is_int(bins) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    if max_features is not None and (not _is_int(max_features) or max_features < 1):
        raise ConfigError(f"max_features must be a positive integer or None, got {max_features!r}")
    arr = _batch(x, "reference data")
    n, shape = arr.shape[0], arr.shape[1:]
    flat = arr.reshape(n, math.prod(shape)).astype(np.float64)
    features = flat.shape[1]
    if n == 0 or features == 0:
        raise InvalidInputError(
            f"reference data: need at least one sample with at least one value, got shape {arr.shape}"
        )
    if np.isinf(flat).any():
        raise InvalidInputError("reference data: holds inf values")
    nan = np.isnan(flat)
    has_nan = bool(nan.any())
    valid = n - nan.sum(axis=0)
    if (valid == 0).any():
        first = int(np.argmax(valid == 0))
        raise InvalidInputError(f"reference data: feature {first} (flat index) has no values, only NaN")
    if has_nan:
        mean, std = np.nanmean(flat, axis=0), np.nanstd(flat, axis=0)
        low, high, median = np.nanmin(flat, axis=0), np.nanmax(flat, axis=0), np.nanmedian(flat, axis=0)
    else:
        mean, std = flat.mean(axis=0), flat.std(axis=0)
        low, high, median = flat.min(axis=0), flat.max(axis=0), np.median(flat, axis=0)

    if max_features is None or features <= max_features:
        chosen = np.arange(features)
    else:
        chosen = np.unique(np.linspace(0, features - 1, max_features).round().astype(np.intp))
    sub = flat[:, chosen]
    q = np.linspace(0.0, 1.0, bins + 1)
    quantiles = (np.nanquantile if has_nan else np.quantile)(sub, q, axis=0).T  # (features, bins + 1)
    quantiles = np.maximum.accumulate(quantiles, axis=1)
    keep = np.ones(quantiles.shape, dtype=bool)
    keep[:, 1:] = quantiles[:, 1:] != quantiles[:, :-1]
    edges = [row[k].tolist() for row, k in zip(quantiles, keep)]
    counts = _bucket_counts(sub, _pad_edges(edges))
    fractions = counts / valid[chosen][:, None]
    return {
        "shape": [int(d) for d in shape],
        "count": int(n),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "min": low.tolist(),
        "max": high.tolist(),
        "median": median.tolist(),
        "bin_edges": edges,
        "bin_fractions": [fr[: len(e) + 1].tolist() for fr, e in zip(fractions, edges)],
        "bin_features": chosen.tolist(),
    }


def psi(reference_fractions: np.ndarray, actual_counts: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of live bucket counts against reference bucket fractions.

    ``sum((a - r) * ln(a / r))`` with both fractions floored at ``eps``; 0.0 when there are no counts.
    """
    r = np.asarray(reference_fractions, dtype=np.float64)
    c = np.asarray(actual_counts, dtype=np.float64)
    if r.ndim != 1 or r.shape != c.shape:
        raise InvalidInputError(f"psi: need two 1-D arrays of the same length, got {r.shape} and {c.shape}")
    if not (np.isfinite(r).all() and np.isfinite(c).all()) or (r < 0).any() or (c < 0).any():
        raise InvalidInputError("psi: fractions and counts must be finite and non-negative")
    if not eps > 0:
        raise ConfigError(f"psi: eps must be > 0, got {eps!r}")
    return float(_psi_rows(r[None, :], c[None, :], eps)[0])


class _Ref:
    """The parts of a reference statistics dict that drift scoring needs, validated."""

    def __init__(self, reference: Any) -> None:
        if not isinstance(reference, Mapping):
            raise ConfigError(f"reference statistics must be a dict, got {type(reference).__name__}")
        self.raw = reference
        shape = reference.get("shape")
        if not isinstance(shape, (list, tuple)) or not all(_is_int(d) and d >= 1 for d in shape):
            raise ConfigError(f"reference statistics need 'shape' as a list of positive integers, got {shape!r}")
        self.shape = tuple(int(d) for d in shape)
        self.features = math.prod(self.shape)
        self.mean = self._vector("mean")
        self.std = self._vector("std")
        edges, fractions = reference.get("bin_edges"), reference.get("bin_fractions")
        if (
            not isinstance(edges, (list, tuple))
            or not isinstance(fractions, (list, tuple))
            or len(edges) != len(fractions)
        ):
            raise ConfigError("reference statistics need 'bin_edges' and 'bin_fractions' lists of the same length")
        chosen = reference.get("bin_features", list(range(len(edges))))
        try:
            self.chosen = np.asarray(chosen, dtype=np.intp).reshape(-1)
        except (TypeError, ValueError):
            raise ConfigError("reference statistics: 'bin_features' must be a list of feature indices") from None
        if len(self.chosen) != len(edges) or ((self.chosen < 0) | (self.chosen >= self.features)).any():
            raise ConfigError("reference statistics: 'bin_features' does not match 'bin_edges' and 'shape'")
        try:
            edge_rows = [np.asarray(e, dtype=np.float64).reshape(-1) for e in edges]
            fraction_rows = [np.asarray(f, dtype=np.float64).reshape(-1) for f in fractions]
        except (TypeError, ValueError):
            raise ConfigError("reference statistics: bin edges and fractions must be lists of numbers") from None
        for i, (e, f) in enumerate(zip(edge_rows, fraction_rows)):
            if len(f) != len(e) + 1 or not np.isfinite(e).all() or (np.diff(e) <= 0).any():
                raise ConfigError(
                    f"reference statistics: histogram {i} needs increasing finite edges and one more fraction than edges"
                )
        self.edges = _pad_edges([e.tolist() for e in edge_rows])
        self.fractions = np.zeros((len(edge_rows), self.edges.shape[1] + 1))
        for row, f in zip(self.fractions, fraction_rows):
            row[: len(f)] = f

    def _vector(self, key: str) -> np.ndarray:
        try:
            arr = np.asarray(self.raw.get(key), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ConfigError(f"reference statistics: {key!r} must be a list of numbers") from None
        if arr.size != self.features or not np.isfinite(arr).all():
            raise ConfigError(f"reference statistics: {key!r} needs {self.features} finite values, got {arr.size}")
        return arr

    def same_as(self, other: _Ref) -> bool:
        return (
            self.shape == other.shape
            and np.array_equal(self.chosen, other.chosen)
            and np.array_equal(self.edges, other.edges)
            and np.array_equal(self.fractions, other.fractions)
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.std, other.std)
        )


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class RunningStats:
    """Streaming per-feature mean/variance and reference-bucket histograms of live data."""

    def __init__(self, reference: Mapping[str, Any]) -> None:
        self._ref = _Ref(reference)
        self.shape: tuple[int, ...] = self._ref.shape
        f = self._ref.features
        #: Samples (rows) seen.
        self.count = 0
        self._n = np.zeros(f, dtype=np.int64)  # finite values seen per feature
        self._mean = np.zeros(f)
        self._m2 = np.zeros(f)
        self._hist = np.zeros(self._ref.fractions.shape, dtype=np.int64)

    def _flat(self, x: Any) -> np.ndarray:
        arr = _batch(x, "RunningStats.update")
        if arr.shape[1:] != self.shape and arr.shape[1:] != (self._ref.features,):
            raise InvalidInputError(
                f"RunningStats.update: expected a batch of shape (N, {', '.join(map(str, self.shape))}), got {arr.shape}"
            )
        return arr.reshape(arr.shape[0], self._ref.features).astype(np.float64)

    def update(self, x: np.ndarray) -> None:
        """Add a batch ``(N, *shape)``; NaN and inf count as missing values."""
        flat = self._flat(x)
        finite = np.isfinite(flat)
        nb = finite.sum(axis=0)
        sums = np.where(finite, flat, 0.0).sum(axis=0)
        mean_b = np.divide(sums, nb, out=np.zeros(sums.shape), where=nb > 0)
        dev = np.where(finite, flat - mean_b, 0.0)
        self._combine(nb, mean_b, (dev * dev).sum(axis=0))
        self._hist += _bucket_counts(flat[:, self._ref.chosen], self._ref.edges)
        self.count += int(flat.shape[0])

    def _combine(self, nb: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        na = self._n
        total = na + nb
        frac = np.divide(nb, total, out=np.zeros(total.shape), where=total > 0)
        delta = mean_b - self._mean
        self._mean = self._mean + delta * frac
        self._m2 = self._m2 + m2_b + delta * delta * na * frac
        self._n = total

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold ``other`` (same reference) into this one, as if its data had been updated here; returns self."""
        if not isinstance(other, RunningStats) or not self._ref.same_as(other._ref):
            raise ConfigError("cannot merge RunningStats built on different reference statistics")
        self._combine(other._n.copy(), other._mean.copy(), other._m2.copy())
        self._hist = self._hist + other._hist
        self.count += other.count
        return self

    @property
    def mean(self) -> np.ndarray:
        """Per-feature mean (reference shape); NaN where no value was seen."""
        out = np.where(self._n > 0, self._mean, np.nan)
        return out.reshape(self.shape)

    @property
    def var(self) -> np.ndarray:
        """Per-feature population variance (reference shape); NaN where no value was seen."""
        out = np.full(self._m2.shape, np.nan)
        np.divide(self._m2, self._n, out=out, where=self._n > 0)
        return out.reshape(self.shape)

    @property
    def histogram(self) -> np.ndarray:
        """Counts (histogram features, buckets), padded with zeros to a common width."""
        return self._hist.copy()

    def drift(self, eps: float = 1e-4) -> dict[str, Any]:
        """PSI per histogram feature, and the mean shift per feature in reference std units."""
        scores = _psi_rows(self._ref.fractions, self._hist.astype(np.float64), eps)
        shift = np.where(self._n > 0, (self._mean - self._ref.mean) / np.maximum(self._ref.std, EPS), 0.0)
        seen = self.count * self._ref.features
        return {
            "psi_max": float(scores.max()) if scores.size else 0.0,
            "psi_mean": float(scores.mean()) if scores.size else 0.0,
            "psi_per_feature": scores.tolist(),
            "mean_shift_z": shift.tolist(),
            "count": int(self.count),
            "missing_fraction": float(1.0 - self._n.sum() / seen) if seen else 0.0,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON state, reference included; :meth:`from_dict` restores it exactly."""
        return {
            "format": _FORMAT,
            "reference": _plain(self._ref.raw),
            "count": int(self.count),
            "n": self._n.tolist(),
            "mean": self._mean.tolist(),
            "m2": self._m2.tolist(),
            "hist": self._hist.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], reference: Mapping[str, Any] | None = None) -> RunningStats:
        """Restore :meth:`to_dict` output (``reference`` overrides the stored one)."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ConfigError(f"RunningStats state must be a dict with format {_FORMAT}")
        ref = reference if reference is not None else data.get("reference")
        if ref is None:
            raise ConfigError("RunningStats state has no reference statistics; pass reference=...")
        stats = cls(ref)
        f = stats._ref.features
        try:
            n = np.asarray(data["n"], dtype=np.int64)
            mean = np.asarray(data["mean"], dtype=np.float64)
            m2 = np.asarray(data["m2"], dtype=np.float64)
            hist = np.asarray(data["hist"], dtype=np.int64)
            count = data["count"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"RunningStats state is malformed: {exc}") from None
        if (
            not _is_int(count)
            or count < 0
            or n.shape != (f,)
            or mean.shape != (f,)
            or m2.shape != (f,)
            or hist.shape != stats._hist.shape
            or (n < 0).any()
            or (hist < 0).any()
        ):
            raise ConfigError("RunningStats state does not match its reference statistics")
        stats.count, stats._n, stats._mean, stats._m2, stats._hist = int(count), n, mean, m2, hist
        return stats


__all__ = ["compute_reference_stats", "psi", "RunningStats"]
