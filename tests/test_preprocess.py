"""The declarative preprocessing pipeline (edgefleet.preprocess)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.errors import ConfigError, InvalidInputError
from edgefleet.preprocess import Pipeline, PipelineStream, WindowStep, decode_labels
from edgefleet.stats import compute_reference_stats


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images.astype(np.float32)  # (1797, 8, 8), values 0..16


@pytest.fixture(scope="module")
def digits_ref(digits: np.ndarray) -> dict[str, Any]:
    return compute_reference_stats(digits)


# --------------------------------------------------------------------------- spec parsing


def test_identity_pipeline() -> None:
    p = Pipeline.from_spec(None)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert p.is_identity and not p.has_window and not p.allows_missing
    assert p.input_shape is None and p.steps == ()
    np.testing.assert_array_equal(p.apply(x), x)
    assert p.to_spec() == {"input_shape": None, "steps": []}
    assert Pipeline.from_spec([]).is_identity
    assert Pipeline.from_spec({"steps": []}).is_identity


def test_list_and_dict_specs_agree() -> None:
    steps = [{"op": "scale", "factor": 2}, {"op": "cast", "dtype": "float16"}]
    a = Pipeline.from_spec(steps)
    b = Pipeline.from_spec({"input_shape": [3], "steps": steps})
    assert a.steps == b.steps
    assert b.input_shape == (3,) and b.output_shape == (3,)
    x = np.ones((4, 3), np.float32)
    out = b.apply(x)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, a.apply(x))


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ([{"op": "blur"}], "unknown op 'blur'"),
        ([{"factor": 2}], "unknown op None"),
        (["scale"], "must be a dict"),
        ([{"op": "scale"}], "missing required parameter 'factor'"),
        ([{"op": "scale", "factor": 2, "gain": 3}], "unknown parameter(s) 'gain'"),
        ([{"op": "scale", "factor": "2"}], "'factor' must be a finite number"),
        ([{"op": "scale", "factor": True}], "'factor'"),
        ([{"op": "scale", "factor": float("nan")}], "'factor'"),
        ([{"op": "scale", "factor": [[1, 2], [3]]}], "rectangular"),
        ([{"op": "cast", "dtype": "float8"}], "one of float32"),
        ([{"op": "reshape", "shape": [2, -1, -1]}], "at most one -1"),
        ([{"op": "reshape", "shape": [2, 0]}], "positive sizes"),
        ([{"op": "resize", "height": 0, "width": 3}], "'height' must be an integer >= 1"),
        ([{"op": "resize", "height": 2.0, "width": 3}], "'height'"),
        ([{"op": "transpose", "perm": [0, 0]}], "permutation"),
        ([{"op": "impute", "strategy": "constant"}], "missing required parameter 'value'"),
        ([{"op": "impute", "strategy": "mean", "value": 1}], "drop 'value'"),
        ([{"op": "clip"}], "'min' and/or 'max'"),
        ([{"op": "clip", "min": 2, "max": 1}], "'min' is above 'max'"),
        ([{"op": "clip", "min": [1, 2], "max": [1, 2, 3]}], "do not broadcast"),
        ([{"op": "clip", "zscore": 3, "min": 0}], "not both"),
        ([{"op": "clip", "zscore": -1}], "'zscore' must be > 0"),
        ([{"op": "clip", "zscore": 3, "mean": 0}], "both 'mean' and 'std'"),
        ([{"op": "standardize", "mean": 0}], "both 'mean' and 'std'"),
        ([{"op": "standardize", "mean": 0, "std": -1}], "'std' must not be negative"),
        ([{"op": "minmax", "range": [1, 0]}], "lo < hi"),
        ([{"op": "minmax", "min": 1}], "both 'min' and 'max'"),
        ([{"op": "scale", "factor": 1}, {"op": "window", "size": 2}], "must be the first step"),
        ([{"op": "window", "size": 2, "pad": "reflect"}], "one of none, zero"),
        ({"steps": [], "version": 2}, "unknown key(s) 'version'"),
        ({"steps": {"op": "scale"}}, "must be a list"),
        ({"input_shape": [0], "steps": []}, "input_shape"),
        ({"input_shape": "8x8", "steps": []}, "input_shape"),
        ("scale", "list of steps"),
    ],
)
def test_bad_specs_raise_config_error(spec: Any, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline.from_spec(spec)
    assert needle in str(info.value)


def test_config_errors_name_step_index_and_op() -> None:
    with pytest.raises(ConfigError, match=r"steps\[1\] \(resize\).*'width'"):
        Pipeline.from_spec([{"op": "scale", "factor": 1}, {"op": "resize", "height": 4}])


def test_reference_statistics_required_when_params_omitted() -> None:
    for step in (
        {"op": "standardize"},
        {"op": "impute", "strategy": "median"},
        {"op": "minmax"},
        {"op": "clip", "zscore": 3},
    ):
        with pytest.raises(ConfigError, match=r"steps\[0\].*reference statistics"):
            Pipeline.from_spec([step])


def test_malformed_reference_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'mean' has 3 values, expected 4"):
        Pipeline.from_spec([{"op": "standardize"}], {"shape": [4], "mean": [0, 0, 0], "std": [1, 1, 1, 1]})
    with pytest.raises(ConfigError, match="'shape'"):
        Pipeline.from_spec([{"op": "standardize"}], {"mean": [0], "std": [1]})
    # unused reference statistics are not looked at
    assert Pipeline.from_spec([{"op": "scale", "factor": 2}], {"junk": True}).needs_reference is False


def test_static_shape_inference(digits_ref: dict[str, Any]) -> None:
    p = Pipeline.from_spec(
        {
            "input_shape": [8, 8],
            "steps": [
                {"op": "standardize"},
                {"op": "reshape", "shape": [8, 8, 1]},
                {"op": "resize", "height": 4, "width": 6, "layout": "NHWC"},
                {"op": "transpose", "perm": [2, 0, 1]},
                {"op": "reshape", "shape": [-1]},
            ],
        },
        digits_ref,
    )
    assert p.output_shape == (24,)
    assert p.needs_reference
    with pytest.raises(ConfigError, match=r"steps\[1\] \(standardize\): reference statistics have shape \(8, 8\)"):
        Pipeline.from_spec(
            {"input_shape": [8, 8], "steps": [{"op": "reshape", "shape": [64]}, {"op": "standardize"}]}, digits_ref
        )
    with pytest.raises(ConfigError, match=r"steps\[0\] \(reshape\): cannot reshape"):
        Pipeline.from_spec({"input_shape": [8, 8], "steps": [{"op": "reshape", "shape": [5, -1]}]})


def test_shape_errors_at_apply_time_are_invalid_input(digits_ref: dict[str, Any]) -> None:
    p = Pipeline.from_spec([{"op": "reshape", "shape": [64]}, {"op": "standardize"}], digits_ref)
    with pytest.raises(InvalidInputError, match=r"steps\[1\] \(standardize\)"):
        p.apply(np.zeros((2, 8, 8), np.float32))
    q = Pipeline.from_spec({"input_shape": [8, 8], "steps": [{"op": "scale", "factor": 2}]})
    with pytest.raises(InvalidInputError, match=r"expected shape \(N, 8, 8\)"):
        q.apply(np.zeros((8, 8), np.float32))
    with pytest.raises(InvalidInputError, match="expected numbers"):
        q.apply(np.array([["a"]]))


def test_to_spec_round_trips_through_json(digits_ref: dict[str, Any]) -> None:
    spec = {
        "input_shape": [8, 8],
        "steps": [
            {"op": "impute", "strategy": "constant", "value": 0},
            {"op": "clip", "min": 0, "max": [16] * 8},
            {"op": "clip", "zscore": 4},
            {"op": "minmax"},
            {"op": "scale", "factor": 2, "offset": -1},
            {"op": "reshape", "shape": [8, 8, 1]},
            {"op": "resize", "height": 12, "width": 12, "method": "nearest"},
            {"op": "transpose", "perm": [2, 0, 1]},
            {"op": "cast", "dtype": "float16"},
        ],
    }
    p = Pipeline.from_spec(spec, digits_ref)
    out = p.to_spec()
    again = Pipeline.from_spec(json.loads(json.dumps(out)), digits_ref)
    assert again.to_spec() == out
    assert again.steps == p.steps
    assert Pipeline(p.steps, p.input_shape, digits_ref).to_spec() == out


# --------------------------------------------------------------------------- ops


def test_cast_truncates_and_saturates() -> None:
    p = Pipeline.from_spec([{"op": "cast", "dtype": "uint8"}])
    out = p.apply(np.array([[-3.0, 0.9, 254.99, 300.0]], np.float32))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 0, 254, 255]])
    big = Pipeline.from_spec([{"op": "cast", "dtype": "int32"}]).apply(np.array([[3e9, -3e9, -1.5]], np.float32))
    np.testing.assert_array_equal(big, [[2**31 - 1, -(2**31), -1]])
    ints = Pipeline.from_spec([{"op": "cast", "dtype": "int8"}]).apply(np.array([[300, -300, 5]], np.int64))
    np.testing.assert_array_equal(ints, [[127, -128, 5]])


def test_reshape_resolves_minus_one_per_sample() -> None:
    p = Pipeline.from_spec([{"op": "reshape", "shape": [-1, 2]}])
    assert p.apply(np.zeros((3, 4, 2))).shape == (3, 4, 2)
    assert p.apply(np.zeros((0, 6))).shape == (0, 3, 2)


def test_impute_constant_mean_median(digits: np.ndarray, digits_ref: dict[str, Any]) -> None:
    x = digits[:5].copy()
    x[0, 3, 4] = np.nan
    x[2, 0, 0] = np.nan
    mean = np.asarray(digits_ref["mean"], np.float32).reshape(8, 8)
    median = np.asarray(digits_ref["median"], np.float32).reshape(8, 8)
    for strategy, fill in (("mean", mean), ("median", median)):
        p = Pipeline.from_spec([{"op": "impute", "strategy": strategy}], digits_ref)
        assert p.allows_missing
        out = p.apply(x)
        assert out.dtype == np.float32
        assert out[0, 3, 4] == fill[3, 4] and out[2, 0, 0] == fill[0, 0]
        np.testing.assert_array_equal(out[1], digits[1])
    per_column = Pipeline.from_spec([{"op": "impute", "strategy": "constant", "value": list(range(8))}]).apply(x)
    assert per_column[0, 3, 4] == 4 and per_column[2, 0, 0] == 0


def test_nan_rejected_without_impute_and_inf_always() -> None:
    x = np.array([[1.0, np.nan]], np.float32)
    with pytest.raises(InvalidInputError, match="impute"):
        Pipeline.from_spec([{"op": "scale", "factor": 1}]).apply(x)
    p = Pipeline.from_spec([{"op": "scale", "factor": 2}, {"op": "impute", "strategy": "constant", "value": -1}])
    np.testing.assert_array_equal(p.apply(x), [[2.0, -1.0]])
    with pytest.raises(InvalidInputError, match="inf"):
        p.apply(np.array([[np.inf, 0.0]], np.float32))


def test_clip_explicit_and_zscore(digits: np.ndarray, digits_ref: dict[str, Any]) -> None:
    x = np.array([[-5.0, 0.5, 5.0]], np.float32)
    np.testing.assert_array_equal(Pipeline.from_spec([{"op": "clip", "min": 0, "max": 1}]).apply(x), [[0, 0.5, 1]])
    np.testing.assert_array_equal(Pipeline.from_spec([{"op": "clip", "max": [0, 0, 2]}]).apply(x), [[-5, 0, 2]])
    z = Pipeline.from_spec([{"op": "clip", "zscore": 2, "mean": 1, "std": 0.5}]).apply(x)
    np.testing.assert_array_equal(z, [[0, 0.5, 2]])
    out = Pipeline.from_spec([{"op": "clip", "zscore": 1}], digits_ref).apply(digits)
    mean = np.asarray(digits_ref["mean"]).reshape(8, 8)
    std = np.asarray(digits_ref["std"]).reshape(8, 8)
    assert (out >= (mean - std - 1e-4)).all() and (out <= (mean + std + 1e-4)).all()


def test_standardize_from_reference_on_digits(digits: np.ndarray, digits_ref: dict[str, Any]) -> None:
    p = Pipeline.from_spec({"input_shape": [8, 8], "steps": [{"op": "standardize"}]}, digits_ref)
    out = p.apply(digits)
    assert out.dtype == np.float32
    varying = np.asarray(digits_ref["std"]).reshape(8, 8) > 1e-8
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0)[varying], 1.0, atol=1e-4)
    # a constant feature (std 0) is only centred, never blown up by the eps guard
    assert (~varying).any()
    probe = digits[:1].copy()
    probe[0][~varying] = 3.0
    assert np.abs(p.apply(probe)[0][~varying]).max() <= 3.0
    explicit = Pipeline.from_spec([{"op": "standardize", "mean": [1, 2], "std": [2, 0]}])
    np.testing.assert_allclose(explicit.apply(np.array([[5.0, 7.0]])), [[2.0, 5.0]])


def test_minmax_from_reference_and_explicit(digits: np.ndarray, digits_ref: dict[str, Any]) -> None:
    out = Pipeline.from_spec([{"op": "minmax"}], digits_ref).apply(digits)
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6
    assert out.dtype == np.float32
    p = Pipeline.from_spec([{"op": "minmax", "min": 0, "max": 16, "range": [-1, 1]}])
    np.testing.assert_allclose(p.apply(np.array([[0, 8, 16]], np.uint8)), [[-1, 0, 1]])


def test_scale_dtypes() -> None:
    p = Pipeline.from_spec([{"op": "scale", "factor": 0.5, "offset": 1}])
    for dtype, expected in (
        (np.float32, np.float32),
        (np.float64, np.float64),
        (np.float16, np.float16),
        (np.uint8, np.float32),
        (np.int64, np.float32),
    ):
        out = p.apply(np.array([[2, 4]], dtype=dtype))
        assert out.dtype == expected, dtype
        np.testing.assert_array_equal(out, [[2, 3]])


def test_resize_bilinear_hand_computed() -> None:
    # half-pixel centres: an output pixel o samples the input at (o + 0.5) * in / out - 0.5
    p = Pipeline.from_spec([{"op": "resize", "height": 4, "width": 4}])
    x = np.array([[0, 4], [8, 12]], np.float32).reshape(1, 2, 2, 1)
    expected = [[0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]]
    out = p.apply(x)
    assert out.dtype == np.float32 and out.shape == (1, 4, 4, 1)
    np.testing.assert_allclose(out[0, :, :, 0], expected)
    down = Pipeline.from_spec([{"op": "resize", "height": 1, "width": 2}])
    np.testing.assert_allclose(down.apply(np.arange(8, dtype=np.float32).reshape(1, 2, 4))[0], [[2.5, 4.5]])


def test_resize_nearest_and_layouts() -> None:
    x = np.arange(2 * 3 * 4 * 3, dtype=np.float32).reshape(2, 3, 4, 3)
    nearest = Pipeline.from_spec([{"op": "resize", "height": 6, "width": 2, "method": "nearest"}]).apply(x)
    np.testing.assert_array_equal(nearest, x[:, [0, 0, 1, 1, 2, 2]][:, :, [1, 3]])
    u8 = Pipeline.from_spec([{"op": "resize", "height": 6, "width": 2, "method": "nearest"}]).apply(x.astype(np.uint8))
    assert u8.dtype == np.uint8
    nhwc = Pipeline.from_spec([{"op": "resize", "height": 5, "width": 7}]).apply(x)
    nchw = Pipeline.from_spec([{"op": "resize", "height": 5, "width": 7, "layout": "NCHW"}]).apply(
        x.transpose(0, 3, 1, 2)
    )
    np.testing.assert_allclose(nchw, nhwc.transpose(0, 3, 1, 2), rtol=1e-6)
    same = Pipeline.from_spec([{"op": "resize", "height": 3, "width": 4}]).apply(x)
    np.testing.assert_array_equal(same, x)
    with pytest.raises(InvalidInputError, match="resize"):
        Pipeline.from_spec([{"op": "resize", "height": 3, "width": 4}]).apply(np.zeros((1, 5)))


def test_channel_order_and_transpose() -> None:
    x = np.arange(2 * 2 * 3, dtype=np.float32).reshape(1, 2, 2, 3)
    bgr = Pipeline.from_spec([{"op": "channel_order", "order": "bgr"}]).apply(x)
    np.testing.assert_array_equal(bgr, x[..., ::-1])
    np.testing.assert_array_equal(Pipeline.from_spec([{"op": "channel_order", "order": "rgb"}]).apply(x), x)
    chw = x.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(
        Pipeline.from_spec([{"op": "channel_order", "order": "bgr", "layout": "NCHW"}]).apply(chw), chw[:, ::-1]
    )
    rgba = np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4)
    np.testing.assert_array_equal(
        Pipeline.from_spec([{"op": "channel_order", "order": "bgr"}]).apply(rgba)[..., 3], rgba[..., 3]
    )
    with pytest.raises(ConfigError, match="3 or 4 channels"):
        Pipeline.from_spec({"input_shape": [2, 2, 5], "steps": [{"op": "channel_order", "order": "bgr"}]})
    t = Pipeline.from_spec([{"op": "transpose", "perm": [2, 0, 1]}]).apply(x)
    assert t.flags.c_contiguous
    np.testing.assert_array_equal(t, chw)


def test_digits_end_to_end(digits: np.ndarray, digits_ref: dict[str, Any]) -> None:
    spec = {
        "input_shape": [8, 8],
        "steps": [
            {"op": "impute", "strategy": "median"},
            {"op": "clip", "min": 0, "max": 16},
            {"op": "scale", "factor": 1 / 16},
            {"op": "reshape", "shape": [8, 8, 1]},
            {"op": "resize", "height": 16, "width": 16},
            {"op": "reshape", "shape": [-1]},
        ],
    }
    p = Pipeline.from_spec(spec, digits_ref)
    out = p.apply(digits)
    assert out.shape == (len(digits), 256) and p.output_shape == (256,)
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0


# --------------------------------------------------------------------------- windows and streams


def test_window_framing_hand_computed() -> None:
    x = np.arange(11, dtype=np.float32)[:, None]  # (T=11, 1 feature)
    p = Pipeline.from_spec({"input_shape": [1], "steps": [{"op": "window", "size": 4, "hop": 2}]})
    assert p.has_window and p.output_shape == (4, 1)
    out = p.apply(x)
    assert out.shape == (4, 4, 1)
    np.testing.assert_array_equal(out[:, :, 0], [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]])
    padded = Pipeline.from_spec([{"op": "window", "size": 4, "hop": 2, "pad": "zero"}]).apply(x)
    assert padded.shape == (5, 4, 1)
    np.testing.assert_array_equal(padded[-1, :, 0], [8, 9, 10, 0])
    short = Pipeline.from_spec([{"op": "window", "size": 4, "pad": "zero"}]).apply(np.ones((2, 3)))
    np.testing.assert_array_equal(short, [[[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]]])
    assert Pipeline.from_spec([{"op": "window", "size": 4}]).apply(np.ones((3, 2))).shape == (0, 4, 2)
    gaps = Pipeline.from_spec([{"op": "window", "size": 2, "hop": 5, "pad": "zero"}]).apply(x)
    np.testing.assert_array_equal(gaps[:, :, 0], [[0, 1], [5, 6], [10, 0]])


def test_stream_basic_and_reset() -> None:
    p = Pipeline.from_spec([{"op": "window", "size": 3, "hop": 2}, {"op": "scale", "factor": 10}])
    s = p.stream()
    assert isinstance(s, PipelineStream)
    first = s.push(np.arange(2, dtype=np.float32)[:, None])
    assert first.shape == (0, 3, 1) and first.dtype == np.float32 and s.pending == 2
    second = s.push(np.arange(2, 6, dtype=np.float32)[:, None])
    np.testing.assert_array_equal(second[:, :, 0], [[0, 10, 20], [20, 30, 40]])
    assert s.pending == 2
    with pytest.raises(InvalidInputError, match="earlier ones"):
        s.push(np.zeros((2, 2), np.float32))
    s.reset()
    assert s.pending == 0
    np.testing.assert_array_equal(s.push(np.full((3, 1), 1.0, np.float32))[:, :, 0], [[10, 10, 10]])
    with pytest.raises(ConfigError, match="no window step"):
        Pipeline.from_spec([{"op": "scale", "factor": 1}]).stream()


def test_stream_flush_emits_padded_tail() -> None:
    p = Pipeline.from_spec([{"op": "window", "size": 4, "hop": 3, "pad": "zero"}])
    s = p.stream()
    x = np.arange(9, dtype=np.float32)
    got = np.concatenate([s.push(x[:5]), s.push(x[5:]), s.flush()])
    np.testing.assert_array_equal(got, p.apply(x))
    np.testing.assert_array_equal(got[-1], [6, 7, 8, 0])
    assert s.pending == 0 and s.flush().shape == (0, 4)


@st.composite
def _stream_case(draw: st.DrawFn) -> tuple[dict[str, Any], np.ndarray, list[int]]:
    size = draw(st.integers(1, 6))
    hop = draw(st.integers(1, 8))
    pad = draw(st.sampled_from(["none", "zero"]))
    features = draw(st.sampled_from([(), (1,), (2,), (2, 3)]))
    t = draw(st.integers(0, 40))
    rest = draw(
        st.lists(
            st.sampled_from([{"op": "scale", "factor": 0.5, "offset": 1}, {"op": "clip", "min": -1, "max": 20}]),
            max_size=2,
        )
    )
    cuts = sorted(draw(st.lists(st.integers(0, t), max_size=8)))
    x = np.arange(t * int(np.prod(features)), dtype=np.float32).reshape((t, *features))
    spec = {"input_shape": list(features), "steps": [{"op": "window", "size": size, "hop": hop, "pad": pad}, *rest]}
    return spec, x, cuts


@settings(max_examples=150, deadline=None)
@given(_stream_case())
def test_stream_in_any_chunks_equals_apply(case: tuple[dict[str, Any], np.ndarray, list[int]]) -> None:
    spec, x, cuts = case
    p = Pipeline.from_spec(spec)
    s = p.stream()
    bounds = [0, *cuts, len(x)]
    pushed = [s.push(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    tail = s.flush()
    whole = p.apply(x)
    got = np.concatenate([*pushed, tail])
    assert got.shape == whole.shape
    np.testing.assert_array_equal(got, whole)
    # push() alone never emits a partial window: it equals apply() without padding
    unpadded = Pipeline.from_spec({**spec, "steps": [{**spec["steps"][0], "pad": "none"}, *spec["steps"][1:]]})
    np.testing.assert_array_equal(np.concatenate(pushed), unpadded.apply(x))


# --------------------------------------------------------------------------- spec fuzzing

_OPS = [
    "cast",
    "reshape",
    "impute",
    "clip",
    "standardize",
    "minmax",
    "scale",
    "resize",
    "channel_order",
    "transpose",
    "window",
    "blur",
]
_PARAMS = [
    "dtype",
    "shape",
    "strategy",
    "value",
    "min",
    "max",
    "zscore",
    "mean",
    "std",
    "range",
    "factor",
    "offset",
    "height",
    "width",
    "method",
    "layout",
    "order",
    "perm",
    "size",
    "hop",
    "pad",
    "extra",
]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 6),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "float32",
            "uint8",
            "int64",
            "constant",
            "mean",
            "median",
            "bilinear",
            "nearest",
            "NHWC",
            "NCHW",
            "rgb",
            "bgr",
            "none",
            "zero",
            "x",
        ]
    ),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=8,
)
_NUM = st.one_of(st.integers(-3, 3), st.floats(-4, 4, allow_nan=False))
_NUMS = st.one_of(_NUM, st.lists(_NUM, min_size=1, max_size=3))
_DIM = st.integers(1, 4)
_VALID_STEPS = st.one_of(
    st.fixed_dictionaries({"op": st.just("cast"), "dtype": st.sampled_from(["float32", "float16", "uint8", "int32"])}),
    st.fixed_dictionaries({"op": st.just("reshape"), "shape": st.lists(st.one_of(_DIM, st.just(-1)), max_size=3)}),
    st.fixed_dictionaries({"op": st.just("impute"), "strategy": st.sampled_from(["mean", "median"])}),
    st.fixed_dictionaries({"op": st.just("impute"), "strategy": st.just("constant"), "value": _NUMS}),
    st.fixed_dictionaries({"op": st.just("clip")}, optional={"min": _NUMS, "max": _NUMS}),
    st.fixed_dictionaries({"op": st.just("clip"), "zscore": st.floats(0.1, 5)}, optional={"mean": _NUMS, "std": _NUMS}),
    st.fixed_dictionaries({"op": st.just("standardize")}, optional={"mean": _NUMS, "std": _NUMS}),
    st.fixed_dictionaries(
        {"op": st.just("minmax")},
        optional={"min": _NUMS, "max": _NUMS, "range": st.lists(_NUM, min_size=2, max_size=2)},
    ),
    st.fixed_dictionaries({"op": st.just("scale"), "factor": _NUMS}, optional={"offset": _NUMS}),
    st.fixed_dictionaries(
        {"op": st.just("resize"), "height": _DIM, "width": _DIM},
        optional={"method": st.sampled_from(["bilinear", "nearest"]), "layout": st.sampled_from(["NHWC", "NCHW"])},
    ),
    st.fixed_dictionaries(
        {"op": st.just("channel_order"), "order": st.sampled_from(["rgb", "bgr"])},
        optional={"layout": st.sampled_from(["NHWC", "NCHW"])},
    ),
    st.fixed_dictionaries(
        {"op": st.just("transpose"), "perm": st.permutations(list(range(3))) | st.permutations([0, 1])}
    ),
    st.fixed_dictionaries(
        {"op": st.just("window"), "size": _DIM}, optional={"hop": _DIM, "pad": st.sampled_from(["none", "zero"])}
    ),
)


@st.composite
def _mutated_step(draw: st.DrawFn) -> Any:
    step = dict(draw(_VALID_STEPS))
    mutation = draw(st.sampled_from(["none"] * 6 + ["drop", "add", "replace", "garbage"]))
    if mutation == "drop":
        step.pop(draw(st.sampled_from(sorted(step))))
    elif mutation == "add":
        step[draw(st.sampled_from(_PARAMS))] = draw(_VALUES)
    elif mutation == "replace":
        step[draw(st.sampled_from(sorted(step)))] = draw(_VALUES)
    elif mutation == "garbage":
        return draw(_VALUES)
    return step


_ANY_STEP = _mutated_step()
_GOOD_SPEC = st.fixed_dictionaries(
    {"input_shape": st.one_of(st.none(), st.lists(_DIM, max_size=3)), "steps": st.lists(_ANY_STEP, max_size=4)}
)
_SPEC = st.one_of(
    st.none(),
    st.lists(_ANY_STEP, max_size=4),
    _GOOD_SPEC,
    _GOOD_SPEC,
    _GOOD_SPEC,
    st.fixed_dictionaries(
        {"steps": st.one_of(st.lists(_ANY_STEP, max_size=4), _VALUES)},
        optional={"input_shape": st.one_of(st.lists(st.integers(-1, 4), max_size=3), _VALUES), "junk": _VALUES},
    ),
    _VALUES,
)
_REFS = [
    None,
    compute_reference_stats(np.random.default_rng(0).normal(size=(20, 3))),
    compute_reference_stats(np.random.default_rng(1).normal(size=(20, 2, 3))),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_SPEC, st.sampled_from(_REFS))
def test_random_specs_give_a_pipeline_or_config_error(spec: Any, reference: Any) -> None:
    try:
        p = Pipeline.from_spec(spec, reference)
    except ConfigError:
        return
    out = p.to_spec()
    assert json.loads(json.dumps(out)) == out
    assert Pipeline.from_spec(out, reference).to_spec() == out
    if p.input_shape is not None and p.output_shape is not None and not p.has_window:
        x = np.ones((2, *p.input_shape), np.float32)
        try:
            y = p.apply(x)
        except InvalidInputError:
            return  # e.g. a NaN cast, never anything else
        assert y.shape == (2, *p.output_shape)


def test_window_step_is_exposed() -> None:
    p = Pipeline.from_spec([{"op": "window", "size": 5}])
    assert p.steps == (WindowStep(size=5, hop=5, pad="none"),)


# --------------------------------------------------------------------------- labels


def test_decode_labels() -> None:
    labels = ["cat", "dog", "eel"]
    assert decode_labels(np.array([0.1, 0.7, 0.2]), labels) == "dog"
    assert decode_labels(np.array([[0.1, 0.7, 0.2], [0.9, 0.0, 0.1]]), labels) == ["dog", "cat"]
    assert decode_labels(np.array([[0.1, 0.7, 0.2]]), labels, top_k=2) == [["dog", "eel"]]
    assert decode_labels(np.array([0.5, 0.5, 0.0]), labels, top_k=3) == ["cat", "dog", "eel"]
    assert decode_labels(np.array([3, 9, 9], np.uint8), labels) == "dog"
    with pytest.raises(InvalidInputError, match="3 classes but there are 2 labels"):
        decode_labels(np.zeros(3), labels[:2])
    with pytest.raises(ConfigError, match="top_k"):
        decode_labels(np.zeros(3), labels, top_k=4)
    with pytest.raises(InvalidInputError, match="NaN"):
        decode_labels(np.array([np.nan, 0, 0]), labels)
