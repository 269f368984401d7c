"""The pure update state machine: transitions, reasons, persistence, anti-rollback and target checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.device_agent.updates import (
    Activate,
    Activated,
    Discard,
    Failed,
    InvalidTransition,
    JobLog,
    JobStatus,
    ProbationFailed,
    ProbationPassed,
    Refused,
    Resumed,
    Rollback,
    RolledBack,
    ShadowDone,
    SmokeFailed,
    SmokePassed,
    SmokeTest,
    Start,
    StartProbation,
    StartShadow,
    Step,
    UpdateMachine,
    Verified,
    Verify,
    check_target,
    check_version,
    new_job,
)


def machine(shadow: bool = False) -> UpdateMachine:
    return UpdateMachine(new_job("/b", shadow=shadow, job_id="j1"))


def test_happy_path_with_probation() -> None:
    m = machine()
    assert m.job.status is JobStatus.QUEUED
    assert m.handle(Start("old", "1"), now=1) == [Verify("/b")]
    assert (m.job.status, m.job.step) == (JobStatus.IN_PROGRESS, Step.VERIFYING)
    assert m.handle(Verified("new", "2"), now=2) == [SmokeTest("new")]
    assert m.handle(SmokePassed(), now=3) == [Activate("new")]
    assert m.handle(Activated(), now=4) == [StartProbation("new")]
    assert m.handle(ProbationPassed({"predictions": 9}), now=5) == []
    assert m.job.status is JobStatus.SUCCEEDED and m.job.reason == "healthy"
    assert [h["step"] for h in m.job.history] == ["verifying", "smoke_testing", "activating", "probation", ""]
    assert m.job.revision == 5
    with pytest.raises(InvalidTransition):
        m.handle(Activated())


def test_refusal_and_smoke_failure_are_rejections_with_reasons() -> None:
    m = machine()
    m.handle(Start())
    assert m.handle(Refused("bad_signature", "nope")) == []
    assert (m.job.status, m.job.reason, m.job.message) == (JobStatus.REJECTED, "bad_signature", "nope")
    m = machine()
    m.handle(Start())
    m.handle(Verified("new", "2"))
    assert m.handle(SmokeFailed("off by 1")) == [Discard("new")]
    assert (m.job.status, m.job.reason) == (JobStatus.REJECTED, "smoke_test_failed")


def test_probation_failure_rolls_back() -> None:
    m = machine()
    m.handle(Start("old", "1"))
    m.handle(Verified("new", "2"))
    m.handle(SmokePassed())
    m.handle(Activated())
    assert m.handle(ProbationFailed("error_rate", "5 of 10")) == [Rollback("old", "error_rate")]
    assert m.job.step is Step.ROLLING_BACK
    m.handle(RolledBack())
    assert (m.job.status, m.job.reason) == (JobStatus.ROLLED_BACK, "error_rate")


def test_shadow_step() -> None:
    m = machine(shadow=True)
    m.handle(Start("old", "1"))
    m.handle(Verified("new", "2"))
    assert m.handle(SmokePassed()) == [StartShadow("new")]
    assert m.handle(ShadowDone(False, {"agreement": 0.5})) == [Discard("new")]
    assert (m.job.status, m.job.reason) == (JobStatus.REJECTED, "shadow_disagreement")
    assert m.job.details["shadow"]["agreement"] == 0.5


def test_first_install_has_no_probation_and_failure_anywhere() -> None:
    m = machine()
    m.handle(Start())
    m.handle(Verified("new", "1"))
    m.handle(SmokePassed())
    assert m.handle(Activated()) == []
    assert (m.job.status, m.job.reason) == (JobStatus.SUCCEEDED, "installed")
    m = machine()
    m.handle(Start())
    m.handle(Verified("new", "1"))
    assert m.handle(Failed("store_error", "disk full")) == [Discard("new")]
    assert m.job.status is JobStatus.FAILED


def test_resume_from_each_step() -> None:
    m = machine()
    m.handle(Start("old", "1"))
    m.handle(Verified("new", "2"))
    assert m.handle(Resumed("old")) == [Verify("/b", "new")]
    m.handle(Verified("new", "2"))
    m.handle(SmokePassed())
    assert m.handle(Resumed("new")) == [StartProbation("new")]  # activation had completed
    assert m.handle(Resumed("new")) == [Rollback("old", "restarted_during_probation")]
    assert m.handle(Resumed("old")) == []  # the rollback had completed before the next crash
    assert (m.job.status, m.job.reason) == (JobStatus.ROLLED_BACK, "restarted_during_probation")


def test_joblog_roundtrip(tmp_path: Path) -> None:
    log = JobLog(tmp_path, keep=2)
    m = machine()
    m.handle(Start("old", "1"))
    log.save(m.job)
    assert log.get("j1") == m.job
    assert log.unfinished() == [m.job]
    for i in range(4):
        j = UpdateMachine(new_job("/x", job_id=f"d{i}"))
        j.handle(Start())
        j.handle(Refused("r"))
        log.save(j.job)
    log.prune()
    assert len(log.load_all()) == 3  # 2 finished kept + the unfinished one


def _manifest(version: str = "2", tags: tuple[str, ...] = (), runtime: str = "onnxruntime", min_agent: str = "0.1.0"):
    from edgefleet.manifest import FileEntry, Manifest, ModelFormat, Target, TensorSpec

    spec = TensorSpec("x", (-1, 4), "float32")
    return Manifest("m", version, "model.onnx", ModelFormat.ONNX, (spec,), (spec,),
                    {"model.onnx": FileEntry("0" * 64, 1)}, Target(runtime, min_agent, tags))


def test_target_and_version_checks() -> None:
    assert check_target(_manifest(), "0.1.0", ()) is None
    assert check_target(_manifest(tags=("a", "b")), "0.1.0", ("a",))[0] == "hardware_mismatch"
    assert check_target(_manifest(tags=("a",)), "0.1.0", ("a", "b")) is None
    assert check_target(_manifest(runtime="tensorrt"), "0.1.0", ())[0] == "incompatible_runtime"
    assert check_target(_manifest(min_agent="0.2"), "0.1.0", ())[0] == "agent_too_old"
    assert check_version(_manifest("2"), "n", "o", "1") is None
    assert check_version(_manifest("1"), "n", "o", "1")[0] == "version_not_newer"
    assert check_version(_manifest("1.0.9"), "n", "o", "1.1")[0] == "version_not_newer"
    assert check_version(_manifest("1"), "n", "o", "2", allow_older=True) is None
    assert check_version(_manifest("3"), "n", "o", "2", bad_ids=("n",))[0] == "known_bad"
    assert check_version(_manifest("1"), "n", None, None) is None


def test_available_runtimes_are_found_without_importing() -> None:
    import sys

    from edgefleet.device_agent.updates import available_runtimes

    before = set(sys.modules)
    assert set(available_runtimes()) == {"litert", "onnxruntime"}
    assert not {m for m in set(sys.modules) - before if m.startswith(("onnxruntime", "ai_edge_litert"))}


def test_every_action_of_the_machine_has_one_performer_in_the_agent() -> None:
    """The agent dispatches the machine's actions by a table (no isinstance chain that can miss one)."""
    from typing import get_args

    from edgefleet.device_agent.agent import Agent
    from edgefleet.device_agent.updates import Action

    assert set(Agent._PERFORM) == set(get_args(Action))
