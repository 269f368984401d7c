"""A small trainable head for the SDK tests (pure numpy) and its maths written out."""

from __future__ import annotations

import numpy as np

from edgefleet.head import Head, HeadLayer


def small_head(features: int = 10, seed: int = 0) -> Head:
    """dense(relu) -> batch norm -> dropout -> dense(softmax): 3 classes from ``features``."""
    rng = np.random.default_rng(seed)
    layers = [
        HeadLayer("dense", "fc", (features,), (8,), "relu", (("kernel", (features, 8)), ("bias", (8,)))),
        HeadLayer("batch_norm", "bn", (8,), (8,), params=(("gamma", (8,)), ("beta", (8,)), ("moving_mean", (8,)),
                                                          ("moving_variance", (8,))), epsilon=1e-3),
        HeadLayer("dropout", "drop", (8,), (8,)),
        HeadLayer("dense", "probs", (8,), (3,), "softmax", (("kernel", (8, 3)), ("bias", (3,)))),
    ]
    weights = {
        "fc.kernel": rng.normal(0, 1, (features, 8)), "fc.bias": rng.normal(0, 0.1, 8),
        "bn.gamma": rng.uniform(0.5, 1.5, 8), "bn.beta": rng.normal(0, 0.1, 8),
        "bn.moving_mean": rng.normal(0, 0.1, 8), "bn.moving_variance": rng.uniform(0.5, 1.5, 8),
        "probs.kernel": rng.normal(0, 1, (8, 3)), "probs.bias": rng.normal(0, 0.1, 3),
    }
    return Head(layers, {k: v.astype(np.float32) for k, v in weights.items()})


def reference_forward(head: Head, x: np.ndarray) -> np.ndarray:
    """The same maths written out in float64, layer by layer."""
    w = {k: v.astype(np.float64) for k, v in head.weights.items()}
    h = np.maximum(x @ w["fc.kernel"] + w["fc.bias"], 0)
    h = (h - w["bn.moving_mean"]) / np.sqrt(w["bn.moving_variance"] + 1e-3) * w["bn.gamma"] + w["bn.beta"]
    z = h @ w["probs.kernel"] + w["probs.bias"]
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
