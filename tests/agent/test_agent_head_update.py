"""A real agent with a backbone + trainable-head bundle: it installs v1, rebuilds v2 from its installed v1 and a
head-only update (edgefleet.headupdate), installs the rebuilt v2 like a full download, and serves v2's predictions;
the process never imports TensorFlow or another heavy framework."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from agent_helpers import make_onnx

from edgefleet.bundle import verify_bundle_dir
from edgefleet.head import Head, HeadLayer
from edgefleet.headupdate import head_update_of, update_head
from edgefleet.pack import pack

HEAVY = ("tensorflow", "keras", "tf_keras", "flwr", "paho", "tf2onnx", "onnx", "torch", "sklearn")

WORKER = r"""
import json, sys
from pathlib import Path
import numpy as np
from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.config import AgentConfig, UpdateConfig
from edgefleet.headupdate import HeadUpdate, rebuild_bundle

state, pub, v1, update_file, out = sys.argv[1:6]
cfg = AgentConfig(state_dir=state, device_id="dev-1", hardware_tags=("test-board",), trusted_keys=(pub,),
                  update=UpdateConfig(probation_seconds=0.0))
x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
with Agent(cfg, tick_seconds=0.05) as agent:
    first = agent.install(v1, wait=True, timeout=30)
    active = agent.store.state().active
    installed = agent.store.verify(active.id)
    update = HeadUpdate.from_bytes(Path(update_file).read_bytes())
    rebuilt = rebuild_bundle(installed, update, out, trusted_keys=pub)
    second = agent.install(rebuilt.path, wait=True, timeout=30)
    result = {"first": first.status.value, "second": second.status.value, "version": agent.active_version,
              "predict": np.asarray(agent.predict(x)).tolist(), "modules": sorted(sys.modules)}
print(json.dumps(result))
"""


def _head(seed: int) -> Head:
    rng = np.random.default_rng(seed)
    layers = [HeadLayer("dense", "fc", (3,), (5,), "tanh", (("kernel", (3, 5)), ("bias", (5,)))),
              HeadLayer("dense", "probs", (5,), (2,), "softmax", (("kernel", (5, 2)), ("bias", (2,))))]
    return Head(layers, {"fc.kernel": rng.normal(size=(3, 5)), "fc.bias": rng.normal(size=5),
                         "probs.kernel": rng.normal(size=(5, 2)), "probs.bias": rng.normal(size=2)})


def test_agent_installs_v2_rebuilt_from_a_head_only_update(tmp_path: Path, keys: dict[str, Any]) -> None:
    backbone = make_onnx(tmp_path / "backbone.onnx", seed=3)  # (N, 4) -> (N, 3) features
    v1, _ = pack(backbone, tmp_path / "v1", name="dense", version="1", head=_head(0), private_key=keys["priv"],
                 hardware_tags=("test-board",))
    np.savez(tmp_path / "new.npz", **_head(9).weights)
    v2, _ = update_head(v1.path, tmp_path / "new.npz", tmp_path / "v2", version="2", private_key=keys["priv"])
    (tmp_path / "v2.efh").write_bytes(head_update_of(v2, verify_bundle_dir(v1.path)).to_bytes())
    proc = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "state"), str(keys["pub"]), str(v1.path),
                           str(tmp_path / "v2.efh"), str(tmp_path / "rebuilt")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["first"], result["second"], result["version"]) == ("SUCCEEDED", "SUCCEEDED", "2")
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    import edgefleet

    with edgefleet.load(v2.path) as m:
        np.testing.assert_allclose(np.asarray(result["predict"]), m.predict(x), atol=1e-6)
    assert {p.name: p.read_bytes() for p in (tmp_path / "rebuilt").iterdir()} == {p.name: p.read_bytes() for p in v2.path.iterdir()}
    loaded = {m.split(".")[0] for m in result["modules"]}
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
