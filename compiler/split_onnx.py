"""Split an ONNX model at a tensor into a backbone and a trainable head (``--trainable-head-from``).

The head is the chain of nodes from the named tensor to the model's one output: each node
reads the previous one's output (and constants: initializers or ``Constant`` nodes) and
nothing else reads it. Each must be a kind :mod:`edgefleet.head` runs in numpy:

=============================================  =========================================
ONNX                                           head layer
=============================================  =========================================
Gemm (``transA`` 0; ``alpha``/``beta`` folded)  dense (``transB`` handled)
MatMul with a constant, then Add of a constant  dense with bias (MatMul alone: no bias)
BatchNormalization on (N, C)                    batch_norm (inference mode)
Flatten (axis 1), Reshape to (N, -1)            flatten
Dropout, Identity                               dropout
Relu, Sigmoid, Tanh, Softplus, Softsign, Exp,   activation (Elu alpha 1, LeakyRelu alpha
Elu, Selu, LeakyRelu, HardSigmoid,              0.2, HardSigmoid 1/6 and 0.5, Selu's
Softmax/LogSoftmax (last axis), Clip(0, 6)      defaults: Keras' own constants)
=============================================  =========================================

Anything else is refused with a ``ConfigError`` naming the node. The backbone is the model
cut at the tensor (``onnx.utils.extract_model``); its output's shape per sample is read by
running it once on inputs of its declared shapes.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import BundleFormatError, ConfigError
from edgefleet.head import Head, HeadLayer, param_key

ACTIVATION_OPS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus", "Softsign": "softsign",
                  "Exp": "exponential"}
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.:-]")


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


class _Chain:
    """The model's graph as constants, producers and consumers."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.graph = graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and len(node.output) == 1:
                value = _attrs(node).get("value")
                if value is not None:
                    self.consts[node.output[0]] = numpy_helper.to_array(value)
        self.consumers: dict[str, list[Any]] = {}
        self.produced: set[str] = set()
        for node in graph.node:
            if node.op_type == "Constant":
                continue
            self.produced.update(node.output)
            for name in node.input:
                if name and name not in self.consts:
                    self.consumers.setdefault(name, []).append(node)
        self.outputs = [o.name for o in graph.output]

    def walk(self, start: str) -> list[Any]:
        """The nodes from ``start`` to the model's output, each reading only the previous one's output."""
        if len(self.outputs) != 1:
            raise ConfigError(f"--trainable-head-from: the model has {len(self.outputs)} outputs; a head ends at a model's one output")
        inputs = {i.name for i in self.graph.input if i.name not in self.consts}
        if start not in self.produced and start not in inputs:
            shown = sorted(self.produced)[:12]
            raise ConfigError(f"--trainable-head-from {start!r}: no node of the model outputs that tensor; some that do: {shown}")
        if start in inputs:
            raise ConfigError(f"--trainable-head-from {start!r} is a model input; the head must leave a backbone")
        chain: list[Any] = []
        tensor = start
        while tensor != self.outputs[0]:
            users = self.consumers.get(tensor, [])
            if len(users) != 1:
                raise ConfigError(f"--trainable-head-from {start!r}: tensor {tensor!r} is read by {len(users)} nodes; "
                                  "a head is a chain ending at the model's output")
            node = users[0]
            live = [n for n in node.input if n and n not in self.consts]
            if live != [tensor]:
                raise ConfigError(f"--trainable-head-from {start!r}: node {node.name or node.op_type!r} reads {live}; "
                                  "a head's nodes read the previous node's output and constants only")
            used = [o for o in node.output[1:] if o and (o in self.consumers or o in self.outputs)]
            if used:
                raise ConfigError(f"--trainable-head-from {start!r}: node {node.name or node.op_type!r}'s other outputs {used} are used")
            chain.append(node)
            tensor = node.output[0]
            if len(chain) > 64:
                raise ConfigError(f"--trainable-head-from {start!r}: more than 64 nodes to the output")
        if not chain:
            raise ConfigError(f"--trainable-head-from {start!r} is the model's output; the head needs at least one layer")
        return chain

    def const(self, node: Any, index: int) -> np.ndarray:
        name = node.input[index] if index < len(node.input) else ""
        if name not in self.consts:
            raise ConfigError(f"--trainable-head-from: node {node.name or node.op_type!r} input {index} is not a constant")
        return self.consts[name]


