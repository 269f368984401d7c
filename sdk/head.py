"""A trainable head: a model's last layers, kept as float weights and run in numpy.

A bundle compiled with ``--trainable-head`` holds two parts: the *backbone* (the model
file: pruned, quantized, run by LiteRT or ONNX Runtime, frozen) and the *head* (the last
layers, float32 weights in one ``.npz`` file listed and hashed in the signed manifest).
``Model.predict`` runs the backbone, then :meth:`Head.forward`; ``Model.features`` stops
at the backbone's output. Devices can train a new head without TensorFlow, and an update
that changes only the head ships only the head file (:mod:`edgefleet.headupdate`).

The layer kinds are those with a few lines of numpy for their inference maths:

============== ======================================================= ======================
kind           what it computes (one sample has shape ``input_shape``)  weights
============== ======================================================= ======================
dense          ``activation(x @ kernel + bias)`` on the last axis       kernel, bias (optional)
batch_norm     ``(x - moving_mean) / sqrt(moving_variance + epsilon)``  gamma, beta (each
               ``* gamma + beta`` on the last axis (inference mode)     optional), moving_mean,
                                                                        moving_variance
dropout        nothing (inference mode)
global_avg_pool mean over the axes between the batch and channel axes
global_max_pool max over them
flatten        ``x.reshape(len(x), -1)``
activation     ``activation(x)``
============== ======================================================= ======================

Everything here is pure: a layer spec is a frozen value parsed from and written to the
manifest; :class:`Head` is the spec plus its arrays; reading and writing the ``.npz`` go
through bytes (:meth:`Head.from_npz`, :meth:`Head.to_npz`), deterministic, never unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .errors import BundleFormatError, ConfigError, EdgefleetError, InvalidInputError

#: the head's file name in a bundle
HEAD_FILE = "head.npz"
LAYER_KINDS = ("dense", "batch_norm", "dropout", "global_avg_pool", "global_max_pool", "flatten", "activation")
#: the weights each kind may have, in order, and those it must have
_PARAMS: dict[str, tuple[str, ...]] = {"dense": ("kernel", "bias"), "batch_norm": ("gamma", "beta", "moving_mean", "moving_variance")}
_REQUIRED: dict[str, tuple[str, ...]] = {"dense": ("kernel",), "batch_norm": ("moving_mean", "moving_variance")}
MAX_LAYERS = 64
#: the most weights a head may hold (256 Mi float32 values: 1 GiB)
MAX_HEAD_VALUES = 1 << 28
_LAYER_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_SELU_ALPHA = np.float32(1.6732632423543772)
_SELU_SCALE = np.float32(1.0507009873554805)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 1 / (1 + exp(-x)) without overflow for large negative x
    out: np.ndarray = np.exp(-np.logaddexp(np.float32(0), -x))
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


#: activations by their Keras names, in float32 (``swish`` is Keras 2's name of ``silu``)
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, np.float32(0)),
    "relu6": lambda x: np.clip(x, np.float32(0), np.float32(6)),
    "leaky_relu": lambda x: np.where(x >= 0, x, x * np.float32(0.2)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, np.float32(0)))),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, np.float32(0)))),
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(x / np.float32(6) + np.float32(0.5), np.float32(0), np.float32(1)),
    "tanh": np.tanh,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "softplus": lambda x: np.logaddexp(np.float32(0), x),
    "softsign": lambda x: x / (np.float32(1) + np.abs(x)),
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "exponential": np.exp,
}


def _shape(value: Any, where: str, *, dynamic: bool = True) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > 8 or not all(
        isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or (dynamic and d == -1)) and d < 2**31 for d in value
    ):
        raise BundleFormatError(f"head {where} must be a list of at most 8 dimensions (positive, or -1 where dynamic)")
    return tuple(value)


def _fits(got: Sequence[int], want: Sequence[int]) -> bool:
    """Whether shape ``got`` fits ``want`` (-1 in either is any size)."""
    return len(got) == len(want) and all(g == w or -1 in (g, w) for g, w in zip(got, want))


@dataclass(frozen=True)
class HeadLayer:
    """One layer of a head: its kind, Keras name, sample shapes (no batch axis) and weights' shapes.

    ``params`` lists the weights the layer has, as (name, shape) in the kind's order; the
    arrays themselves are in the head file under ``"{layer}.{param}"`` (:func:`param_key`).
    """

    kind: str
    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    activation: str = "linear"
    params: tuple[tuple[str, tuple[int, ...]], ...] = ()
    epsilon: float = 1e-3

    def __post_init__(self) -> None:
        where = f"layer {self.name!r}"
        if self.kind not in LAYER_KINDS:
            raise BundleFormatError(f"head {where} has kind {self.kind!r}; a head takes {', '.join(LAYER_KINDS)}")
        if not isinstance(self.name, str) or not _LAYER_NAME_RE.match(self.name):
            raise BundleFormatError(f"head layer name {self.name!r} must be 1-128 letters, digits, '_', '.', ':' or '-'")
        if self.activation not in ACTIVATIONS or (self.activation != "linear" and self.kind not in ("dense", "activation")):
            raise BundleFormatError(
                f"head {where}: activation {self.activation!r} is not one a {self.kind} layer can have here; "
                f"dense and activation layers take {', '.join(ACTIVATIONS)}"
            )
        if not (isinstance(self.epsilon, float) and math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise BundleFormatError(f"head {where}: epsilon must be a finite number >= 0")
        allowed, required = _PARAMS.get(self.kind, ()), _REQUIRED.get(self.kind, ())
        names = [p for p, _ in self.params]
        if [p for p in allowed if p in names] != names or any(p not in names for p in required):
            raise BundleFormatError(
                f"head {where}: a {self.kind} layer has weights {list(required)}"
                + (f" and optionally {[p for p in allowed if p not in required]}" if len(allowed) > len(required) else "")
                + f" in that order, not {names}"
            )
        self._check_shapes(where, dict(self.params))

    def _check_shapes(self, where: str, params: Mapping[str, tuple[int, ...]]) -> None:
        ins, outs = self.input_shape, self.output_shape
        if not ins:
            raise BundleFormatError(f"head {where} needs an input of rank >= 1 per sample")
        last = ins[-1]
        if self.kind == "dense":
            kernel = params["kernel"]
            if len(kernel) != 2 or last == -1 or kernel[0] != last or -1 in kernel:
                raise BundleFormatError(f"head {where}: kernel {list(kernel)} does not take inputs of shape {list(ins)}")
            want = ins[:-1] + (kernel[1],)
            if "bias" in params and params["bias"] != (kernel[1],):
                raise BundleFormatError(f"head {where}: bias {list(params['bias'])} does not match kernel {list(kernel)}")
        elif self.kind == "batch_norm":
            if last == -1 or any(shape != (last,) for shape in params.values()):
                raise BundleFormatError(f"head {where}: batch norm weights must have shape [{last}] (the last axis)")
            want = ins
        elif self.kind in ("global_avg_pool", "global_max_pool"):
            if len(ins) < 2 or last == -1:
                raise BundleFormatError(f"head {where}: global pooling takes (spatial..., channels) with fixed channels")
            keep = (1,) * (len(ins) - 1) + (last,)
            want = keep if len(outs) == len(ins) else (last,)
        elif self.kind == "flatten":
            if -1 in ins:
                raise BundleFormatError(f"head {where}: flatten needs a fixed input shape, got {list(ins)}")
            want = (math.prod(ins),)
        else:
            want = ins
        if outs != want:
            raise BundleFormatError(f"head {where}: output shape {list(outs)} does not follow from input {list(ins)} (expected {list(want)})")

    @property
    def n_values(self) -> int:
        return sum(math.prod(shape) for _, shape in self.params)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
        }
        if self.kind in ("dense", "activation"):
            out["activation"] = self.activation
        if self.kind == "batch_norm":
            out["epsilon"] = self.epsilon
        if self.params:
            out["params"] = {name: list(shape) for name, shape in self.params}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> HeadLayer:
        if not isinstance(data, dict):
            raise BundleFormatError(f"head {where} must be an object")
        unknown = sorted(set(data) - {"kind", "name", "input_shape", "output_shape", "activation", "epsilon", "params"})
        if unknown:
            raise BundleFormatError(f"head {where} has unknown fields {unknown}")
        kind, name = data.get("kind"), data.get("name")
        if not isinstance(kind, str) or not isinstance(name, str):
            raise BundleFormatError(f"head {where} needs a string 'kind' and 'name'")
        params_raw = data.get("params", {})
        if not isinstance(params_raw, dict) or len(params_raw) > 4:
            raise BundleFormatError(f"head {where}.params must be an object of weight shapes")
        order = _PARAMS.get(kind, ())  # canonical JSON sorts the keys: back to the kind's order
        ranked = sorted(params_raw.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
        params = tuple((str(k), _shape(v, f"{where}.params[{k!r}]", dynamic=False)) for k, v in ranked)
        activation = data.get("activation", "linear")
        epsilon = data.get("epsilon", 1e-3)
        if not isinstance(activation, str):
            raise BundleFormatError(f"head {where}.activation must be a string")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
            raise BundleFormatError(f"head {where}.epsilon must be a number")
        return cls(
            kind=kind,
            name=name,
            input_shape=_shape(data.get("input_shape"), f"{where}.input_shape"),
            output_shape=_shape(data.get("output_shape"), f"{where}.output_shape"),
            activation=activation,
            params=params,
            epsilon=float(epsilon),
        )


def check_chain(layers: Sequence[HeadLayer]) -> tuple[HeadLayer, ...]:
    """The layers as a head: at least one, at most :data:`MAX_LAYERS`, names unique, each
    layer's output the next one's input, at most :data:`MAX_HEAD_VALUES` weights."""
    if not layers or len(layers) > MAX_LAYERS:
        raise BundleFormatError(f"a head has 1 to {MAX_LAYERS} layers, got {len(layers)}")
    names = [layer.name for layer in layers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BundleFormatError(f"head has several layers named {dup}")
    for a, b in zip(layers, layers[1:]):
        if not _fits(a.output_shape, b.input_shape):
            raise BundleFormatError(
                f"head layer {b.name!r} takes {list(b.input_shape)} but {a.name!r} gives {list(a.output_shape)}"
            )
    if sum(layer.n_values for layer in layers) > MAX_HEAD_VALUES:
        raise BundleFormatError(f"head holds more than {MAX_HEAD_VALUES} weights")
    return tuple(layers)


def param_key(layer: HeadLayer, param: str) -> str:
    """The array's name in the head file: ``"{layer}.{param}"``."""
    return f"{layer.name}.{param}"


