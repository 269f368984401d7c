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
        from edgefleet.cloud_sync.federated.runner import SuperLinkConfig, start_ready_superlink

        self.root = root
        self.nodes: list[Any] = []
        self.link = start_ready_superlink(
            lambda attempt: SuperLinkConfig(port=free_port(), log_path=str(root / f"superlink{attempt}.log")), attempts=3)

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


def load_cloud(name: str) -> Any:
    """A module of tests/cloud (its broker and coordinator helpers), loaded under a unique name."""
    import importlib.util
    import sys

    key = f"_edgefleet_cloud_{name}"
    if key not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "cloud" / f"{name}.py"
        sys.path.insert(0, str(path.parent))  # tests/cloud modules import their siblings by name
        spec = importlib.util.spec_from_file_location(key, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


class CloudFleet:
    """A real mosquitto, a coordinator on it with its HTTP API in a thread, and the device syncs made."""

    TOKEN = "fed-s3cret"

    def __init__(self, root: Path, fleet: str = "f1") -> None:
        import threading
        import time

        import uvicorn

        from edgefleet.cloud_sync.coordinator.api import create_app

        self.cloud = load_cloud("conftest")
        self.helpers = load_cloud("helpers")
        self.fleet = fleet
        self.broker = self.cloud.Broker(root / "broker")
        self.broker.start()
        self.coord = self.helpers.coordinator(self.broker.url, root / "registry.db", fleet)
        port = free_port()
        # log_config=None: uvicorn's dictConfig would close the handlers of loggers set up earlier in this
        # process (absl's, once TensorFlow was imported, whose stream is pytest's capture file)
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.coord, self.TOKEN), host="127.0.0.1", port=port,
                                                    log_level="error", log_config=None))
        threading.Thread(target=self.server.run, daemon=True).start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.api = f"http://127.0.0.1:{port}"
        self.syncs: list[Any] = []

    def connect(self, agent: Any, root: Path, group: str = "g") -> Any:
        s = self.helpers.device(self.broker.url, agent, root, self.fleet, group)
        self.syncs.append(s)
        return s

    def wait_for(self, cond: Any, timeout: float = 30.0) -> Any:
        return self.cloud.wait_for(cond, timeout)

    def close(self) -> None:
        for s in self.syncs:
            s.stop()
        self.server.should_exit = True
        self.coord.stop()
        self.broker.stop()


@pytest.fixture
def cloud_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudFleet]:
    c = CloudFleet(tmp_path_factory.mktemp("cloud"))
    try:
        yield c
    finally:
        c.close()


def make_tls(out: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it: (ca.pem, server.pem, server.key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "ca.pem", out / "server.pem", out / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def make_node_key(out: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair (P-384, OpenSSH format, as Flower expects): (private, public)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    out.mkdir(parents=True, exist_ok=True)
    priv, pub = out / f"{name}.key", out / f"{name}.pub"
    priv.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()))
    priv.chmod(0o600)
    pub.write_bytes(key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH))
    return priv, pub


class TlsLink:
    """A SuperLink serving TLS with a certificate of a CA made for the test (``make_tls``); with ``auth`` it
    admits only SuperNodes whose keys were registered (``--enable-supernode-auth``, ``flwr supernode register``)."""

    def __init__(self, root: Path, auth: bool = False) -> None:
        from edgefleet.cloud_sync.federated.runner import SuperLinkConfig, start_ready_superlink, write_flwr_home

        self.ca, cert, key = make_tls(root / "tls")
        self.link = start_ready_superlink(lambda _: SuperLinkConfig(
            port=free_port(), insecure=False, ssl_certfile=str(cert), ssl_keyfile=str(key),
            ssl_ca_certfile=str(self.ca), enable_supernode_auth=auth, log_path=str(root / "superlink-tls.log")))
        self.address = self.link.address
        self.home = write_flwr_home(root / "flwr-home", self.address, insecure=False, root_certificates=str(self.ca))

    def flwr(self, *argv: str) -> dict[str, Any]:
        """``flwr ARGV... edgefleet --format json`` against this SuperLink (Flower's own CLI, over TLS)."""
        import subprocess

        from edgefleet.device_agent.flower_node import find_tool, flower_env

        proc = subprocess.run([find_tool("flwr"), *argv, "edgefleet", "--format", "json"],
                              env=flower_env({"FLWR_HOME": str(self.home)}), capture_output=True, text=True, timeout=60)
        doc = json.loads(proc.stdout)
        assert doc.get("success"), proc.stdout + proc.stderr
        return dict(doc)


@pytest.fixture
def tls_link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsLink]:
    t = TlsLink(tmp_path_factory.mktemp("tls"))
    try:
        yield t
    finally:
        t.link.stop()
