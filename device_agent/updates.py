"""The update state machine: pure ``handle(event) -> actions``, in the style of AWS IoT Jobs.

A job moves QUEUED -> IN_PROGRESS -> SUCCEEDED | FAILED | REJECTED | ROLLED_BACK.
While IN_PROGRESS its ``step`` says where it is (verifying, smoke_testing,
shadowing, activating, probation). Every transition records a reason. The
machine does no I/O: a driver (:class:`edgefleet.device_agent.agent.Agent`)
performs each returned action and feeds the outcome back as an event, and
persists the job after every transition (:class:`JobLog`), so a restarted agent
resumes or reports it.

    QUEUED --Start--> verifying --Verified--> smoke_testing --SmokePassed--> [shadowing] --> activating
       verifying --Refused--> REJECTED        smoke_testing --SmokeFailed--> REJECTED
       activating --Activated--> probation --ProbationPassed--> SUCCEEDED
                                 probation --ProbationFailed--> (Rollback) --RolledBack--> ROLLED_BACK
       any step --Failed--> FAILED
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Union

from edgefleet.atomic import write_atomic
from edgefleet.jobstate import JobState as JobStatus  # the update machine's name for the shared job states
from edgefleet.manifest import Manifest, parse_version

from ._failpoints import failpoint


class Step(str, Enum):
    NONE = ""
    VERIFYING = "verifying"
    SMOKE_TESTING = "smoke_testing"
    SHADOWING = "shadowing"
    ACTIVATING = "activating"
    PROBATION = "probation"
    ROLLING_BACK = "rolling_back"


MAX_RESTARTS_IN_PROBATION = 1  # a second restart while on probation rolls back (Mender-style)


@dataclass(frozen=True)
class Job:
    """One install, persisted after each transition. ``revision`` rises with each change."""

    job_id: str
    source: str
    status: JobStatus = JobStatus.QUEUED
    step: Step = Step.NONE
    reason: str = "queued"
    message: str = ""
    shadow: bool = False
    allow_older: bool = False  # set only by a verified signed rollback order
    target_id: str = ""
    target_version: str = ""
    from_id: str = ""
    from_version: str = ""
    restarts: int = 0
    revision: int = 0
    updated_at: float = 0.0
    history: tuple[dict[str, Any], ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "source": self.source,
            "status": self.status.value,
            "step": self.step.value,
            "reason": self.reason,
            "message": self.message,
            "shadow": self.shadow,
            "allow_older": self.allow_older,
            "target_id": self.target_id,
            "target_version": self.target_version,
            "from_id": self.from_id,
            "from_version": self.from_version,
            "restarts": self.restarts,
            "revision": self.revision,
            "updated_at": self.updated_at,
            "history": list(self.history),
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(
            job_id=str(d["job_id"]),
            source=str(d.get("source", "")),
            status=JobStatus(d["status"]),
            step=Step(d.get("step", "")),
            reason=str(d.get("reason", "")),
            message=str(d.get("message", "")),
            shadow=bool(d.get("shadow", False)),
            allow_older=bool(d.get("allow_older", False)),
            target_id=str(d.get("target_id", "")),
            target_version=str(d.get("target_version", "")),
            from_id=str(d.get("from_id", "")),
            from_version=str(d.get("from_version", "")),
            restarts=int(d.get("restarts", 0)),
            revision=int(d.get("revision", 0)),
            updated_at=float(d.get("updated_at", 0.0)),
            history=tuple(d.get("history", ())),
            details=dict(d.get("details", {})),
        )


def new_job(source: str, *, shadow: bool = False, allow_older: bool = False, job_id: str | None = None) -> Job:
    return Job(job_id=job_id or uuid.uuid4().hex[:16], source=str(source), shadow=shadow, allow_older=allow_older)


# -- events (outcomes the driver reports) ---------------------------------------------
@dataclass(frozen=True)
class Start:
    active_id: str = ""
    active_version: str = ""


@dataclass(frozen=True)
class Verified:
    target_id: str
    target_version: str
    already_active: bool = False  # the very same bundle is active: nothing to do


@dataclass(frozen=True)
class Refused:
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Failed:
    reason: str
    message: str = ""


@dataclass(frozen=True)
class SmokePassed:
    max_abs_error: float = 0.0


@dataclass(frozen=True)
class SmokeFailed:
    message: str = ""
    reason: str = "smoke_test_failed"  # or "load_failed" when the runtime cannot open the model


@dataclass(frozen=True)
class ShadowDone:
    ok: bool
    report: dict[str, Any] = field(default_factory=dict)
    reason: str = "shadow_disagreement"  # or "shadow_no_traffic"


@dataclass(frozen=True)
class Activated:
    pass


@dataclass(frozen=True)
class ProbationPassed:
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbationFailed:
    reason: str
    message: str = ""
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RolledBack:
    pass


@dataclass(frozen=True)
class Resumed:
    """The agent restarted with this job in progress; ``active_id`` is what the store says now."""

    active_id: str


Event = Union[
    Start, Verified, Refused, Failed, SmokePassed, SmokeFailed, ShadowDone, Activated,
    ProbationPassed, ProbationFailed, RolledBack, Resumed,
]


# -- actions (what the driver must do next) --------------------------------------------
@dataclass(frozen=True)
class Verify:
    source: str
    target_id: str = ""  # already staged: re-verify the stored object instead of the source


@dataclass(frozen=True)
class SmokeTest:
    target_id: str


@dataclass(frozen=True)
class StartShadow:
    target_id: str


@dataclass(frozen=True)
class Activate:
    target_id: str


@dataclass(frozen=True)
class StartProbation:
    target_id: str


@dataclass(frozen=True)
class Rollback:
    to_id: str
    reason: str


@dataclass(frozen=True)
class Discard:
    target_id: str


Action = Union[Verify, SmokeTest, StartShadow, Activate, StartProbation, Rollback, Discard]


class InvalidTransition(Exception):
    """An event that makes no sense in the job's current state (a driver bug or a stale event)."""


