"""Fixtures for the cloud tests: signed bundles, agents, and a real mosquitto on a free loopback port."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from helpers import free_port  # noqa: F401  (the test modules import it from here)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "agent"))

from agent_helpers import build_bundle  # noqa: E402

from edgefleet.cloud_sync.broker import LocalBroker  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker(LocalBroker):
    """A mosquitto we own: start, kill -9, restart on the same port with the same persistence (written by the
    product's own config writer, ``cloud_sync.broker.local_config``)."""

    def __init__(self, root: Path, acl_file: Path | None = None, passwords: Path | None = None) -> None:
        super().__init__(root, binary=MOSQUITTO, persistence=True, acl_file=acl_file, password_file=passwords)


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed")
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture()
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    made: list[Broker] = []

    def make(**kwargs: Any) -> Broker:
        b = Broker(tmp_path / f"broker{len(made)}", **kwargs)
        b.start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from edgefleet.keys import generate_keypair, load_private_key

    d = tmp_path_factory.mktemp("keys")
    priv, pub = generate_keypair(d, "fleet")
    return {"priv": load_private_key(priv), "pub": pub}


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> dict[str, Path]:
    """Signed .efb archives: v1, v2 (different weights), and v3-bad whose smoke test fails."""
    d = tmp_path_factory.mktemp("bundles")
    out = {v: build_bundle(d, v, keys["priv"], seed=int(v), archive=True) for v in ("1", "2")}
    # v3: smoke-test expectations that the model cannot meet (signed, so it passes verification)
    from agent_helpers import rewrite_manifest

    from edgefleet.bundle import write_archive

    bdir = build_bundle(d, "3", keys["priv"], seed=3)

    def spoil(m: dict[str, Any]) -> None:
        m["smoke_tests"]["outputs"] = _shift(m["smoke_tests"]["outputs"])

    rewrite_manifest(bdir, spoil, keys["priv"])
    out["3bad"] = write_archive(bdir, d / "dense-v3-bad.efb")
    return out


def _shift(v: Any) -> Any:
    if isinstance(v, list):
        return [_shift(x) for x in v]
    if isinstance(v, (int, float)):
        return v + 10.0
    if isinstance(v, dict):
        return {k: _shift(x) for k, x in v.items()}
    return v


@pytest.fixture()
def make_agent(tmp_path: Path, keys: dict[str, Any]) -> Iterator[Callable[..., Any]]:
    from edgefleet.device_agent.agent import Agent
    from edgefleet.device_agent.config import AgentConfig, TelemetryConfig, UpdateConfig

    made: list[Any] = []

    def make(device_id: str, install: Path | None = None, **kw: Any) -> Any:
        cfg = AgentConfig(state_dir=str(tmp_path / "devices" / device_id / "agent"), device_id=device_id,
                          hardware_tags=("test-board",), trusted_keys=(str(keys["pub"]),),
                          update=UpdateConfig(probation_seconds=0.0), telemetry=TelemetryConfig(flush_seconds=3600))
        agent = Agent(cfg, tick_seconds=0.05, **kw)
        if install is not None:
            agent.install(install, wait=True, timeout=30)
        made.append(agent)
        return agent

    yield make
    for a in made:
        try:
            a.close()
        except Exception:
            pass


@pytest.fixture()
def live_inputs() -> Iterator[Callable[[Any, int], None]]:
    """``live_inputs(agent, seed)``: live inputs on the agent (no labels), from a thread of its own, until the test
    ends."""
    import numpy as np

    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(agent: Any, seed: int) -> None:
        def run() -> None:
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                try:
                    agent.predict(rng.normal(size=(1, 4)).astype(np.float32))
                except Exception:
                    pass  # (closing)
                stop.wait(0.003)

        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()

    yield start
    stop.set()
    for t in threads:
        t.join(5)


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture(scope="session")
def big_archives(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> dict[str, Path]:
    """~1 MB signed archives of a wider dense layer: v1 and a 'fine-tuned' v2 (small weight changes)."""
    import numpy as np
    import onnx
    from agent_helpers import make_onnx
    from onnx import numpy_helper

    from edgefleet.pack import pack

    d = tmp_path_factory.mktemp("big")
    src = make_onnx(d / "big-1.onnx", 5, n_in=64, n_out=4096)
    m = onnx.load(str(src))
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    rng = np.random.default_rng(1)
    idx = rng.choice(w.size, w.size // 50, replace=False)  # fine-tune touches 2% of the weights
    w.flat[idx] += rng.normal(0, 0.01, idx.size).astype(np.float32)
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name))
    src2 = d / "big-2.onnx"
    onnx.save(m, str(src2))
    out = {}
    for v, s in (("1", src), ("2", src2)):
        _, arch = pack(s, d / f"big-v{v}", name="big", version=v, private_key=keys["priv"],
                       hardware_tags=("test-board",), archive=True, overwrite=True)
        assert arch is not None
        out[v] = arch
    return out


@pytest.fixture(autouse=True)
def _operated_coordinators() -> Any:
    """``helpers.OPERATED`` holds the running test's coordinators only."""
    from helpers import OPERATED

    OPERATED.clear()
    yield
    OPERATED.clear()
