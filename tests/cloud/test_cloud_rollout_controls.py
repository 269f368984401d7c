"""Issue 15, rollout controls, end to end: a real mosquitto, real agents, the coordinator's API on a loopback port,
driven through the CLI (``edgefleet.cli.main``) as an operator would.

Each "Why" of the issue is a test here that failed before the change:

- ``fleet status DEP`` showed ``halted ... REJECTED=1`` but not which device or why;
- ``fleet rollback`` printed ``rolled_back`` with exit 0 when both rollback orders had failed;
- ``fleet resume`` on a halted deployment and ``pause`` on a rolled-back one exited 0 as if something happened;
- no device lists, no rate limit, no minimum of finished devices (one failed canary halted at ``100% > 2%``),
  no cancel, no ``--wait``/``--watch``.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from conftest import wait_for
from helpers import coordinator, device, serve_api

from edgefleet.cli import main as cli_main
from edgefleet.errors import (
    ActionRefusedError,
    RollbackIncompleteError,
    RolloutHaltedError,
)

TOKEN = "controls-admin-token"


@pytest.fixture()
def operator(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
             ) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """``operator(coord)`` serves the coordinator's API; then ``run(*argv)`` runs ``edgefleet fleet ...`` against
    it and returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("EDGEFLEET_TOKEN", TOKEN)
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: whole reasons on one line
    with ExitStack() as stack:

        def start(coord: Any) -> Callable[..., tuple[int, str, str]]:
            base = stack.enter_context(serve_api(coord, TOKEN))
            monkeypatch.setenv("EDGEFLEET_API", base)

            def run(*argv: str) -> tuple[int, str, str]:
                capsys.readouterr()
                rc = cli_main(["fleet", *argv])
                out, err = capsys.readouterr()
                return rc, out, err

            run.base = base  # type: ignore[attr-defined]
            return run

        yield start  # type: ignore[misc]


def _stop(*things: Any) -> None:
    for t in things:
        t.stop()


def _halted(broker: Any, tmp_path: Path, make_agent: Any, archives: dict[str, Path], operator: Any
            ) -> tuple[Any, list[Any], Callable[..., tuple[int, str, str]], tuple[str, ...], str]:
    """Three devices on version 1; a rollout of the bundle whose smoke test fails, deployed with the CLI, halted by
    its canary d0. Returns (coordinator, syncs, run, the deploy command, the deployment's id)."""
    coord = coordinator(broker.url, tmp_path / "reg.db")
    syncs = [device(broker.url, make_agent(f"d{i}", install=archives["1"]), tmp_path) for i in range(3)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 3)
    run = operator(coord)
    bad = ("deploy", str(archives["3bad"]), "--group", "g", "--canary", "33%", "--waves", "100%", "--max-failure", "2%")
    rc, out, err = run(*bad)
    assert rc == 0, (out, err)
    dep = coord.registry.deployments("f1")[-1]
    wait_for(lambda: coord.registry.deployment(dep.id).state == "halted", 30)  # type: ignore[union-attr]
    return coord, syncs, run, bad, dep.id


def test_status_of_a_halted_rollout_names_the_device_and_its_reason(broker: Any, tmp_path: Path, make_agent: Any,
                                                                    archives: dict[str, Path], operator: Any) -> None:
    coord, syncs, run, bad, dep_id = _halted(broker, tmp_path, make_agent, archives, operator)

    # fleet status DEP: which device, which state, the reason and message it reported
    rc, out, err = run("status", dep_id)
    assert rc == 0, err
    row = next((line for line in out.splitlines() if line.lstrip("│ ").startswith("d0")), "")
    assert "REJECTED" in row and "smoke_test_failed" in row and "differs from the expected values" in row, out
    rc, out, _ = run("status", dep_id, "--json")
    failures = json.loads(out)["failures"]
    assert [(f["device_id"], f["status"], f["reason"]) for f in failures] == [("d0", "REJECTED", "smoke_test_failed")]
    assert failures[0]["message"]

    # status --watch of a halted deployment: its outcome's exit code at once, the device named
    rc, out, err = run("status", dep_id, "--watch")
    assert rc == RolloutHaltedError.exit_code and "d0 REJECTED (smoke_test_failed" in err, (out, err)
    # deploy --wait: progress lines until the outcome, the outcome's exit code, the failing device in the error
    rc, out, err = run(*bad, "--wait", "--interval", "0.2")
    assert rc == RolloutHaltedError.exit_code, (out, err)
    dep = coord.registry.deployments("f1")[-1]
    assert dep.state == "halted" and dep.id != dep_id
    lines = [line for line in out.splitlines() if f" {dep.id} " in line]  # the progress lines, timestamped
    assert len(lines) >= 2 and " running: stage " in lines[0] and lines[-1].endswith(
        "halted: stage 0, 1/3 done, 1 dispatched (REJECTED=1) - 1 of 1 dispatched jobs failed (100% > 2%): d0 "
        "(smoke_test_failed)")
    assert "d0 REJECTED (smoke_test_failed" in err
    assert all(s.agent.active_version == "1" for s in syncs)
    _stop(*syncs, coord)