def _move(job: Job, status: JobStatus, step: Step, reason: str, message: str, now: float, **changes: Any) -> Job:
    entry = {"at": round(now, 3), "status": status.value, "step": step.value, "reason": reason}
    if message:
        entry["message"] = message[:500]
    return replace(
        job,
        status=status,
        step=step,
        reason=reason,
        message=message,
        revision=job.revision + 1,
        updated_at=now,
        history=job.history + (entry,),
        **changes,
    )


def transition(job: Job, event: Event, now: float | None = None) -> tuple[Job, list[Action]]:
    """The pure state machine: the next job and the actions to perform."""
    t = time.time() if now is None else now
    S, P = JobStatus, Step
    if job.status.terminal:
        raise InvalidTransition(f"job {job.job_id} is already {job.status.value}")
    if isinstance(event, Failed):
        done = _move(job, S.FAILED, P.NONE, event.reason, event.message, t)
        return done, ([Discard(job.target_id)] if job.target_id and job.step is not P.PROBATION else [])
    if job.status is S.QUEUED:
        if isinstance(event, Start):
            nxt = _move(job, S.IN_PROGRESS, P.VERIFYING, "verifying", "", t,
                        from_id=event.active_id, from_version=event.active_version)
            return nxt, [Verify(job.source)]
        raise InvalidTransition(f"{type(event).__name__} while QUEUED")
    step = job.step
    if isinstance(event, Resumed):
        return _resume(job, event, t)
    if step is P.VERIFYING:
        if isinstance(event, Verified) and event.already_active:
            done = _move(job, S.SUCCEEDED, P.NONE, "already_active", "", t,
                         target_id=event.target_id, target_version=event.target_version)
            return done, []
        if isinstance(event, Verified):
            nxt = _move(job, S.IN_PROGRESS, P.SMOKE_TESTING, "smoke_testing", "", t,
                        target_id=event.target_id, target_version=event.target_version)
            return nxt, [SmokeTest(event.target_id)]
        if isinstance(event, Refused):
            done = _move(job, S.REJECTED, P.NONE, event.reason, event.message, t)
            return done, ([Discard(job.target_id)] if job.target_id else [])
    elif step is P.SMOKE_TESTING:
        if isinstance(event, SmokePassed):
            if job.shadow:
                return _move(job, S.IN_PROGRESS, P.SHADOWING, "shadowing", "", t), [StartShadow(job.target_id)]
            return _move(job, S.IN_PROGRESS, P.ACTIVATING, "activating", "", t), [Activate(job.target_id)]
        if isinstance(event, SmokeFailed):
            done = _move(job, S.REJECTED, P.NONE, event.reason, event.message, t)
            return done, [Discard(job.target_id)]
    elif step is P.SHADOWING:
        if isinstance(event, ShadowDone):
            details = {**job.details, "shadow": event.report}
            if event.ok:
                nxt = _move(job, S.IN_PROGRESS, P.ACTIVATING, "activating", "", t, details=details)
                return nxt, [Activate(job.target_id)]
            done = _move(job, S.REJECTED, P.NONE, event.reason, json.dumps(event.report), t, details=details)
            return done, [Discard(job.target_id)]
    elif step is P.ACTIVATING:
        if isinstance(event, Activated) and not job.from_id:
            # the first version on the device: there is nothing to fall back to, so no probation
            return _move(job, S.SUCCEEDED, P.NONE, "installed", "first version on this device", t), []
        if isinstance(event, Activated):
            return _move(job, S.IN_PROGRESS, P.PROBATION, "probation", "", t), [StartProbation(job.target_id)]
    elif step is P.PROBATION:
        if isinstance(event, ProbationPassed):
            details = {**job.details, "probation": event.report}
            return _move(job, S.SUCCEEDED, P.NONE, "healthy", "", t, details=details), []
        if isinstance(event, ProbationFailed):
            details = {**job.details, "probation": event.report}
            nxt = _move(job, S.IN_PROGRESS, P.ROLLING_BACK, event.reason, event.message, t, details=details)
            return nxt, [Rollback(job.from_id, event.reason)]
    elif step is P.ROLLING_BACK:
        if isinstance(event, RolledBack):
            return _move(job, S.ROLLED_BACK, P.NONE, job.reason, job.message, t), []
    raise InvalidTransition(f"{type(event).__name__} during step {step.value!r} of job {job.job_id}")


