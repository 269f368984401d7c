"""Compiler fixtures: digits data files and a tiny digits CNN, built once per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TINY_WIDTH = 0.25  # conv 8 -> conv 16 -> dense 32 -> 10: ~9k parameters


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgefleet.compiler.examples import write_digits

    out = tmp_path_factory.mktemp("digits")
    write_digits(out)
    return out


@pytest.fixture(scope="session")
def digits_arrays(digits_dir: Path) -> dict[str, np.ndarray]:
    with np.load(digits_dir / "train.npz") as tr, np.load(digits_dir / "test.npz") as te:
        return {"xtr": tr["x"], "ytr": tr["y"], "xte": te["x"], "yte": te["y"]}


@pytest.fixture(scope="session")
def tiny_keras(tmp_path_factory: pytest.TempPathFactory, digits_arrays: dict[str, np.ndarray]) -> Path:
    """A trained tiny digits CNN saved as .keras with its preprocessing sidecar."""
    import json

    import keras

    from edgefleet.compiler.examples import DIGITS_LABELS, DIGITS_PREPROCESSING, digits_cnn
    from edgefleet.compiler.passes._train import set_seed

    set_seed(0)
    model = digits_cnn(TINY_WIDTH)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits_arrays["xtr"][..., None] / 16.0, digits_arrays["ytr"], epochs=8, batch_size=32, verbose=0)
    out = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    model.save(out)
    (out.parent / "tiny.keras.edgefleet.json").write_text(
        json.dumps({"preprocessing": DIGITS_PREPROCESSING, "labels": DIGITS_LABELS})
    )
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_keras: Path) -> Any:
    import keras

    return keras.models.load_model(tiny_keras, compile=False)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any) -> Path:
    from edgefleet.compiler.passes.export import to_onnx

    return to_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture()
def base_config(digits_dir: Path) -> Any:
    from edgefleet.compiler.config import CompileConfig, DataConfig, OutputConfig

    return CompileConfig(
        data=DataConfig(train=str(digits_dir / "train.npz"), calibration=str(digits_dir / "train.npz"),
                        eval=str(digits_dir / "test.npz"), max_calibration_samples=100),
        output=OutputConfig(latency_runs=20),
    )