def test_resume_of_a_halted_and_pause_of_a_rolled_back_deployment_are_refused(
        broker: Any, tmp_path: Path, make_agent: Any, archives: dict[str, Path], operator: Any) -> None:
    coord, syncs, run, _, dep_id = _halted(broker, tmp_path, make_agent, archives, operator)

    # resume and pause of a halted deployment change nothing: refused, named, non-zero
    for action in ("resume", "pause"):
        rc, out, err = run(action, dep_id)
        assert rc == ActionRefusedError.exit_code and "halted" in err and out == "", (action, out, err)
    assert "a halted rollout cannot resume" in run("resume", dep_id)[2]
    r = httpx.post(f"{run.base}/v1/deployments/{dep_id}/resume",  # type: ignore[attr-defined]
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 409 and "halted" in r.json()["detail"]
    assert coord.registry.deployment(dep_id).state == "halted"  # type: ignore[union-attr]

    # a halted deployment may be rolled back (no device runs its version: nothing to order back) ...
    rc, out, err = run("rollback", dep_id)
    assert rc == 0 and "rollback ordered for 0 device(s)" in out, (out, err)
    # ... and then pausing it is refused
    rc, out, err = run("pause", dep_id)
    assert rc == ActionRefusedError.exit_code and "rolled back" in err and out == "", (out, err)
    _stop(*syncs, coord)


def test_rollback_reports_each_device_and_fails_when_the_orders_fail(broker: Any, tmp_path: Path, make_agent: Any,
                                                                      archives: dict[str, Path],
                                                                      operator: Any) -> None:
    # no signing key: the coordinator's rollback orders go out unsigned, and the agents (which verify) refuse them
    coord = coordinator(broker.url, tmp_path / "reg.db")
    syncs = [device(broker.url, make_agent(f"d{i}", install=archives["1"]), tmp_path) for i in range(2)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 2)
    run = operator(coord)
    rc, out, err = run("deploy", str(archives["2"]), "--group", "g", "--canary", "50%", "--waves", "100%")
    assert rc == 0, (out, err)
    dep = coord.registry.deployments("f1")[-1]
    wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 30)  # type: ignore[union-attr]

    rc, out, err = run("rollback", dep.id)  # waits for the devices' answers (up to --timeout, 2m)
    assert rc == RollbackIncompleteError.exit_code, (out, err)
    assert "2 device(s) failed to roll back: d0, d1" in err
    for d in ("d0", "d1"):
        row = next(line for line in out.splitlines() if line.lstrip("│ ").startswith(d))
        assert "REJECTED" in row and "order_unsigned" in row
    assert all(s.agent.active_version == "2" for s in syncs)  # still on the version the rollback undoes

    # another rollback, or a cancel, of a rolled-back deployment: refused, non-zero, the state said
    for action in ("rollback", "cancel"):
        rc, out, err = run(action, dep.id)
        assert rc == ActionRefusedError.exit_code and "rolled back" in err, (action, out, err)
    _stop(*syncs, coord)


def test_rollback_with_signed_orders_reports_success(broker: Any, tmp_path: Path, make_agent: Any,
                                                     archives: dict[str, Path], keys: dict[str, Any],
                                                     operator: Any) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db", signing_key=keys["priv"])
    syncs = [device(broker.url, make_agent(f"d{i}", install=archives["1"]), tmp_path) for i in range(2)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 2)
    run = operator(coord)
    assert run("deploy", str(archives["2"]), "--group", "g", "--canary", "50%", "--waves", "100%", "--wait",
               "--interval", "0.2")[0] == 0
    dep = coord.registry.deployments("f1")[-1]
    rc, out, err = run("rollback", dep.id, "--timeout", "30s", "--interval", "0.2")
    assert rc == 0, (out, err)
    assert "rolled back, 2 device(s) answered" in out
    for d in ("d0", "d1"):
        row = next(line for line in out.splitlines() if line.lstrip("│ ").startswith(d))
        assert "SUCCEEDED" in row and "rolled_back" in row
    assert all(s.agent.active_version == "1" for s in syncs)
    _stop(*syncs, coord)


