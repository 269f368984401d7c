"""Issue 12, finding 6: ``agent run --trust`` keeps the key as ``install --trust`` does, and the manifests the
compiler ships to devices carry no build-host paths (file names and hashes only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from agent_helpers import make_onnx

from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.config import AgentConfig, UpdateConfig

ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}


def ef(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgefleet.cli", *args], capture_output=True, text=True, timeout=120,
                          env=ENV)


def test_run_trust_persists_the_key(tmp_path: Path, keys: dict, bundles: dict) -> None:
    state = tmp_path / "st"
    p = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "agent", "run", "--state-dir", str(state),
                          "--trust", str(keys["pub"]), "--hardware-tag", "test-board", "--tick", "0.1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert p.stdout is not None
    assert "serving" in p.stdout.readline()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err[-2000:]
    assert [k.name for k in (state / "trust").glob("*.pub")], "agent run --trust did not keep the key"
    # the device is then provisioned over the air (the daemon's library path installs v1) ...
    cfg = AgentConfig(state_dir=str(state), hardware_tags=("test-board",), trusted_keys=(str(keys["pub"]),),
                      update=UpdateConfig(probation_seconds=0.0))
    with Agent(cfg, monitor=False) as a:
        assert a.install(bundles["1"]).status.value == "SUCCEEDED"
    # ... and a local predict, given no --trust, verifies against the kept key
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    pr = ef("agent", "predict", "--state-dir", str(state), "--input", str(tmp_path / "x.npy"), "--json")
    assert pr.returncode == 0, pr.stderr
    assert np.asarray(json.loads(pr.stdout)["output"]).shape == (1, 3)


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_compiled_manifest_has_no_build_host_paths(tmp_path: Path) -> None:
    from edgefleet.keys import generate_keypair

    build = tmp_path / "build-host-secret-dir"
    src = make_onnx(build / "m.onnx", 1)
    np.savez(build / "d.npz", x=np.random.default_rng(0).random((40, 4)).astype(np.float32),
             y=np.random.default_rng(1).integers(0, 3, 40))
    priv, _ = generate_keypair(build, "fleet")
    p = ef("compile", str(src), "-o", str(build / "out"), "--format", "onnx", "--key", str(priv),
           "--eval", str(build / "d.npz"), "--train", str(build / "d.npz"), "--quiet")
    assert p.returncode == 0, p.stderr
    raw = (build / "out" / "manifest.json").read_text()
    assert str(build) not in raw and str(tmp_path) not in raw
    doc = json.loads(raw)
    absolute = [s for s in _strings(doc) if s.startswith("/") or "\\" in s]
    assert absolute == [], absolute
    recipe = doc["lineage"]["recipe"]
    assert recipe["output"]["key"] == "fleet.key"  # the file name, not where it lives
    assert recipe["data"]["eval"] == "d.npz"
