"""The agent on LiteRT: int8 and float TFLite bundles swapped under load (models built by TF in a subprocess)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.updates import JobStatus


def test_litert_hot_swap_under_load(model_dir: Path, tmp_path: Path, keys: dict[str, Any], agent_config: Any) -> None:
    from edgefleet.pack import pack

    bundles = []
    for v, name in (("1", "digits_float.tflite"), ("2", "digits_int8.tflite"), ("3", "digits_float.tflite")):
        b, _ = pack(model_dir / name, tmp_path / f"b{v}", name="digits", version=v, private_key=keys["priv"],
                    hardware_tags=("test-board",))
        bundles.append(b.path)
    x = np.random.default_rng(0).uniform(0, 16, size=(1, 64)).astype(np.float32)
    failures: list[BaseException] = []
    stop = threading.Event()
    with Agent(agent_config(), tick_seconds=0.05) as agent:
        assert agent.install(bundles[0]).status is JobStatus.SUCCEEDED
        assert agent.model is not None and agent.model.backend_name == "litert"

        def hammer() -> None:
            while not stop.is_set():
                try:
                    y = agent.predict(x)
                    assert y.shape == (1, 10)
                except BaseException as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for b in bundles[1:]:
                assert agent.install(b).status is JobStatus.SUCCEEDED
                agent.rollback()
                agent.rollback()
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert failures == []
        assert agent.active_version == "3"