def test_min_finished_keeps_one_failed_canary_from_halting(broker: Any, tmp_path: Path, make_agent: Any,
                                                           archives: dict[str, Path], operator: Any) -> None:
    from edgefleet.device_agent.agent import Agent
    from edgefleet.device_agent.config import AgentConfig, TelemetryConfig, UpdateConfig
    from edgefleet.keys import generate_keypair

    coord = coordinator(broker.url, tmp_path / "reg.db")
    # the canary (first in sorted order) trusts another key than the one the bundle is signed with: it refuses it
    _, other = generate_keypair(tmp_path / "other-keys", "other")
    bad = Agent(AgentConfig(state_dir=str(tmp_path / "devices" / "a-bad" / "agent"), device_id="a-bad",
                            trusted_keys=(str(other),), update=UpdateConfig(probation_seconds=0.0),
                            telemetry=TelemetryConfig(flush_seconds=3600)), tick_seconds=0.05)
    syncs = [device(broker.url, bad, tmp_path)]
    syncs += [device(broker.url, make_agent(f"d{i}", install=archives["1"]), tmp_path) for i in range(3)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 4)
    run = operator(coord)
    rc, out, err = run("deploy", str(archives["2"]), "--group", "g", "--canary", "25%", "--waves", "100%",
                       "--max-failure", "30%", "--min-finished", "4")
    assert rc == 0 and "failure rate judged after 4 finished" in out, (out, err)
    dep = coord.registry.deployments("f1")[-1]

    # status --watch follows it: the canary fails, the gate waits for four finished devices (1 of 4 = 25% <= 30%)
    rc, out, err = run("status", dep.id, "--watch", "--interval", "0.2")
    assert rc == 0, (out, err)
    assert f"deployment {dep.id} completed: 4/4 device(s) done" in out
    jobs = {j.device_id: j.status.value for j in coord.registry.jobs(dep.id)}
    assert jobs == {"a-bad": "REJECTED", "d0": "SUCCEEDED", "d1": "SUCCEEDED", "d2": "SUCCEEDED"}
    assert coord.registry.deployment(dep.id).state == "completed"  # type: ignore[union-attr]
    row = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("a-bad"))  # the failures table
    assert "REJECTED" in row and "signature" in row
    assert [s.agent.active_version for s in syncs[1:]] == ["2", "2", "2"]
    _stop(*syncs, coord)


def test_a_device_list_at_a_rate_then_cancel(broker: Any, tmp_path: Path, make_agent: Any,
                                             archives: dict[str, Path], operator: Any) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    agents = {d: make_agent(d, install=archives["1"]) for d in ("d0", "d1", "d2", "x9")}
    syncs = {d: device(broker.url, a, tmp_path, group="h" if d == "x9" else "g") for d, a in agents.items()}
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 4)
    syncs["d1"].stop()  # d1 is away: its job waits for it (retained)
    wait_for(lambda: not coord.registry.device("f1", "d1").online)  # type: ignore[union-attr]
    run = operator(coord)

    # three listed devices of two groups, two a minute: d0 and d1 get the job now, x9 waits for the next minute
    rc, out, err = run("deploy", str(archives["2"]), "--devices", "x9,d0,d1", "--canary", "100%", "--waves",
                       "100%", "--rate", "2/min")
    assert rc == 0, (out, err)
    dep_id = out.split(":", 1)[0].removeprefix("deployment ")
    assert f"deployment {dep_id}: dense 2 to 3 device(s) listed (d0,d1,x9), at most 2/min" in out
    wait_for(lambda: {j.device_id: j.status.value for j in coord.registry.jobs(dep_id)}.get("d0") == "SUCCEEDED", 30)
    time.sleep(1.0)  # ticks go on: the rate holds x9 back, d2 is not listed
    assert {j.device_id: j.status.value for j in coord.registry.jobs(dep_id)} == {"d0": "SUCCEEDED", "d1": "QUEUED"}
    st = json.loads(run("status", dep_id, "--json")[1])
    assert (st["targets"], st["dispatched"], st["devices"], st["rate"]) == (3, 2, ["d0", "d1", "x9"], 2)

    # cancel: x9 never gets the job, d1's queued job is canceled and withdrawn from it
    rc, out, err = run("cancel", dep_id)
    assert rc == 0 and "canceled" in out and "1 unstarted job(s) canceled, 1 device(s) never dispatched" in out, err
    syncs["d1"] = device(broker.url, agents["d1"], tmp_path)  # back: it finds the withdrawal, not the job
    wait_for(lambda: coord.registry.device("f1", "d1").online)  # type: ignore[union-attr]
    time.sleep(1.5)
    assert {j.device_id: j.status.value for j in coord.registry.jobs(dep_id)} == {"d0": "SUCCEEDED",
                                                                                  "d1": "CANCELED"}
    assert [agents[d].active_version for d in ("d0", "d1", "d2", "x9")] == ["2", "1", "1", "1"]
    assert syncs["d1"].stats["chunks_received"] == 0

    # nothing is left to cancel or resume
    for action in ("cancel", "resume", "pause"):
        rc, _, err = run(action, dep_id)
        assert rc == ActionRefusedError.exit_code and "canceled" in err, (action, err)
    # a listed device that does not exist, or is not of the group given, is refused by name
    rc, _, err = run("deploy", str(archives["2"]), "--devices", "d0,nope")
    assert rc != 0 and "no device nope" in err
    rc, _, err = run("deploy", str(archives["2"]), "--group", "g", "--devices", "x9")
    assert rc != 0 and "x9 are not in group 'g'" in err
    rc, _, err = run("deploy", str(archives["2"]), "--rate", "fast", "--group", "g")
    assert rc == 2 and "devices per minute" in err
    _stop(*syncs.values(), coord)
