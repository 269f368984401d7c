"""Probation (error rate, latency, smoke), automatic rollback, shadow mode, restart during an update."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from edgefleet.device_agent.agent import Agent, sdk_loader
from edgefleet.device_agent.updates import JobStatus, Step
from edgefleet.keys import PublicKey


class Flaky:
    """Wraps a model: fails or slows down predictions, like a bad build would."""

    def __init__(self, model: Any, fail: bool = False, sleep: float = 0.0) -> None:
        self._m, self.fail, self.sleep = model, fail, sleep
        self.manifest = model.manifest

    def predict(self, x: Any, **kw: Any) -> Any:
        if self.fail:
            raise RuntimeError("runtime exploded")
        if self.sleep:
            time.sleep(self.sleep)
        return self._m.predict(x, **kw)

    def run_smoke_tests(self) -> Any:
        return self._m.run_smoke_tests()

    def close(self) -> None:
        self._m.close()


def loader_with(version: str, **flaky: Any) -> Any:
    base = sdk_loader()

    def load(path: Path, keys: Sequence[PublicKey], require: bool) -> Any:
        m = base(path, keys, require)
        return Flaky(m, **flaky) if m.manifest.version == version else m

    return load


@pytest.fixture()
def x() -> np.ndarray:
    return np.ones((1, 4), np.float32)


def _serve(agent: Agent, x: np.ndarray, n: int) -> int:
    errors = 0
    for _ in range(n):
        try:
            agent.predict(x)
        except RuntimeError:
            errors += 1
    return errors


def test_error_rate_rolls_back_and_marks_bad(agent_config: Any, bundles: dict, x: np.ndarray) -> None:
    cfg = agent_config(probation_seconds=30.0, min_error_count=3, max_error_rate=0.1)
    with Agent(cfg, loader=loader_with("3", fail=True), tick_seconds=0.05) as agent:
        agent.install(bundles["1"], wait=True, timeout=1)
        assert agent.install(bundles["2"]).step is Step.PROBATION
        agent.rollback()  # operator rollback during probation ends the job as ROLLED_BACK
        assert agent.current_job.status is JobStatus.ROLLED_BACK and agent.current_job.reason == "operator_rollback"
        assert agent.active_version == "1"
        job = agent.install(bundles["3"])
        assert job.status is JobStatus.IN_PROGRESS and job.step is Step.PROBATION
        errors = _serve(agent, x, 3)
        assert errors == 3
        job = agent.wait(job.job_id, timeout=5)
        assert job.status is JobStatus.ROLLED_BACK and job.reason == "error_rate", job
        assert agent.active_version == "1"
        assert _serve(agent, x, 10) == 0
        again = agent.install(bundles["3"])
        assert again.status is JobStatus.REJECTED and again.reason == "known_bad"
        kinds = [r.kind for r in agent.telemetry.queue.peek(10_000)]
        assert "rolled_back" in kinds and "job" in kinds


def test_latency_probation_and_healthy_probation(agent_config: Any, bundles: dict, x: np.ndarray) -> None:
    cfg = agent_config(probation_seconds=0.3, probation_min_predictions=5, max_latency_ms=60.0)
    with Agent(cfg, loader=loader_with("3", sleep=0.15), tick_seconds=0.05) as agent:
        agent.install(bundles["1"], wait=True, timeout=1)
        job = agent.install(bundles["2"])
        _serve(agent, x, 5)
        assert agent.wait(job.job_id, timeout=5).status is JobStatus.SUCCEEDED
        job = agent.install(bundles["3"])
        _serve(agent, x, 6)
        job = agent.wait(job.job_id, timeout=5)
        assert job.status is JobStatus.ROLLED_BACK and job.reason == "latency", job
        assert agent.active_version == "2"
        assert job.details["probation"]["predictions"] >= 5


def test_shadow_disagreement_rejected_and_agreement_promoted(agent_config: Any, bundles: dict, make_bundle: Any, x: np.ndarray) -> None:
    cfg = agent_config(shadow=True, shadow_predictions=20, shadow_seconds=10.0, min_agreement=0.95)
    rng = np.random.default_rng(3)
    inputs = rng.normal(size=(40, 1, 4)).astype(np.float32)
    with Agent(cfg, tick_seconds=0.05) as agent:
        assert agent.install(bundles["1"]).status is JobStatus.SUCCEEDED  # nothing to shadow against
        job = agent.install(bundles["3"])
        assert job.step is Step.SHADOWING
        for xi in inputs:
            agent.predict(xi)
            assert agent.active_version == "1"  # the candidate's answers are never returned
        job = agent.wait(job.job_id, timeout=5)
        assert job.status is JobStatus.REJECTED and job.reason == "shadow_disagreement", job
        assert job.details["shadow"]["compared"] >= 1
        same = make_bundle("5", seed=1)  # v5 computes exactly what v1 does
        job = agent.install(same)
        for xi in inputs:
            agent.predict(xi)
            time.sleep(0.002)
        job = agent.wait(job.job_id, timeout=5)
        assert job.status is JobStatus.SUCCEEDED, job
        assert job.details["shadow"]["agreement"] == 1.0
        assert agent.active_version == "5"


def test_restart_during_probation_resumes_then_rolls_back(agent_config: Any, bundles: dict) -> None:
    cfg = agent_config(probation_seconds=60.0)
    a = Agent(cfg, monitor=False)
    assert a.install(bundles["1"]).status is JobStatus.SUCCEEDED  # first version: no probation
    job = a.install(bundles["2"])
    assert job.step is Step.PROBATION
    a.close()  # "power cut" while v2 is on probation
    a = Agent(cfg, monitor=False)
    assert a.current_job.step is Step.PROBATION and a.active_version == "2"
    a.close()
    a = Agent(cfg, monitor=False)  # restarted again during probation: Mender-style rollback
    job = a.current_job
    assert job.status is JobStatus.ROLLED_BACK and job.reason == "restarted_during_probation"
    assert a.active_version == "1"
    a.close()


def test_interrupted_verification_resumes_on_restart(agent_config: Any, bundles: dict) -> None:
    from edgefleet.device_agent.updates import JobLog, Start, UpdateMachine, new_job

    cfg = agent_config()
    with Agent(cfg, monitor=False) as a:
        a.install(bundles["1"])
    # a job persisted mid-verification, as a crash would leave it
    m = UpdateMachine(new_job(str(bundles["2"])))
    m.handle(Start())
    JobLog(Path(cfg.state_dir) / "jobs").save(m.job)
    with Agent(cfg, monitor=False) as a:
        assert a.current_job.job_id == m.job.job_id
        assert a.current_job.status is JobStatus.SUCCEEDED
        assert a.active_version == "2"
        assert [h["reason"] for h in a.current_job.history][:3] == ["verifying", "resumed", "smoke_testing"]


def test_busy_while_on_probation(agent_config: Any, bundles: dict) -> None:
    with Agent(agent_config(probation_seconds=60.0), monitor=False) as a:
        a.install(bundles["1"])
        assert a.install(bundles["2"]).step is Step.PROBATION
        job = a.install(bundles["3"])
        assert job.status is JobStatus.REJECTED and job.reason == "busy"
        assert a.active_version == "2"


def test_guest_process_does_not_steal_the_owners_job(agent_config: Any, bundles: dict, x: np.ndarray) -> None:
    """A CLI command while the daemon runs: it must not resume or GC what the owner is installing."""
    cfg = agent_config(probation_seconds=60.0)
    owner = Agent(cfg, tick_seconds=0.05)
    try:
        owner.install(bundles["1"])
        job = owner.install(bundles["2"])
        assert job.step is Step.PROBATION
        guest = Agent(cfg, monitor=False)  # e.g. `edgefleet agent predict`
        assert not guest.owner and owner.owner
        assert guest.current_job is None  # not resumed by the guest
        assert guest.predict(x).shape == (1, 3)
        busy = guest.install(bundles["3"])  # the owner is still watching v2
        assert (busy.status, busy.reason) == (JobStatus.REJECTED, "busy")
        guest.rollback()  # `edgefleet agent rollback` from another process
        guest.close()
        job = owner.wait(job.job_id, timeout=5)
        assert job.status is JobStatus.ROLLED_BACK and job.reason == "operator_rollback"
        assert owner.active_version == "1"
    finally:
        owner.close()
