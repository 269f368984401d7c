"""Knowledge distillation into a narrower student.

The student is either a given Keras model or the teacher's own architecture
with every hidden Conv/Dense layer ``width`` times as wide, freshly
initialised. Loss (Hinton et al. 2015)::

    alpha * CE(y, student) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))

The teacher is frozen and the training data fixed, so its logits are computed
once and packed beside the labels; the student then trains with a plain
``fit`` and no custom ``train_step``. We do not use ``keras.distillation``
(Keras >= 3.12): its ``LogitsDistillation`` expects logits, while most
deployed classifiers end in a softmax; here probabilities are turned back into
logits (``log p``, exact up to a constant that softmax ignores).
Regression models distil with MSE to the teacher's outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.errors import CompileError

from ..config import DistillConfig
from ._train import _ends_in_softmax, keras_model_of
from .structured import chain_layers

_WIDTH_KEYS = {"Conv1D": "filters", "Conv2D": "filters", "Dense": "units"}


def widen(model: Any, width: float) -> Any:
    """A fresh (untrained) copy of a chain model with hidden Conv/Dense layers ``width`` times as wide."""
    import keras

    keras_model_of(model, "distillation")
    layers = chain_layers(model)
    producers = [i for i, layer in enumerate(layers) if type(layer).__name__ in _WIDTH_KEYS]
    if not producers:
        raise CompileError("distillation by width needs Conv/Dense layers; give a student model instead")
    inp = keras.Input(shape=tuple(model.inputs[0].shape[1:]), dtype=model.inputs[0].dtype, name=model.inputs[0].name)
    out = inp
    for i, layer in enumerate(layers):
        cfg = layer.get_config()
        kind = type(layer).__name__
        if kind in _WIDTH_KEYS and i != producers[-1]:
            key = _WIDTH_KEYS[kind]
            cfg[key] = max(1, int(round(cfg[key] * width)))
        cfg["name"] = f"student_{cfg.get('name', kind.lower())}"
        out = type(layer).from_config(cfg)(out)
    return keras.Model(inp, out, name=f"{model.name}_student")


def _logits(p: Any, softmax: bool) -> Any:
    from keras import ops

    return ops.log(ops.clip(p, 1e-7, 1.0)) if softmax else p


def distill(
    teacher: Any,
    x: np.ndarray,
    y: np.ndarray | None,
    cfg: DistillConfig,
    student: Any = None,
    progress: Any = None,
) -> Any:
    """Train ``student`` (or ``widen(teacher, cfg.width)``) to mimic ``teacher`` on ``x``; return it."""
    import keras
    from keras import ops

    keras_model_of(teacher, "distillation")
    if student is None:
        student = widen(teacher, cfg.width)
    t_out = np.asarray(teacher.predict(x, batch_size=256, verbose=0), dtype=np.float32)
    if t_out.shape[1:] != tuple(int(d) for d in student.outputs[0].shape[1:]):
        raise CompileError(f"distill: student output shape {student.outputs[0].shape} differs from the teacher's {t_out.shape}")
    n_out = t_out.shape[-1]
    t_soft = _ends_in_softmax(teacher)
    s_soft = _ends_in_softmax(student)
    temp, alpha = float(cfg.temperature), float(cfg.alpha)
    classify = y is not None and y.dtype.kind in "iu" and n_out > 1 or (y is None and n_out > 1)
    if classify:
        t_logits = np.log(np.clip(t_out, 1e-7, 1.0)) if t_soft else t_out
        onehot = np.zeros((len(x), n_out), np.float32) if y is None else np.eye(n_out, dtype=np.float32)[y.astype(int)]
        hard_w = alpha if y is not None else 0.0
        target = np.concatenate([onehot, t_logits.reshape(len(x), -1)], axis=1)

        def loss(y_true: Any, y_pred: Any) -> Any:
            hard, t = y_true[:, :n_out], y_true[:, n_out:]
            s = _logits(y_pred, s_soft)
            ce = -ops.sum(hard * ops.log_softmax(s, axis=-1), axis=-1)
            pt = ops.softmax(t / temp, axis=-1)
            kl = ops.sum(pt * (ops.log_softmax(t / temp, axis=-1) - ops.log_softmax(s / temp, axis=-1)), axis=-1)
            return hard_w * ce + (1.0 - hard_w) * temp * temp * kl
    else:
        yy = t_out if y is None else y.reshape(t_out.shape).astype(np.float32)
        target = np.concatenate([yy.reshape(len(x), -1), t_out.reshape(len(x), -1)], axis=1)
        hard_w = alpha if y is not None else 0.0

        def loss(y_true: Any, y_pred: Any) -> Any:
            hard, t = y_true[:, :n_out], y_true[:, n_out:]
            return hard_w * ops.mean((hard - y_pred) ** 2, axis=-1) + (1 - hard_w) * ops.mean((t - y_pred) ** 2, axis=-1)

    student.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss)
    student.fit(x, target, epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0, shuffle=True,
                callbacks=[progress] if progress is not None else [])
    student.compile()  # drop the distillation loss (it cannot be serialised)
    return student


def count_params(model: Any) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


__all__ = ["distill", "widen", "count_params"]
