"""Issue 15, rollout controls, the pure parts: the rate limit and the minimum of finished jobs in
``rollout.evaluate`` (unit and hypothesis tests), which action a state allows (``action_refusal``), ``--rate``
parsing, and the client side's reading of a deployment's summary (``coordinator/watch.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.cloud_sync.coordinator.rollout import (
    RATE_WINDOW,
    RolloutPlan,
    View,
    action_refusal,
    evaluate,
    judged,
    parse_dispatch_rate,
)
from edgefleet.cloud_sync.coordinator.watch import (
    outcome_error,
    progress_line,
    rollback_error,
    rollback_report,
)
from edgefleet.errors import (
    ConfigError,
    RollbackIncompleteError,
    RolloutCanceledError,
    RolloutHaltedError,
    RolloutRolledBackError,
)

DEVS = tuple(f"d{i:02d}" for i in range(10))


def _view(state: str = "running", stage: int = -1, jobs: dict[str, str] | None = None, times: tuple[float, ...] = (),
          now: float = 1000.0, targets: tuple[str, ...] = DEVS) -> View:
    jobs = jobs or {}
    return View(state, stage, targets, jobs, frozenset(targets), -1, times or tuple(now for _ in jobs), now)


# -- the rate: devices dispatched per minute at most -------------------------------------------------------------
def test_rate_holds_back_what_does_not_fit_in_the_minute() -> None:
    plan = RolloutPlan(canary=0.0, waves=(1.0,), rate=3)
    first = evaluate(plan, _view())
    assert first.dispatch == DEVS[:3] and first.held == DEVS[3:] and first.stage == 0
    # the same minute: the three dispatched jobs use up the rate, nothing more goes out
    jobs = {d: "DOWNLOADING" for d in first.dispatch}
    later = evaluate(plan, _view(stage=0, jobs=jobs, times=(1000.0,) * 3, now=1000.0 + RATE_WINDOW - 1))
    assert later.dispatch == () and later.held == DEVS[3:]
    # a minute on, three more
    again = evaluate(plan, _view(stage=0, jobs=jobs, times=(1000.0,) * 3, now=1000.0 + RATE_WINDOW))
    assert again.dispatch == DEVS[3:6] and again.stage == 0


def test_without_a_rate_a_stage_goes_out_at_once() -> None:
    d = evaluate(RolloutPlan(canary=0.0, waves=(1.0,)), _view())
    assert d.dispatch == DEVS and d.held == ()


def test_rate_applies_to_later_stages_and_joiners_of_a_completed_rollout() -> None:
    plan = RolloutPlan(canary=0.1, waves=(1.0,), rate=2)
    canary_done = {"d00": "SUCCEEDED"}
    d = evaluate(plan, _view(stage=0, jobs=canary_done, times=(0.0,)))
    assert d.stage == 1 and d.dispatch == DEVS[1:3] and d.held == DEVS[3:]
    done = {x: "SUCCEEDED" for x in DEVS}
    joiners = DEVS + ("j1", "j2", "j3")
    d = evaluate(plan, View("completed", 1, joiners, done, frozenset(joiners), len(DEVS), (999.0,), 1000.0))
    assert d.dispatch == ("j1",) and d.held == ("j2", "j3")


@settings(max_examples=200, deadline=None)
@given(rate=st.integers(1, 6), n=st.integers(1, 25), canary=st.sampled_from([0.0, 0.1, 0.5]),
       steps=st.lists(st.floats(0.5, 90.0), min_size=1, max_size=40))
def test_no_window_of_a_minute_sees_more_than_the_rate(rate: int, n: int, canary: float, steps: list[float]) -> None:
    """Driven tick by tick (every job ends at once), no 60 s window ever holds more than ``rate`` dispatches, and
    every device is dispatched in the end."""
    plan = RolloutPlan(canary=canary, waves=(0.5, 1.0), rate=rate)
    targets = tuple(f"t{i:02d}" for i in range(n))
    jobs: dict[str, str] = {}
    times: list[float] = []
    stage, now = -1, 0.0
    for dt in steps + [61.0] * (n + 4):
        d = evaluate(plan, View("running", stage, targets, dict(jobs), frozenset(targets), -1, tuple(times), now))
        assert not d.halt
        if d.complete:
            break
        for dev in d.dispatch:
            jobs[dev] = "SUCCEEDED"
            times.append(now)
        stage = stage if d.stage is None else d.stage
        now += dt
    assert set(jobs) == set(targets)
    for t in times:
        assert sum(1 for u in times if t <= u < t + RATE_WINDOW) <= rate


# -- the minimum of finished jobs before the failure rate counts ---------------------------------------------------
def test_one_failed_canary_halts_without_min_finished() -> None:
    d = evaluate(RolloutPlan(canary=0.1, waves=(1.0,), max_failure=0.02), _view(stage=0, jobs={"d00": "REJECTED"}))
    assert d.halt and "100% > 2%" in d.halt and d.failed == ("d00",) and "d00" in d.halt


def test_min_finished_holds_the_gate_until_enough_jobs_ended() -> None:
    plan = RolloutPlan(canary=0.1, waves=(1.0,), max_failure=0.2, min_finished=5)
    # one failed canary: not judged yet, the rollout goes on to the next stage
    d = evaluate(plan, _view(stage=0, jobs={"d00": "REJECTED"}, times=(0.0,)))
    assert not d.halt and d.stage == 1 and d.dispatch == DEVS[1:]
    # four ended (1 bad of 10 dispatched): still not judged
    jobs = {"d00": "REJECTED", **{x: "SUCCEEDED" for x in DEVS[1:4]}, **{x: "DOWNLOADING" for x in DEVS[4:]}}
    assert not evaluate(plan, _view(stage=1, jobs=jobs, times=(0.0,) * 10)).halt
    # a second failure makes five ended: judged, 2 of 10 = 20% is not above 20%
    jobs["d04"] = "FAILED"
    assert not evaluate(plan, _view(stage=1, jobs=jobs, times=(0.0,) * 10)).halt
    jobs["d05"] = "TIMED_OUT"  # 3 of 10 = 30% > 20%, six ended
    d = evaluate(plan, _view(stage=1, jobs=jobs, times=(0.0,) * 10))
    assert d.halt and "6 finished >= 5" in d.halt and d.failed == ("d00", "d04", "d05")
    assert set(d.cancel) == set(DEVS[6:]) and d.rollback == DEVS[1:4]


def test_a_fleet_smaller_than_min_finished_is_judged_at_its_end() -> None:
    plan = RolloutPlan(canary=0.0, waves=(1.0,), max_failure=0.0, min_finished=50)
    targets = DEVS[:3]
    jobs = {"d00": "FAILED", "d01": "SUCCEEDED", "d02": "DOWNLOADING"}
    assert not evaluate(plan, _view(stage=0, jobs=jobs, targets=targets)).halt
    jobs["d02"] = "SUCCEEDED"
    assert judged(plan, _view(stage=0, jobs=jobs, targets=targets))
    d = evaluate(plan, _view(stage=0, jobs=jobs, targets=targets))
    assert d.halt and not d.complete


def test_plan_bounds() -> None:
    for bad in ({"rate": -1}, {"rate": 10**6}, {"min_finished": -3}):
        with pytest.raises(ConfigError):
            RolloutPlan(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("text, per_min", [("20/min", 20), ("20", 20), ("600/h", 10), ("off", 0), ("0", 0),
                                           (" 5 / min ", 5)])
def test_parse_dispatch_rate(text: str, per_min: int) -> None:
    assert parse_dispatch_rate(text) == per_min


@pytest.mark.parametrize("text", ["fast", "-2/min", "1.5/min", "30/h", "10/s", "200000/min", "/min"])
def test_parse_dispatch_rate_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="devices per minute"):
        parse_dispatch_rate(text)


# -- which action a state allows ----------------------------------------------------------------------------------
ALLOWED = {("pause", "running"), ("resume", "paused"), ("cancel", "running"), ("cancel", "paused"),
           *{("rollback", s) for s in ("running", "paused", "halted", "completed", "canceled")}}


@pytest.mark.parametrize("action", ["pause", "resume", "rollback", "cancel"])
@pytest.mark.parametrize("state", ["running", "paused", "halted", "completed", "rolled_back", "canceled"])
def test_action_refusal(action: str, state: str) -> None:
    why = action_refusal(action, state, "1 of 1 dispatched jobs failed")
    assert (why == "") == ((action, state) in ALLOWED)
    if why:
        assert state.replace("_", " ") in why
        assert "nothing to" in why or "cannot" in why


def test_resume_of_a_halted_deployment_says_what_to_do() -> None:
    why = action_refusal("resume", "halted", "1 of 1 dispatched jobs failed")
    assert "halted (1 of 1 dispatched jobs failed)" in why and "roll it back" in why


# -- the client side: progress, outcome, rollback results -----------------------------------------------------------
def _summary(**kw: Any) -> dict[str, Any]:
    return {"id": "dep1", "state": "running", "stage": 0, "targets": 4, "done": 1, "dispatched": 2, "reason": "",
            "counts": {"SUCCEEDED": 1, "DOWNLOADING": 1}, "rollbacks": {}, "failures": [], "jobs": [], **kw}


def test_progress_and_outcomes() -> None:
    line = progress_line(_summary())
    assert "dep1 running: stage 0, 1/4 done, 2 dispatched (DOWNLOADING=1 SUCCEEDED=1)" == line
    assert outcome_error(_summary()) is None and outcome_error(_summary(state="completed")) is None
    fail = {"device_id": "d2", "status": "REJECTED", "reason": "smoke_test", "message": "outputs differ"}
    halted = outcome_error(_summary(state="halted", reason="1 of 2 dispatched jobs failed", failures=[fail]))
    assert isinstance(halted, RolloutHaltedError) and "d2 REJECTED (smoke_test: outputs differ)" in str(halted)
    assert isinstance(outcome_error(_summary(state="rolled_back")), RolloutRolledBackError)
    assert isinstance(outcome_error(_summary(state="canceled")), RolloutCanceledError)
    assert len({type(e).exit_code for e in (halted, RolloutRolledBackError(""), RolloutCanceledError(""))}) == 3


def test_rollback_report() -> None:
    jobs = [{"device_id": "a", "action": "install", "status": "SUCCEEDED"},
            {"device_id": "a", "action": "rollback", "status": "SUCCEEDED", "reason": "rolled_back"},
            {"device_id": "b", "action": "rollback", "status": "REJECTED", "reason": "order_unsigned",
             "message": "unsigned"},
            {"device_id": "c", "action": "rollback", "status": "QUEUED"},
            {"device_id": "d", "action": "install", "status": "IN_PROGRESS"},
            {"device_id": "e", "action": "rollback", "status": "CANCELED", "reason": "not_on_version"}]
    r = rollback_report(_summary(state="rolled_back", jobs=jobs))
    assert r.failed == ("b",) and r.waiting == ("c", "d") and not r.settled
    assert [x[0] for x in r.results] == ["a", "b", "c", "e"]
    err = rollback_error(_summary(), r, 30)
    assert isinstance(err, RollbackIncompleteError)
    assert "1 device(s) failed to roll back: b" in str(err) and "did not answer within 30s: c, d" in str(err)
    ok = rollback_report(_summary(jobs=jobs[:2]))
    assert ok.settled and rollback_error(_summary(), ok, 30) is None


# -- the registry: the new columns, and a registry made before them ---------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_older_registry_gains_the_rollout_columns(backend: str, tmp_path: Any) -> None:
    import uuid

    from helpers import pg_url
    from sqlalchemy import text

    from edgefleet.cloud_sync.coordinator.registry import Registry

    url = pg_url() if backend == "postgresql" else f"sqlite:///{tmp_path / 'reg.db'}"
    if url is None:
        pytest.skip("PostgreSQL is not reachable")
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    reg = Registry(url, prefix=prefix)
    old = reg.create_deployment("f", "a" * 64, "m", "1", "g", 0.05, [1.0], 0.0, ["d1"])
    with reg.engine.begin() as c:  # as the registry was before issue 15
        for col in ("rate", "min_finished", "devices"):
            c.execute(text(f"ALTER TABLE {prefix}deployments DROP COLUMN {col}"))
    reg.close()
    reg = Registry(url, prefix=prefix)
    try:
        dep = reg.deployment(old)
        assert dep is not None and (dep.rate, dep.min_finished, dep.devices) == (0, 0, [])
        new = reg.create_deployment("f", "a" * 64, "m", "2", "", 0.05, [1.0], 0.0, ["d1", "d2"], rate=7,
                                    min_finished=3, devices=["d1", "d2"])
        dep = reg.deployment(new)
        assert dep is not None and (dep.rate, dep.min_finished, dep.devices, dep.group) == (7, 3, ["d1", "d2"], "")
        assert dep.to_dict()["devices"] == ["d1", "d2"]
        # a deployment to a list of devices is never a group's newest (it takes no joiners)
        assert reg.deployment_heads("f").newest == {"g": old}
    finally:
        reg.drop_all()
        reg.close()