def _resume(job: Job, event: Resumed, t: float) -> tuple[Job, list[Action]]:
    S, P = JobStatus, Step
    step = job.step
    restarted = replace(job, restarts=job.restarts + 1)
    if step in (P.VERIFYING, P.SMOKE_TESTING, P.SHADOWING):
        nxt = _move(restarted, S.IN_PROGRESS, P.VERIFYING, "resumed", f"restarted during {step.value}", t)
        return nxt, [Verify(job.source, job.target_id)]
    if step is P.ACTIVATING:
        if event.active_id == job.target_id:
            return _move(restarted, S.IN_PROGRESS, P.PROBATION, "probation", "resumed after activation", t), [
                StartProbation(job.target_id)
            ]
        return _move(restarted, S.IN_PROGRESS, P.ACTIVATING, "resumed", "", t), [Activate(job.target_id)]
    if step is P.PROBATION:
        if event.active_id != job.target_id:
            return _move(restarted, S.ROLLED_BACK, P.NONE, "rolled_back_externally", "", t), []
        if restarted.restarts > MAX_RESTARTS_IN_PROBATION:
            msg = f"the agent restarted {restarted.restarts} times while the new version was on probation"
            nxt = _move(restarted, S.IN_PROGRESS, P.ROLLING_BACK, "restarted_during_probation", msg, t)
            return nxt, [Rollback(job.from_id, "restarted_during_probation")]
        return _move(restarted, S.IN_PROGRESS, P.PROBATION, "probation", "resumed", t), [StartProbation(job.target_id)]
    if step is P.ROLLING_BACK:
        if event.active_id == job.from_id:
            return _move(restarted, S.ROLLED_BACK, P.NONE, job.reason, job.message, t), []
        return _move(restarted, S.IN_PROGRESS, P.ROLLING_BACK, job.reason, job.message, t), [
            Rollback(job.from_id, job.reason)
        ]
    raise InvalidTransition(f"cannot resume job {job.job_id} from step {step.value!r}")


