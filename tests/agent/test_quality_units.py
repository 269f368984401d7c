"""The quality test's pure parts (device_agent/quality.py): scores, the comparison counts, the SPRT and the
anytime Hoeffding bound, the verdict, and the [quality] config with a deployment's policy over it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edgefleet.device_agent.config import AgentConfig, QualityConfig
from edgefleet.device_agent.quality import (
    CONF_BINS,
    QualityStats,
    Thresholds,
    class_scores,
    confident_llr,
    hoeffding_radius,
    judge,
    labels_of,
    observe,
    sprt,
    sprt_bounds,
    sprt_llr,
)
from edgefleet.errors import ConfigError

finite = st.floats(-30, 30, allow_nan=False, allow_infinity=False, width=32)


@settings(deadline=None)  # (a shared, loaded machine: timing is not what these check)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(2, 12)), elements=finite))
def test_class_scores_are_probability_rows(logits: np.ndarray) -> None:
    p = class_scores(logits)
    assert p is not None and p.shape == logits.shape
    assert np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0)
    # the ranking (hence the top-1 class) is that of the logits, and probabilities are kept as they are
    assert np.array_equal(np.argmax(p, axis=1), np.argmax(p, axis=1))
    again = class_scores(p)
    assert again is not None and np.allclose(again, p)


@pytest.mark.parametrize("out", [np.float32(1.0), np.zeros((3, 1)), np.zeros((2, 0)), np.array([[np.nan, 1.0]]),
                                 np.zeros((1, 5000)), "text", {}])
def test_outputs_that_are_no_classifiers_are_not_scored(out: Any) -> None:
    assert class_scores(out) is None


def test_a_dict_of_outputs_is_read_by_its_first() -> None:
    p = class_scores({"probs": np.array([[0.2, 0.8]]), "other": np.zeros((1, 1))})
    assert p is not None and np.allclose(p, [[0.2, 0.8]])


@settings(deadline=None)  # (a shared, loaded machine: timing is not what these check)
@given(arrays(np.float64, st.tuples(st.integers(1, 16), st.integers(2, 6)), elements=st.floats(-5, 5)),
       st.randoms(use_true_random=False))
def test_observe_counts_agreement_of_a_permutation(logits: np.ndarray, rnd: Any) -> None:
    k = logits.shape[1]
    perm = list(range(k))
    rnd.shuffle(perm)
    stats = QualityStats()
    n = observe(stats, logits[:, perm], logits)
    assert n == logits.shape[0] == stats.compared
    top = np.argmax(class_scores(logits), axis=1)  # type: ignore[arg-type]
    permuted_top = np.argmax(class_scores(logits[:, perm]), axis=1)  # type: ignore[arg-type]
    assert stats.agreed == int((top == permuted_top).sum())
    assert sum(stats.top_new) == sum(stats.top_old) == n
    # a permutation keeps every row's confidence and entropy
    assert math.isclose(stats.conf_new, stats.conf_old, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(stats.ent_new, stats.ent_old, rel_tol=1e-9, abs_tol=1e-9)
    same = QualityStats()
    observe(same, logits, logits)
    assert same.agreement == 1.0 and same.psi() == 0.0


def test_outputs_of_other_shapes_are_counted_incomparable() -> None:
    stats = QualityStats()
    assert observe(stats, np.zeros((1, 3)), np.zeros((1, 4))) == 0
    assert observe(stats, np.zeros((1, 3)), np.zeros((1, 1))) == 0
    observe(stats, np.zeros((1, 3)), np.zeros((1, 3)))
    assert observe(stats, np.zeros((1, 4)), np.zeros((1, 4))) == 0  # the classes changed midway
    assert stats.incomparable == 3 and stats.compared == 1


@pytest.mark.parametrize("y, expect", [(2, [2]), ([0, 1], [0, 1]), (np.array([[0.0, 0.0, 1.0]]), [2]),
                                       (3, None), (-1, None), (1.5, None), ([0, 1, 2], None), ("a", None)])
def test_labels_of(y: Any, expect: Any) -> None:
    rows = 1 if expect is None or len(expect) == 1 else len(expect)
    got = labels_of(y, rows, 3)
    assert (got is None) if expect is None else got is not None and got.tolist() == expect


def test_labelled_inputs_count_wins_apart_from_live_ones() -> None:
    stats = QualityStats()
    new, old = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([[0.1, 0.9], [0.3, 0.7], [0.7, 0.3]])
    observe(stats, new, old, labels=[0, 1, 1])
    assert (stats.labelled, stats.correct_new, stats.correct_old, stats.new_wins, stats.old_wins) == (3, 2, 1, 1, 0)
    assert stats.compared == 0


probs = st.floats(0.01, 0.99)
risks = st.floats(0.001, 0.2)


@settings(deadline=None)  # (a shared, loaded machine: timing is not what these check)
@given(probs, probs, risks, risks, st.integers(1, 500), st.data())
def test_sprt_is_monotone_in_the_successes(a: float, b: float, alpha: float, beta: float, n: int, data: Any) -> None:
    """More agreements never move the test toward H1 (the bad rate), fewer never toward H0."""
    p0, p1 = max(a, b), min(a, b)
    if p0 - p1 < 1e-3:
        return
    s = data.draw(st.integers(0, n))
    lower, upper = sprt_bounds(alpha, beta)
    assert lower < 0 < upper
    d = sprt(s, n, p0, p1, alpha, beta)
    if d == "h0" and s < n:
        assert sprt(s + 1, n, p0, p1, alpha, beta) == "h0"
    if d == "h1" and s > 0:
        assert sprt(s - 1, n, p0, p1, alpha, beta) == "h1"
    assert sprt_llr(s, n, p0, p1) >= sprt_llr(min(n, s + 1), n, p0, p1)


@settings(deadline=None)  # (a shared, loaded machine: timing is not what these check)
@given(st.integers(1, 10**6), risks, st.floats(0.1, 4.0))
def test_hoeffding_radius_shrinks_with_samples_and_grows_with_confidence(n: int, risk: float, span: float) -> None:
    r = hoeffding_radius(n, risk, span)
    assert 0 < r < math.inf
    assert hoeffding_radius(n + 1, risk, span) <= r
    assert hoeffding_radius(n, risk / 2, span) > r
    assert hoeffding_radius(0, risk, span) == math.inf


def _stats(agreed: int, n: int, conf_new: float = 0.8, conf_old: float = 0.8) -> QualityStats:
    """Counts as observe() leaves them: every input with the old version at confidence ``conf_old``."""
    s = QualityStats(classes=2, compared=n, agreed=agreed, conf_new=conf_new * n, conf_old=conf_old * n,
                     top_new=[n // 2, n - n // 2], top_old=[n // 2, n - n // 2])
    b = min(int(conf_old * CONF_BINS), CONF_BINS - 1)
    s.by_conf[b], s.agreed_by_conf[b] = n, agreed
    return s


@settings(deadline=None)  # (a shared, loaded machine: timing is not what these check)
@given(st.integers(0, 49), st.data())
def test_no_label_free_verdict_before_min_samples(n: int, data: Any) -> None:
    agreed = data.draw(st.integers(0, n))
    assert judge(_stats(agreed, n), Thresholds(min_samples=50)) is None


@settings(deadline=None)  # (a shared, loaded machine: timing is not what these check)
@given(st.integers(50, 3000), st.data())
def test_verdict_on_agreement_is_monotone(n: int, data: Any) -> None:
    t = Thresholds(max_confidence_drop=0.0, max_psi=0.0)
    agreed = data.draw(st.integers(0, n))
    v = judge(_stats(agreed, n), t)
    if n >= t.max_samples:
        assert v is not None  # the truncated test always decides
    if v is not None and v.ok and agreed < n:
        more = judge(_stats(agreed + 1, n), t)
        assert more is not None and more.ok
    if v is not None and not v.ok and agreed > 0:
        less = judge(_stats(agreed - 1, n), t)
        assert less is not None and not less.ok


def _run(p: float, t: Thresholds, rng: np.random.Generator) -> tuple[bool, int]:
    """One sequential run on Bernoulli(p) agreements, judged after every input as the comparator does."""
    stats = _stats(0, 0)
    while True:
        stats.compared += 1
        agree = int(rng.random() < p)
        stats.agreed += agree
        stats.by_conf[16] += 1
        stats.agreed_by_conf[16] += agree
        stats.conf_new = stats.conf_old = 0.8 * stats.compared
        stats.top_new = stats.top_old = [stats.compared // 2, stats.compared - stats.compared // 2]
        v = judge(stats, t)
        if v is not None:
            return v.ok, stats.compared


def test_error_rates_of_the_agreement_test_hold() -> None:
    """At agreement_good the test rolls back at most about alpha of the runs, at agreement_bad it promotes at most
    about beta (the minimum sample count only lowers both); a broken version of a ten-class model agreeing at chance
    (0.1) is caught in every run, within a few inputs past the minimum."""
    t = Thresholds()
    rng = np.random.default_rng(17)
    runs = 400
    false_rollbacks = sum(not _run(t.agreement_good, t, rng)[0] for _ in range(runs))
    misses = sum(_run(t.agreement_bad, t, rng)[0] for _ in range(runs))
    assert false_rollbacks / runs <= t.alpha + 0.02, false_rollbacks
    assert misses / runs <= t.beta + 0.02, misses
    chance = [_run(0.1, t, rng) for _ in range(100)]
    assert all(not ok for ok, _ in chance)
    assert np.mean([n for _, n in chance]) < 60


def test_labels_decide_before_and_over_the_label_free_test() -> None:
    t = Thresholds()
    worse = QualityStats(labelled=20, correct_new=2, correct_old=18, new_wins=1, old_wins=17)
    v = judge(worse, t)
    assert v is not None and not v.ok and v.signal == "labelled_accuracy"
    better = _stats(0, 100)  # no agreement at all, but the labels show the new version right where the old is not
    better.labelled, better.correct_new, better.correct_old, better.new_wins, better.old_wins = 60, 50, 10, 40, 0
    v = judge(better, t)
    assert v is not None and v.ok and v.signal == "labelled_accuracy"


def test_confidence_drop_and_psi_roll_back() -> None:
    t = Thresholds(agreement_good=0.6, agreement_bad=0.3, max_psi=1.0)
    n = 3000
    v = judge(_stats(int(0.45 * n), n, conf_new=0.3, conf_old=0.9), t)
    assert v is not None and not v.ok and v.signal == "confidence"
    shifted = _stats(int(0.45 * n), n)
    shifted.top_new, shifted.top_old = [n - 10, 10], [n // 2, n - n // 2]
    v = judge(shifted, t)
    assert v is not None and not v.ok and v.signal == "psi"


# -- the [quality] config and a deployment's policy ---------------------------------------------------------------
def test_quality_section_of_the_agent_config() -> None:
    cfg = AgentConfig.from_dict({"quality": {"mode": "enforce", "agreement_good": 0.8, "agreement_bad": 0.5}})
    assert cfg.quality.mode == "enforce" and cfg.quality.thresholds().agreement_good == 0.8
    for bad in ({"mode": "always"}, {"agreement_bad": 0.7, "agreement_good": 0.6}, {"alpha": 0.0},
                {"min_samples": 0}, {"max_samples": 10, "min_samples": 20}, {"max_psi": -1.0}, {"colour": 1},
                {"wait_seconds": float("nan")}, {"beta": True}):
        with pytest.raises(ConfigError):
            AgentConfig.from_dict({"quality": bad})
    with pytest.raises(ConfigError):
        AgentConfig.from_dict({"agent": {"quality": {}}})


policy_values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**8), st.floats(allow_nan=True),
                          st.text(max_size=10), st.lists(st.integers(), max_size=2))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from([f.name for f in QualityConfig.__dataclass_fields__.values()] + ["x"]),
                       policy_values, max_size=4))
def test_a_policy_gives_a_valid_config_or_a_config_error(policy: dict[str, Any]) -> None:
    base = QualityConfig()
    try:
        got = base.overridden(policy)
    except ConfigError:
        return
    assert isinstance(got, QualityConfig)
    for k, v in policy.items():
        assert getattr(got, k) == v
    got.thresholds()


def test_the_confidence_aware_test_spares_a_fix_for_drift_and_catches_a_broken_version() -> None:
    """A drift left the old version unsure (confidence about 0.45) and mostly wrong: a good new version agrees on
    40% of the inputs only, which the plain test alone would roll back; where the old version was sure it agrees.
    A broken version agrees at chance everywhere, sure or not."""
    t = Thresholds()
    rng = np.random.default_rng(3)

    def run(agree_unsure: float, agree_sure: float) -> tuple[bool, str]:
        stats = QualityStats(classes=10, top_new=[0] * 10, top_old=[0] * 10)
        while True:
            sure = rng.random() < 0.1
            b = 18 if sure else 9  # confidence 0.9 or 0.45
            a = int(rng.random() < (agree_sure if sure else agree_unsure))
            stats.compared += 1
            stats.agreed += a
            stats.by_conf[b] += 1
            stats.agreed_by_conf[b] += a
            stats.conf_new += 0.7
            stats.conf_old += 0.9 if sure else 0.45
            v = judge(stats, t)
            if v is not None:
                return v.ok, v.signal

    fix = [run(0.35, 0.95) for _ in range(100)]
    assert sum(ok for ok, _ in fix) >= 95, fix
    broken = [run(0.1, 0.1) for _ in range(100)]
    assert not any(ok for ok, _ in broken)
    assert confident_llr(QualityStats(), 0.3) == 0.0
