"""Training a bundle's trainable head on a device, in numpy: no TensorFlow.

A bundle compiled with ``--trainable-head`` is a frozen backbone (LiteRT or ONNX Runtime) and a
head (:class:`edgefleet.head.Head`: float32 weights run in numpy). A device computes the
backbone's features of its captured samples once (``Model.features``) and trains the head on
them here: mini-batch SGD (with optional momentum) or Adam on cross-entropy, with per-class
weights and FedProx's proximal term ``mu/2 * ||w - w_global||^2``.

What is trained: the kernels and biases of ``dense`` layers and ``gamma``/``beta`` of
``batch_norm`` layers (:func:`trainable_keys`). Batch norm stays in inference mode (its moving
statistics are frozen, so it is an affine map) and dropout is the identity, as in the bundle.

The loss: the head's classifying layer is its last ``dense`` or ``activation`` layer (only
``dropout`` may follow it) with ``softmax`` (probabilities), ``log_softmax`` or ``linear``
(logits) activation; in all three cases the loss is ``-log softmax(z)[y]`` of that layer's
pre-activation ``z``, weighted per sample by its class weight and averaged over the batch
(Keras' ``class_weight`` rule: ``sum(w_i * l_i) / n``).

Everything here is pure (arrays in, arrays out); :func:`loss_and_grads` is checked against
finite differences in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from edgefleet.errors import ConfigError
from edgefleet.head import ACTIVATIONS, Head, HeadLayer, LayerTrace, backbone_digest, param_key, run_layers

Params = dict[str, np.ndarray]
OPTIMIZERS = ("sgd", "adam")
CLASS_WEIGHTS = ("none", "balanced")
#: activations of the classifying layer the cross-entropy loss takes
CLASSIFYING = ("softmax", "log_softmax", "linear")
#: each layer kind's trainable weights (batch norm's moving statistics are frozen)
TRAINABLE = {"dense": ("kernel", "bias"), "batch_norm": ("gamma", "beta")}


# -- activations' vector-Jacobian products: upstream gradient g (w.r.t. the output a = f(z)) -> gradient w.r.t. z
def _sig(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.exp(-np.logaddexp(0.0, -z))
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
Vjp = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
VJPS: dict[str, Vjp] = {
    "linear": lambda z, a, g: g,
    "relu": lambda z, a, g: g * (z > 0),
    "relu6": lambda z, a, g: g * ((z > 0) & (z < 6)),
    "leaky_relu": lambda z, a, g: g * np.where(z >= 0, 1.0, 0.2).astype(g.dtype),
    "elu": lambda z, a, g: g * np.where(z > 0, 1.0, np.exp(np.minimum(z, 0))).astype(g.dtype),
    "selu": lambda z, a, g: g * (_SELU_SCALE * np.where(z > 0, 1.0, _SELU_ALPHA * np.exp(np.minimum(z, 0)))).astype(g.dtype),
    "sigmoid": lambda z, a, g: g * a * (1 - a),
    "hard_sigmoid": lambda z, a, g: g * ((z > -3) & (z < 3)) / 6,
    "tanh": lambda z, a, g: g * (1 - a * a),
    "softmax": lambda z, a, g: a * (g - (g * a).sum(axis=-1, keepdims=True)),
    "log_softmax": lambda z, a, g: g - _softmax(z) * g.sum(axis=-1, keepdims=True),
    "softplus": lambda z, a, g: g * _sig(z),
    "softsign": lambda z, a, g: g / (1 + np.abs(z)) ** 2,
    "silu": lambda z, a, g: g * (_sig(z) * (1 + z * (1 - _sig(z)))),
    "swish": lambda z, a, g: g * (_sig(z) * (1 + z * (1 - _sig(z)))),
    "exponential": lambda z, a, g: g * a,
}
assert set(VJPS) == set(ACTIVATIONS), "every activation the head runs has its gradient here"


@dataclass(frozen=True)
class HeadTrainConfig:
    """How a device trains its head for one round."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0  # SGD only
    beta1: float = 0.9  # Adam only
    beta2: float = 0.999
    eps: float = 1e-7
    proximal_mu: float = 0.0
    class_weight: str | Mapping[int, float] = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or self.epochs < 0 or self.batch_size < 1:
            raise ConfigError("epochs must be >= 0 and batch_size >= 1")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0 <= self.momentum < 1 or not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1 or not self.eps > 0:
            raise ConfigError("momentum, beta1 and beta2 must be in [0, 1), eps > 0")
        if not (math.isfinite(self.proximal_mu) and self.proximal_mu >= 0):
            raise ConfigError(f"proximal_mu must be a finite number >= 0, got {self.proximal_mu}")
        if isinstance(self.class_weight, str):
            if self.class_weight not in CLASS_WEIGHTS:
                raise ConfigError(f"class_weight must be one of {', '.join(CLASS_WEIGHTS)} or a mapping, "
                                  f"got {self.class_weight!r}")
        elif not all(isinstance(k, int) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                     for k, v in self.class_weight.items()):
            raise ConfigError("class_weight maps class indices to finite weights >= 0")


@dataclass(frozen=True)
class HeadTrainResult:
    head: Head
    loss: float  # on the training features after training, with class weights, without the proximal term
    accuracy: float
    num_examples: int
    history: list[float] = field(default_factory=list)  # mean training loss of each epoch


# -- the head's structure ------------------------------------------------------------------------------------
def classifying_index(layers: Sequence[HeadLayer]) -> int:
    """The index of the head's classifying layer (see the module docstring); a ``ConfigError`` when the head
    does not end in class scores cross-entropy can train."""
    i = len(layers) - 1
    while i >= 0 and layers[i].kind == "dropout":
        i -= 1
    if i < 0 or layers[i].kind not in ("dense", "activation") or layers[i].activation not in CLASSIFYING:
        last = layers[i] if i >= 0 else layers[-1]
        raise ConfigError(
            f"the head ends in layer {last.name!r} ({last.kind}, activation {last.activation}); training it with "
            f"cross-entropy needs a last dense or activation layer with {', '.join(CLASSIFYING)} activation"
        )
    if layers[i].kind == "activation" and layers[i].activation == "linear":
        raise ConfigError(f"the head's last layer {layers[i].name!r} is a linear activation; nothing to classify with")
    return i


def n_classes(head: Head) -> int:
    out = head.output_shape
    if len(out) != 1 or out[0] < 2:
        raise ConfigError(f"the head's output has shape {list(out)}; training it needs one axis of >= 2 class scores")
    return int(out[0])


def trainable_keys(layers: Sequence[HeadLayer]) -> list[str]:
    """The names of the trainable arrays, in the head's order (what a federated round exchanges)."""
    return [param_key(layer, p) for layer in layers for p, _ in layer.params if p in TRAINABLE.get(layer.kind, ())]


def trainable_arrays(head: Head) -> list[np.ndarray]:
    return [np.array(head.weights[k], dtype=np.float32) for k in trainable_keys(head.layers)]


def with_trainable(head: Head, arrays: Sequence[np.ndarray], error: type[Exception] = ConfigError) -> Head:
    """``head`` with its trainable arrays replaced by ``arrays`` (in :func:`trainable_keys`' order), the frozen
    ones (batch norm's moving statistics) kept; shapes and finiteness are checked."""
    keys = trainable_keys(head.layers)
    if len(arrays) != len(keys):
        raise error(f"expected {len(keys)} head arrays ({', '.join(keys)}), got {len(arrays)}")
    weights = dict(head.weights)
    for key, arr in zip(keys, arrays):
        a = np.asarray(arr)
        if a.shape != head.weights[key].shape:
            raise error(f"head array {key!r} has shape {list(a.shape)}, expected {list(head.weights[key].shape)}")
        weights[key] = a
    try:
        return head.with_weights(weights)
    except Exception as exc:  # BundleFormatError: NaN, inf, not floats
        raise error(str(exc)) from None


