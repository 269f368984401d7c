"""The deployment page's stages and progress over time, as pure functions of registry rows (issue 15)."""

from __future__ import annotations

import dataclasses
from typing import Any

from edgefleet.cloud_sync.coordinator.rows import Deployment, Job, RolloutEvent
from edgefleet.cloud_sync.dashboard.progress import Point, progress, stages, thin, timeline
from edgefleet.jobstate import JobState


def _row(cls: Any, **given: Any) -> Any:
    """A row of ``cls`` with the fields given and empty values for the rest (the tables gain columns over time)."""
    empty: dict[str, Any] = {"str": "", "int": 0, "float": 0.0, "bool": False, "JobState": JobState.QUEUED}
    values = {}
    for f in dataclasses.fields(cls):
        kind = str(f.type).split("[")[0].split(" |")[0]
        values[f.name] = given[f.name] if f.name in given else {"list": [], "dict": {}}.get(kind, empty.get(kind))
    return cls(**values)


def dep(**kw: Any) -> Deployment:
    base = {"id": "d1", "fleet": "f", "canary": 0.25, "waves": [0.5, 1.0], "max_failure": 0.0, "state": "running",
            "stage": 0, "targets": ["a", "b", "c", "d"], "planned": 4, "created": 100.0, "updated": 100.0}
    return _row(Deployment, **{**base, **kw})  # type: ignore[no-any-return]


def job(device: str, status: JobState, stage: int, created: float, updated: float, action: str = "install") -> Job:
    return _row(Job, job_id=f"{device}-{action}", deployment_id="d1", fleet="f", device_id=device,  # type: ignore
                action=action, status=status, stage=stage, created=created, updated=updated)


def test_stages_follow_the_plan_over_the_planned_targets() -> None:
    jobs = [job("a", JobState.SUCCEEDED, 0, 101, 102), job("b", JobState.FAILED, 1, 103, 104),
            job("c", JobState.IN_PROGRESS, 2, 105, 105), job("d", JobState.CANCELED, 2, 105, 106),
            job("a", JobState.SUCCEEDED, 0, 107, 108, action="rollback")]  # rollback jobs are not install progress
    got = stages(dep(stage=2), jobs)
    assert [(s.label, s.size, s.end, s.state) for s in got] == [
        ("canary", 1, 1, "done"), ("wave 1", 1, 2, "done"), ("wave 2", 2, 4, "current")]
    assert [(s.dispatched, s.succeeded, s.failed, s.canceled) for s in got] == [(1, 1, 0, 0), (1, 0, 1, 0),
                                                                               (2, 0, 0, 1)]
    assert [s.state for s in stages(dep(stage=1, state="halted"), jobs)] == ["done", "halted", "waiting"]
    assert [s.state for s in stages(dep(stage=1, state="canceled"), jobs)] == ["done", "stopped", "waiting"]
    assert [s.state for s in stages(dep(stage=0, state="paused"), jobs)] == ["paused", "waiting", "waiting"]
    assert [s.state for s in stages(dep(stage=2, state="completed"), jobs)] == ["done", "done", "done"]
    # without a canary the first stage is the first wave; joiners (targets beyond planned) change no stage size
    assert [(s.label, s.size) for s in stages(dep(canary=0.0, waves=[1.0], targets=list("abcdef")), [])] == [
        ("wave 1", 4)]
    assert stages(dep(targets=[], planned=0), []) == []


def test_timeline_counts_jobs_as_they_are_dispatched_and_end() -> None:
    jobs = [job("a", JobState.SUCCEEDED, 0, 101, 102), job("b", JobState.REJECTED, 1, 103, 104),
            job("c", JobState.QUEUED, 1, 103, 103), job("d", JobState.TIMED_OUT, 2, 105, 109)]
    assert timeline(dep(), jobs) == [Point(100, 0, 0, 0), Point(101, 1, 0, 0), Point(102, 1, 1, 0),
                                     Point(103, 3, 1, 0), Point(104, 3, 1, 1), Point(105, 4, 1, 1),
                                     Point(109, 4, 1, 2)]
    assert timeline(dep(), []) == [Point(100, 0, 0, 0)]


def test_timeline_is_thinned_keeping_the_first_and_last_points() -> None:
    points = [Point(float(i), i, i, 0) for i in range(1000)]
    got = thin(points, 50)
    assert len(got) == 50 and got[0] == points[0] and got[-1] == points[-1]
    assert [p.ts for p in got] == sorted(p.ts for p in got)
    assert thin(points[:10], 50) == points[:10]
    many = [job(f"x{i}", JobState.SUCCEEDED, 0, 100 + i, 100.5 + i) for i in range(600)]
    assert len(timeline(dep(targets=[f"x{i}" for i in range(600)], planned=600), many, max_points=400)) == 400


def test_progress_carries_the_events_as_markers() -> None:
    events = [_row(RolloutEvent, id=1, deployment_id="d1", kind="stage", stage=1, detail="1 device(s)", ts=103.0),
              _row(RolloutEvent, id=2, deployment_id="d1", kind="paused", stage=1, detail="", ts=104.0)]
    doc = progress(dep(stage=1, state="paused"), [], events, now=200.0).to_dict()
    assert [(m["kind"], m["ts"]) for m in doc["markers"]] == [("stage", 103.0), ("paused", 104.0)]
    assert doc["now"] == 200.0 and doc["state"] == "paused" and doc["targets"] == 4
