"""Health judgements, pure and thread-safe: latency histogram, probation, shadow comparison."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import UpdateConfig

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


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    message: str
    report: dict[str, Any]


class Probation:
    """Watches a freshly activated version: error rate, latency; decides pass or fail."""

    def __init__(self, cfg: UpdateConfig, started: float, baseline_p95_ms: float | None = None) -> None:
        self.cfg = cfg
        self.started = started
        self.baseline_p95_ms = baseline_p95_ms
        self.hist = LatencyHistogram()
        self.predictions = 0
        self.errors = 0
        self._lock = threading.Lock()

    def record(self, ok: bool, latency_ms: float) -> None:
        with self._lock:
            self.predictions += 1
            if ok:
                self.hist.add(latency_ms)
            else:
                self.errors += 1

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {
                "predictions": self.predictions,
                "errors": self.errors,
                "error_rate": self.errors / self.predictions if self.predictions else 0.0,
                "p95_ms": self.hist.quantile(0.95),
                "baseline_p95_ms": self.baseline_p95_ms,
            }

    def verdict(self, now: float) -> Verdict | None:
        """None while undecided; a failing verdict as soon as the error rate is over the limit."""
        cfg = self.cfg
        rep = self.report()
        rep["elapsed_s"] = round(now - self.started, 3)
        if rep["errors"] >= max(1, cfg.min_error_count) and rep["error_rate"] > cfg.max_error_rate:
            return Verdict(False, "error_rate", (
                f"{rep['errors']} of {rep['predictions']} predictions failed "
                f"({rep['error_rate']:.1%} > {cfg.max_error_rate:.1%})"), rep)
        if now - self.started < cfg.probation_seconds or rep["predictions"] < cfg.probation_min_predictions:
            return None
        if rep["predictions"]:
            p95 = rep["p95_ms"]
            if cfg.max_latency_ms and p95 > cfg.max_latency_ms:
                return Verdict(False, "latency", f"p95 latency {p95} ms > {cfg.max_latency_ms} ms", rep)
            base = self.baseline_p95_ms
            if cfg.latency_factor and base and p95 > cfg.latency_factor * base:
                return Verdict(False, "latency_regression", (
                    f"p95 latency {p95} ms is over {cfg.latency_factor}x the previous version's {base} ms"), rep)
        return Verdict(True, "healthy", "", rep)


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


class ShadowStats:
    """Agreement and latency of a candidate running beside the active version."""

    def __init__(self, cfg: UpdateConfig, started: float) -> None:
        self.cfg = cfg
        self.started = started
        self.compared = 0
        self.agreed = 0
        self.errors = 0
        self.dropped = 0
        self.candidate = LatencyHistogram()
        self.active = LatencyHistogram()
        self._lock = threading.Lock()

    def record(self, agree: bool | None, candidate_ms: float, active_ms: float) -> None:
        with self._lock:
            if agree is None:
                self.errors += 1
                return
            self.compared += 1
            self.agreed += int(agree)
            self.candidate.add(candidate_ms)
            self.active.add(active_ms)

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {
                "compared": self.compared,
                "agreement": self.agreed / self.compared if self.compared else 0.0,
                "errors": self.errors,
                "dropped": self.dropped,
                "candidate_p95_ms": self.candidate.quantile(0.95),
                "active_p95_ms": self.active.quantile(0.95),
            }

    def verdict(self, now: float) -> tuple[bool, dict[str, Any]] | None:
        """``(ok, report)`` once enough was compared or the time is up; ``report["reason"]`` names a failure."""
        rep = self.report()
        done = rep["compared"] + rep["errors"] >= self.cfg.shadow_predictions
        if not done and now - self.started < self.cfg.shadow_seconds:
            return None
        if rep["compared"] == 0:
            rep["why"] = "no shadow traffic was compared"
            rep["reason"] = "shadow_no_traffic"
            return False, rep
        ok = rep["agreement"] >= self.cfg.min_agreement and rep["errors"] == 0
        if not ok:
            rep["why"] = f"agreement {rep['agreement']:.1%} < {self.cfg.min_agreement:.1%} or candidate errors"
            rep["reason"] = "shadow_disagreement"
        return ok, rep