def _write_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` whose bytes depend only on the arrays (fixed member dates and order)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


#: a layer ready to run: its spec, its activation function, its weights in the kind's order
LayerPlan = tuple[HeadLayer, Callable[[np.ndarray], np.ndarray], Sequence[np.ndarray]]
#: what :func:`run_layers` keeps of each layer it runs: (input, pre-activation or None, output)
LayerTrace = tuple[np.ndarray, np.ndarray | None, np.ndarray]


def run_layers(plan: Iterable[LayerPlan], bn: Mapping[str, tuple[np.ndarray, np.ndarray]], x: np.ndarray,
               trace: list[LayerTrace] | None = None) -> np.ndarray:
    """The layers of ``plan`` on the batch ``x``, in ``x``'s dtype: :meth:`Head.forward`'s computation, batch norm
    as its inference-mode affine map ``bn[layer name]`` (``x * mul + add``), dropout the identity. With ``trace``
    each layer's (input, pre-activation, output) is appended to it, what a gradient needs (the pre-activation: a
    dense layer's before its activation, an activation layer's input; None for the other kinds)."""
    for layer, act, params in plan:
        kind = layer.kind
        inp = x
        z = None
        if kind == "dense":
            z = x @ params[0]
            if len(params) > 1:
                z = z + params[1]
            x = act(z)
        elif kind == "batch_norm":
            mul, add = bn[layer.name]
            x = x * mul + add
        elif kind in ("global_avg_pool", "global_max_pool"):
            axes = tuple(range(1, x.ndim - 1))
            keep = len(layer.output_shape) == len(layer.input_shape)
            x = x.mean(axis=axes, keepdims=keep) if kind == "global_avg_pool" else x.max(axis=axes, keepdims=keep)
        elif kind == "flatten":
            x = x.reshape(len(x), -1)
        elif kind == "activation":
            z = x
            x = act(x)
        # dropout: nothing at inference
        if trace is not None:
            trace.append((inp, z, x))
    return x


class Head:
    """A head's layers and float32 weights; :meth:`forward` is its inference in numpy.

    Weights are read-only arrays; :meth:`with_weights` makes a head with new ones (checked
    against the same layer specs), which is what a head-only update ships.
    """

    def __init__(self, layers: Sequence[HeadLayer], weights: Mapping[str, np.ndarray],
                 error: type[EdgefleetError] = BundleFormatError) -> None:
        self.layers = check_chain(layers)
        self.weights = _checked_weights(self.layers, weights, error, "head weights")
        # (kind, activation function, weights in order) per layer, decided once
        self._plan: list[LayerPlan] = [
            (layer, ACTIVATIONS[layer.activation], [self.weights[param_key(layer, p)] for p, _ in layer.params])
            for layer in self.layers
        ]
        self._bn = {layer.name: _bn_affine(layer, self.weights) for layer in self.layers if layer.kind == "batch_norm"}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.layers[0].input_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].output_shape

    @property
    def output_name(self) -> str:
        return self.layers[-1].name

    @property
    def n_params(self) -> int:
        return sum(int(w.size) for w in self.weights.values())

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The head's output for features ``x``: one sample of ``input_shape`` or a batch of them."""
        arr = np.asarray(x)
        single = arr.ndim == len(self.input_shape)
        if single:
            arr = arr[np.newaxis]
        if arr.ndim != len(self.input_shape) + 1 or not _fits(arr.shape[1:], self.input_shape):
            raise InvalidInputError(
                f"the head takes features of shape {list(self.input_shape)} (or a batch of them), got {list(np.shape(x))}"
            )
        if arr.dtype.kind != "f":
            raise InvalidInputError(f"the head takes float features, got {arr.dtype}")
        arr = run_layers(self._plan, self._bn, arr.astype(np.float32, copy=False))
        out = np.asarray(arr, dtype=np.float32)
        return out[0] if single else out

    def with_weights(self, weights: Mapping[str, np.ndarray], error: type[EdgefleetError] = BundleFormatError) -> Head:
        """The same layers with new weights (float arrays of the same shapes, cast to float32)."""
        return Head(self.layers, weights, error)

    def to_npz(self) -> bytes:
        """The head file's bytes (deterministic: the same weights give the same bytes)."""
        return _write_npz({param_key(layer, p): self.weights[param_key(layer, p)] for layer in self.layers for p, _ in layer.params})

    @classmethod
    def from_npz(cls, data: bytes, layers: Sequence[HeadLayer], error: type[EdgefleetError] = BundleFormatError,
                 what: str = "the head file") -> Head:
        """A head from its file's bytes, each array checked against the layer specs before it is read."""
        layers = check_chain(layers)
        return cls(layers, read_npz(data, layers, error, what), error)


def read_npz(data: bytes, layers: Sequence[HeadLayer], error: type[EdgefleetError] = BundleFormatError,
             what: str = "the head file") -> dict[str, np.ndarray]:
    """The arrays of a head file, exactly those the layers name: each member's declared size is
    checked against its expected shape before it is read, and nothing is unpickled."""
    expected = {param_key(layer, p): shape for layer in layers for p, shape in layer.params}
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise error(f"{what} is not an .npz archive: {exc}") from None
    out: dict[str, np.ndarray] = {}
    with zf:
        members = {info.filename: info for info in zf.infolist()}
        names = {n.removesuffix(".npy") for n in members}
        if len(members) != len(names) or names != set(expected):
            raise error(
                f"{what} holds arrays {sorted(names)[:20]}; the head's layers need exactly {sorted(expected)}"
            )
        for key, shape in expected.items():
            info = members[key + ".npy"]
            limit = math.prod(shape) * 8 + 4096  # float64 at most, plus the .npy header
            if info.file_size > limit:
                raise error(f"{what}: array {key!r} is {info.file_size} bytes, more than shape {list(shape)} can hold")
            try:
                with zf.open(info) as fh:
                    arr = np.lib.format.read_array(fh, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise error(f"{what}: array {key!r} is unreadable: {exc}") from None
            out[key] = arr
    return out


def _checked_weights(layers: Sequence[HeadLayer], weights: Mapping[str, np.ndarray], error: type[EdgefleetError],
                     what: str) -> dict[str, np.ndarray]:
    expected = {param_key(layer, p): shape for layer in layers for p, shape in layer.params}
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise error(f"{what}: missing arrays {missing}, unexpected {extra[:20]}")
    out: dict[str, np.ndarray] = {}
    for key, shape in expected.items():
        arr = np.asarray(weights[key])
        if arr.dtype.kind != "f" or arr.shape != shape:
            raise error(f"{what}: {key!r} must be float values of shape {list(shape)}, got {arr.dtype} {list(arr.shape)}")
        arr = np.array(arr, dtype=np.float32)  # a copy: the head owns its weights
        if not np.isfinite(arr).all():
            raise error(f"{what}: {key!r} holds NaN or inf (or values float32 cannot hold)")
        arr.setflags(write=False)
        out[key] = arr
    return out


def _bn_affine(layer: HeadLayer, weights: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Batch norm in inference mode as ``x * mul + add``."""
    get = {p: weights[param_key(layer, p)] for p, _ in layer.params}
    inv = (np.float32(1) / np.sqrt(get["moving_variance"] + np.float32(layer.epsilon))).astype(np.float32)
    if "gamma" in get:
        inv = inv * get["gamma"]
    add = -get["moving_mean"] * inv
    if "beta" in get:
        add = add + get["beta"]
    return inv.astype(np.float32), add.astype(np.float32)


def backbone_digest(manifest: object) -> str:
    """What identifies a bundle's backbone: the sha256 of its files other than the head, by name (a head-only
    update keeps it; a device whose installed bundle has another digest cannot train or serve this head)."""
    head = getattr(manifest, "head", None)
    files = getattr(manifest, "files", {})
    if head is None:
        raise ConfigError(f"{getattr(manifest, 'name', 'the model')} has no trainable head")
    doc = {name: [e.sha256, e.size] for name, e in sorted(files.items()) if name != head.file}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


__all__ = ["HEAD_FILE", "LAYER_KINDS", "ACTIVATIONS", "Head", "HeadLayer", "check_chain", "param_key", "read_npz",
           "backbone_digest"]
