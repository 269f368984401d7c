"""Unstructured magnitude pruning for Keras 3 models.

Why not tfmot: tensorflow-model-optimization 0.8 wraps only tf_keras (Keras 2)
layers. On TF >= 2.16 the default Keras is Keras 3, and ``prune_low_magnitude``
either refuses Keras 3 models or needs ``TF_USE_LEGACY_KERAS=1`` for the whole
process, which would force every user model through a Keras 2 round trip. Its
schedules also update masks every 100 steps by default, so the short
fine-tunes a compiler runs end 0% sparse. The algorithm is small, so we own it:

* every Conv/Dense kernel with at least ``min_weights`` weights gets a 0/1 mask;
* the target sparsity follows the polynomial decay schedule of Zhu & Gupta
  (2017), ``s_t = s_f + (s_i - s_f) (1 - t/T)^power``, recomputed every
  ``frequency`` steps from the weights' magnitudes (per layer);
* a callback multiplies kernels by their masks after each training batch, so
  pruned weights stay exactly zero;
* at the end the final sparsity is applied once more, exactly.

Zeros do not make a dense ``.tflite`` smaller by themselves; they make it
compress (gzip) far better, and combine with int8 quantization.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..config import PruneConfig
from ._train import compile_for_training, keras_model_of

PRUNABLE = ("Conv1D", "Conv2D", "Conv3D", "Dense", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")


def prunable_kernels(model: Any, min_weights: int = 1, exclude: Sequence[str] = ()) -> list[Any]:
    """The kernel variables pruning applies to (biases and norms are left dense; so are the
    layers named in ``exclude``: a trainable head's)."""
    found = []
    for layer in _all_layers(model):
        if type(layer).__name__ not in PRUNABLE or layer.name in exclude:
            continue
        for var in layer.trainable_weights:
            if "kernel" in var.path.split("/")[-1] and int(np.prod(var.shape)) >= min_weights:
                found.append(var)
    return found


def _all_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            out.extend(_all_layers(layer))
        else:
            out.append(layer)
    return out


def schedule(step: int, total: int, cfg: PruneConfig) -> float:
    """Sparsity at ``step`` of ``total`` (polynomial decay; reaches the target at 80% of training)."""
    end = max(1, int(total * 0.8))
    t = min(step, end) / end
    return float(cfg.sparsity + (cfg.initial_sparsity - cfg.sparsity) * (1.0 - t) ** cfg.power)


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """1 for weights kept, 0 for the ``sparsity`` fraction with the smallest magnitude."""
    k = int(round(sparsity * weights.size))
    if k <= 0:
        return np.ones_like(weights, dtype=np.float32)
    flat = np.abs(weights).ravel()
    order = np.argsort(flat, kind="stable")
    mask = np.ones(flat.size, dtype=np.float32)
    mask[order[:k]] = 0.0
    return mask.reshape(weights.shape)


def sparsity_of(model: Any, min_weights: int = 1) -> float:
    """Fraction of exact zeros among the prunable kernels."""
    total = zeros = 0
    for var in prunable_kernels(model, min_weights):
        w = np.asarray(var.numpy())
        total += w.size
        zeros += int(np.count_nonzero(w == 0))
    return zeros / total if total else 0.0


def _make_callback(kernels: list[Any], cfg: PruneConfig, total_steps: int) -> Any:
    import keras

    class MaskCallback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.step = 0
            self.masks = [np.ones(tuple(v.shape), np.float32) for v in kernels]

        def _update_masks(self) -> None:
            s = schedule(self.step, total_steps, cfg)
            self.masks = [magnitude_mask(np.asarray(v.numpy()), s) for v in kernels]

        def _apply(self) -> None:
            for var, mask in zip(kernels, self.masks):
                var.assign(np.asarray(var.numpy()) * mask)

        def on_train_begin(self, logs: Any = None) -> None:
            self._update_masks()
            self._apply()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.step += 1
            if self.step % cfg.frequency == 0:
                self._update_masks()
            self._apply()

    return MaskCallback()


def prune(model: Any, x: np.ndarray, y: np.ndarray | None, cfg: PruneConfig, progress: Any = None,
          exclude: Sequence[str] = ()) -> Any:
    """Prune ``model`` in place to ``cfg.sparsity`` with a fine-tune on ``(x, y)``; returns it.
    Layers named in ``exclude`` (a trainable head) are fine-tuned but not pruned."""
    keras_model_of(model, "pruning")
    kernels = prunable_kernels(model, cfg.min_weights, exclude)
    if not kernels:
        from edgefleet.errors import CompileError

        raise CompileError("prune: the model has no Conv/Dense kernels to prune; drop --prune")
    compile_for_training(model, y, cfg.learning_rate)
    steps_per_epoch = int(np.ceil(len(x) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    cb = _make_callback(kernels, cfg, total)
    callbacks = [cb] + ([progress] if progress is not None else [])
    model.fit(x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0, callbacks=callbacks, shuffle=True)
    for var in kernels:  # exact final sparsity
        w = np.asarray(var.numpy())
        var.assign(w * magnitude_mask(w, cfg.sparsity))
    return model


__all__ = ["prune", "schedule", "magnitude_mask", "sparsity_of", "prunable_kernels"]
