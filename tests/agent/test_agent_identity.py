"""A device serves one model identity (issue 12, finding 1): a fleet-signed bundle of another
model is refused with a named reason, whatever its version, and the old model keeps serving."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.updates import JobStatus

X = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)


def test_another_models_bundle_is_refused_and_the_real_update_still_installs(
    agent_config: Any, make_bundle: Callable[..., Path]
) -> None:
    dense1, dense2 = make_bundle("1", name="dense", seed=1), make_bundle("2", name="dense", seed=2)
    doorbell = make_bundle("99", name="doorbell-audio", seed=3)
    with Agent(agent_config()) as agent:
        assert agent.install(dense1).status is JobStatus.SUCCEEDED
        before = agent.predict(X)
        job = agent.install(doorbell)
        assert job.status is JobStatus.REJECTED and job.reason == "wrong_model", (job.status, job.reason, job.message)
        assert "doorbell-audio" in job.message and "'dense'" in job.message
        assert agent.active_version == "1" and np.array_equal(agent.predict(X), before)
        # the real model's next update is not blocked by the refused v99
        assert agent.install(dense2).status is JobStatus.SUCCEEDED and agent.active_version == "2"


def test_an_assigned_name_is_enforced_from_the_first_install_and_can_be_reassigned(
    agent_config: Any, make_bundle: Callable[..., Path]
) -> None:
    doorbell = make_bundle("1", name="doorbell-audio", seed=3)
    cam = make_bundle("5", name="dense", seed=1)
    cfg = dataclasses.replace(agent_config(), model_name="dense")
    with Agent(cfg) as agent:
        job = agent.install(doorbell)
        assert job.status is JobStatus.REJECTED and job.reason == "wrong_model"
        assert agent.install(cam).status is JobStatus.SUCCEEDED
    # the operator re-assigns the device: the other model installs although its version is lower
    with Agent(dataclasses.replace(cfg, model_name="doorbell-audio")) as agent:
        job = agent.install(doorbell)
        assert job.status is JobStatus.SUCCEEDED, job.message
        assert agent.status()["active"]["name"] == "doorbell-audio"


def test_cli_refuses_another_model_with_its_exit_code(tmp_path: Path, make_bundle: Callable[..., Path], keys: dict) -> None:
    state = tmp_path / "state"

    def ef(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgefleet.cli", "agent", *args, "--state-dir", str(state),
                               "--trust", str(keys["pub"]), "--hardware-tag", "test-board"],
                              capture_output=True, text=True, timeout=60)

    assert ef("install", str(make_bundle("1", name="dense", seed=1))).returncode == 0
    p = ef("install", str(make_bundle("2", name="sensor-anomaly", seed=2)))
    assert p.returncode == 12, p.stdout + p.stderr
    assert "wrong_model" in p.stdout + p.stderr and "Traceback" not in p.stderr
    p = ef("install", str(make_bundle("3", name="sensor-anomaly", seed=4)), "--model-name", "dense")
    assert p.returncode == 12 and "is assigned 'dense'" in p.stdout + p.stderr
