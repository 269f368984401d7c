"""Split a Keras model into a backbone and a trainable head (``--trainable-head``).

The head is the model's last N layers, a chain ending at its one output: each layer called
once, on one tensor. Each must be a kind :mod:`edgefleet.head` runs in numpy (Dense,
Dropout and its kin, BatchNormalization in inference mode, global pooling, Flatten,
activations); anything else is refused with a ``ConfigError`` naming the layer. The
backbone is the model up to the head's input, sharing the model's (possibly pruned) layers:
the compiler quantizes and exports it like any model, and packs the head beside it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgefleet.errors import BundleFormatError, ConfigError
from edgefleet.head import ACTIVATIONS, Head, HeadLayer, param_key

from .config import HeadConfig

#: Keras layers that do nothing at inference
IDENTITY = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout", "GaussianNoise",
            "AlphaDropout", "ActivityRegularization")
POOLS = {f"Global{kind}Pooling{d}D": ("global_avg_pool" if kind == "Average" else "global_max_pool")
         for kind in ("Average", "Max") for d in (1, 2, 3)}
SUPPORTED = "Dense, Dropout (and its kin), BatchNormalization, global average/max pooling, Flatten and activations"


def _history(tensor: Any) -> tuple[Any, Any]:
    """(the layer that made ``tensor``, the one tensor it was called on)."""
    hist = getattr(tensor, "_keras_history", None)
    if hist is None:
        raise ConfigError("--trainable-head: the model's graph cannot be walked back from its output")
    layer = hist.operation
    ins = list(layer._inbound_nodes[hist.node_index].input_tensors)
    if len(ins) != 1:
        raise ConfigError(f"--trainable-head: layer {layer.name!r} takes {len(ins)} tensors; a head is a chain of one-input layers")
    return layer, ins[0]


def head_chain(model: Any, cfg: HeadConfig) -> tuple[list[Any], Any]:
    """The head's Keras layers (first to last) and the tensor they start from (the backbone's output)."""
    outputs = list(model.outputs)
    if len(outputs) != 1:
        raise ConfigError(f"--trainable-head: the model has {len(outputs)} outputs; a head ends at a model's one output")
    count = cfg.count
    inputs = {id(t) for t in model.inputs}
    layers: list[Any] = []
    tensor = outputs[0]
    for _ in range(count):
        if id(tensor) in inputs:
            raise ConfigError(f"--trainable-head {count}: the model has only {len(layers)} layers after its input; "
                              "the head must leave a backbone")
        layer, tensor = _history(tensor)
        layers.insert(0, layer)
    if id(tensor) in inputs:
        raise ConfigError(f"--trainable-head {count}: that is every layer of the model; the head must leave a backbone")
    if cfg.names and [layer.name for layer in layers] != list(cfg.names):
        raise ConfigError(
            f"--trainable-head {','.join(cfg.names)}: a head is the model's last layers in order; the last {count} are "
            f"{','.join(layer.name for layer in layers)}"
        )
    return layers, tensor


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in shape)


def _activation(layer: Any, value: Any) -> str:
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise ConfigError(
            f"--trainable-head: layer {layer.name!r} has activation {value!r}, which the numpy head does not run; "
            f"it runs {', '.join(ACTIVATIONS)} (or make the head shorter)"
        )
    return value


def _weights(*pairs: tuple[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(var.numpy() if hasattr(var, "numpy") else var, dtype=np.float32) for name, var in pairs}


def convert_layer(layer: Any, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> tuple[HeadLayer, dict[str, np.ndarray]]:
    """One Keras layer as a head layer and its float32 weights by parameter name."""
    kind_name = type(layer).__name__
    config = layer.get_config()
    data_format = config.get("data_format", "channels_last")
    base: dict[str, Any] = {"name": layer.name, "input_shape": input_shape, "output_shape": output_shape}
    weights: dict[str, np.ndarray] = {}
    if kind_name == "Dense":
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            raise ConfigError(f"--trainable-head: Dense layer {layer.name!r} is LoRA-enabled or quantized; the head takes plain Dense")
        weights = _weights(("kernel", layer.kernel), *([("bias", layer.bias)] if layer.use_bias else []))
        spec = dict(base, kind="dense", activation=_activation(layer, config.get("activation")))
    elif kind_name == "BatchNormalization":
        axis = config.get("axis")
        if isinstance(axis, (list, tuple)) and len(axis) == 1:
            axis = axis[0]
        if axis not in (-1, len(input_shape)):
            raise ConfigError(f"--trainable-head: BatchNormalization {layer.name!r} normalises axis {axis}; the head takes the last axis")
        pairs = [("gamma", layer.gamma)] if layer.scale else []
        pairs += [("beta", layer.beta)] if layer.center else []
        weights = _weights(*pairs, ("moving_mean", layer.moving_mean), ("moving_variance", layer.moving_variance))
        spec = dict(base, kind="batch_norm", epsilon=float(config.get("epsilon", 1e-3)))
    elif kind_name in IDENTITY:
        spec = dict(base, kind="dropout")
    elif kind_name in POOLS or kind_name == "Flatten":
        if data_format not in (None, "channels_last"):
            raise ConfigError(f"--trainable-head: {kind_name} {layer.name!r} is {data_format}; the head takes channels_last")
        spec = dict(base, kind=POOLS.get(kind_name, "flatten"))
    elif kind_name == "Activation":
        spec = dict(base, kind="activation", activation=_activation(layer, config.get("activation")))
    elif kind_name == "ReLU" and not config.get("negative_slope") and not config.get("threshold") and config.get("max_value") in (None, 6, 6.0):
        spec = dict(base, kind="activation", activation="relu" if config.get("max_value") is None else "relu6")
    elif kind_name == "Softmax" and config.get("axis", -1) in (-1, len(input_shape)):
        spec = dict(base, kind="activation", activation="softmax")
    else:
        raise ConfigError(
            f"--trainable-head: layer {layer.name!r} is a {kind_name}, which a head cannot hold; a head takes "
            f"{SUPPORTED}: make the head shorter"
        )
    params = [(p, tuple(int(d) for d in w.shape)) for p, w in weights.items()]
    try:
        head_layer = HeadLayer(params=tuple(params), **spec)
    except BundleFormatError as exc:
        raise ConfigError(f"--trainable-head: layer {layer.name!r}: {exc}") from None
    return head_layer, {param_key(head_layer, p): w for p, w in weights.items()}


def split_keras(model: Any, cfg: HeadConfig) -> tuple[Any, Head]:
    """(the backbone as a Keras model sharing ``model``'s layers, the head with float32 weights)."""
    import keras

    layers, start = head_chain(model, cfg)
    head_layers: list[HeadLayer] = []
    weights: dict[str, np.ndarray] = {}
    shapes = [_dims(start.shape[1:])]
    tensor = model.outputs[0]
    for _ in layers:  # each layer's output shape, walking back from the model's output
        shapes.insert(1, _dims(tensor.shape[1:]))
        tensor = _history(tensor)[1]
    for layer, ins, outs in zip(layers, shapes, shapes[1:]):
        spec, w = convert_layer(layer, ins, outs)
        head_layers.append(spec)
        weights.update(w)
    try:
        head = Head(head_layers, weights, ConfigError)
    except BundleFormatError as exc:
        raise ConfigError(f"--trainable-head: {exc}") from None
    backbone = keras.Model(model.inputs, start, name=f"{model.name}_backbone")
    shared = sorted({layer.name for layer in layers} & {layer.name for layer in backbone.layers})
    if shared:
        raise ConfigError(f"--trainable-head: layers {shared} are also used by the backbone; a head's layers are its own")
    return backbone, head


def head_layer_names(model: Any, cfg: HeadConfig) -> list[str]:
    """The names of the layers the head will take (pruning leaves them dense)."""
    return [layer.name for layer in head_chain(model, cfg)[0]]


__all__ = ["split_keras", "head_chain", "head_layer_names", "convert_layer", "SUPPORTED"]
