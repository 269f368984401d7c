"""Closing the loop: aggregate -> Keras -> compile (deployed recipe) -> gate on the holdout -> signed next version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgefleet.cloud_sync.federated.aggregate import fedavg
from edgefleet.cloud_sync.federated.loop import close_loop, save_keras, weights_from_keras
from edgefleet.cloud_sync.federated.partition import non_iid_partitions
from edgefleet.cloud_sync.federated.trainer import MLPSpec, TrainConfig, evaluate, train

from .conftest import SCALE, Digits

pytestmark = pytest.mark.slow

SPEC = MLPSpec((64, 16, 10))


def _federate(d: Digits, rounds: int, start: list[np.ndarray]) -> list[np.ndarray]:
    parts = non_iid_partitions(d.y_train, 3, seed=0)
    w = start
    for r in range(rounds):
        ups = [train(w, d.x_train[p] / 16.0, d.y_train[p], TrainConfig(epochs=10, learning_rate=0.2, seed=r)) for p in parts]
        w = fedavg([u.weights for u in ups], [u.num_examples for u in ups])
    return w


def test_federated_loop_signs_the_next_version_only_when_it_beats_the_deployed_one(digits: Digits, tmp_path: Path,
                                                                                  keypair: tuple[Path, Path]) -> None:
    import edgefleet
    from edgefleet.compiler import CompileConfig, compile_model
    from edgefleet.keys import load_public_key

    # Arrange: deployed v1 = one device's local-only model, compiled with a recipe (float16, preprocessing)
    priv, pub = keypair
    holdout = tmp_path / "holdout.npz"
    np.savez(holdout, x=digits.x_test * 16.0, y=digits.y_test)  # raw inputs, as devices see them
    part = non_iid_partitions(digits.y_train, 3, seed=0)[0]
    local = train(SPEC.init(0), digits.x_train[part] / 16.0, digits.y_train[part], TrainConfig(epochs=30, learning_rate=0.2))
    src = save_keras(local.weights, SPEC, tmp_path / "v1.keras")
    recipe = CompileConfig.from_dict({"quantize": "float16", "preprocessing": SCALE,
                                      "output": {"version": "1", "key": str(priv), "name": "digits", "report": False}})
    deployed = compile_model(src, tmp_path / "v1", recipe).bundle_path
    w0, spec = weights_from_keras(src)
    good = _federate(digits, 3, w0)
    keys = [load_public_key(pub)]

    # Act
    promoted = close_loop(good, spec, holdout, tmp_path / "v2", private_key=str(priv), deployed=deployed, margin=0.05,
                          trusted_keys=keys)
    refused = close_loop(local.weights, spec, holdout, tmp_path / "v2b", private_key=str(priv), deployed=deployed,
                         margin=0.01, trusted_keys=keys)

    # Assert
    assert promoted.promoted and promoted.version == "2", promoted
    assert promoted.deployed_accuracy is not None
    assert promoted.candidate_accuracy >= promoted.deployed_accuracy + 0.05
    with edgefleet.load(promoted.bundle, trusted_keys=keys, require_signature=True) as m:
        assert m.manifest.version == "2" and m.manifest.name == "digits"
        assert m.manifest.lineage["recipe"]["quantize"] == "float16"
        probs = np.asarray(m.predict(digits.x_test[:200] * 16.0))
    assert abs(float(np.mean(probs.argmax(1) == digits.y_test[:200])) - evaluate(good, digits.x_test[:200], digits.y_test[:200])[1]) < 0.03
    assert not refused.promoted and refused.bundle is None and not (tmp_path / "v2b").exists()
    assert json.dumps(refused.to_dict())
