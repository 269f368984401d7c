"""Example data and model so anyone can try the compiler offline.

``write_digits(dir)`` writes ``train.npz``/``test.npz`` from scikit-learn's
bundled digits (8x8 images, pixel values 0..16; nothing is downloaded).
``train_digits(out)`` trains a small CNN on them in seconds and writes
``model.keras`` plus ``model.keras.edgefleet.json`` holding its preprocessing
(``pixel / 16`` and a reshape to 8x8x1) and labels, which the compiler picks
up, so the bundle's manifest carries them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import ConfigError

DIGITS_PREPROCESSING: dict[str, Any] = {
    "input_shape": [8, 8],
    "steps": [{"op": "scale", "factor": 0.0625}, {"op": "reshape", "shape": [8, 8, 1]}],
}
DIGITS_LABELS = [str(i) for i in range(10)]


def digits_split(test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): raw 8x8 float32 images in 0..16, int64 labels; stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


def write_digits(out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = digits_split(seed=seed)
    train, test = out / "train.npz", out / "test.npz"
    np.savez(train, x=xtr, y=ytr)
    np.savez(test, x=xte, y=yte)
    return train, test


def digits_cnn(width: float = 1.0) -> Any:
    """Conv(32) -> Conv(64) -> MaxPool -> Dense(256) -> Dense(10, softmax) on 8x8x1 (~283k parameters)."""
    import keras

    def w(n: int) -> int:
        return max(1, int(round(n * width)))

    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="pixels"),
            keras.layers.Conv2D(w(32), 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(w(64), 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(w(256), activation="relu", name="fc1"),
            keras.layers.Dense(10, activation="softmax", name="probs"),
        ],
        name="digits_cnn",
    )


def train_digits(out: str | Path, epochs: int = 12, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Train the digits CNN; write ``out`` (.keras) and its sidecar; return test accuracy and paths."""
    out = Path(out)
    if out.suffix != ".keras":
        raise ConfigError(f"{out}: the model file must end in .keras")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; remove it or pass --force")
    import keras

    from .passes._train import set_seed

    set_seed(seed)
    xtr, ytr, xte, yte = digits_split(seed=seed)
    scale = DIGITS_PREPROCESSING["steps"][0]["factor"]
    model = digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit((xtr * scale)[..., None], ytr, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    _, acc = model.evaluate((xte * scale)[..., None], yte, verbose=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    side = out.parent / (out.name + ".edgefleet.json")
    side.write_text(json.dumps({"preprocessing": DIGITS_PREPROCESSING, "labels": DIGITS_LABELS}, indent=2) + "\n")
    return {"model": str(out), "sidecar": str(side), "test_accuracy": float(acc) * 100.0, "params": int(model.count_params())}


__all__ = ["write_digits", "train_digits", "digits_cnn", "digits_split", "DIGITS_PREPROCESSING", "DIGITS_LABELS"]
