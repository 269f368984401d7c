"""Fixtures for federated tests: digits split into non-IID device partitions, a real
``flower-superlink`` and supervised ``flower-supernode`` processes on loopback."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

SCALE = {"steps": [{"op": "scale", "factor": 1 / 16}]}
N_TRAIN = 1200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Digits:
    x_train: np.ndarray  # raw pixels 0..16, what devices capture
    y_train: np.ndarray
    x_test: np.ndarray  # preprocessed (/16), the global test set
    y_test: np.ndarray
    preprocessing: str = field(default=json.dumps(SCALE))


@pytest.fixture(scope="session")
def digits() -> Digits:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    y = y.astype(np.int64)
    return Digits(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:] / 16.0, y[N_TRAIN:])


def write_samples(path: Path, x: np.ndarray, y: np.ndarray, key: bytes | None = None) -> Path:
    from edgefleet.device_agent.samples import SampleStore

    store = SampleStore(path, key=key)
    try:
        for xi, yi in zip(x, y):
            store.add(xi, int(yi))
    finally:
        store.close()
    return path


class Fleet:
    """A SuperLink and the SuperNodes started against it; everything stopped at teardown."""

    def __init__(self, root: Path) -> None:
        from edgefleet.cloud_sync.federated.runner import FederatedError, SuperLink, SuperLinkConfig

        self.root = root
        self.nodes: list[Any] = []
        for attempt in range(3):  # a port picked free can be taken by another process before the link binds it
            self.link = SuperLink(SuperLinkConfig(port=free_port(), log_path=str(root / f"superlink{attempt}.log")))
            self.link.start()
            try:
                self.link.wait_ready()
                break
            except FederatedError:
                self.link.stop()
                if attempt == 2:
                    raise

    def add_node(self, name: str, x: np.ndarray, y: np.ndarray, **extra: Any) -> Any:
        """A device whose samples are written straight into a sample store."""
        return self.add_node_for(name, write_samples(self.root / name / "samples.db", x, y), **extra)

    def add_node_for(self, name: str, samples_db: Path, key_file: Path | None = None, **extra: Any) -> Any:
        """A supervised SuperNode for an existing samples.db (e.g. an agent's)."""
        from edgefleet.device_agent.flower_node import FlowerNode, FlowerNodeConfig

        cfg = FlowerNodeConfig(superlink=self.link.address, samples_db=str(samples_db), device_id=name, port=free_port(),
                               samples_key=str(key_file) if key_file else None, insecure=True,
                               extra_node_config=extra, log_path=str(self.root / f"{name}.log"))
        node = FlowerNode(cfg, backoff=0.2)
        node.start()
        self.nodes.append(node)
        return node

    def stop_nodes(self) -> None:
        for n in self.nodes:
            n.stop()
        self.nodes = []

    def close(self) -> None:
        self.stop_nodes()
        self.link.stop()


@pytest.fixture
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A fresh SuperLink per test: nodes stopped by an earlier test must not be sampled."""
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        yield f
    finally:
        f.close()
