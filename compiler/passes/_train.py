"""Shared fine-tuning helpers for the Keras passes."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.errors import CompileError


def loss_for(model: Any, y: np.ndarray | None) -> tuple[str, list[str]]:
    """A loss matching the model's output and the labels."""
    if y is None:
        raise CompileError("fine-tuning needs labelled training data (--train DATA with a 'y' array)")
    out_dim = int(model.outputs[0].shape[-1] or 1)
    if y.dtype.kind in "iu" and out_dim > 1:
        from_logits = not _ends_in_softmax(model)
        return ("sparse_categorical_crossentropy_logits" if from_logits else "sparse_categorical_crossentropy"), ["accuracy"]
    return "mse", []


def _ends_in_softmax(model: Any) -> bool:
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    name = getattr(act, "__name__", "") if act is not None else ""
    return name == "softmax" or type(last).__name__ == "Softmax"


def compile_for_training(model: Any, y: np.ndarray | None, learning_rate: float) -> None:
    import keras

    loss, metrics = loss_for(model, y)
    if loss == "sparse_categorical_crossentropy_logits":
        loss_obj: Any = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        loss_obj = loss
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss_obj, metrics=metrics)


def keras_model_of(model: Any, what: str) -> None:
    import keras

    if not isinstance(model, keras.Model):
        raise CompileError(f"{what} needs a Keras model (.keras/.h5 source); got {type(model).__name__}")


def set_seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    try:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass
