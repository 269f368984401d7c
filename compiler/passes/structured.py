"""Structured pruning: remove whole Conv filters / Dense units, really shrinking the model.

For a chain of layers (a ``Sequential`` model or a functional model without
branches) every hidden Conv1D/Conv2D/Dense layer keeps the ``1 - fraction``
of its filters/units with the largest L1 norm; the layers that consume them
(BatchNormalization, DepthwiseConv2D, Flatten, the next Conv/Dense) get the
matching slices of their weights. The output layer keeps all its units. A
new, narrower model is built from the edited layer configs, so the exported
``.tflite``/``.onnx`` has fewer parameters and fewer multiply-adds, not just
zeros. A short fine-tune recovers the accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.errors import CompileError

from ..config import StructuredConfig
from ._train import compile_for_training, keras_model_of

_PRODUCERS = ("Conv1D", "Conv2D", "Dense")
_CHANNELWISE = ("BatchNormalization", "LayerNormalization")
_PASSTHROUGH = (
    "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "ZeroPadding2D", "InputLayer", "Rescaling",
    "GaussianNoise",
)


def chain_layers(model: Any) -> list[Any]:
    """The model's layers in order, if it is a plain chain; else a CompileError."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not isinstance(model, keras.Sequential):
        for layer in layers:
            inbound = layer._inbound_nodes
            if len(inbound) != 1 or len(inbound[0].input_tensors) != 1:
                raise CompileError(
                    f"structured pruning supports chains of layers; layer {layer.name!r} has several inputs. "
                    "Drop --prune-structured or use --prune (unstructured)"
                )
    return layers


def _l1_keep(kernel: np.ndarray, fraction: float) -> np.ndarray:
    n_out = kernel.shape[-1]
    keep = max(1, int(round(n_out * (1.0 - fraction))))
    norms = np.abs(kernel.reshape(-1, n_out)).sum(axis=0)
    return np.sort(np.argsort(-norms, kind="stable")[:keep])


def narrow(model: Any, fraction: float) -> Any:
    """A new model with ``fraction`` of each hidden Conv/Dense layer's filters/units removed (untrained slices)."""
    import keras

    keras_model_of(model, "structured pruning")
    layers = chain_layers(model)
    producers = [i for i, layer in enumerate(layers) if type(layer).__name__ in _PRODUCERS]
    if len(producers) < 2:
        raise CompileError("structured pruning needs at least two Conv/Dense layers (the last one keeps its units)")
    last_producer = producers[-1]
    kept: np.ndarray | None = None  # channel indices of the current tensor that survive
    new_layers: list[Any] = []
    new_weights: list[list[np.ndarray]] = []
    for i, layer in enumerate(layers):
        kind = type(layer).__name__
        cfg = layer.get_config()
        weights = [np.asarray(w) for w in layer.get_weights()]
        in_shape = layer.input.shape if hasattr(layer, "input") else None
        if kind in _PRODUCERS:
            kernel = weights[0]
            if kept is not None:
                kernel = np.take(kernel, kept, axis=-2)
            if i != last_producer:
                out_keep = _l1_keep(kernel, fraction)
                kernel = kernel[..., out_keep]
                rest = [w[out_keep] for w in weights[1:]]
                cfg["filters" if "filters" in cfg else "units"] = int(len(out_keep))
                kept = out_keep
            else:
                rest = weights[1:]
                kept = None
            weights = [kernel, *rest]
        elif kind in _CHANNELWISE:
            if kept is not None:
                weights = [w[kept] for w in weights]
        elif kind == "DepthwiseConv2D":
            if kept is not None:
                weights = [np.take(weights[0], kept, axis=2)] + [w[kept] for w in weights[1:]]
        elif kind == "Flatten":
            if kept is not None:
                if in_shape is None:
                    raise CompileError(f"structured pruning cannot infer the input shape of {layer.name!r}")
                channels = int(in_shape[-1])
                positions = int(np.prod([int(d) for d in in_shape[1:-1]]))
                kept = np.array([p * channels + c for p in range(positions) for c in kept], dtype=np.int64)
        elif kind not in _PASSTHROUGH:
            if kept is not None:
                raise CompileError(
                    f"structured pruning does not know how to slice layer {layer.name!r} ({kind}); "
                    "drop --prune-structured or use --prune"
                )
        new_layers.append(type(layer).from_config(cfg))
        new_weights.append(weights)
    inp = keras.Input(shape=tuple(model.inputs[0].shape[1:]), dtype=model.inputs[0].dtype, name=model.inputs[0].name)
    out = inp
    for layer in new_layers:
        out = layer(out)
    narrowed = keras.Model(inp, out, name=f"{model.name}_structured")
    for layer, weights in zip(new_layers, new_weights):
        if weights:
            layer.set_weights(weights)
    return narrowed


def structured_prune(model: Any, x: np.ndarray, y: np.ndarray | None, cfg: StructuredConfig, progress: Any = None) -> Any:
    """Narrow the model by ``cfg.fraction`` and fine-tune it on ``(x, y)``."""
    narrowed = narrow(model, cfg.fraction)
    compile_for_training(narrowed, y, cfg.learning_rate)
    narrowed.fit(x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0, shuffle=True,
                 callbacks=[progress] if progress is not None else [])
    return narrowed


__all__ = ["narrow", "structured_prune", "chain_layers"]