def _layer_name(node: Any, taken: set[str]) -> str:
    base = _NAME_BAD.sub("_", node.name or node.output[0] or node.op_type).lstrip(".:-")[:100] or node.op_type
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _activation(node: Any, attrs: dict[str, Any], chain: _Chain, rank: int) -> str | None:
    op = node.op_type
    if op in ACTIVATION_OPS:
        return ACTIVATION_OPS[op]
    if op in ("Softmax", "LogSoftmax") and attrs.get("axis", -1) in (-1, rank):
        return "softmax" if op == "Softmax" else "log_softmax"
    if op == "Elu" and _close(attrs.get("alpha", 1.0), 1.0):
        return "elu"
    if op == "LeakyRelu" and _close(attrs.get("alpha", 0.01), 0.2):
        return "leaky_relu"
    if op == "HardSigmoid" and _close(attrs.get("alpha", 0.2), 1 / 6) and _close(attrs.get("beta", 0.5), 0.5):
        return "hard_sigmoid"
    if op == "Selu" and _close(attrs.get("alpha", 1.67326319217681884765625), 1.6732632423543772) \
            and _close(attrs.get("gamma", 1.05070102214813232421875), 1.0507009873554805):
        return "selu"
    if op == "Clip":
        lo = float(chain.const(node, 1)) if len(node.input) > 1 and node.input[1] else attrs.get("min")
        hi = float(chain.const(node, 2)) if len(node.input) > 2 and node.input[2] else attrs.get("max")
        if lo is not None and hi is not None and _close(lo, 0.0) and _close(hi, 6.0):
            return "relu6"
    return None


def convert_chain(chain: _Chain, nodes: list[Any], sample: tuple[int, ...]) -> Head:
    """The nodes as head layers (with their float32 weights), starting from features of shape ``sample``."""
    layers: list[HeadLayer] = []
    weights: dict[str, np.ndarray] = {}
    taken: set[str] = set()
    shape = sample
    i = 0
    while i < len(nodes):
        node = nodes[i]
        op, attrs = node.op_type, _attrs(node)
        what = f"node {node.name or node.output[0]!r} ({op})"
        name = _layer_name(node, taken)
        params: dict[str, np.ndarray] = {}
        act = _activation(node, attrs, chain, len(shape))
        if op in ("Gemm", "MatMul"):
            if op == "Gemm":
                if attrs.get("transA", 0):
                    raise ConfigError(f"--trainable-head-from: {what} transposes its input; the head takes Gemm with transA 0")
                kernel = chain.const(node, 1).astype(np.float64)
                kernel = kernel.T if attrs.get("transB", 0) else kernel
                kernel = kernel * attrs.get("alpha", 1.0)
                if len(node.input) > 2 and node.input[2]:
                    params["bias"] = chain.const(node, 2).astype(np.float64).reshape(-1) * attrs.get("beta", 1.0)
            else:
                kernel = chain.const(node, 1).astype(np.float64)
                nxt = nodes[i + 1] if i + 1 < len(nodes) else None
                if nxt is not None and nxt.op_type == "Add":
                    params["bias"] = chain.const(nxt, 1 if nxt.input[0] == node.output[0] else 0).astype(np.float64).reshape(-1)
                    i += 1
            if kernel.ndim != 2:
                raise ConfigError(f"--trainable-head-from: {what} has a {kernel.ndim}-D weight; the head takes a 2-D kernel")
            params = {"kernel": kernel, **params}
            spec: dict[str, Any] = {"kind": "dense"}
            out = shape[:-1] + (int(kernel.shape[1]),)
        elif op == "BatchNormalization":
            if len(shape) != 1:
                raise ConfigError(f"--trainable-head-from: {what} normalises axis 1 of a rank-{len(shape) + 1} tensor; "
                                  "the head takes batch norm on (N, C) (cut after the pooling/flatten)")
            params = {p: chain.const(node, k).astype(np.float64) for k, p in
                      ((1, "gamma"), (2, "beta"), (3, "moving_mean"), (4, "moving_variance"))}
            spec, out = {"kind": "batch_norm", "epsilon": float(attrs.get("epsilon", 1e-5))}, shape
        elif op == "Flatten" and attrs.get("axis", 1) == 1:
            spec, out = {"kind": "flatten"}, (math.prod(shape),)
        elif op == "Reshape" and [int(d) for d in chain.const(node, 1)] in ([0, -1], [-1, math.prod(shape)], [0, math.prod(shape)]):
            spec, out = {"kind": "flatten"}, (math.prod(shape),)
        elif op in ("Dropout", "Identity"):
            spec, out = {"kind": "dropout"}, shape
        elif act is not None:
            spec, out = {"kind": "activation", "activation": act}, shape
        else:
            raise ConfigError(
                f"--trainable-head-from: {what} cannot be in a head; a head takes Gemm, MatMul(+Add), BatchNormalization "
                "on (N, C), Flatten, Dropout/Identity and the activations Keras has (cut the model later)"
            )
        shaped = [(p, tuple(int(d) for d in w.shape)) for p, w in params.items()]
        try:
            layer = HeadLayer(name=name, input_shape=shape, output_shape=out, params=tuple(shaped), **spec)
        except BundleFormatError as exc:
            raise ConfigError(f"--trainable-head-from: {what}: {exc}") from None
        layers.append(layer)
        weights.update({param_key(layer, p): w.astype(np.float32) for p, w in params.items()})
        shape = out
        i += 1
    try:
        return Head(layers, weights, ConfigError)
    except BundleFormatError as exc:
        raise ConfigError(f"--trainable-head-from: {exc}") from None