# -- forward with a cache, and backward ----------------------------------------------------------------------
def _forward(layers: Sequence[HeadLayer], p: Mapping[str, np.ndarray], x: np.ndarray,
             stop: int) -> tuple[np.ndarray, list[LayerTrace]]:
    """Run layers ``0..stop`` on ``x`` (the head's own :func:`~edgefleet.head.run_layers`, with the weights ``p``);
    returns the pre-activation of layer ``stop`` (the classifying one) and, per layer, (input, pre-activation or
    None, output)."""
    run = layers[: stop + 1]
    plan = [(layer, ACTIVATIONS[layer.activation], [p[param_key(layer, name)] for name, _ in layer.params])
            for layer in run]
    cache: list[LayerTrace] = []
    run_layers(plan, {layer.name: _bn(layer, p) for layer in run if layer.kind == "batch_norm"}, x, cache)
    _, z, h = cache[stop]
    return (z if z is not None else h), cache


def _has(layer: HeadLayer, param: str) -> bool:
    return any(name == param for name, _ in layer.params)


def _bn(layer: HeadLayer, p: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    inv = 1 / np.sqrt(p[param_key(layer, "moving_variance")] + layer.epsilon)
    mul = inv * p[param_key(layer, "gamma")] if _has(layer, "gamma") else inv
    add = -p[param_key(layer, "moving_mean")] * mul
    if _has(layer, "beta"):
        add = add + p[param_key(layer, "beta")]
    return mul, add


def _labels(y: np.ndarray, k: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 2:  # one-hot
        arr = arr.argmax(axis=1)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iub" and not np.all(np.mod(arr, 1) == 0)):
        raise ConfigError("labels must be class indices (or one-hot rows)")
    out = arr.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= k):
        raise ConfigError(f"labels must be in [0, {k}), got {int(out.min())}..{int(out.max())}")
    return out


def class_weights(y: np.ndarray, k: int, mode: str | Mapping[int, float]) -> np.ndarray | None:
    """Per-class weights: ``None`` for ``"none"``; ``"balanced"`` is ``n / (k_present * count_c)`` (scikit-learn's
    rule over the classes present; absent classes weigh 1); a mapping gives them (missing classes weigh 1)."""
    if isinstance(mode, str):
        if mode == "none":
            return None
        if mode != "balanced":
            raise ConfigError(f"class_weight must be one of {', '.join(CLASS_WEIGHTS)} or a mapping, got {mode!r}")
        counts = np.bincount(_labels(y, k), minlength=k).astype(np.float64)
        present = counts > 0
        w = np.ones(k)
        if present.any():
            w[present] = counts.sum() / (present.sum() * counts[present])
        return w
    w = np.ones(k)
    for c, v in mode.items():
        if not 0 <= int(c) < k:
            raise ConfigError(f"class_weight names class {c}; the head has {k} classes")
        w[int(c)] = float(v)
    return w


def loss_and_grads(layers: Sequence[HeadLayer], params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, *,
                   weights: np.ndarray | None = None, anchor: Mapping[str, np.ndarray] | None = None,
                   mu: float = 0.0) -> tuple[float, Params]:
    """The loss of the head with ``params`` on features ``x`` and labels ``y`` (see the module docstring), plus
    ``mu/2 * ||w - anchor||^2`` over the trainable arrays, and its gradient with respect to each trainable array.
    Computed in ``x``'s float dtype (float64 for gradient checks)."""
    stop = classifying_index(layers)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
    p = {k: np.asarray(v, dtype=dtype) for k, v in params.items()}
    xx = np.asarray(x, dtype=dtype)
    n = len(xx)
    z, cache = _forward(layers, p, xx, stop)
    k = z.shape[-1]
    yi = _labels(y, k)
    logp = z - z.max(axis=-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=-1, keepdims=True))
    sw = np.ones(n, dtype=dtype) if weights is None else np.asarray(weights, dtype=dtype)[yi]
    loss = float(-(sw * logp[np.arange(n), yi]).sum() / max(n, 1))
    g = np.exp(logp)
    g[np.arange(n), yi] -= 1
    g *= (sw / max(n, 1))[:, None]
    grads: Params = {}
    # the classifying layer's pre-activation gradient is g; walk back from there
    for i in range(stop, -1, -1):
        layer = layers[i]
        inp, zi, out = cache[i]
        if i != stop and layer.kind in ("dense", "activation"):
            assert zi is not None
            g = VJPS[layer.activation](zi, out, g)
        if layer.kind == "dense":
            kernel = p[param_key(layer, "kernel")]
            flat_in = inp.reshape(-1, inp.shape[-1])
            flat_g = g.reshape(-1, g.shape[-1])
            grads[param_key(layer, "kernel")] = flat_in.T @ flat_g
            if _has(layer, "bias"):
                grads[param_key(layer, "bias")] = flat_g.sum(axis=0)
            g = g @ kernel.T
        elif layer.kind == "batch_norm":
            mul, _ = _bn(layer, p)
            axes = tuple(range(g.ndim - 1))
            inv = 1 / np.sqrt(p[param_key(layer, "moving_variance")] + layer.epsilon)
            if _has(layer, "gamma"):
                grads[param_key(layer, "gamma")] = (g * (inp - p[param_key(layer, "moving_mean")]) * inv).sum(axis=axes)
            if _has(layer, "beta"):
                grads[param_key(layer, "beta")] = g.sum(axis=axes)
            g = g * mul
        elif layer.kind == "global_avg_pool":
            spatial = inp.shape[1:-1]
            g = np.broadcast_to(g.reshape((len(g),) + (1,) * len(spatial) + (g.shape[-1],)), inp.shape) / math.prod(spatial)
        elif layer.kind == "global_max_pool":
            spatial = inp.shape[1:-1]
            g = g.reshape((len(g),) + (1,) * len(spatial) + (g.shape[-1],))
            peak = out.reshape(g.shape)
            mask = inp == peak
            g = mask * g / mask.sum(axis=tuple(range(1, inp.ndim - 1)), keepdims=True)
        elif layer.kind == "flatten":
            g = g.reshape(inp.shape)
        # dropout: identity; activation: its vjp was applied above
    if mu > 0:
        assert anchor is not None, "the proximal term needs the global weights"
        for key in grads:
            diff = p[key] - np.asarray(anchor[key], dtype=dtype)
            loss += 0.5 * mu * float((diff * diff).sum())
            grads[key] = grads[key] + mu * diff
    return loss, {key: grads[key] for key in trainable_keys(layers)}


