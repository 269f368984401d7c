"""The device's numpy head trainer (cloud_sync/federated/head_trainer.py): gradients against finite differences
for every layer kind and activation, the loss against the head's own forward pass, SGD/Adam, class weights,
the FedProx term, and the refusals. Pure numpy: no TensorFlow, no Flower."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgefleet.cloud_sync.federated.head_trainer import (
    VJPS,
    HeadTrainConfig,
    class_weights,
    evaluate_head,
    loss_and_grads,
    train_head,
    trainable_arrays,
    trainable_keys,
    with_trainable,
)
from edgefleet.errors import ConfigError
from edgefleet.head import Head, HeadLayer


def _dense(name: str, n_in: int, n_out: int, act: str, bias: bool = True, ins: tuple[int, ...] | None = None) -> HeadLayer:
    shape_in = ins or (n_in,)
    params = (("kernel", (n_in, n_out)),) + ((("bias", (n_out,)),) if bias else ())
    return HeadLayer("dense", name, shape_in, shape_in[:-1] + (n_out,), act, params)


def _bn(name: str, shape: tuple[int, ...], affine: bool = True) -> HeadLayer:
    c = shape[-1]
    params = ((("gamma", (c,)), ("beta", (c,))) if affine else ()) + (("moving_mean", (c,)), ("moving_variance", (c,)))
    return HeadLayer("batch_norm", name, shape, shape, params=params, epsilon=1e-3)


def _weights(layers: list[HeadLayer], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for layer in layers:
        for p, shape in layer.params:
            v = rng.normal(scale=0.7, size=shape)
            out[f"{layer.name}.{p}"] = np.abs(v) + 0.5 if p == "moving_variance" else v
    return out


def _numeric(layers: list[HeadLayer], params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
             **kw: Any) -> dict[str, np.ndarray]:
    """Central finite differences of the loss for every trainable value (float64)."""
    out = {}
    h = 1e-6
    for key in trainable_keys(layers):
        grad = np.zeros_like(params[key])
        for idx in np.ndindex(params[key].shape):
            for sign in (1, -1):
                p = {k: v.copy() for k, v in params.items()}
                p[key][idx] += sign * h
                grad[idx] += sign * loss_and_grads(layers, p, x, y, **kw)[0] / (2 * h)
        out[key] = grad
    return out


def _check(layers: list[HeadLayer], x: np.ndarray, y: np.ndarray, seed: int = 0, **kw: Any) -> None:
    params = _weights(layers, seed)
    _, grads = loss_and_grads(layers, params, x, y, **kw)
    numeric = _numeric(layers, params, x, y, **kw)
    assert sorted(grads) == sorted(numeric) == sorted(trainable_keys(layers))
    for key in grads:
        np.testing.assert_allclose(grads[key], numeric[key], rtol=1e-5, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("act", sorted(a for a in VJPS if a != "linear"))
def test_gradients_match_finite_differences_through_each_hidden_activation(act: str) -> None:
    # Arrange: dense(act) -> batch norm -> dense(softmax); features away from the kinks of relu-like functions
    layers = [_dense("fc", 5, 4, act), _bn("bn", (4,)), _dense("probs", 4, 3, "softmax")]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 5))
    y = rng.integers(0, 3, size=7)

    # Act / Assert
    _check(layers, x, y)


@pytest.mark.parametrize("out_act", ["softmax", "log_softmax", "linear"])
def test_gradients_with_class_weights_and_the_proximal_term(out_act: str) -> None:
    layers = [_dense("fc", 6, 5, "tanh"), _dense("out", 5, 4, out_act)]
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(9, 6)), rng.integers(0, 4, size=9)
    anchor = {k: v + 0.3 for k, v in _weights(layers, 5).items()}
    _check(layers, x, y, weights=np.array([0.5, 2.0, 1.0, 3.0]), anchor=anchor, mu=0.7)


@pytest.mark.parametrize("pool", ["global_avg_pool", "global_max_pool", "flatten"])
def test_gradients_through_pooling_flatten_dropout_and_a_spatial_dense(pool: str) -> None:
    # (3, 3, 4) feature maps: dense on the channel axis, batch norm without gamma/beta, pooling or flatten,
    # dropout, an activation layer, then the classifier
    spatial = (3, 3, 4)
    flat = 3 * 3 * 6 if pool == "flatten" else 6
    pooled = HeadLayer(pool, "pool", (3, 3, 6), (flat,))
    layers = [_dense("conv1x1", 4, 6, "elu", ins=spatial), _bn("bn", (3, 3, 6), affine=False), pooled,
              HeadLayer("dropout", "drop", (flat,), (flat,)), _dense("fc", flat, 5, "linear", bias=False),
              HeadLayer("activation", "act", (5,), (5,), "selu"), _dense("probs", 5, 3, "softmax"),
              HeadLayer("dropout", "drop2", (3,), (3,))]
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4,) + spatial), rng.integers(0, 3, size=4)
    _check(layers, x, y)


def test_the_loss_is_the_cross_entropy_of_the_heads_own_forward_pass() -> None:
    layers = [_dense("fc", 8, 6, "relu"), _bn("bn", (6,)), _dense("probs", 6, 4, "softmax")]
    head = Head(layers, _weights(layers, 4))
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 4, size=50)

    loss, acc = evaluate_head(head, x, y)

    probs = head.forward(x).astype(np.float64)
    assert loss == pytest.approx(float(-np.mean(np.log(probs[np.arange(50), y]))), rel=1e-4)
    assert acc == pytest.approx(float(np.mean(probs.argmax(1) == y)))


def _blobs(n: int, k: int = 3, d: int = 6, seed: int = 0, counts: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(k, d))
    ys = np.concatenate([np.full(c, i) for i, c in enumerate(counts or [n // k] * k)])
    return (centers[ys] + rng.normal(size=(len(ys), d))).astype(np.float32), ys


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 0.01)])
def test_sgd_and_adam_learn_a_separable_problem(optimizer: str, lr: float) -> None:
    layers = [_dense("fc", 6, 8, "relu"), _dense("probs", 8, 3, "softmax")]
    head = Head(layers, _weights(layers, 0))
    x, y = _blobs(300)
    before = evaluate_head(head, x, y)

    res = train_head(head, x, y, HeadTrainConfig(epochs=20, learning_rate=lr, optimizer=optimizer, seed=1))

    assert res.accuracy > 0.95 > before[1], (before, res.accuracy)
    assert res.loss < before[0] / 4 and res.history[-1] < res.history[0]
    assert res.num_examples == 300 and res.head.layers == head.layers


def test_the_proximal_term_keeps_the_head_near_the_global_one() -> None:
    layers = [_dense("probs", 6, 3, "softmax")]
    head = Head(layers, _weights(layers, 0))
    x, y = _blobs(300)
    cfg = dict(epochs=10, learning_rate=0.05)

    free = train_head(head, x, y, HeadTrainConfig(**cfg))
    held = train_head(head, x, y, HeadTrainConfig(**cfg, proximal_mu=5.0))

    def dist(h: Head) -> float:
        return float(sum(np.sum((a - b) ** 2) for a, b in zip(trainable_arrays(h), trainable_arrays(head))))

    assert dist(held.head) < dist(free.head) / 5


def test_balanced_class_weights_lift_a_rare_class() -> None:
    # a rare class (10 of 610 samples) overlapping the others: unweighted training mostly ignores it
    layers = [_dense("probs", 6, 3, "softmax")]
    head = Head(layers, {"probs.kernel": np.zeros((6, 3)), "probs.bias": np.zeros(3)})
    x, y = _blobs(0, counts=[300, 300, 10], seed=7)
    x[y == 2] = x[y == 2] * 0.3 + x[y == 0][:10] * 0.7
    cfg = dict(epochs=30, learning_rate=0.05, seed=0)

    plain = train_head(head, x, y, HeadTrainConfig(**cfg))
    balanced = train_head(head, x, y, HeadTrainConfig(**cfg, class_weight="balanced"))

    def recall(h: Head) -> float:
        return float(np.mean(h.forward(x[y == 2]).argmax(1) == 2))

    assert recall(balanced.head) > recall(plain.head) + 0.3, (recall(plain.head), recall(balanced.head))
    w = class_weights(y, 3, "balanced")
    assert w is not None and w[2] == pytest.approx(610 / (3 * 10)) and w[0] == pytest.approx(610 / 900)


def test_batch_norm_statistics_stay_frozen_and_only_trainable_arrays_are_exchanged() -> None:
    layers = [_dense("fc", 6, 4, "relu"), _bn("bn", (4,)), _dense("probs", 4, 3, "softmax")]
    head = Head(layers, _weights(layers, 2))
    x, y = _blobs(60)

    res = train_head(head, x, y, HeadTrainConfig(epochs=2, learning_rate=0.1, optimizer="adam"))

    assert trainable_keys(layers) == ["fc.kernel", "fc.bias", "bn.gamma", "bn.beta", "probs.kernel", "probs.bias"]
    for frozen in ("bn.moving_mean", "bn.moving_variance"):
        np.testing.assert_array_equal(res.head.weights[frozen], head.weights[frozen])
    again = with_trainable(head, trainable_arrays(res.head))
    for key, arr in res.head.weights.items():
        np.testing.assert_array_equal(again.weights[key], arr)


def test_refusals_are_named_config_errors() -> None:
    sig = [_dense("out", 4, 3, "sigmoid")]
    head = Head([_dense("probs", 4, 3, "softmax")], _weights([_dense("probs", 4, 3, "softmax")]))
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ConfigError, match="cross-entropy needs"):
        train_head(Head(sig, _weights(sig)), x, np.array([0, 1]))
    with pytest.raises(ConfigError, match=r"labels must be in \[0, 3\)"):
        train_head(head, x, np.array([0, 3]))
    with pytest.raises(ConfigError, match="do not fit the head's input"):
        train_head(head, np.zeros((2, 5), np.float32), np.array([0, 1]))
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        HeadTrainConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="expected 2 head arrays"):
        with_trainable(head, [np.zeros((4, 3))])
    with pytest.raises(ConfigError, match="NaN or inf"):
        with_trainable(head, [np.full((4, 3), np.nan), np.zeros(3)])
