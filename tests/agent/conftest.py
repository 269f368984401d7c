"""Fixtures for the device agent tests: tiny ONNX models, signed bundles, keys, agents."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from agent_helpers import build_bundle  # noqa: E402


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from edgefleet.keys import generate_keypair, load_private_key

    d = tmp_path_factory.mktemp("keys")
    priv, pub = generate_keypair(d, "fleet")
    opriv, opub = generate_keypair(d, "other")
    return {"priv": load_private_key(priv), "pub": pub, "other_priv": load_private_key(opriv), "other_pub": opub}


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> dict[str, Path]:
    """Signed bundles v1, v2, v3 of the same model (different weights), built once."""
    d = tmp_path_factory.mktemp("bundles")
    out: dict[str, Path] = {}
    for v in ("1", "2", "3", "4"):
        out[v] = build_bundle(d, v, keys["priv"], seed=int(v))
    return out


@pytest.fixture()
def make_bundle(tmp_path: Path, keys: dict[str, Any]) -> Callable[..., Path]:
    def make(version: str, **kwargs: Any) -> Path:
        kwargs.setdefault("private_key", keys["priv"])
        return build_bundle(tmp_path / "made", version, seed=kwargs.pop("seed", 7), **kwargs)

    return make


@pytest.fixture()
def agent_config(tmp_path: Path, keys: dict[str, Any]) -> Callable[..., Any]:
    from edgefleet.device_agent.config import AgentConfig, UpdateConfig

    def make(**update: Any) -> AgentConfig:
        hw = update.pop("hardware_tags", ("test-board",))
        upd = UpdateConfig(**{"probation_seconds": 0.0, **update})
        return AgentConfig(state_dir=str(tmp_path / "state"), device_id="dev-1", hardware_tags=tuple(hw),
                           trusted_keys=(str(keys["pub"]),), update=upd)

    return make


@pytest.fixture()
def x4() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)

