"""Judging a new version: probation after activation (errors, latency) and shadow runs before it (agreement).

Pure and thread-safe: :class:`Probation` and :class:`ShadowStats` count what the serving path records
(:mod:`.serving`), and :func:`judge_probation` / :func:`judge_shadow` turn their verdicts into the update
machine's events (:mod:`.updates`); the agent only asks at each tick.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from .config import QualityConfig, UpdateConfig
from .health import LatencyHistogram
from .quality import QualityStats, QualityVerdict, judge, observe
from .updates import Event, ProbationFailed, ProbationPassed, ShadowDone

log = logging.getLogger(__name__)

#: the previous version's latency counts as a baseline once it served this many predictions
BASELINE_MIN_PREDICTIONS = 20


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
        self.quality: QualityProbe | None = None  # the new version against the one it replaced (set by the agent)
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
        self.quality: QualityProbe | None = None  # the candidate against the active version (set by the agent)
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
        probe = self.quality
        if probe is not None:
            rep["quality"] = probe.report()
            qv = probe.verdict()
            if ok and probe.enforce and qv is not None and not qv.ok:
                ok = False
                rep["why"] = f"{qv.signal}: {qv.message}"
                rep["reason"] = "quality"
        return ok, rep


class QualityProbe:
    """Thread-safe: the comparisons of a new version with the one it replaces during one probation or shadow run
    (:class:`.quality.QualityStats`, fed by :class:`.serving.Comparator` or :class:`.serving.Shadow`) and their
    sequential test (:func:`.quality.judge`). A verdict, once reached, is final; comparing stops then (or at
    ``max_samples``)."""

    def __init__(self, cfg: QualityConfig, version: str, reference: str) -> None:
        self.cfg = cfg
        self.thresholds = cfg.thresholds()
        self.version = version  # the version judged
        self.reference = reference  # the version it is compared with
        self.stats = QualityStats()
        self.dropped = 0  # live inputs not compared: the comparator was busy
        self.errors = 0  # the reference version failed on an input
        self._verdict: QualityVerdict | None = None
        self._lock = threading.Lock()

    @property
    def enforce(self) -> bool:
        return self.cfg.mode == "enforce"

    def wants(self) -> bool:
        """Whether another live input is worth comparing (no verdict yet, below ``max_samples``)."""
        return self._verdict is None and self.stats.compared < self.cfg.max_samples

    def observe(self, new_out: Any, old_out: Any, labels: Any = None) -> None:
        with self._lock:
            if self._verdict is not None:
                return
            observe(self.stats, new_out, old_out, labels)
            self._verdict = judge(self.stats, self.thresholds)

    def verdict(self) -> QualityVerdict | None:
        with self._lock:
            return self._verdict

    def report(self) -> dict[str, Any]:
        """The measurements, the verdict so far (``pass``, ``fail`` or ``undecided``) and what decided it."""
        with self._lock:
            rep = self.stats.report()
            v = self._verdict
        rep.update(version=self.version, reference=self.reference, mode=self.cfg.mode, dropped=self.dropped,
                   reference_errors=self.errors, verdict="undecided" if v is None else "pass" if v.ok else "fail",
                   signal=v.signal if v is not None else "", message=v.message if v is not None else "")
        return rep


def start_probation(cfg: UpdateConfig, now: float, previous: LatencyHistogram | None) -> Probation:
    """Probation of a version just activated; ``previous``: the latency of the version it replaced (its p95 is
    the baseline for ``latency_factor`` once it served :data:`BASELINE_MIN_PREDICTIONS` predictions)."""
    base = previous.quantile(0.95) if previous is not None and previous.total >= BASELINE_MIN_PREDICTIONS else None
    return Probation(cfg, now, base)


def judge_probation(probation: Probation, now: float, model: Any) -> Event | None:
    """None while undecided; else ProbationFailed or, after the smoke tests pass again on ``model`` (the
    version serving, None if nothing does), ProbationPassed."""
    verdict = probation.verdict(now)
    probe = probation.quality
    if probe is not None and probe.enforce and (verdict is None or verdict.ok):
        qv = probe.verdict()
        if qv is not None and not qv.ok:  # as soon as the test says so, like the error rate
            return ProbationFailed("quality", f"{qv.signal}: {qv.message}",
                                   {**(verdict.report if verdict else probation.report()), "quality": probe.report()})
        if verdict is not None and qv is None and now - probation.started < (probation.cfg.probation_seconds
                                                                             + probe.cfg.wait_seconds):
            return None  # the test has not decided yet: probation goes on (at most wait_seconds longer)
    if verdict is None:
        return None
    if probe is not None:
        verdict.report["quality"] = probe.report()
    report = verdict.report
    extra = {"predictions": report.get("predictions"), "errors": report.get("errors"), "p95_ms": report.get("p95_ms")}
    if not verdict.ok:
        log.warning("probation failed (%s): %s", verdict.reason, verdict.message,
                    extra={"event": "probation_failed", "reason": verdict.reason, **extra})
        return ProbationFailed(verdict.reason, verdict.message, verdict.report)
    if model is not None:
        result = model.run_smoke_tests()
        if not result.ok:
            log.warning("probation failed: the smoke tests fail again: %s", result.message,
                        extra={"event": "probation_failed", "reason": "smoke_test_failed", **extra})
            return ProbationFailed("smoke_test_failed", result.message, verdict.report)
    log.info("probation passed: %s predictions, %s errors", report.get("predictions"), report.get("errors"),
             extra={"event": "probation_passed", **extra})
    return ProbationPassed(verdict.report)


def judge_shadow(stats: ShadowStats, now: float) -> Event | None:
    """None while the shadow run goes on; else ShadowDone with its report and named reason."""
    v = stats.verdict(now)
    if v is None:
        return None
    ok, report = v
    extra = {"event": "shadow_passed" if ok else "shadow_failed", "compared": report.get("compared"),
             "agreement": report.get("agreement"), "reason": report.get("reason", "")}
    if ok:
        log.info("shadow run passed: %s predictions compared, agreement %.1f%%", report.get("compared"),
                 100 * float(report.get("agreement") or 0.0), extra=extra)
    else:
        log.warning("shadow run failed (%s): %s", report.get("reason"), report.get("why", ""), extra=extra)
    return ShadowDone(ok, report, report.get("reason", "shadow_disagreement"))


__all__ = ["BASELINE_MIN_PREDICTIONS", "Probation", "QualityProbe", "ShadowStats", "Verdict", "judge_probation",
           "judge_shadow", "start_probation"]