class UpdateMachine:
    """Holds one job and applies events: ``handle(event) -> actions``."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def handle(self, event: Event, now: float | None = None) -> list[Action]:
        self.job, actions = transition(self.job, event, now)
        return actions


# -- pure checks used while verifying ------------------------------------------------------
SUPPORTED_RUNTIMES = ("litert", "onnxruntime")
_RUNTIME_MODULES = {"litert": ("ai_edge_litert", "tflite_runtime"), "onnxruntime": ("onnxruntime",)}


def available_runtimes() -> tuple[str, ...]:
    """The runtimes installed on this device (found without importing them)."""
    import importlib.util

    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    return tuple(r for r, modules in _RUNTIME_MODULES.items() if any(found(m) for m in modules))


def check_target(
    manifest: Manifest,
    agent_version: str,
    hardware_tags: tuple[str, ...] | list[str],
    runtimes: tuple[str, ...] = SUPPORTED_RUNTIMES,
) -> tuple[str, str] | None:
    """``(reason, message)`` if the bundle cannot run on this device, else None."""
    target = manifest.target
    if target.runtime not in runtimes:
        return "incompatible_runtime", f"bundle needs runtime {target.runtime!r}; this device has {list(runtimes)}"
    if parse_version(target.min_agent_version) > parse_version(agent_version):
        return "agent_too_old", f"bundle needs agent >= {target.min_agent_version}; this agent is {agent_version}"
    missing = [t for t in target.hardware_tags if t not in set(hardware_tags)]
    if missing:
        return "hardware_mismatch", (
            f"bundle targets hardware {list(target.hardware_tags)}; this device lacks {missing} (has {list(hardware_tags)})"
        )
    return None


def check_identity(candidate: Manifest, assigned: str, active_name: str | None) -> tuple[str, str] | None:
    """A device serves one model: ``assigned`` (the config's ``model_name``) or else the model
    it serves now. A bundle of another name is refused, whatever its signature and version
    (a signed doorbell model must not replace a camera's)."""
    expected = assigned or active_name
    if expected and candidate.name != expected:
        how = "is assigned" if assigned else "serves"
        return "wrong_model", (
            f"bundle is model {candidate.name!r} v{candidate.version}; this device {how} {expected!r} "
            "(set agent.model_name to re-assign it)"
        )
    return None


def check_version(
    candidate: Manifest,
    candidate_id: str,
    active_id: str | None,
    active_version: str | None,
    bad_ids: tuple[str, ...] = (),
    allow_older: bool = False,
    active_name: str | None = None,
) -> tuple[str, str] | None:
    """Anti-rollback: the candidate must be newer than the active version unless a signed order allows it."""
    if candidate_id in bad_ids and not allow_older:
        return "known_bad", f"{candidate.name} v{candidate.version} failed its health check here before"
    if active_version is None or allow_older:
        return None
    if candidate_id == active_id:
        return None
    if active_name is not None and candidate.name != active_name:
        return None  # a re-assigned device: versions of two models do not compare
    if parse_version(candidate.version) <= parse_version(active_version):
        return "version_not_newer", (
            f"{candidate.name} v{candidate.version} is not newer than the active v{active_version}; "
            "only a signed rollback order may install an older version"
        )
    return None


class JobLog:
    """Jobs persisted as one JSON file each (atomic write + rename), newest kept."""

    def __init__(self, root: str | os.PathLike, keep: int = 50) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def save(self, job: Job) -> None:
        write_atomic(self.root / f"{job.job_id}.json", json.dumps(job.to_dict(), sort_keys=True))
        failpoint("job.saved")

    def load_all(self) -> list[Job]:
        jobs = []
        for p in self.root.glob("*.json"):
            try:
                jobs.append(Job.from_dict(json.loads(p.read_text("utf-8"))))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(jobs, key=lambda j: (j.history[0]["at"] if j.history else j.updated_at, j.updated_at))

    def get(self, job_id: str) -> Job | None:
        p = self.root / f"{job_id}.json"
        try:
            return Job.from_dict(json.loads(p.read_text("utf-8")))
        except (OSError, ValueError, KeyError):
            return None

    def unfinished(self) -> list[Job]:
        return [j for j in self.load_all() if not j.status.terminal]

    def prune(self) -> None:
        jobs = self.load_all()
        done = [j for j in jobs if j.status.terminal]
        for j in done[: max(0, len(done) - self.keep)]:
            (self.root / f"{j.job_id}.json").unlink(missing_ok=True)
        for p in self.root.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)
