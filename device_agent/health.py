"""Health measurements, pure and thread-safe: the latency histogram and output agreement (judged by
:mod:`.probation`)."""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

# Latency bucket upper bounds in milliseconds (the last bucket is open-ended).
BUCKETS_MS: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
)


class LatencyHistogram:
    """Fixed-bucket latency histogram; quantiles are bucket upper bounds (conservative)."""

    def __init__(self, counts: list[int] | None = None) -> None:
        self.counts = list(counts) if counts else [0] * (len(BUCKETS_MS) + 1)
        self.total = sum(self.counts)
        self.sum_ms = 0.0
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_MS, ms)] += 1
        self.total += 1
        self.sum_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms

    def quantile(self, q: float) -> float:
        if self.total == 0:
            return 0.0
        rank = q * self.total
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return BUCKETS_MS[i] if i < len(BUCKETS_MS) else self.max_ms
        return self.max_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "buckets_ms": list(BUCKETS_MS),
            "counts": list(self.counts),
            "count": self.total,
            "mean_ms": self.sum_ms / self.total if self.total else 0.0,
            "p50_ms": self.quantile(0.5),
            "p95_ms": self.quantile(0.95),
            "p99_ms": self.quantile(0.99),
            "max_ms": self.max_ms,
        }


def outputs_agree(a: Any, b: Any, atol: float) -> bool:
    """Classifier outputs agree on the arg-max; others must be close."""
    if isinstance(a, dict) or isinstance(b, dict):
        if not isinstance(a, dict) or not isinstance(b, dict) or set(a) != set(b):
            return False
        return all(outputs_agree(a[k], b[k], atol) for k in a)
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        return False
    if x.ndim >= 1 and x.shape[-1] > 1:
        return bool(np.array_equal(np.argmax(x, axis=-1), np.argmax(y, axis=-1)))
    return bool(np.allclose(x, y, atol=atol, rtol=1e-3))