# -- training -----------------------------------------------------------------------------------------------
def evaluate_head(head: Head, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy (unweighted) and accuracy of ``head`` on features ``x``; NaN for no samples."""
    if len(x) == 0:
        return float("nan"), float("nan")
    loss, _ = loss_and_grads(head.layers, head.weights, np.asarray(x, dtype=np.float32), y)
    pred = np.asarray(head.forward(np.asarray(x, dtype=np.float32)))
    yi = _labels(y, n_classes(head))
    return loss, float(np.mean(pred.argmax(axis=-1) == yi))


def train_head(head: Head, x: np.ndarray, y: np.ndarray, config: HeadTrainConfig = HeadTrainConfig(),
               global_head: Head | None = None) -> HeadTrainResult:
    """Train ``head``'s trainable arrays on features ``x`` (the backbone's output) and labels ``y``; the proximal
    term pulls toward ``global_head`` (default: ``head`` itself, the weights the round started from)."""
    k = n_classes(head)
    classifying_index(head.layers)
    feats = np.asarray(x, dtype=np.float32)
    if feats.ndim != len(head.input_shape) + 1 or any(
            w != -1 and g != w for g, w in zip(feats.shape[1:], head.input_shape)):
        raise ConfigError(f"features of shape {list(feats.shape)} do not fit the head's input {list(head.input_shape)}")
    yi = _labels(y, k)
    if len(feats) != len(yi):
        raise ConfigError(f"{len(feats)} feature rows but {len(yi)} labels")
    cw = class_weights(yi, k, config.class_weight)
    anchor = dict((global_head or head).weights)
    params: Params = {key: np.array(v, dtype=np.float32) for key, v in head.weights.items()}
    keys = trainable_keys(head.layers)
    state1 = {key: np.zeros_like(params[key]) for key in keys}
    state2 = {key: np.zeros_like(params[key]) for key in keys}
    rng = np.random.default_rng(config.seed)
    lr, step, history = config.learning_rate, 0, []
    for _ in range(config.epochs):
        order = rng.permutation(len(feats))
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            loss, grads = loss_and_grads(head.layers, params, feats[idx], yi[idx], weights=cw, anchor=anchor,
                                         mu=config.proximal_mu)
            total += loss * len(idx)
            step += 1
            for key in keys:
                grad = grads[key].astype(np.float32)
                if config.optimizer == "adam":
                    state1[key] = config.beta1 * state1[key] + (1 - config.beta1) * grad
                    state2[key] = config.beta2 * state2[key] + (1 - config.beta2) * grad * grad
                    m_hat = state1[key] / (1 - config.beta1 ** step)
                    v_hat = state2[key] / (1 - config.beta2 ** step)
                    params[key] = params[key] - lr * m_hat / (np.sqrt(v_hat) + config.eps)
                else:
                    if config.momentum:
                        state1[key] = config.momentum * state1[key] + grad
                        grad = state1[key]
                    params[key] = params[key] - lr * grad
        if len(feats):
            history.append(total / len(feats))
    new = head.with_weights(params, ConfigError)
    loss, _ = loss_and_grads(new.layers, new.weights, feats, yi, weights=cw) if len(feats) else (float("nan"), {})
    acc = float(np.mean(np.asarray(new.forward(feats)).argmax(axis=-1) == yi)) if len(feats) else float("nan")
    return HeadTrainResult(new, loss, acc, len(feats), history)


@dataclass(frozen=True)
class Personalization:
    """One device's verdict on a local head (FedPer style): the global head fine-tuned on the device's own
    training samples, scored with the global head on the device's held-back samples."""

    head: Head  # the fine-tuned local head
    global_loss: float
    global_accuracy: float
    personal_loss: float
    personal_accuracy: float
    holdout: int  # held-back samples both were scored on
    margin: float

    @property
    def kept(self) -> bool:
        """Whether the local head beats the global head on the held-back samples by more than ``margin``
        (accuracy; on equal accuracy, the lower loss decides when ``margin`` is 0)."""
        if self.holdout == 0 or not math.isfinite(self.personal_accuracy):
            return False
        gain = self.personal_accuracy - self.global_accuracy
        if self.margin > 0:
            return gain > self.margin
        return gain > 0 or (gain == 0 and self.personal_loss < self.global_loss)

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"global_accuracy": self.global_accuracy, "personal_accuracy": self.personal_accuracy,
                "global_loss": self.global_loss, "personal_loss": self.personal_loss, "holdout": self.holdout,
                "margin": self.margin, "kept": self.kept}


