"""A small pure-numpy trainer for devices: dense networks, SGD, FedProx's proximal term.

Devices have numpy and a runtime, not TensorFlow, so local training is plain
numpy. The weight list has exactly the layout of a Keras ``Sequential`` of
``Dense`` layers' ``get_weights()``: ``[W1 (in, h1), b1 (h1,), W2 (h1, h2), ...]``
so the coordinator can ``set_weights()`` the aggregate into Keras and compile it.
Hidden layers use ReLU, the last one softmax (classification, integer labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgefleet.errors import ConfigError

Weights = list[np.ndarray]


@dataclass(frozen=True)
class MLPSpec:
    """Layer widths from input to output, e.g. ``(64, 32, 10)``; ``(64, 10)`` is softmax regression."""

    layers: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.layers) < 2 or any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in self.layers):
            raise ConfigError(f"layers must be two or more positive widths (input ... classes), got {self.layers!r}")

    @classmethod
    def parse(cls, text: str | Sequence[int]) -> MLPSpec:
        if isinstance(text, str):
            try:
                return cls(tuple(int(p) for p in text.replace(",", " ").split()))
            except ValueError:
                raise ConfigError(f"layers must be integers separated by commas, got {text!r}") from None
        return cls(tuple(int(p) for p in text))

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.layers)

    @property
    def n_inputs(self) -> int:
        return self.layers[0]

    @property
    def n_classes(self) -> int:
        return self.layers[-1]

    def shapes(self) -> list[tuple[int, ...]]:
        out: list[tuple[int, ...]] = []
        for a, b in zip(self.layers[:-1], self.layers[1:]):
            out += [(a, b), (b,)]
        return out

    def init(self, seed: int = 0) -> Weights:
        """Glorot-uniform kernels and zero biases (Keras' defaults), float32."""
        rng = np.random.default_rng(seed)
        out: Weights = []
        for a, b in zip(self.layers[:-1], self.layers[1:]):
            lim = np.sqrt(6.0 / (a + b))
            out += [rng.uniform(-lim, lim, size=(a, b)).astype(np.float32), np.zeros(b, np.float32)]
        return out

    def check(self, weights: Sequence[np.ndarray]) -> Weights:
        """Validate a weight list against this spec (shapes, finiteness); returns float32 copies."""
        shapes = self.shapes()
        if len(weights) != len(shapes):
            raise ConfigError(f"expected {len(shapes)} weight arrays for layers {self}, got {len(weights)}")
        out: Weights = []
        for i, (w, s) in enumerate(zip(weights, shapes)):
            arr = np.asarray(w, dtype=np.float32)
            if arr.shape != s:
                raise ConfigError(f"weight {i} has shape {arr.shape}, expected {s} for layers {self}")
            if not np.all(np.isfinite(arr)):
                raise ConfigError(f"weight {i} holds NaN or infinity")
            out.append(arr.copy())
        return out


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.1
    proximal_mu: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size <= 0:
            raise ConfigError("epochs must be >= 0 and batch_size > 0")
        if not self.learning_rate > 0 or self.proximal_mu < 0:
            raise ConfigError("learning_rate must be > 0 and proximal_mu >= 0")


@dataclass(frozen=True)
class TrainResult:
    weights: Weights
    loss: float
    accuracy: float
    num_examples: int


def forward(weights: Sequence[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Class probabilities and the activations of every layer (input first)."""
    acts = [np.asarray(x, dtype=np.float32)]
    n_layers = len(weights) // 2
    h = acts[0]
    for i in range(n_layers):
        z = h @ weights[2 * i] + weights[2 * i + 1]
        if i < n_layers - 1:
            h = np.maximum(z, 0.0)
        else:
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            h = e / e.sum(axis=1, keepdims=True)
        acts.append(h)
    return acts[-1], acts


def predict_proba(weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    return forward(weights, x)[0]


def _labels(y: np.ndarray, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:  # one-hot
        y = y.argmax(axis=1)
    y = y.astype(np.int64).reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ConfigError(f"labels must be in [0, {n_classes}), got {int(y.min())}..{int(y.max())}")
    return y


def evaluate(weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy."""
    if len(x) == 0:
        return float("nan"), float("nan")
    p, _ = forward(weights, x)
    yi = _labels(y, p.shape[1])
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(yi)), yi], 1e-12, 1.0))))
    acc = float(np.mean(p.argmax(axis=1) == yi))
    return loss, acc


def train(
    weights: Sequence[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig = TrainConfig(),
    global_weights: Sequence[np.ndarray] | None = None,
) -> TrainResult:
    """Mini-batch SGD on cross-entropy; with ``proximal_mu > 0`` adds ``mu/2 ||w - w_global||^2`` (FedProx)."""
    w = [np.array(a, dtype=np.float32, copy=True) for a in weights]
    anchor = [np.asarray(a, dtype=np.float32) for a in (global_weights if global_weights is not None else weights)]
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    n_classes = w[-1].shape[0]
    yi = _labels(y, n_classes)
    if len(x) != len(yi):
        raise ConfigError(f"{len(x)} inputs but {len(yi)} labels")
    if x.shape[1] != w[0].shape[0]:
        raise ConfigError(f"inputs have {x.shape[1]} features, the model takes {w[0].shape[0]}")
    rng = np.random.default_rng(config.seed)
    n_layers = len(w) // 2
    mu, lr = config.proximal_mu, config.learning_rate
    for _ in range(config.epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), config.batch_size):
            idx = order[start:start + config.batch_size]
            p, acts = forward(w, x[idx])
            delta = p
            delta[np.arange(len(idx)), yi[idx]] -= 1.0
            delta /= len(idx)
            for i in range(n_layers - 1, -1, -1):
                gw = acts[i].T @ delta
                gb = delta.sum(axis=0)
                if i > 0:
                    delta = (delta @ w[2 * i].T) * (acts[i] > 0)
                if mu > 0:
                    gw = gw + mu * (w[2 * i] - anchor[2 * i])
                    gb = gb + mu * (w[2 * i + 1] - anchor[2 * i + 1])
                w[2 * i] -= lr * gw
                w[2 * i + 1] -= lr * gb
    loss, acc = evaluate(w, x, yi)
    return TrainResult(w, loss, acc, len(x))


def split_holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic shuffled split into (train x, train y, holdout x, holdout y)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"holdout fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_hold = int(round(len(x) * fraction))
    hold, tr = order[:n_hold], order[n_hold:]
    return x[tr], y[tr], x[hold], y[hold]


__all__ = ["MLPSpec", "TrainConfig", "TrainResult", "Weights", "forward", "predict_proba", "evaluate", "train", "split_holdout"]
