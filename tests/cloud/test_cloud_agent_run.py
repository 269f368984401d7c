"""``edgefleet agent run --broker``: the agent daemon joins the fleet, takes a rollout, leaves cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from helpers import coordinator

from edgefleet.cli import main as cli_main
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan


def test_agent_run_with_broker_joins_the_fleet_and_installs_a_rollout(broker: Any, tmp_path: Path, keys: dict[str, Any],
                                                                     archives: dict[str, Path]) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db", groups={"press-7": "g"})  # the operator's assignment
    state = tmp_path / "dev"
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "agent", "run", "--state-dir", str(state),
                             "--trust", str(keys["pub"]), "--hardware-tag", "test-board", "--broker", broker.url,
                             "--fleet", "f1", "--device-id", "press-7", "--group", "g", "--telemetry-interval", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: any(d.device_id == "press-7" and d.online for d in coord.registry.devices("f1", "g")), 30)
        dep = coord.create_deployment(archives["1"].read_bytes(), "g", RolloutPlan(1.0, (1.0,), 0.0))
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)
        wait_for(lambda: coord.registry.device("f1", "press-7").active_version == "1", 10)
        assert (state / "sync").is_dir() and (state / "objects").is_dir()  # one state dir: the agent's, sync inside
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        coord.stop()
    assert proc.returncode == 0, out
    assert "edgefleet sync: device press-7 of fleet f1" in out
    assert coord.registry.device("f1", "press-7").online is False  # a graceful stop publishes its death


def test_agent_run_sync_options_need_a_broker(tmp_path: Path, capsys: Any) -> None:
    assert cli_main(["agent", "run", "--state-dir", str(tmp_path / "s"), "--fleet", "f1"]) == 2
    assert "--fleet needs --broker URL" in capsys.readouterr().err


@pytest.mark.parametrize("argv, missing", [(["--broker", "mqtt://127.0.0.1:1"], "--fleet and --device-id")])
def test_agent_run_with_broker_needs_fleet_and_device(tmp_path: Path, capsys: Any, argv: list[str],
                                                      missing: str) -> None:
    assert cli_main(["agent", "run", "--state-dir", str(tmp_path / "s"), *argv]) == 2
    assert missing in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s" / "sync")
