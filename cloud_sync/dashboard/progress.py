"""A deployment's stages and its progress over time, from its registry rows (pure: no I/O, ``now`` is given).

What the deployment page draws: each stage of the plan (the canary, then the waves, as
:meth:`~edgefleet.cloud_sync.coordinator.rollout.RolloutPlan.stage_ends` cuts the planned targets) with its jobs
counted, and the cumulative number of dispatched, succeeded and failed install jobs over time (a job counts as
dispatched at its creation and as ended at its last update), with the deployment's recorded events as markers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from edgefleet.jobstate import JobState

from ..coordinator.rollout import BAD, RolloutPlan
from ..coordinator.rows import Deployment, Job, RolloutEvent

MAX_POINTS = 400  # the timeline is thinned to at most this many points (the first and the last kept)


@dataclass(frozen=True, slots=True)
class Stage:
    """Stage ``index`` (0: the canary when the plan has one): ``size`` devices of the planned targets, ``end`` the
    cumulative count after it; its install jobs counted; ``state`` done, current, halted or waiting."""

    index: int
    label: str
    size: int
    end: int
    dispatched: int
    succeeded: int
    failed: int
    canceled: int
    state: str


@dataclass(frozen=True, slots=True)
class Point:
    """The cumulative install-job counts at ``ts`` (wall-clock seconds)."""

    ts: float
    dispatched: int
    succeeded: int
    failed: int


@dataclass(frozen=True, slots=True)
class Marker:
    """A recorded event of the deployment (stage, paused, running, halted, completed, ...)."""

    ts: float
    kind: str
    stage: int
    detail: str


@dataclass(frozen=True, slots=True)
class Progress:
    deployment_id: str
    state: str
    stage: int
    planned: int
    targets: int
    created: float
    now: float
    stages: list[Stage]
    timeline: list[Point]
    markers: list[Marker]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stages(dep: Deployment, jobs: Sequence[Job]) -> list[Stage]:
    """The stages of ``dep``'s plan over its planned targets, each with its install jobs counted."""
    n = dep.planned if 0 <= dep.planned <= len(dep.targets) else len(dep.targets)
    ends = RolloutPlan(dep.canary, tuple(dep.waves), dep.max_failure).stage_ends(n)
    out: list[Stage] = []
    for i, end in enumerate(ends):
        mine = [j for j in jobs if j.action == "install" and j.stage == i]
        label = "canary" if i == 0 and dep.canary > 0 else f"wave {i if dep.canary > 0 else i + 1}"
        if dep.state == "completed" or i < dep.stage:
            state = "done"
        elif i == dep.stage:
            state = {"halted": "halted", "paused": "paused", "canceled": "stopped", "rolled_back": "stopped"
                     }.get(dep.state, "current")
        else:
            state = "waiting"
        out.append(Stage(i, label, end - (ends[i - 1] if i else 0), end, len(mine),
                         sum(j.status is JobState.SUCCEEDED for j in mine),
                         sum(j.status.value in BAD for j in mine),
                         sum(j.status is JobState.CANCELED for j in mine), state))
    return out


def timeline(dep: Deployment, jobs: Sequence[Job], max_points: int = MAX_POINTS) -> list[Point]:
    """Cumulative dispatched / succeeded / failed install jobs over time, from the deployment's creation; at most
    ``max_points`` points (evenly thinned, the first and the last kept)."""
    steps: list[tuple[float, int, int, int]] = []
    for j in jobs:
        if j.action != "install":
            continue
        steps.append((j.created, 1, 0, 0))
        if j.status is JobState.SUCCEEDED:
            steps.append((max(j.updated, j.created), 0, 1, 0))
        elif j.status.value in BAD:
            steps.append((max(j.updated, j.created), 0, 0, 1))
    steps.sort()
    points = [Point(dep.created, 0, 0, 0)]
    d = s = f = 0
    for ts, dd, ds, df in steps:
        d, s, f = d + dd, s + ds, f + df
        if points[-1].ts == ts:
            points[-1] = Point(ts, d, s, f)
        else:
            points.append(Point(ts, d, s, f))
    return thin(points, max_points)


def thin(points: list[Point], max_points: int) -> list[Point]:
    """At most ``max_points`` of ``points``, evenly spaced by index; the first and the last always kept."""
    if len(points) <= max_points or max_points < 2:
        return points
    step = (len(points) - 1) / (max_points - 1)
    return [points[round(i * step)] for i in range(max_points)]


def progress(dep: Deployment, jobs: Sequence[Job], events: Sequence[RolloutEvent], now: float) -> Progress:
    """What the deployment page draws of ``dep`` at ``now``."""
    return Progress(dep.id, dep.state, dep.stage, dep.planned, len(dep.targets), dep.created, now,
                    stages(dep, jobs), timeline(dep, jobs),
                    [Marker(e.ts, e.kind, e.stage, e.detail) for e in events])


__all__ = ["MAX_POINTS", "Marker", "Point", "Progress", "Stage", "progress", "stages", "thin", "timeline"]
