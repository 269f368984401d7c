"""Real ``flower-superlink`` + supervised ``flower-supernode`` processes on loopback, non-IID digits.

Each device holds mostly two classes. Runs are submitted with ``flwr run``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.cloud_sync.federated.aggregate import fedavg  # noqa: F401  (import check)
from edgefleet.cloud_sync.federated.config import FederatedConfig
from edgefleet.cloud_sync.federated.partition import non_iid_partitions
from edgefleet.cloud_sync.federated.runner import read_rounds, run_federated
from edgefleet.cloud_sync.federated.trainer import MLPSpec, TrainConfig, evaluate, split_holdout, train

from .conftest import Digits, Fleet

pytestmark = pytest.mark.slow

TRAINING = dict(layers="64,32,10", local_epochs=10, learning_rate=0.2, batch_size=32, min_samples=20)


def _config(d: Digits, tmp: Path, **kw: Any) -> FederatedConfig:
    np.savez(tmp / "holdout.npz", x=d.x_test, y=d.y_test)
    return FederatedConfig(preprocessing=d.preprocessing, holdout=str(tmp / "holdout.npz"), out_dir=str(tmp / "out"),
                           **{**TRAINING, **kw})


def _accuracy(doc: dict[str, Any], d: Digits) -> float:
    with np.load(doc["aggregate"]) as z:
        w = [z[f"arr_{i}"] for i in range(len(z.files))]
    return evaluate(w, d.x_test, d.y_test)[1]


def test_federated_fedavg_beats_every_local_model_and_small_device_declines(fleet: Fleet, digits: Digits,
                                                                           tmp_path: Path) -> None:
    # Arrange: 3 devices with mostly two classes each, and one with too few samples
    parts = non_iid_partitions(digits.y_train, 3, seed=0)
    for i, p in enumerate(parts):
        fleet.add_node(f"dev{i}", digits.x_train[p], digits.y_train[p])
    fleet.add_node("tiny", digits.x_train[:5], digits.y_train[:5])
    cfg = _config(digits, tmp_path, rounds=3, min_nodes=4, fraction_evaluate=1.0, round_timeout=90)

    # Act
    try:
        doc = run_federated(cfg, fleet.link.address, work_dir=tmp_path / "run", timeout=240)
    finally:
        fleet.stop_nodes()

    # Assert: every device's local-only model (trained to convergence on the same local train split)
    spec = MLPSpec.parse(TRAINING["layers"])
    local = []
    for p in parts:
        xt, yt, _, _ = split_holdout(digits.x_train[p] / 16.0, digits.y_train[p], 0.2, seed=0)
        local.append(evaluate(train(spec.init(0), xt, yt, TrainConfig(epochs=100, learning_rate=0.2)).weights,
                              digits.x_test, digits.y_test)[1])
    federated = _accuracy(doc, digits)
    rounds = [r for r in doc["rounds"] if r["round"] > 0]
    assert doc["status"] == "finished" and len(rounds) == 3
    assert federated > max(local) + 0.05, (federated, local)
    assert abs(rounds[-1]["central"]["accuracy"] - federated) < 1e-6
    assert all(r["train_replies"] == 3 and r["declined"] == 1 for r in rounds)
    assert all("eval-accuracy" in r["evaluate"] for r in rounds)
    assert rounds[-1]["central"]["accuracy"] > rounds[0]["central"]["accuracy"]


def test_federated_round_survives_a_supernode_killed_mid_run(fleet: Fleet, digits: Digits, tmp_path: Path) -> None:
    # Arrange
    parts = non_iid_partitions(digits.y_train, 3, seed=1)
    nodes = [fleet.add_node(f"k{i}", digits.x_train[p], digits.y_train[p]) for i, p in enumerate(parts)]
    cfg = _config(digits, tmp_path, rounds=3, min_nodes=2, fraction_evaluate=0.0, round_timeout=25)
    result: dict[str, Any] = {}

    def go() -> None:
        try:
            result["doc"] = run_federated(cfg, fleet.link.address, work_dir=tmp_path / "run", timeout=200)
        except Exception as exc:  # pragma: no cover - reported below
            result["error"] = exc

    worker = threading.Thread(target=go)
    worker.start()

    # Act: when round 1 is done (round 2 starting), kill one device's SuperNode group (SIGKILL)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        doc = read_rounds(tmp_path / "out")
        if doc and any(r.get("round") == 1 and "seconds" in r for r in doc["rounds"]):
            break
        time.sleep(0.2)
    victim_pid = nodes[0].pid
    nodes[0].kill()
    worker.join(timeout=240)
    fleet.stop_nodes()

    # Assert: the run finished every round with the surviving devices; the supervisor restarted the node
    assert "error" not in result, result.get("error")
    doc = result["doc"]
    rounds = [r for r in doc["rounds"] if r["round"] > 0]
    assert doc["status"] == "finished" and len(rounds) == 3
    assert all(r["aggregated"] and r["train_replies"] >= 2 for r in rounds)
    assert nodes[0].restarts >= 1 and nodes[0].pid != victim_pid
    assert _accuracy(doc, digits) > 0.5


def test_federated_poisoned_device_hurts_fedavg_but_is_contained_by_fedmedian(fleet: Fleet, digits: Digits,
                                                                              tmp_path: Path) -> None:
    # Arrange: device 0 sends w_global - 10 * (w_local - w_global)
    parts = non_iid_partitions(digits.y_train, 3, seed=0)
    fleet.add_node("p0", digits.x_train[parts[0]], digits.y_train[parts[0]], **{"fault-update-scale": -10.0})
    for i in (1, 2):
        fleet.add_node(f"p{i}", digits.x_train[parts[i]], digits.y_train[parts[i]])
    acc = {}

    # Act
    try:
        for strategy in ("fedavg", "fedmedian"):
            d = tmp_path / strategy
            d.mkdir()
            cfg = _config(digits, d, rounds=2, min_nodes=3, fraction_evaluate=0.0, round_timeout=60, strategy=strategy)
            acc[strategy] = _accuracy(run_federated(cfg, fleet.link.address, work_dir=d / "run", timeout=200), digits)
    finally:
        fleet.stop_nodes()

    # Assert
    assert acc["fedavg"] < 0.25, acc
    assert acc["fedmedian"] > acc["fedavg"] + 0.12, acc