def split_onnx(source: Path, start: str, backbone_out: Path) -> tuple[Path, Head]:
    """(the backbone written to ``backbone_out``, the head) of the ONNX model ``source`` cut at tensor ``start``."""
    import onnx
    from onnx import utils

    from edgefleet.manifest import ModelFormat
    from edgefleet.pack import synthetic_inputs
    from edgefleet.runtime import open_backend

    model = onnx.load(str(source))
    chain = _Chain(model)
    nodes = chain.walk(start)
    inputs = [i.name for i in model.graph.input if i.name not in chain.consts]
    try:
        utils.extract_model(str(source), str(backbone_out), inputs, [start], check_model=True)
    except Exception as exc:  # onnx raises its own types for graphs it cannot cut
        raise ConfigError(f"--trainable-head-from {start!r}: the model cannot be cut there: {str(exc)[:300]}") from None
    be = open_backend(backbone_out, ModelFormat.ONNX)
    try:  # two samples along every dynamic axis 0: the features' shape, and whether axis 0 is the batch
        specs = [replace(s, batch_axis=0 if s.shape and s.shape[0] == -1 else None) for s in be.inputs]
        feeds = synthetic_inputs(specs, 2, 0)
        out = be.run([feeds[s.name] for s in be.inputs])[0]
    finally:
        be.close()
    sample = tuple(int(d) for d in np.shape(out)[1:])
    _declare_output_shape(backbone_out, specs, np.shape(out))
    return backbone_out, convert_chain(chain, nodes, sample)


def _declare_output_shape(path: Path, inputs: list[Any], shape: tuple[int, ...]) -> None:
    """Write the features' shape into the backbone's output, as measured: exporters often leave it unknown (a
    flatten computed from the runtime shape), and the bundle needs it (batch first, like the inputs' batch)."""
    import onnx

    batched = [s for s in inputs if s.batch_axis == 0]
    if not shape or not batched or shape[0] != 2:
        return  # no batch axis found: the manifest's checks say so
    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape
    del dims.dim[:]
    first = dims.dim.add()  # dynamic, named as the inputs' batch axis is (or unnamed like it)
    if batched[0].dims and batched[0].dims[0]:
        first.dim_param = batched[0].dims[0]
    for d in shape[1:]:
        dims.dim.add().dim_value = int(d)
    onnx.save(model, str(path))


__all__ = ["split_onnx", "convert_chain"]
