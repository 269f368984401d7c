"""Quality probation without labels: a new version judged against the one it replaces on the same live inputs.

Pure: no I/O, no threads, no clock. While a new version is on probation the agent keeps the version it replaced
loaded (the standby) and a comparator (:class:`edgefleet.device_agent.serving.Comparator`) runs it on copies of the
live inputs; each pair of outputs is folded into :class:`QualityStats` by :func:`observe`, and :func:`judge` turns
the counts into a verdict. Shadow runs do the same with the roles of the two versions swapped (the candidate is the
new version, the active one the reference).

What is measured, per compared input (rows of a classifier's output, see :func:`class_scores`):

- top-1 agreement of the two versions;
- the confidence (top-1 probability) and entropy of each, so their shift;
- the distribution of top-1 classes of each, compared by the population stability index
  (:func:`edgefleet.stats.psi`, the drift score of the SDK);
- with feedback labels (``Agent.feedback``), which version is right: paired, so only the inputs where exactly one
  of the two is right count (McNemar's discordant pairs).

The decision, :func:`judge`, in this order:

1. labels, when there are any: Wald's sequential probability ratio test (SPRT, :func:`sprt`) on the share of
   discordant labelled inputs the new version wins, ``0.5`` (no worse) against ``labelled_bad``: the new version is
   worse (roll back, signal ``labelled_accuracy``) or no worse (promote: labels outrank the label-free proxies);
2. nothing more before ``min_samples`` inputs were compared;
3. agreement, by two SPRTs with error risks ``alpha`` (rolling back a good version) and ``beta`` (keeping a bad
   one), each H1 being "the new version agrees at ``agreement_bad``" (about chance for a broken one). The plain
   test's H0 is "it agrees at ``agreement_good``"; the confidence-aware test's H0 is "it agrees as often as the
   previous version's confidence says that one is right" (:func:`confident_llr`): a version retrained for drifted
   inputs differs from its predecessor where the predecessor was unsure, a broken one everywhere. Both accepting
   H1 rolls back;
4. a confidence drop: the mean top-1 confidence fell by more than ``max_confidence_drop`` with an anytime-valid
   Hoeffding bound (:func:`hoeffding_radius` with the risk ``alpha`` spent over the looks as ``alpha/(n(n+1))``);
5. a shift of the predicted classes, when ``max_psi`` is set: PSI over it once at least ``10 x classes`` inputs were
   compared (off by default, reported only: a fix for drifted inputs shifts the classes a drift-broken predecessor
   predicted, measured by ``benchmarks/quality_probation.py``);
6. either agreement test accepting H0 promotes; at ``max_samples`` the truncated tests decide by their
   log-likelihood ratios against the midpoint of the bounds (roll back when both are past it).

So a good version is rolled back with probability at most ``alpha`` (the confidence-aware test must err), a bad
one kept with probability at most about ``2 beta`` (either test may err), under each test's model.

A candidate that retrains the model for drifted inputs legitimately disagrees with its predecessor where the
predecessor was wrong, so the default ``agreement_good`` (0.6) is far from 1; a version whose outputs are permuted or
trained on shuffled labels agrees about as often as chance (1/classes), under the default ``agreement_bad`` (0.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

MAX_CLASSES = 4096  # wider outputs are not scored as a classifier's (the histograms are per class)
CONF_BINS = 20  # the previous version's confidence, binned: agreement counted per bin (the confidence-aware test)
CONFIDENT = 0.8  # "the previous version was confident": its top-1 probability at least this (reported)
_CONFIDENT_BIN = int(CONFIDENT * CONF_BINS)
_SUM_ATOL = 1e-3  # rows summing to 1 within this are probabilities already; others are logits


@dataclass(frozen=True)
class Thresholds:
    """The test's parameters (``[quality]`` in the agent config, overridable per deployment; see
    :class:`edgefleet.device_agent.config.QualityConfig`, which validates them)."""

    min_samples: int = 50
    max_samples: int = 2000
    agreement_good: float = 0.6
    agreement_bad: float = 0.3
    alpha: float = 0.02
    beta: float = 0.02
    max_confidence_drop: float = 0.25
    max_psi: float = 0.0
    labelled_bad: float = 0.2


def class_scores(out: Any) -> np.ndarray | None:
    """The rows ``(N, K)`` of class probabilities of a classifier's output, or None for an output that is not one
    (a regression, a scalar, non-finite values, more than :data:`MAX_CLASSES` classes). A dict of outputs is read
    by its first (the model's first output). Rows that are probabilities (non-negative, summing to 1) are kept;
    others are logits and go through a softmax."""
    if isinstance(out, Mapping):
        if not out:
            return None
        out = next(iter(out.values()))
    try:
        a = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if a.ndim == 0 or a.size == 0 or not 2 <= a.shape[-1] <= MAX_CLASSES:
        return None
    a = a.reshape(-1, a.shape[-1])
    if not np.isfinite(a).all():
        return None
    if a.min() >= 0.0 and a.max() <= 1.0 + 1e-6 and np.all(np.abs(a.sum(axis=1) - 1.0) <= _SUM_ATOL):
        return a
    z = a - a.max(axis=1, keepdims=True)
    e = np.exp(z)
    p: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return p


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of probabilities."""
    q = np.clip(p, 1e-12, 1.0)
    h: np.ndarray = -(p * np.log(q)).sum(axis=1)
    return np.maximum(h, 0.0)


def labels_of(y: Any, rows: int, classes: int) -> np.ndarray | None:
    """Feedback labels as class indices for ``rows`` outputs of ``classes`` classes: an int per row, or one-hot /
    probability rows (their arg-max); None for labels that do not fit (other shapes, out-of-range classes)."""
    try:
        a = np.asarray(y)
    except (TypeError, ValueError):
        return None
    if a.dtype.kind not in "iufb" or a.size == 0:
        return None
    if a.ndim >= 1 and a.shape[-1] == classes and a.size == rows * classes and classes > 1 and a.dtype.kind == "f":
        return np.asarray(np.argmax(a.reshape(rows, classes), axis=1), dtype=np.int64)
    if a.size != rows:
        return None
    flat = a.reshape(rows)
    if flat.dtype.kind == "f":
        if not np.isfinite(flat).all() or not np.all(flat == np.round(flat)):
            return None
    idx = flat.astype(np.int64)
    if idx.min() < 0 or idx.max() >= classes:
        return None
    return idx


@dataclass
class QualityStats:
    """What was compared so far: counts and sums only (so a verdict is a function of them). ``new`` is the
    version being judged, ``old`` the one it replaces (the reference)."""

    classes: int = 0
    compared: int = 0
    agreed: int = 0
    conf_new: float = 0.0  # sums over the compared inputs
    conf_old: float = 0.0
    ent_new: float = 0.0
    ent_old: float = 0.0
    top_new: list[int] = field(default_factory=list)  # top-1 class counts
    top_old: list[int] = field(default_factory=list)
    by_conf: list[int] = field(default_factory=lambda: [0] * CONF_BINS)  # compared, by the old version's confidence
    agreed_by_conf: list[int] = field(default_factory=lambda: [0] * CONF_BINS)
    incomparable: int = 0  # output pairs that are not two classifiers' of the same classes
    labelled: int = 0  # labelled inputs scored on both versions
    correct_new: int = 0
    correct_old: int = 0
    new_wins: int = 0  # labelled: the new version right, the old wrong
    old_wins: int = 0  # and the other way round

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else 0.0

    def mean(self, total: float) -> float:
        return total / self.compared if self.compared else 0.0

    def psi(self) -> float:
        """PSI of the new version's top-1 classes against the old one's (0.0 before anything was compared)."""
        if not self.compared:
            return 0.0
        from edgefleet.stats import psi

        ref = np.asarray(self.top_old, dtype=np.float64) / self.compared
        return psi(ref, np.asarray(self.top_new, dtype=np.float64))

    def report(self) -> dict[str, Any]:
        """The measurements as plain JSON (what telemetry and the job's probation report carry)."""
        out: dict[str, Any] = {
            "compared": self.compared,
            "agreement": round(self.agreement, 6),
            "confidence_new": round(self.mean(self.conf_new), 6),
            "confidence_old": round(self.mean(self.conf_old), 6),
            "confidence_shift": round(self.mean(self.conf_new - self.conf_old), 6),
            "entropy_new": round(self.mean(self.ent_new), 6),
            "entropy_old": round(self.mean(self.ent_old), 6),
            "entropy_shift": round(self.mean(self.ent_new - self.ent_old), 6),
            "psi": round(self.psi(), 6),
            "classes": self.classes,
            "confident_compared": sum(self.by_conf[_CONFIDENT_BIN:]),
            "confident_agreement": round(sum(self.agreed_by_conf[_CONFIDENT_BIN:]) / max(1, sum(self.by_conf[_CONFIDENT_BIN:])), 6),
            "incomparable": self.incomparable,
            "labelled": self.labelled,
        }
        if self.labelled:
            out["accuracy_new"] = round(self.correct_new / self.labelled, 6)
            out["accuracy_old"] = round(self.correct_old / self.labelled, 6)
        return out


def observe(stats: QualityStats, new_out: Any, old_out: Any, labels: Any = None) -> int:
    """Fold the outputs of the two versions on the same inputs (and their feedback ``labels``, if any) into
    ``stats``; returns how many rows were compared (0: outputs that cannot be compared, counted)."""
    p, q = class_scores(new_out), class_scores(old_out)
    if p is None or q is None or p.shape != q.shape or (stats.classes and p.shape[1] != stats.classes):
        stats.incomparable += 1
        return 0
    n, k = p.shape
    if not stats.classes:
        stats.classes = k
        stats.top_new, stats.top_old = [0] * k, [0] * k
    tn, to = np.argmax(p, axis=1), np.argmax(q, axis=1)
    cn, co = p[np.arange(n), tn], q[np.arange(n), to]
    if labels is not None:
        y = labels_of(labels, n, k)
        if y is None:
            stats.incomparable += 1
            return 0
        rn, ro = tn == y, to == y
        stats.labelled += n
        stats.correct_new += int(rn.sum())
        stats.correct_old += int(ro.sum())
        stats.new_wins += int((rn & ~ro).sum())
        stats.old_wins += int((ro & ~rn).sum())
        return n  # labelled inputs are scored apart from the live ones (they were predicted again to be scored)
    stats.compared += n
    stats.agreed += int((tn == to).sum())
    stats.conf_new += float(cn.sum())
    stats.conf_old += float(co.sum())
    stats.ent_new += float(entropy(p).sum())
    stats.ent_old += float(entropy(q).sum())
    for c, m in zip(*np.unique(tn, return_counts=True)):
        stats.top_new[int(c)] += int(m)
    for c, m in zip(*np.unique(to, return_counts=True)):
        stats.top_old[int(c)] += int(m)
    bins = np.minimum((co * CONF_BINS).astype(np.int64), CONF_BINS - 1)
    agree = tn == to
    for b in range(n):
        stats.by_conf[int(bins[b])] += 1
        stats.agreed_by_conf[int(bins[b])] += int(agree[b])
    return n


# -- the sequential tests -------------------------------------------------------------------------------------------
def sprt_llr(successes: int, n: int, p0: float, p1: float) -> float:
    """Log-likelihood ratio of H1 (success rate ``p1``) over H0 (``p0``) after ``successes`` of ``n`` trials."""
    return successes * math.log(p1 / p0) + (n - successes) * math.log((1.0 - p1) / (1.0 - p0))


def confident_llr(stats: QualityStats, p1: float) -> float:
    """Log-likelihood ratio of the confidence-aware agreement test: under H1 the new version agrees with the old
    one at ``p1`` whatever the old one's confidence (a broken version agrees about as often as chance); under H0 it
    agrees as often as the old one's confidence says the old one is right (a good version is right where the old
    one is, and may differ where the old one was unsure). Inputs on which the old version's confidence is at most
    ``p1`` carry no evidence. Read from the per-bin counts (bin midpoints as the confidence)."""
    total = 0.0
    for b, (n_b, a_b) in enumerate(zip(stats.by_conf, stats.agreed_by_conf)):
        p0 = min(max((b + 0.5) / CONF_BINS, p1), 0.999)
        if not n_b or p0 <= p1 + 1e-6:
            continue
        total += a_b * math.log(p1 / p0) + (n_b - a_b) * math.log((1.0 - p1) / (1.0 - p0))
    return total


def sprt_bounds(alpha: float, beta: float) -> tuple[float, float]:
    """Wald's bounds ``(lower, upper)`` on the log-likelihood ratio: at or below ``lower`` accept H0, at or above
    ``upper`` accept H1; ``alpha`` = P(accept H1 | H0), ``beta`` = P(accept H0 | H1)."""
    return math.log(beta / (1.0 - alpha)), math.log((1.0 - beta) / alpha)


def sprt(successes: int, n: int, p0: float, p1: float, alpha: float, beta: float) -> str | None:
    """Wald's SPRT on Bernoulli trials: ``"h0"``, ``"h1"`` or None (go on sampling)."""
    if n <= 0:
        return None
    llr = sprt_llr(successes, n, p0, p1)
    lower, upper = sprt_bounds(alpha, beta)
    if llr >= upper:
        return "h1"
    if llr <= lower:
        return "h0"
    return None


def hoeffding_radius(n: int, risk: float, span: float) -> float:
    """Half-width of Hoeffding's one-sided bound on the mean of ``n`` independent values in a range ``span`` wide,
    valid at every look at once when ``risk`` is spent as ``risk/(n(n+1))`` over n = 1, 2, ... (the union of the
    looks sums to ``risk``)."""
    if n <= 0:
        return math.inf
    delta = risk / (n * (n + 1.0))
    return span * math.sqrt(math.log(1.0 / delta) / (2.0 * n))


@dataclass(frozen=True)
class QualityVerdict:
    """``ok``: promote (True) or roll back (False); ``signal`` names what decided (``labelled_accuracy``,
    ``confidence``, ``psi``, ``agreement``), ``message`` says it in a sentence, ``report`` holds the measurements."""

    ok: bool
    signal: str
    message: str
    report: dict[str, Any]


def judge(stats: QualityStats, t: Thresholds) -> QualityVerdict | None:
    """Promote, roll back, or None (undecided: go on comparing). Pure: a function of the counts."""
    rep = stats.report()
    rep["min_samples"] = t.min_samples
    pairs = stats.new_wins + stats.old_wins
    if pairs:
        lab = sprt(stats.new_wins, pairs, 0.5, t.labelled_bad, t.alpha, t.beta)
        if lab == "h1":
            return QualityVerdict(False, "labelled_accuracy", (
                f"on {stats.labelled} labelled inputs the new version is right on {stats.correct_new} and the "
                f"previous one on {stats.correct_old}: of the {pairs} where only one is right, the new version wins "
                f"{stats.new_wins} (SPRT: worse, at most {t.labelled_bad:.0%} wins)"), rep)
        if lab == "h0":
            return QualityVerdict(True, "labelled_accuracy", (
                f"on {stats.labelled} labelled inputs the new version is no worse than the previous one "
                f"({stats.correct_new} vs {stats.correct_old} right)"), rep)
    n = stats.compared
    if n < t.min_samples:
        return None
    llr = sprt_llr(stats.agreed, n, t.agreement_good, t.agreement_bad)
    aware = confident_llr(stats, t.agreement_bad)
    lower, upper = sprt_bounds(t.alpha, t.beta)
    rep["llr"], rep["llr_confidence_aware"] = round(llr, 6), round(aware, 6)
    said = f"agreement {stats.agreement:.1%} with the previous version over {n} live inputs" + (
        f" ({rep['confident_agreement']:.1%} of the {rep['confident_compared']} it was confident on)"
        if rep["confident_compared"] else "")
    if llr >= upper and aware >= upper:
        return QualityVerdict(False, "agreement", f"{said} (SPRT: at most {t.agreement_bad:.0%}, also where "
                                                  "the previous version was confident)", rep)
    drop = stats.mean(stats.conf_old - stats.conf_new)
    if t.max_confidence_drop and drop - hoeffding_radius(n, t.alpha, 2.0) > t.max_confidence_drop:
        return QualityVerdict(False, "confidence", (
            f"mean top-1 confidence fell from {stats.mean(stats.conf_old):.3f} to {stats.mean(stats.conf_new):.3f} "
            f"over {n} live inputs (more than {t.max_confidence_drop:.3f}, Hoeffding bound)"), rep)
    if t.max_psi and n >= 10 * stats.classes and rep["psi"] > t.max_psi:
        return QualityVerdict(False, "psi", (
            f"the predicted classes shifted: PSI {rep['psi']:.3f} > {t.max_psi:g} over {n} live inputs"), rep)
    if llr <= lower:
        return QualityVerdict(True, "agreement", f"{said} (SPRT: at least {t.agreement_good:.0%})", rep)
    if aware <= lower:
        return QualityVerdict(True, "agreement", f"{said} (SPRT: it agrees where the previous version was sure)", rep)
    if n >= t.max_samples:
        mid = (lower + upper) / 2.0
        bad = llr >= mid and aware >= mid
        return QualityVerdict(not bad, "agreement", f"{said} (truncated SPRT at {t.max_samples}: "
                                                    f"{'nearer' if bad else 'not nearer'} {t.agreement_bad:.0%})", rep)
    return None


__all__ = ["CONFIDENT", "CONF_BINS", "MAX_CLASSES", "QualityStats", "confident_llr", "QualityVerdict", "Thresholds", "class_scores", "entropy",
           "hoeffding_radius", "judge", "labels_of", "observe", "sprt", "sprt_bounds", "sprt_llr"]