def personalize(global_head: Head, f_train: np.ndarray, y_train: np.ndarray, f_hold: np.ndarray,
                y_hold: np.ndarray, config: HeadTrainConfig, margin: float = 0.0) -> Personalization:
    """Fine-tune ``global_head`` on this device's training features (``config``; its proximal term pulls toward
    the global head) and score both heads on the held-back features: :attr:`Personalization.kept` says whether
    the device should serve its own head. Without held-back samples nothing can show it is better: not kept."""
    if not (math.isfinite(margin) and 0 <= margin < 1):
        raise ConfigError(f"the personalisation margin must be in [0, 1), got {margin}")
    local = train_head(global_head, f_train, y_train, config, global_head).head
    g_loss, g_acc = evaluate_head(global_head, f_hold, y_hold)
    p_loss, p_acc = evaluate_head(local, f_hold, y_hold)
    return Personalization(local, g_loss, g_acc, p_loss, p_acc, len(f_hold), margin)


__all__ = ["HeadTrainConfig", "HeadTrainResult", "train_head", "evaluate_head", "loss_and_grads", "class_weights",
           "trainable_keys", "trainable_arrays", "with_trainable", "classifying_index", "n_classes", "backbone_digest",
           "Personalization", "personalize",
           "OPTIMIZERS", "CLASS_WEIGHTS"]
