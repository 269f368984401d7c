"""Reference statistics and drift scores (edgefleet.stats)."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgefleet.errors import ConfigError, InvalidInputError
from edgefleet.stats import RunningStats, compute_reference_stats, psi


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images.astype(np.float32)  # (1797, 8, 8), values 0..16


@pytest.fixture(scope="module")
def halves(digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(0).permutation(len(digits))
    return digits[order[:900]], digits[order[900:]]


# --------------------------------------------------------------------------- compute_reference_stats


def test_reference_stats_layout_and_values(digits: np.ndarray) -> None:
    ref = compute_reference_stats(digits)
    assert json.loads(json.dumps(ref)) == ref
    assert ref["shape"] == [8, 8] and ref["count"] == len(digits)
    flat = digits.reshape(len(digits), -1).astype(np.float64)
    for key, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max), ("median", np.median)):
        np.testing.assert_allclose(ref[key], fn(flat, axis=0), err_msg=key)
    assert len(ref["bin_edges"]) == len(ref["bin_fractions"]) == 64
    assert ref["bin_features"] == list(range(64))
    for edges, fractions, lo, hi in zip(ref["bin_edges"], ref["bin_fractions"], ref["min"], ref["max"]):
        assert edges[0] == lo and edges[-1] == hi
        assert all(a < b for a, b in zip(edges, edges[1:]))  # equal quantiles merged
        assert len(fractions) == len(edges) + 1 and fractions[-1] == 0.0
        assert sum(fractions) == pytest.approx(1.0)


def test_point_masses_get_their_own_bucket() -> None:
    x = np.array([0.0] * 70 + list(range(1, 31)))[:, None]
    ref = compute_reference_stats(x, bins=10)
    assert ref["bin_edges"][0][0] == 0.0
    assert ref["bin_fractions"][0][0] == pytest.approx(0.7)  # the bucket (-inf, 0]
    constant = compute_reference_stats(np.full((5, 1), 3.0))
    assert constant["bin_edges"] == [[3.0]] and constant["bin_fractions"] == [[1.0, 0.0]]


def test_reference_stats_ignore_nan() -> None:
    x = np.array([[1.0, 10.0], [np.nan, 20.0], [3.0, np.nan], [5.0, 30.0]])
    ref = compute_reference_stats(x, bins=2)
    np.testing.assert_allclose(ref["mean"], [3.0, 20.0])
    np.testing.assert_allclose(ref["std"], [np.std([1, 3, 5]), np.std([10, 20, 30])])
    np.testing.assert_allclose(ref["median"], [3.0, 20.0])
    assert ref["bin_edges"] == [[1.0, 3.0, 5.0], [10.0, 20.0, 30.0]]
    np.testing.assert_allclose(ref["bin_fractions"], [[1 / 3, 1 / 3, 1 / 3, 0.0]] * 2)


def test_max_features_limits_histograms_only(digits: np.ndarray) -> None:
    ref = compute_reference_stats(digits, bins=4, max_features=5)
    assert ref["bin_features"] == [0, 16, 32, 47, 63]
    assert len(ref["bin_edges"]) == 5 and len(ref["mean"]) == 64
    full = compute_reference_stats(digits, bins=4)
    assert ref["bin_edges"][1] == full["bin_edges"][16]


@pytest.mark.parametrize(
    ("x", "error", "needle"),
    [
        (np.zeros((0, 3)), InvalidInputError, "at least one sample"),
        (np.array([[1.0, np.inf]]), InvalidInputError, "inf"),
        (np.array([[1.0, np.nan], [2.0, np.nan]]), InvalidInputError, "feature 1"),
        (np.array([["a"]]), InvalidInputError, "numbers"),
    ],
)
def test_reference_stats_refuse_bad_data(x: np.ndarray, error: type[Exception], needle: str) -> None:
    with pytest.raises(error, match=needle):
        compute_reference_stats(x)


def test_reference_stats_refuse_bad_options() -> None:
    with pytest.raises(ConfigError, match="bins"):
        compute_reference_stats(np.zeros((3, 2)), bins=0)
    with pytest.raises(ConfigError, match="max_features"):
        compute_reference_stats(np.zeros((3, 2)), max_features=0)


# --------------------------------------------------------------------------- psi


def test_psi_hand_computed() -> None:
    assert psi(np.array([0.5, 0.5]), np.array([50, 50])) == 0.0
    expected = (0.2 - 0.5) * np.log(0.2 / 0.5) + (0.8 - 0.5) * np.log(0.8 / 0.5)
    assert psi(np.array([0.5, 0.5]), np.array([20, 80])) == pytest.approx(expected)
    # an empty reference bucket is floored at eps: new values there count heavily
    assert psi(np.array([1.0, 0.0]), np.array([50, 50])) > 2.0
    assert psi(np.array([0.5, 0.5]), np.array([0, 0])) == 0.0
    with pytest.raises(InvalidInputError):
        psi(np.array([0.5, 0.5]), np.array([1, 2, 3]))
    with pytest.raises(InvalidInputError):
        psi(np.array([0.5, 0.5]), np.array([-1, 2]))


def test_psi_small_for_same_distribution_large_for_shifted() -> None:
    rng = np.random.default_rng(1)
    ref = compute_reference_stats(rng.normal(size=(5000, 1)))
    edges = np.asarray(ref["bin_edges"][0])
    fractions = np.asarray(ref["bin_fractions"][0])

    def counts(values: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(fractions))

    assert psi(fractions, counts(rng.normal(size=5000))) < 0.02
    assert psi(fractions, counts(rng.normal(loc=1.0, size=5000))) > 0.25


# --------------------------------------------------------------------------- RunningStats


def _ref_for(x: np.ndarray) -> dict[str, Any]:
    return compute_reference_stats(x, bins=5)


def test_running_stats_on_training_data_has_no_drift(digits: np.ndarray) -> None:
    ref = compute_reference_stats(digits)
    rs = RunningStats(ref)
    for part in np.array_split(digits, 7):
        rs.update(part)
    drift = rs.drift()
    assert drift["count"] == len(digits)
    assert drift["psi_max"] < 1e-9
    assert np.abs(drift["mean_shift_z"]).max() < 1e-9
    assert drift["missing_fraction"] == 0.0


def test_running_stats_drift_on_digits(halves: tuple[np.ndarray, np.ndarray]) -> None:
    train, live = halves
    ref = compute_reference_stats(train)
    same = RunningStats(ref)
    same.update(live)
    shifted = RunningStats(ref)
    shifted.update(np.clip(live + 4.0, 0, 16))
    flipped = RunningStats(ref)
    flipped.update(live[:, :, ::-1])
    calm, moved, mirror = same.drift(), shifted.drift(), flipped.drift()
    assert calm["psi_mean"] < 0.05 and calm["psi_max"] < 0.25
    assert moved["psi_mean"] > 1.0 and mirror["psi_max"] > 0.25
    assert len(calm["psi_per_feature"]) == len(calm["mean_shift_z"]) == 64
    assert np.median(np.abs(moved["mean_shift_z"])) > 0.5


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        hnp.arrays(
            np.float64, st.tuples(st.integers(0, 6), st.just(3)), elements=st.floats(-1e3, 1e3) | st.just(np.nan)
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_running_stats_match_numpy(batches: list[np.ndarray]) -> None:
    ref = _ref_for(np.arange(12, dtype=np.float64).reshape(4, 3))
    rs = RunningStats(ref)
    for b in batches:
        rs.update(b)
    allx = np.concatenate(batches)
    assert rs.count == len(allx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: numpy warns and gives NaN, as we do
        want_mean, want_var = np.nanmean(allx, axis=0), np.nanvar(allx, axis=0)
    np.testing.assert_allclose(rs.mean, want_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rs.var, want_var, rtol=1e-7, atol=1e-6)
    # merging per-batch accumulators equals the single pass
    merged = RunningStats(ref)
    for b in batches:
        part = RunningStats(ref)
        part.update(b)
        merged.merge(part)
    np.testing.assert_allclose(merged.mean, rs.mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(merged.var, rs.var, rtol=1e-7, atol=1e-6)
    np.testing.assert_array_equal(merged.histogram, rs.histogram)
    assert merged.count == rs.count


def test_merge_equals_single_pass_on_digits(halves: tuple[np.ndarray, np.ndarray]) -> None:
    train, live = halves
    ref = compute_reference_stats(train)
    single = RunningStats(ref)
    single.update(live)
    a, b = RunningStats(ref), RunningStats(ref)
    a.update(live[:300])
    b.update(live[300:])
    assert a.merge(b) is a
    np.testing.assert_allclose(a.mean, single.mean, rtol=1e-12)
    np.testing.assert_allclose(a.var, single.var, rtol=1e-9, atol=1e-12)
    merged, once = a.drift(), single.drift()
    assert merged["count"] == once["count"]
    for key in ("psi_per_feature", "mean_shift_z"):
        np.testing.assert_allclose(merged[key], once[key], rtol=1e-9, atol=1e-12)
    other = RunningStats(compute_reference_stats(live))
    with pytest.raises(ConfigError, match="different reference"):
        a.merge(other)


def test_running_stats_persist_through_json(halves: tuple[np.ndarray, np.ndarray]) -> None:
    train, live = halves
    ref = compute_reference_stats(train)
    rs = RunningStats(ref)
    rs.update(live[:100])
    state = json.loads(json.dumps(rs.to_dict()))
    back = RunningStats.from_dict(state)
    assert back.drift() == rs.drift()
    back.update(live[100:])
    rs.update(live[100:])
    assert back.drift() == rs.drift()
    assert RunningStats.from_dict(state, reference=ref).count == 100
    with pytest.raises(ConfigError):
        RunningStats.from_dict({**state, "mean": [0.0]})
    with pytest.raises(ConfigError):
        RunningStats.from_dict({"format": 99})


def test_running_stats_missing_values_and_shapes() -> None:
    ref = _ref_for(np.arange(12, dtype=np.float64).reshape(4, 3))
    rs = RunningStats(ref)
    rs.update(np.array([[np.nan, 1.0, np.inf]]))
    drift = rs.drift()
    assert drift["missing_fraction"] == pytest.approx(2 / 3)
    assert drift["mean_shift_z"][0] == 0.0  # nothing seen for feature 0
    assert np.isnan(rs.mean[0]) and rs.mean[1] == 1.0
    with pytest.raises(InvalidInputError, match=r"\(N, 3\)"):
        rs.update(np.zeros((2, 4)))
    img = compute_reference_stats(np.random.default_rng(0).normal(size=(10, 2, 3)))
    flat_ok = RunningStats(img)
    flat_ok.update(np.zeros((2, 6)))  # a flat view of the same features is accepted
    flat_ok.update(np.zeros((2, 2, 3)))
    assert flat_ok.count == 4 and flat_ok.mean.shape == (2, 3)


def test_running_stats_refuse_malformed_reference() -> None:
    with pytest.raises(ConfigError):
        RunningStats({"shape": [2], "mean": [0, 0], "std": [1, 1]})
    with pytest.raises(ConfigError):
        RunningStats({"shape": [2], "mean": [0], "std": [1, 1], "bin_edges": [], "bin_fractions": []})
    with pytest.raises(ConfigError, match="one more fraction"):
        RunningStats({"shape": [1], "mean": [0], "std": [1], "bin_edges": [[0.0, 1.0]], "bin_fractions": [[0.5, 0.5]]})
